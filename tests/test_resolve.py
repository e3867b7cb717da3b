"""resolve_config: where it finds timm backbones, what it fills (heads, RoI extractors, DETR
attention), and one block per error rule, each checking the hint in the message."""
import copy

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.registry import DefaultScope

import timm_backbones  # noqa: F401  (registers the modules)
from helpers import mmdet_config, timm
from timm_backbones import has_timm_backbone, resolve_config

register_all_modules()


def retinanet(backbone, **neck):
    """RetinaNet from mmdet's config (ResNet-50 channels and strides written out)."""
    cfg = mmdet_config('retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.backbone = backbone
    cfg.model.neck.update(neck)
    return cfg


def test_fills_and_returns_a_new_config():
    # Config in, new Config out; the input keeps its 'auto'
    cfg = retinanet(timm('convnext_atto', (1, 2, 3)), in_channels='auto', start_level=0)
    cfg.model.bbox_head.anchor_generator.strides = 'auto'
    out = resolve_config(cfg)
    assert isinstance(out, Config) and out is not cfg
    assert out.model.neck.in_channels == [80, 160, 320]
    assert out.model.bbox_head.anchor_generator.strides == [8, 16, 32, 64, 128]
    assert out.model.bbox_head.in_channels == 256  # explicit and right: kept
    assert cfg.model.neck.in_channels == 'auto'
    assert cfg.model.bbox_head.anchor_generator.strides == 'auto'


def test_each_backbone_is_planned_once(monkeypatch):
    # rule: the plan flows: resolve_config plans each timm backbone once and hands the plan to
    # every rule; a config it resolved is recognised and not planned again (the registry and
    # init_detector resolve what the runner resolved already)
    import timm_backbones._plan as plan_mod
    calls = []
    real = plan_mod.plan_backbone
    monkeypatch.setattr(plan_mod, 'plan_backbone', lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = mmdet_config('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone = timm('vit_tiny_patch16_224', pretrained=False)  # a pyramid, strides 4..32
    cfg.model.neck.in_channels = 'auto'
    cfg.model.data_preprocessor.update(mean='auto', std='auto', pad_size_divisor='auto')
    cfg.model.rpn_head.anchor_generator.strides = 'auto'
    cfg.model.roi_head.bbox_roi_extractor.featmap_strides = 'auto'
    resolved = resolve_config(cfg)
    assert len(calls) == 1
    assert resolve_config(resolved).to_dict() == resolved.to_dict() and len(calls) == 1
    resolve_config(dict(model=resolved.model.to_dict()))
    assert len(calls) == 1


def test_idempotent():
    # resolving a resolved config changes nothing
    cfg = mmdet_config('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone = timm('efficientnet_b0', (1, 2, 3, 4))
    cfg.model.neck.in_channels = 'auto'
    cfg.model.rpn_head.anchor_generator.strides = 'auto'
    cfg.model.roi_head.bbox_roi_extractor.featmap_strides = 'auto'
    cfg.model.roi_head.mask_roi_extractor.featmap_strides = 'auto'
    once = resolve_config(cfg)
    twice = resolve_config(once)
    assert once.to_dict() == twice.to_dict()
    assert once.model.roi_head.mask_roi_extractor.featmap_strides == [4, 8, 16, 32]


def test_missing_channel_field_is_auto():
    # a neck without in_channels gets it, like 'auto'
    out = resolve_config(dict(model=dict(
        backbone=timm('resnet18', (2, 3, 4)),
        neck=dict(type='FPN', out_channels=64, num_outs=3))))
    assert out['model']['neck']['in_channels'] == [128, 256, 512]


def test_missing_head_strides_filled():
    # FCOSHead's default strides (4, ..., 64) would be silently wrong after FPN start_level=1
    cfg = mmdet_config('fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py')
    cfg.model.backbone = timm('resnet18', (1, 2, 3, 4))
    cfg.model.neck.in_channels = 'auto'
    del cfg.model.bbox_head['strides']
    assert resolve_config(cfg).model.bbox_head.strides == [8, 16, 32, 64, 128]


def test_plain_model_dict_and_timm_type():
    # a bare model dict works too, and type='timm.<arch>' counts as a timm backbone
    out = resolve_config(dict(backbone=dict(type='timm.resnet18', out_indices=(3, 4)),
                              neck=dict(type='ChannelMapper', in_channels='auto',
                                        out_channels=32)))
    assert out['neck']['in_channels'] == [256, 512]


def test_detector_nested_in_wrapper():
    # SoftTeacher nests the detector under model.detector; error paths name that nesting
    cfg = mmdet_config('soft_teacher/soft-teacher_faster-rcnn_r50-caffe_fpn_180k_semi-0.1-coco.py')
    cfg.model.detector.backbone = timm('resnet18', (1, 2, 3, 4))
    assert has_timm_backbone(cfg)
    with pytest.raises(ValueError, match=r"model\.detector\.neck\.in_channels=\[256, 512, 1024, "
                                         r"2048\] .* must be \[64, 128, 256, 512\]"):
        resolve_config(cfg)
    cfg.model.detector.neck.in_channels = 'auto'
    out = resolve_config(cfg)
    assert out.model.detector.neck.in_channels == [64, 128, 256, 512]


def test_has_timm_backbone():
    assert not has_timm_backbone(mmdet_config('retinanet/retinanet_r50_fpn_1x_coco.py'))
    assert has_timm_backbone(retinanet(timm('resnet18', (2, 3, 4))))


def test_non_timm_config_unchanged():
    # a plain mmdet config (no 'auto') passes through untouched
    cfg = mmdet_config('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    assert resolve_config(cfg).to_dict() == cfg.to_dict()


def test_mask2former_head_without_neck():
    # Mask2Former feeds backbone levels to its head: in_channels is a list, and its pixel
    # decoder's strides (default [4, 8, 16, 32]) are filled from the backbone
    cfg = mmdet_config('mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py')
    cfg.model.backbone = timm('efficientnet_b0', (1, 2, 3, 4), output_stride=16)
    cfg.model.panoptic_head.update(in_channels='auto', strides='auto')
    head = resolve_config(cfg).model.panoptic_head
    assert head.in_channels == [24, 40, 112, 320]
    assert head.strides == head.pixel_decoder.strides == [4, 8, 16, 16]
    decoder_cfg = copy.deepcopy(head.pixel_decoder)
    decoder_cfg.update(in_channels=head.in_channels, feat_channels=32, out_channels=32)
    decoder_cfg.encoder.num_layers = 1
    decoder_cfg.encoder.layer_cfg.self_attn_cfg.embed_dims = 32
    decoder_cfg.encoder.layer_cfg.ffn_cfg.update(embed_dims=32, feedforward_channels=64)
    decoder_cfg.positional_encoding.num_feats = 16
    with DefaultScope.overwrite_default_scope('mmdet'):  # whatever an earlier test left
        decoder = MODELS.build(decoder_cfg).eval()
    feats = [torch.rand(1, c, 64 // s, 64 // s) for c, s in zip(head.in_channels, head.strides)]
    with torch.no_grad():
        mask_features, memories = decoder(feats)
    assert mask_features.shape == (1, 32, 16, 16) and len(memories) == 3


def test_cascade_extractors():
    # Cascade R-CNN: RoI extractors take the first levels (not FPN's max-pooled P6)
    cfg = mmdet_config('cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone = timm('resnet18', (1, 2, 3, 4), output_stride=16)
    cfg.model.neck.in_channels = 'auto'
    cfg.model.rpn_head.anchor_generator.strides = 'auto'
    cfg.model.roi_head.bbox_roi_extractor.featmap_strides = 'auto'
    cfg.model.roi_head.mask_roi_extractor.update(featmap_strides='auto', out_channels='auto')
    out = resolve_config(cfg).model
    assert out.rpn_head.anchor_generator.strides == [4, 8, 16, 16, 32]
    assert out.roi_head.bbox_roi_extractor.featmap_strides == [4, 8, 16, 16]
    assert out.roi_head.mask_roi_extractor.out_channels == 256


def test_stale_channels_error():
    # an explicit value that does not match the backbone (a ResNet-50 base config's) fails,
    # naming the field, the given and the correct value, and the fix
    with pytest.raises(ValueError) as info:
        resolve_config(retinanet(timm('convnext_atto', (0, 1, 2, 3))))
    message = str(info.value)
    assert message.startswith('model.neck.in_channels=[256, 512, 1024, 2048]')
    assert 'must be [40, 80, 160, 320]' in message
    assert "in_channels='auto'" in message and "'convnext_atto'" in message


def test_stale_head_channels_error():
    # a head written for a neck's width, fed the backbone directly
    cfg = mmdet_config('yolof/yolof_r50-c5_8xb8-1x_coco.py')
    cfg.model.backbone = timm('resnet18', (4,))
    cfg.model.neck.in_channels = 'auto'
    cfg.model.neck.out_channels = 128
    with pytest.raises(ValueError, match=r"model\.bbox_head\.in_channels=512 .* must be 128.*"
                                         r"in_channels='auto'"):
        resolve_config(cfg)


def test_wrong_strides_error():
    # output_stride=16 merges the last two strides: RetinaNet's written strides are wrong
    cfg = retinanet(timm('resnet18', (1, 2, 3, 4), output_stride=16), in_channels='auto')
    with pytest.raises(ValueError, match=r"anchor_generator\.strides=\[8, 16, 32, 64, 128\] .* "
                                         r"must be \[8, 16, 16, 32, 64\].*strides='auto'"):
        resolve_config(cfg)
    # FCOS-style head strides too
    cfg = mmdet_config('fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py')
    cfg.model.backbone = timm('resnet18', (1, 2, 3, 4), output_stride=16)
    cfg.model.neck.in_channels = 'auto'
    with pytest.raises(ValueError, match=r'model\.bbox_head\.strides=\[8, 16, 32, 64, 128\]'):
        resolve_config(cfg)
    # and RoI extractors (a prefix of the levels)
    cfg = mmdet_config('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone = timm('resnet18', (2, 3, 4))
    cfg.model.neck.in_channels = 'auto'
    cfg.model.rpn_head.anchor_generator.strides = 'auto'
    with pytest.raises(ValueError, match=r'roi_head\.bbox_roi_extractor\.featmap_strides=\[4, 8, '
                                         r'16, 32\] .* must be \[8, 16, 32\]'):
        resolve_config(cfg)


def test_unknown_neck_with_auto_error():
    # 'auto' on a neck type not in the table lists the supported types
    cfg = dict(backbone=timm('resnet18', (2, 3, 4)),
               neck=dict(type='RFP', in_channels='auto', out_channels=256, num_outs=5))
    with pytest.raises(ValueError, match=r"neck type 'RFP' is not one resolve_config can wire\. "
                                         r'Supported necks: BFP, .*YOLOXPAFPN'):
        resolve_config(cfg)


def test_auto_after_unknown_neck_error():
    # an unknown neck with explicit values passes, but nothing after it can be 'auto'
    cfg = dict(backbone=timm('resnet18', (2, 3, 4)),
               neck=dict(type='MyNeck', in_channels=[128, 256, 512]),
               bbox_head=dict(type='RetinaHead', in_channels='auto'))
    with pytest.raises(ValueError, match=r"bbox_head\.in_channels='auto' cannot be filled: "
                                         r"model\.neck \(type='MyNeck'\) is not a neck"):
        resolve_config(cfg)


def test_auto_needs_timm_backbone_error():
    cfg = mmdet_config('retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.neck.in_channels = 'auto'
    with pytest.raises(ValueError, match=r"model\.backbone \(type='ResNet'\) is not a timm "
                                         r'backbone'):
        resolve_config(cfg)


def test_neck_own_choice_auto_error():
    # out_channels is the neck's choice, not the backbone's
    cfg = retinanet(timm('resnet18', (1, 2, 3, 4)), in_channels='auto', out_channels='auto')
    with pytest.raises(ValueError, match=r"model\.neck\.out_channels='auto': FPN chooses "
                                         r'out_channels itself'):
        resolve_config(cfg)


def test_doubling_strides_error():
    # YOLOX's PAFPN upsamples by 2 and concatenates: levels must double in stride
    cfg = mmdet_config('yolox/yolox_tiny_8xb8-300e_coco.py')
    cfg.model.backbone = timm('resnet18', (2, 4))
    cfg.model.neck.in_channels = 'auto'
    with pytest.raises(ValueError, match=r'YOLOXPAFPN upsamples by 2 .* strides \[8, 32\]'):
        resolve_config(cfg)


def test_deformable_detr_levels_follow_neck():
    # Deformable DETR's config leaves the attention num_levels at their default (4): with 3
    # levels they are filled, not left to fail at the first forward
    cfg = mmdet_config('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py')
    cfg.model.backbone = timm('convnext_atto', (1, 2, 3))
    cfg.model.neck.update(in_channels='auto', num_outs=3)
    cfg.model.num_feature_levels = 'auto'  # written (4) in the config
    model = resolve_config(cfg).model
    assert model.num_feature_levels == 3
    assert model.encoder.layer_cfg.self_attn_cfg.num_levels == 3
    assert model.decoder.layer_cfg.cross_attn_cfg.num_levels == 3


def test_detr_num_levels_error():
    # DINO's attention reads every ChannelMapper output: its written num_levels=4 must match
    cfg = mmdet_config('dino/dino-4scale_r50_8xb2-12e_coco.py')
    cfg.model.backbone = timm('convnext_atto', (1, 2, 3))
    cfg.model.neck.update(in_channels='auto', num_outs=3)
    with pytest.raises(ValueError, match=r'encoder\.layer_cfg\.self_attn_cfg\.num_levels=4 .* '
                                         r"must be 3.*num_levels='auto'"):
        resolve_config(cfg)


def test_head_needs_one_width_error():
    # an int in_channels head fed levels of several widths (no neck) cannot be filled
    cfg = dict(backbone=timm('resnet18', (2, 3, 4)),
               bbox_head=dict(type='RetinaHead', num_classes=2, in_channels='auto'))
    with pytest.raises(ValueError, match=r'RetinaHead takes one in_channels for all levels, but '
                                         r'the levels fed to it have channels \[128, 256, 512\]'):
        resolve_config(cfg)


def test_fpn_level_range_error():
    # start_level beyond the backbone's levels (e.g. a 5-level config on a 2-level backbone)
    cfg = retinanet(timm('resnet18', (3, 4)), in_channels='auto', start_level=2)
    with pytest.raises(ValueError, match=r'model\.neck: start_level=2 but only 2 levels feed '
                                         r"'FPN'"):
        resolve_config(cfg)


def test_size_dependent_strides_auto_error():
    # SSD's extra levels have no fixed stride: 'auto' asks for the measured ones
    cfg = mmdet_config('ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py')
    cfg.model.backbone = timm('mobilenetv3_large_100', (3, 4))
    cfg.model.neck.in_channels = 'auto'
    cfg.model.bbox_head.in_channels = 'auto'
    cfg.model.bbox_head.anchor_generator.strides = 'auto'
    with pytest.raises(ValueError, match=r'the stride of level\(s\) \[2, 3, 4, 5\] depends on '
                                         r'the input size'):
        resolve_config(cfg)


def test_rejects_non_config():
    with pytest.raises(TypeError, match='takes an mmengine Config or a dict'):
        resolve_config('retinanet.py')


def test_pad_size_divisor_auto_and_too_small():
    from timm_backbones import resolve_config as resolve
    model = dict(type='RetinaNet',
                 data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor='auto'),
                 backbone=dict(type='TimmBackbone', model_name='maxvit_tiny_tf_224'),
                 neck=dict(type='FPN', in_channels='auto', out_channels=64, num_outs=4))
    # maxvit's 7x7 windows at stride 32 need sides that are multiples of 224
    assert resolve(dict(model=model))['model']['data_preprocessor']['pad_size_divisor'] == 224
    model['backbone'] = dict(type='timm.resnet18')
    assert resolve(dict(model=model))['model']['data_preprocessor']['pad_size_divisor'] == 32
    model['backbone'] = dict(type='TimmBackbone', model_name='maxvit_tiny_tf_224')
    model['data_preprocessor']['pad_size_divisor'] = 32
    with pytest.raises(ValueError, match=r"pad_size_divisor=32.*multiples of 224.*'auto'"):
        resolve(dict(model=model))  # a too-small explicit divisor fails at resolve time


def test_auto_pyramid_builds_only_the_levels_the_neck_reads():
    # RetinaNet's FPN reads levels 1.. (start_level=1): a plain model's automatic pyramid then
    # builds strides 8-32 only and passes its source through at level 0 (a stride-4 branch
    # would get no gradient and break DDP); the neck's explicit start_level is not touched
    model = dict(type='RetinaNet',
                 backbone=dict(type='TimmBackbone', model_name='vit_tiny_patch16_224'),
                 neck=dict(type='FPN', in_channels='auto', out_channels=64, start_level=1,
                           add_extra_convs='on_input', num_outs=5),
                 bbox_head=dict(type='RetinaHead', num_classes=2, in_channels=64,
                                anchor_generator=dict(type='AnchorGenerator', strides='auto',
                                                      octave_base_scale=4, scales_per_octave=3,
                                                      ratios=[1.0])))
    resolved = resolve_config(dict(model=model))['model']
    assert resolved['backbone']['pyramid_strides'] == [None, 8, 16, 32]
    assert resolved['neck']['start_level'] == 1
    assert resolved['neck']['in_channels'] == [192, 96, 192, 192]
    assert resolved['bbox_head']['anchor_generator']['strides'] == [8, 16, 32, 64, 128]
    assert resolve_config(dict(model=resolved))['model'] == resolved  # idempotent
    backbone = MODELS.build(resolved['backbone'])
    assert list(backbone.pyramid.branches[0].parameters()) == []  # nothing left untrained
    outs = backbone(torch.rand(1, 3, 64, 96))
    assert [tuple(o.shape[1:]) for o in outs] == [(192, 4, 6), (96, 8, 12), (192, 4, 6),
                                                 (192, 2, 3)]
    model['backbone']['pyramid_strides'] = (4, 8, 16, 32)  # written by the user: kept
    assert resolve_config(dict(model=model))['model']['backbone']['pyramid_strides'] == \
        (4, 8, 16, 32)


def test_pad_size_divisor_is_an_int_or_auto():
    model = dict(type='RetinaNet',
                 data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor='32'),
                 backbone=dict(type='timm.resnet18'),
                 neck=dict(type='FPN', in_channels='auto', out_channels=64, num_outs=4))
    with pytest.raises(TypeError, match=r"pad_size_divisor must be an int or 'auto', got '32' "
                                        r"\(str\)"):
        resolve_config(dict(model=model))


def test_pad_size_divisor_auto_fits_a_fixed_size_model():
    # levit built for 800x800 (fixed attention biases): 'auto' padding must never push an
    # input past 800, so not its deepest stride (64, which does not divide 800) but gcd = 32
    model = dict(type='RetinaNet',
                 data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor='auto'),
                 backbone=dict(type='TimmBackbone', model_name='levit_conv_128s',
                               input_size=(800, 800)),
                 neck=dict(type='FPN', in_channels='auto', out_channels=64, num_outs=3))
    resolved = resolve_config(dict(model=model))['model']
    from timm_backbones import feature_specs
    assert max(s.stride for s in feature_specs(model['backbone'])) == 64
    assert resolved['data_preprocessor']['pad_size_divisor'] == 32


def _rtmdet_neck(backbone, divisor='auto'):
    return dict(type='RTMDet',
                data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor=divisor),
                backbone=backbone,
                neck=dict(type='CSPNeXtPAFPN', in_channels='auto', out_channels=64,
                          num_csp_blocks=1))


def test_necks_that_merge_upsampled_levels_get_aligned_inputs():
    # rule: CSPNeXtPAFPN upsamples a level by 2 and concatenates it with the one above, so
    # image sides must be multiples of the deepest stride it is fed (a 2x-upsampled map of 8
    # rows does not meet one of 15): 'auto' pads batches to that, an explicit smaller divisor
    # fails naming the neck, and a fixed-size model whose size it does not divide is refused
    # with the size to build it for
    levit = dict(type='TimmBackbone', model_name='levit_128', input_size=(672, 672))
    with pytest.raises(ValueError, match=r"model\.neck \(CSPNeXtPAFPN\) resamples levels by a "
                                         r'fixed factor.*multiples of 64.*672x672.*which 64 '
                                         r'does not divide.*input_size=\(704, 704\)'):
        resolve_config(dict(model=_rtmdet_neck(levit)))
    levit['input_size'] = (704, 704)
    resolved = resolve_config(dict(model=_rtmdet_neck(levit)))['model']
    assert resolved['data_preprocessor']['pad_size_divisor'] == 64
    with pytest.raises(ValueError, match=r"pad_size_divisor=32: model\.neck \(CSPNeXtPAFPN\) "
                                         r'resamples .*multiples of 64.*'
                                         r"pad_size_divisor='auto' \(gives 64\)"):
        resolve_config(dict(model=_rtmdet_neck(levit, divisor=32)))
    # FPN resizes each level to the size of the one below: no such requirement (gcd, as before)
    fpn = dict(_rtmdet_neck(dict(levit, input_size=(672, 672))),
               neck=dict(type='FPN', in_channels='auto', out_channels=64, num_outs=3))
    assert resolve_config(dict(model=fpn))['model']['data_preprocessor'][
        'pad_size_divisor'] == 32
    # unless it upsamples by a fixed factor
    fpn['neck']['upsample_cfg'] = dict(mode='nearest', scale_factor=2)
    with pytest.raises(ValueError, match=r'model\.neck \(FPN\) resamples.*multiples of 64'):
        resolve_config(dict(model=fpn))


def test_aligned_neck_on_an_any_size_backbone():
    # an any-size backbone with the stride-32 levels CSPNeXtPAFPN is fed: 'auto' gives 32, an
    # explicit 16 fails (the first level of 15 rows would meet an upsampled 16)
    model = _rtmdet_neck(timm('resnet18', (2, 3, 4)))
    assert resolve_config(dict(model=model))['model']['data_preprocessor'][
        'pad_size_divisor'] == 32
    with pytest.raises(ValueError, match=r'pad_size_divisor=16: .*CSPNeXtPAFPN.*multiples of 32'):
        resolve_config(dict(model=_rtmdet_neck(timm('resnet18', (2, 3, 4)), divisor=16)))
    # a backbone that pads itself for exact maps (convnext: to 32) does not ask batches for it
    model = dict(_rtmdet_neck(timm('convnext_atto', (1, 2, 3)), divisor=8),
                 neck=dict(type='FPN', in_channels='auto', out_channels=64, num_outs=3))
    assert resolve_config(dict(model=model))['model']['data_preprocessor'][
        'pad_size_divisor'] == 8
