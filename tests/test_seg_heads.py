"""The segmentation wiring (`wiring/_seg_heads.py`, applied by `resolve_config` to mmseg
segmentors): mmseg's own configs with a timm backbone swapped in. Every filled value is compared
with numbers written out here (timm's levels, channels@stride: resnet18 64@4 128@8 256@16 512@32;
convnext_atto 40, 80, 160, 320; efficientnet_b0 24, 40, 112, 320; vit_tiny's simple pyramid 48,
96, 192, 192), never computed by the code under test; then one block per error rule, each
checking the fix in the message."""
import copy

import pytest
import torch

import timm_backbones  # noqa: F401  (registers the modules)
from helpers import merge, mmseg_config, timm
from timm_backbones import build_detector, resolve_config

UPERNET = 'upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'
SEGFORMER = 'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'
SEM_FPN = 'sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'
MASK2FORMER = 'mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py'
DEEPLABV3 = 'deeplabv3/deeplabv3_r50-d8_4xb4-80k_ade20k-512x512.py'
DEEPLABV3PLUS = 'deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py'
AUTO = dict(in_channels='auto', in_index='auto')


def segmentor(path, backbone, **changes):
    """mmseg's model config `path` with a timm backbone and `changes` merged in (dicts key by
    key); the ResNet bases' `pretrained` removed, as the shipped configs do."""
    model = mmseg_config(path).model.to_dict()
    model['backbone'] = backbone
    model['pretrained'] = None
    merge(model, copy.deepcopy(changes))
    return model


def resolved(model):
    return resolve_config(dict(model=model))['model']


def _fails(model, match):
    with pytest.raises(ValueError, match=match):
        resolved(model)


# ---- what is filled -----------------------------------------------------------------------------
def test_upernet_and_its_auxiliary_head():
    model = resolved(segmentor(UPERNET, timm('resnet18'), decode_head=AUTO, auxiliary_head=AUTO))
    assert model['decode_head']['in_channels'] == [64, 128, 256, 512]
    assert model['decode_head']['in_index'] == [0, 1, 2, 3]
    assert model['auxiliary_head']['in_index'] == 2  # stride 16
    assert model['auxiliary_head']['in_channels'] == 256


@pytest.mark.parametrize('backbone, index, channels', [
    (timm('resnet18', (2, 3, 4)), 1, 256),             # strides 8, 16, 32
    (timm('resnet18', output_stride=8), 2, 256),       # 4, 8, 8, 8: layer3, as mmseg's dilated nets
    (timm('vit_tiny_patch16_224'), 2, 192),            # the simple pyramid 4..32
    (timm('resnet18', (2, 4)), 0, 128),                # 8 and 32 are as near: the finer
    (timm('resnet18', (-1,)), 0, 512),                 # one level
])
def test_auxiliary_head_reads_the_level_nearest_stride_16(backbone, index, channels):
    model = resolved(segmentor(UPERNET, backbone, decode_head=AUTO, auxiliary_head=AUTO))
    assert model['auxiliary_head']['in_index'] == index
    assert model['auxiliary_head']['in_channels'] == channels


def test_single_level_decode_head_reads_the_deepest_level():
    # DeepLabV3 (ASPPHead, one level) on a dilated resnet18: strides 4, 8, 8, 8
    model = resolved(segmentor(DEEPLABV3, timm('resnet18', output_stride=8), decode_head=AUTO,
                               auxiliary_head=AUTO))
    assert (model['decode_head']['in_index'], model['decode_head']['in_channels']) == (3, 512)
    assert (model['auxiliary_head']['in_index'], model['auxiliary_head']['in_channels']) == \
        (2, 256)


def test_segformer_head():
    model = resolved(segmentor(SEGFORMER, timm('efficientnet_b0'), decode_head=AUTO))
    assert model['decode_head']['in_channels'] == [24, 40, 112, 320]
    assert model['decode_head']['in_index'] == [0, 1, 2, 3]
    # an explicit selection: in_channels follows it
    model = resolved(segmentor(SEGFORMER, timm('efficientnet_b0'),
                               decode_head=dict(in_channels='auto', in_index=[1, 2, 3])))
    assert model['decode_head']['in_channels'] == [40, 112, 320]


