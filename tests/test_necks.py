"""The neck table (`_necks.NECKS`): one test per entry. Each takes mmdet's own config for that neck
(or a minimal one where mmdet ships none), swaps in a timm backbone, sets the channel fields to
'auto', resolves, then builds the neck and runs it on random maps shaped like the backbone's
outputs: the channels must fit and the outputs must be the levels the table predicts."""
import math

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

import timm_backbones  # noqa: F401  (registers the modules)
from mmdet_configs import mmdet_model, timm
from timm_backbones._necks import NECKS, Level, supported_necks
from timm_backbones._plan import feature_specs
from timm_backbones._resolve import resolve_config

torch.set_num_threads(2)
register_all_modules()

SIZE = 128  # input side: every stride used below divides it


def run_neck(model, batch=1):
    """Builds `model['neck']` (a dict or a list, as mmdet builds it) and runs it on random maps
    shaped from the backbone's specs; checks the outputs against the table's prediction."""
    specs = feature_specs(model['backbone'])
    neck_cfgs = model['neck'] if isinstance(model['neck'], list) else [model['neck']]
    levels = tuple(Level(s.channels, s.stride) for s in specs)
    for cfg in neck_cfgs:
        levels = NECKS[cfg['type']].outputs(cfg, levels, 'neck')
    neck = MODELS.build(model['neck']).eval()
    feats = tuple(torch.rand(batch, s.channels, SIZE // s.stride, SIZE // s.stride)
                  for s in specs)
    with torch.no_grad():
        outs = neck(feats)
    assert len(outs) == len(levels)
    for out, level in zip(outs, levels):
        assert out.shape[1] == level.channels, (out.shape, level)
        if level.stride is not None:
            assert out.shape[-1] == math.ceil(SIZE / level.stride), (out.shape, level)
    return levels


def strides(levels):
    return [lv.stride for lv in levels]


def test_table_lists_the_issue_necks():
    # every neck of the issue has an entry (RFP is left out: it needs mmdet's DetectoRS ResNet)
    assert set(supported_necks()) >= {
        'FPN', 'PAFPN', 'NASFPN', 'NASFCOS_FPN', 'FPN_CARAFE', 'HRFPN', 'BFP', 'ChannelMapper',
        'YOLOXPAFPN', 'CSPNeXtPAFPN', 'YOLOV3Neck', 'SSDNeck', 'DilatedEncoder', 'CTResNetNeck',
        'SSH', 'FPG', 'DyHead'}


def test_fpn():
    # RetinaNet: start_level=1, add_extra_convs='on_input', num_outs=5 -> P3..P7
    model = mmdet_model('retinanet/retinanet_r50_fpn_1x_coco.py',
                        timm('convnext_atto', (0, 1, 2, 3)),
                        neck=dict(in_channels='auto'),
                        bbox_head=dict(anchor_generator=dict(strides='auto')))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [40, 80, 160, 320]
    assert model['bbox_head']['anchor_generator']['strides'] == [8, 16, 32, 64, 128]
    assert strides(run_neck(model)) == [8, 16, 32, 64, 128]


def test_fpn_dropblock():
    # same conventions as FPN (it subclasses it); max-pooled extra level
    model = mmdet_model('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                        timm('resnet18', (1, 2, 3, 4)),
                        neck=dict(type='FPN_DropBlock', in_channels='auto'))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [64, 128, 256, 512]
    assert strides(run_neck(model)) == [4, 8, 16, 32, 64]


def test_pafpn():
    # PAFPN adds a stride-2 bottom-up path; RoI extractors get the non-extra levels
    model = mmdet_model('pafpn/faster-rcnn_r50_pafpn_1x_coco.py',
                        timm('efficientnet_b0', (1, 2, 3, 4)),
                        neck=dict(in_channels='auto'),
                        rpn_head=dict(anchor_generator=dict(strides='auto')),
                        roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto',
                                                              out_channels='auto')))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [24, 40, 112, 320]
    assert model['rpn_head']['anchor_generator']['strides'] == [4, 8, 16, 32, 64]
    extractor = model['roi_head']['bbox_roi_extractor']
    assert extractor['featmap_strides'] == [4, 8, 16, 32] and extractor['out_channels'] == 256
    assert strides(run_neck(model)) == [4, 8, 16, 32, 64]


