"""The segmentation table: which fields of mmseg 1.x segmentors describe the levels their heads
are fed, as data beside the detection tables (`_heads.py`, `_necks.py`). `_resolve.py` applies
these rules to segmentors: model configs with a `decode_head` (mmseg's `EncoderDecoder`,
`CascadeEncoderDecoder`, ...), whose classes are looked up in mmseg's registry.

mmseg's decode heads (`BaseDecodeHead`) read the levels named by `in_index` from the neck's
outputs (the backbone's without a neck): one level (`in_index` an int, `in_channels` an int) or,
with an `input_transform` (`'multiple_select'`, `'resize_concat'`), several (`in_index` and
`in_channels` lists of the same length). Heads built on mmdet's MaskFormer heads (mmseg's
`Mask2FormerHead`, `MaskFormerHead`) take one `in_channels` entry per level and wire their pixel
decoder from them, as in detection.
"""
__all__ = ['SEG_SCOPE', 'SEGMENTOR_KEY', 'SEG_HEADS', 'AUXILIARY_HEAD', 'DECODE_HEAD_BASE',
           'MULTI_LEVEL_HEADS', 'SEG_HEAD_STRIDES', 'FIRST_FINEST', 'FIRST_LEVEL_CHANNELS',
           'IGNORED_STRIDES', 'AUXILIARY_STRIDE', 'SEG_PAD_DIVISORS', 'SEG_PAD_SIZE',
           'SEG_PAD_SIZES', 'SEGMENTOR_PRETRAINED']

# The registry scope segmentor configs' types are looked up in.
SEG_SCOPE = 'mmseg'
# A model config with this key is a segmentor (the key every mmseg segmentor requires).
SEGMENTOR_KEY = 'decode_head'
# Segmentor keys of heads fed the neck's outputs; each a head config or a list of them
# (CascadeEncoderDecoder's decode heads, several auxiliary heads).
SEG_HEADS = ('decode_head', 'auxiliary_head')
AUXILIARY_HEAD = 'auxiliary_head'
# mmseg's decode-head base class: `in_channels` / `in_index` follow its `input_transform`.
DECODE_HEAD_BASE = 'BaseDecodeHead'
# Decode heads (or subclasses) that always read several levels: they pass
# input_transform='multiple_select' to BaseDecodeHead themselves (mmseg 1.2).
MULTI_LEVEL_HEADS = ('UPerHead', 'FPNHead', 'SegformerHead', 'SETRMLAHead', 'PointHead',
                     'EncHead', 'ANNHead', 'LightHamHead')
# Head arguments that are the strides of the levels the head reads, by head (base) class.
SEG_HEAD_STRIDES = (('FPNHead', 'feature_strides'),)
# Heads that upsample every level to the size of the first one they read: it must be the finest
# (FPNHead asserts min(feature_strides) == feature_strides[0]).
FIRST_FINEST = ('FPNHead',)
# Fields holding the channels of the first level fed to the head, whatever its in_index
# (DeepLabV3+'s low-level features, `inputs[0]`); 0 switches that branch off.
FIRST_LEVEL_CHANNELS = (('DepthwiseSeparableASPPHead', 'c1_in_channels'),)
# Arguments that mmseg passes on to a base that ignores them: mmseg's (Mask2)MaskFormer heads take
# `strides` but their pixel decoder uses its own `pixel_decoder.strides`. Checked and filled
# like the real ones, so the config says what runs.
IGNORED_STRIDES = (('MaskFormerHead', 'strides'),)
# The stride an auxiliary head's `in_index='auto'` aims for: mmseg's auxiliary FCN heads read
# the stride-16 level (ResNet's layer3); the level nearest to it (log scale) is chosen.
AUXILIARY_STRIDE = 16
# SegDataPreProcessor fields (paths) padding batches to a multiple: training, testing.
SEG_PAD_DIVISORS = (('size_divisor',), ('test_cfg', 'size_divisor'))
# The field beside each of them padding batches to a fixed (h, w) instead: mmseg pads to one or
# the other (a divisor of 'auto' is None where it is set).
SEG_PAD_SIZE = 'size'
SEG_PAD_SIZES = (('size',), ('test_cfg', 'size'))
# mmseg's EncoderDecoder hands its `pretrained` to the backbone config (mmseg's ResNet bases set
# 'open-mmlab://resnet50_v1c'); a timm backbone has its own `pretrained` option.
SEGMENTOR_PRETRAINED = 'pretrained'