def test_semantic_fpn():
    fpn = dict(neck=dict(in_channels='auto'),
               decode_head=dict(AUTO, feature_strides='auto'))
    model = resolved(segmentor(SEM_FPN, timm('convnext_atto'), **fpn))
    assert model['neck']['in_channels'] == [40, 80, 160, 320]
    assert model['decode_head']['in_channels'] == [256, 256, 256, 256]  # the neck's outputs
    assert model['decode_head']['in_index'] == [0, 1, 2, 3]
    assert model['decode_head']['feature_strides'] == [4, 8, 16, 32]
    # three backbone levels, num_outs=4: the neck adds a stride-64 level
    model = resolved(segmentor(SEM_FPN, timm('convnext_atto', (1, 2, 3)), **fpn))
    assert model['neck']['in_channels'] == [80, 160, 320]
    assert model['decode_head']['feature_strides'] == [8, 16, 32, 64]


def test_mask2former():
    head = dict(in_channels='auto', strides='auto', pixel_decoder=dict(strides='auto'))
    model = resolved(segmentor(MASK2FORMER, timm('convnext_atto'), decode_head=head))
    assert model['decode_head']['in_channels'] == [40, 80, 160, 320]
    assert model['decode_head']['pixel_decoder']['strides'] == [4, 8, 16, 32]  # the ones used
    assert model['decode_head']['strides'] == [4, 8, 16, 32]  # ignored by mmdet, kept true
    model = resolved(segmentor(MASK2FORMER, timm('convnext_atto', (1, 2, 3)), decode_head=head))
    assert model['decode_head']['in_channels'] == [80, 160, 320]
    assert model['decode_head']['pixel_decoder']['strides'] == [8, 16, 32]


def test_missing_fields():
    # UPerHead without in_channels / in_index: filled (mmseg's default in_index=-1 is a single
    # level, which a several-level head cannot take); a single-level head without in_index reads
    # mmseg's default, the last level, and its in_channels is checked against that level
    model = segmentor(UPERNET, timm('resnet18'), auxiliary_head=dict(in_channels=512))
    for key in ('in_channels', 'in_index'):
        del model['decode_head'][key]
    del model['auxiliary_head']['in_index']
    out = resolved(model)
    assert out['decode_head']['in_index'] == [0, 1, 2, 3]
    assert out['decode_head']['in_channels'] == [64, 128, 256, 512]
    assert 'in_index' not in out['auxiliary_head'] and out['auxiliary_head']['in_channels'] == 512
    model['auxiliary_head']['in_channels'] = 256  # the stride-16 level's, not the last one's
    with pytest.raises(ValueError, match=r'auxiliary_head.in_channels=256 .*must be 512'):
        resolved(model)


def test_deeplabv3plus_low_level_channels():
    # DepthwiseSeparableASPPHead's c1 branch reads the first level fed to the head (inputs[0])
    head = dict(AUTO, c1_in_channels='auto')
    model = resolved(segmentor(DEEPLABV3PLUS, timm('resnet18', output_stride=8),
                               decode_head=head, auxiliary_head=AUTO))
    assert model['decode_head']['c1_in_channels'] == 64
    assert (model['decode_head']['in_index'], model['decode_head']['in_channels']) == (3, 512)
    off = resolved(segmentor(DEEPLABV3PLUS, timm('resnet18'), decode_head=dict(
        AUTO, c1_in_channels=0), auxiliary_head=AUTO))
    assert off['decode_head']['c1_in_channels'] == 0  # 0: the branch is off, kept


def test_a_list_of_auxiliary_heads():
    aux = mmseg_config(UPERNET).model.auxiliary_head.to_dict()
    model = segmentor(UPERNET, timm('convnext_atto'), decode_head=AUTO)
    model['auxiliary_head'] = [dict(aux, **AUTO), dict(aux, in_channels='auto', in_index=1)]
    out = resolved(model)
    assert [(h['in_index'], h['in_channels']) for h in out['auxiliary_head']] == \
        [(2, 160), (1, 80)]