def test_fpn_carafe():
    model = mmdet_model('carafe/faster-rcnn_r50_fpn-carafe_1x_coco.py',
                        timm('regnety_002', (1, 2, 3, 4)), neck=dict(in_channels='auto'))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [24, 56, 152, 368]
    # CARAFE's upsampler has no CPU kernel in mmcv; the wiring is the same with 'nearest'
    model['neck']['upsample_cfg'] = dict(type='nearest')
    assert strides(run_neck(model)) == [4, 8, 16, 32, 64]


def test_fpg():
    model = mmdet_model('fpg/retinanet_r50_fpg_crop640_50e_coco.py', timm('resnet18', (1, 2, 3, 4)),
                        neck=dict(in_channels='auto', stack_times=2, paths=['bu', 'bu'],
                                  skip_inds=[(0, 1), (0,), (), (), ()]))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [64, 128, 256, 512]
    assert strides(run_neck(model)) == [8, 16, 32, 64, 128]


def test_nasfpn():
    model = mmdet_model('nas_fpn/retinanet_r50_nasfpn_crop640-50e_coco.py',
                        timm('mobilenetv3_large_100', (1, 2, 3, 4)),
                        neck=dict(in_channels='auto', stack_times=1),
                        bbox_head=dict(anchor_generator=dict(strides='auto')))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [24, 40, 112, 960]
    assert model['bbox_head']['anchor_generator']['strides'] == [8, 16, 32, 64, 128]
    assert strides(run_neck(model)) == [8, 16, 32, 64, 128]


def test_nasfcos_fpn():
    # start_level=1 by default; outputs are sized like inputs 1..3, then strided-conv extras
    model = mmdet_model('nas_fcos/nas-fcos_r50-caffe_fpn_nashead-gn-head_4xb4-1x_coco.py',
                        timm('resnet18', (1, 2, 3, 4)),
                        neck=dict(in_channels='auto', conv_cfg=None),  # DCNv2: no CPU kernel
                        bbox_head=dict(strides='auto'))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [64, 128, 256, 512]
    assert model['bbox_head']['strides'] == [8, 16, 32, 64, 128]
    assert strides(run_neck(model, batch=2)) == [8, 16, 32, 64, 128]


def test_hrfpn():
    # HRFPN fuses all inputs at the first level's resolution, then pools by 2**i per output
    model = mmdet_model('hrnet/faster-rcnn_hrnetv2p-w18-1x_coco.py',
                        timm('hrnet_w18_small', (1, 2, 3, 4)),
                        neck=dict(in_channels='auto'),
                        roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto')))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [128, 256, 512, 1024]
    assert model['roi_head']['bbox_roi_extractor']['featmap_strides'] == [4, 8, 16, 32]
    assert strides(run_neck(model)) == [4, 8, 16, 32, 64]


def test_bfp_after_fpn():
    # Libra R-CNN: neck=[FPN, BFP]; BFP takes one int (FPN's width) and the level count
    model = mmdet_model('libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py',
                        timm('convnext_atto', (0, 1, 2, 3)))
    model['neck'][0]['in_channels'] = 'auto'
    model['neck'][1].update(in_channels='auto', num_levels='auto')
    model = resolve_config(model)
    assert model['neck'][0]['in_channels'] == [40, 80, 160, 320]
    assert model['neck'][1]['in_channels'] == 256 and model['neck'][1]['num_levels'] == 5
    assert strides(run_neck(model)) == [4, 8, 16, 32, 64]


def test_bfp_needs_one_width():
    with pytest.raises(ValueError, match=r'BFP takes one in_channels .* \[40, 80, 160, 320\]'):
        resolve_config(dict(backbone=timm('convnext_atto', (0, 1, 2, 3)),
                            neck=dict(type='BFP', in_channels='auto', num_levels='auto')))


def test_channel_mapper():
    # Deformable DETR: 3 backbone levels + 1 extra conv level; the attention reads all 4
    model = mmdet_model('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
                        timm('efficientnet_b0', (2, 3, 4)), neck=dict(in_channels='auto'),
                        encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels='auto'))))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [40, 112, 320]
    assert model['encoder']['layer_cfg']['self_attn_cfg']['num_levels'] == 4
    # not written in the config: DeformableDETR's defaults count as 'auto'
    assert model['decoder']['layer_cfg']['cross_attn_cfg']['num_levels'] == 4
    assert model['num_feature_levels'] == 4
    assert strides(run_neck(model)) == [8, 16, 32, 64]


def test_yoloxpafpn():
    model = mmdet_model('yolox/yolox_tiny_8xb8-300e_coco.py',
                        timm('mobilenetv3_large_100', (2, 3, 4)),
                        neck=dict(in_channels='auto'), bbox_head=dict(strides='auto'))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [40, 112, 960]
    assert model['bbox_head']['strides'] == [8, 16, 32]
    assert strides(run_neck(model)) == [8, 16, 32]


def test_cspnext_pafpn():
    model = mmdet_model('rtmdet/rtmdet_tiny_8xb32-300e_coco.py', timm('regnety_002', (2, 3, 4)),
                        neck=dict(in_channels='auto', norm_cfg=dict(type='BN')),
                        bbox_head=dict(anchor_generator=dict(strides='auto')))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [56, 152, 368]
    assert model['bbox_head']['anchor_generator']['strides'] == [8, 16, 32]
    assert strides(run_neck(model)) == [8, 16, 32]


def test_yolov3_neck_deepest_first():
    # YOLOV3Neck starts from the deepest level: in_channels and outputs are deepest-first
    model = mmdet_model('yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py',
                        timm('mobilenetv3_large_100', (2, 3, 4)),
                        neck=dict(in_channels='auto', num_scales='auto'),
                        bbox_head=dict(in_channels='auto', featmap_strides='auto',
                                       anchor_generator=dict(strides='auto')))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [960, 112, 40] and model['neck']['num_scales'] == 3
    head = model['bbox_head']
    assert head['in_channels'] == [96, 96, 96]
    assert head['featmap_strides'] == head['anchor_generator']['strides'] == [32, 16, 8]
    assert strides(run_neck(model)) == [32, 16, 8]


def test_ssd_neck():
    # out_channels repeats in_channels before the extra levels; extra strides are size-dependent
    model = mmdet_model('ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py',
                        timm('mobilenetv3_large_100', (3, 4)),
                        neck=dict(in_channels='auto'), bbox_head=dict(in_channels='auto'))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [112, 960]
    assert model['neck']['out_channels'] == [112, 960, 512, 256, 256, 128]
    assert model['bbox_head']['in_channels'] == [112, 960, 512, 256, 256, 128]
    # the config's measured strides at 320 px pass: the extra levels are not checked
    assert model['bbox_head']['anchor_generator']['strides'] == [16, 32, 64, 107, 160, 320]
    assert strides(run_neck(model)) == [16, 32, None, None, None, None]


def test_dilated_encoder():
    # YOLOF: one int, the last level
    model = mmdet_model('yolof/yolof_r50-c5_8xb8-1x_coco.py', timm('resnet18', (4,)),
                        neck=dict(in_channels='auto'),
                        bbox_head=dict(anchor_generator=dict(strides='auto')))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == 512
    assert model['bbox_head']['anchor_generator']['strides'] == [32]
    assert strides(run_neck(model)) == [32]


def test_ct_resnet_neck():
    # CenterNet: one int (the last level), three stride-2 deconvs -> stride 4
    model = mmdet_model('centernet/centernet_r18_8xb16-crop512-140e_coco.py',
                        timm('efficientnet_b0', (4,)),
                        neck=dict(in_channels='auto'), bbox_head=dict(in_channels='auto'))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == 320
    assert model['bbox_head']['in_channels'] == 64
    assert strides(run_neck(model)) == [4]


def test_ssh():
    # mmdet ships no SSH config: num_scales and in_channels per level, out_channels chosen
    model = dict(backbone=timm('resnet18', (2, 3, 4)),
                 neck=dict(type='SSH', num_scales='auto', in_channels='auto',
                           out_channels=[64, 64, 64]))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [128, 256, 512] and model['neck']['num_scales'] == 3
    assert strides(run_neck(model)) == [8, 16, 32]


def test_dyhead_after_fpn():
    # ATSS + DyHead: neck=[FPN, DyHead]; DyHead's one int is FPN's width
    model = mmdet_model('dyhead/atss_r50_fpn_dyhead_1x_coco.py',
                        timm('convnext_atto', (0, 1, 2, 3)),
                        bbox_head=dict(anchor_generator=dict(strides='auto')))
    model['neck'][0]['in_channels'] = 'auto'
    model['neck'][1].update(in_channels='auto', num_blocks=1)
    model = resolve_config(model)
    assert model['neck'][0]['in_channels'] == [40, 80, 160, 320]
    assert model['neck'][1]['in_channels'] == 256
    assert model['bbox_head']['anchor_generator']['strides'] == [8, 16, 32, 64, 128]
    assert strides(run_neck(model)) == [8, 16, 32, 64, 128]