def test_plain_vit_gets_a_simple_pyramid_and_runs():
    import timm_backbones.seg  # noqa: F401  (TimmBackbone in mmseg's registry: custom_imports)
    model = segmentor(UPERNET, timm('vit_tiny_patch16_224', pretrained=False),
                      decode_head=dict(AUTO, norm_cfg=dict(type='BN'), channels=32),
                      auxiliary_head=dict(AUTO, norm_cfg=dict(type='BN'), channels=16),
                      data_preprocessor=dict(size=None))
    out = resolved(model)
    assert out['decode_head']['in_channels'] == [48, 96, 192, 192]
    assert (out['auxiliary_head']['in_index'], out['auxiliary_head']['in_channels']) == (2, 192)
    torch.manual_seed(0)
    net = build_detector(dict(model=model, default_scope='mmseg')).eval()
    with torch.no_grad():
        logits = net(torch.zeros(1, 3, 96, 128), mode='tensor')
    assert tuple(logits.shape) == (1, 150, 24, 32)  # UPerHead: the stride-4 level


def test_subclass_of_a_several_level_head():
    # rule: head classes are looked up in mmseg's registry, so a user's subclass of UPerHead
    # (registered in mmseg's MODELS) is wired as UPerHead is
    from mmseg.models.decode_heads import UPerHead
    from mmseg.registry import MODELS

    class MyUPerHead(UPerHead):
        pass
    MODELS.register_module(module=MyUPerHead, force=True)
    model = resolved(segmentor(UPERNET, timm('convnext_atto'),
                               decode_head=dict(AUTO, type='MyUPerHead'), auxiliary_head=AUTO))
    assert model['decode_head']['in_index'] == [0, 1, 2, 3]
    assert model['decode_head']['in_channels'] == [40, 80, 160, 320]


def test_data_preprocessor():
    # SegDataPreProcessor: mean/std from timm's pretrained_cfg; size_divisor 'auto' is the
    # backbone's padding multiple, or None where `size` pads batches to a fixed size (mmseg pads
    # to one of them); test_cfg.size_divisor likewise
    pre = dict(mean='auto', std='auto', size=None, size_divisor='auto',
               test_cfg=dict(size_divisor='auto'))
    model = resolved(segmentor(UPERNET, timm('vit_tiny_patch16_224.augreg_in21k'),
                               decode_head=AUTO, auxiliary_head=AUTO, data_preprocessor=pre))
    assert model['data_preprocessor']['mean'] == [127.5, 127.5, 127.5]
    assert model['data_preprocessor']['size_divisor'] == 32
    assert model['data_preprocessor']['test_cfg']['size_divisor'] == 32
    model = resolved(segmentor(UPERNET, timm('resnet18'), decode_head=AUTO, auxiliary_head=AUTO,
                               data_preprocessor=dict(size=(512, 512), size_divisor='auto')))
    assert model['data_preprocessor']['size_divisor'] is None
    # as in detection: the base's ImageNet values fail with a pretrained backbone trained with
    # other values, with the fix
    _fails(segmentor(UPERNET, timm('vit_tiny_patch16_224.augreg_in21k', pretrained=True),
                     decode_head=AUTO, auxiliary_head=AUTO),
           r"data_preprocessor.mean=\[123.675, 116.28, 103.53\] does not match the normalization "
           r".*must be \[127.5, 127.5, 127.5\].*Fix: set mean='auto', std='auto'")


# ---- errors -------------------------------------------------------------------------------------
def test_values_inherited_from_a_resnet_base_are_rejected():
    # rule: explicit values that disagree with the backbone fail naming the field, the value,
    # the right value and the fix ('auto'), as in detection
    fix = r"Fix: set {}='auto'"
    _fails(segmentor(UPERNET, timm('convnext_atto')),
           r'model.decode_head.in_channels=\[256, 512, 1024, 2048\] does not match.*must be '
           r'\[40, 80, 160, 320\].*' + fix.format('in_channels'))
    _fails(segmentor(UPERNET, timm('convnext_atto'), decode_head=AUTO),
           r'model.auxiliary_head.in_channels=1024 .*must be 160.*' + fix.format('in_channels'))
    _fails(segmentor(SEGFORMER, timm('resnet18')),  # mit-b0's channels
           r'decode_head.in_channels=\[32, 64, 160, 256\] .*must be \[64, 128, 256, 512\]')
    _fails(segmentor(SEM_FPN, timm('resnet18'), decode_head=AUTO),  # the neck's
           r'model.neck.in_channels=\[256, 512, 1024, 2048\] .*must be \[64, 128, 256, 512\]')
    _fails(segmentor(SEM_FPN, timm('resnet18', (2, 3, 4)), neck=dict(in_channels='auto'),
                     decode_head=AUTO),  # num_outs=4 from three levels: strides 8..64
           r'feature_strides=\[4, 8, 16, 32\] does not match the strides.*must be '
           r'\[8, 16, 32, 64\].*' + fix.format('feature_strides'))
    _fails(segmentor(MASK2FORMER, timm('convnext_atto')),
           r'decode_head.in_channels=\[256, 512, 1024, 2048\] .*must be \[40, 80, 160, 320\]')
    stale = dict(strides=[4, 8, 16, 32])
    _fails(segmentor(MASK2FORMER, timm('convnext_atto', (1, 2, 3)), decode_head=dict(
        in_channels='auto', strides='auto', pixel_decoder=stale)),
           r'decode_head.pixel_decoder.strides=\[4, 8, 16, 32\] has 4 entries for 3 levels')
    _fails(segmentor(MASK2FORMER, timm('convnext_atto', (1, 2, 3)),
                     decode_head=dict(in_channels='auto', pixel_decoder=dict(strides='auto'))),
           r'decode_head.strides=\[4, 8, 16, 32\] has 4 entries for 3 levels')  # the ignored one


def test_in_index_errors():
    # rule: in_index names levels that exist, in the form the head takes
    three = timm('resnet18', (2, 3, 4))
    _fails(segmentor(UPERNET, three, decode_head=dict(in_channels='auto'), auxiliary_head=AUTO),
           r"decode_head.in_index=\[0, 1, 2, 3\] names level\(s\) \[3\], but 3 levels are fed to "
           r"it \(indices -3..2\). Fix: in_index='auto' \(every level\)")
    _fails(segmentor(UPERNET, three, decode_head=AUTO, auxiliary_head=dict(
        in_channels='auto', in_index=3)), r"auxiliary_head.in_index=3 .*Fix: in_index='auto' "
                                          r'\(auxiliary: the level nearest stride 16\)')
    _fails(segmentor(UPERNET, three, decode_head=dict(in_channels='auto', in_index=2),
                     auxiliary_head=AUTO),
           r"decode_head.in_index=2: UPerHead reads a list of level indices.*Fix: "
           r"in_index='auto'")
    _fails(segmentor(SEM_FPN, timm('resnet18'), neck=dict(in_channels='auto'),
                     decode_head=dict(in_channels='auto', in_index=[3, 0],
                                      feature_strides='auto')),
           r'FPNHead\) upsamples every level it reads to the size of the first, which must be '
           r'the finest; in_index=\[3, 0\] reads strides \[32, 4\]')


def test_segmentor_pretrained_is_rejected():
    # rule: mmseg hands the segmentor's `pretrained` to the backbone; a timm backbone has its own
    model = segmentor(UPERNET, timm('resnet18'), decode_head=AUTO, auxiliary_head=AUTO)
    model['pretrained'] = 'open-mmlab://resnet50_v1c'
    _fails(model, r"model.pretrained='open-mmlab://resnet50_v1c': mmseg hands .*Fix: set "
                  r'model.pretrained=None')


def test_padding_errors():
    swin = timm('swin_tiny_patch4_window7_224')  # window attention: multiples of 32
    _fails(segmentor(UPERNET, swin, decode_head=AUTO, auxiliary_head=AUTO,
                     data_preprocessor=dict(size=(512, 512), size_divisor=32)),
           r'size_divisor=32 and model.data_preprocessor.size=\[512, 512\]: mmseg pads batches '
           r'to a fixed size or to a multiple, not both')
    _fails(segmentor(UPERNET, swin, decode_head=AUTO, auxiliary_head=AUTO,
                     data_preprocessor=dict(test_cfg=dict(size_divisor=16))),
           r"data_preprocessor.test_cfg.size_divisor=16: .*multiples of 32 .*Fix: "
           r"size_divisor='auto' \(gives 32\)")


def test_auto_needs_a_timm_backbone_and_a_known_head():
    model = mmseg_config(UPERNET).model.to_dict()  # mmseg's own ResNetV1c
    model['decode_head'].update(AUTO)
    _fails(model, r"decode_head.in_index='auto' cannot be filled: .*not a timm backbone")
    model = segmentor(UPERNET, timm('resnet18'), decode_head=dict(AUTO, type='NoSuchHead'),
                      auxiliary_head=AUTO)
    _fails(model, r"decode_head.in_channels='auto': 'NoSuchHead' is not in mmseg's registry")
