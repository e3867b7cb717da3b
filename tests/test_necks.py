"""The neck table (`wiring.NECKS`).

1. The matrix: representative backbones x every neck of the table, each neck taken from mmdet's
   own config and wired by `resolve_config`, built and run on the real backbone's maps: the
   outputs must be the levels the table predicts. A pairing the neck cannot take fails in
   `resolve_config` with a ValueError naming the neck and the rule.
2. One test per entry: mmdet's own config for that neck (or a minimal one where mmdet ships
   none) with a timm backbone and 'auto' fields; the filled values and the predicted output
   strides are checked against values written out here (the matrix checks the predictions
   against real outputs)."""
import copy
import functools

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

import timm_backbones  # noqa: F401  (registers the modules)
from helpers import check_shapes, mmdet_model, model_config, predicted_levels, timm
from timm_backbones import feature_specs, resolve_config
from timm_backbones.wiring import NECKS, supported_necks

register_all_modules()

BN = dict(type='BN')  # for configs written with SyncBN (no process group on the CPU)


pytestmark = pytest.mark.usefixtures('one_thread')


# ---------------------------------------------------------------------------------------------
# 1. The matrix
# ---------------------------------------------------------------------------------------------

MATRIX_SIZE = (128, 256)  # non-square (catches H/W swaps of NHWC models); strides <= 128 divide it

BACKBONES = {
    'resnet18': timm('resnet18', (1, 2, 3, 4)),                    # hierarchical CNN
    'convnext_atto': timm('convnext_atto', (0, 1, 2, 3)),          # stride 4 first, LayerNorm
    'mambaout_femto': timm('mambaout_femto', (0, 1, 2, 3)),        # NHWC (cheaper than Swin)
    'resnet18_os16': timm('resnet18', (1, 2, 3, 4), output_stride=16),  # strides 4, 8, 16, 16
}


def _neck(path, index=None, **changes):
    """The neck of mmdet's config `path` (entry `index` of a neck chain) with `changes`."""
    neck = copy.deepcopy(model_config(path)['neck'])
    if index is not None:
        neck = neck[index]
    neck.update(changes)
    return neck


# Each neck as mmdet configures it, its input fields set to 'auto'. Other changes: fewer repeated
# cells (cost), CPU-only replacements for CARAFE / DCNv2 / SyncBN, and the per-level
# out_channels lists that the neck's user chooses, sized for the 4 levels fed here.
NECK_CONFIGS = {
    'FPN': lambda: _neck('retinanet/retinanet_r50_fpn_1x_coco.py', in_channels='auto'),
    'FPN_DropBlock': lambda: _neck('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                                   type='FPN_DropBlock', in_channels='auto'),
    'PAFPN': lambda: _neck('pafpn/faster-rcnn_r50_pafpn_1x_coco.py', in_channels='auto'),
    'FPN_CARAFE': lambda: _neck('carafe/faster-rcnn_r50_fpn-carafe_1x_coco.py',
                                in_channels='auto', upsample_cfg=dict(type='nearest')),
    'FPG': lambda: _neck('fpg/retinanet_r50_fpg_crop640_50e_coco.py', in_channels='auto',
                         stack_times=2, paths=['bu', 'bu'], skip_inds=[(0, 1), (0,), (), (), ()]),
    'NASFPN': lambda: _neck('nas_fpn/retinanet_r50_nasfpn_crop640-50e_coco.py',
                            in_channels='auto', stack_times=1),
    'NASFCOS_FPN': lambda: _neck('nas_fcos/nas-fcos_r50-caffe_fpn_nashead-gn-head_4xb4-1x_coco.py',
                                 in_channels='auto', conv_cfg=None),
    'HRFPN': lambda: _neck('hrnet/faster-rcnn_hrnetv2p-w18-1x_coco.py', in_channels='auto'),
    'ChannelMapper': lambda: _neck('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
                                   in_channels='auto'),
    'YOLOXPAFPN': lambda: _neck('yolox/yolox_tiny_8xb8-300e_coco.py', in_channels='auto'),
    'CSPNeXtPAFPN': lambda: _neck('rtmdet/rtmdet_tiny_8xb32-300e_coco.py', in_channels='auto',
                                  norm_cfg=BN),
    'SSDNeck': lambda: _neck('ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py',
                             in_channels='auto'),
    'BFP': lambda: [_neck('libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py', 0,
                          in_channels='auto'),
                    _neck('libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py', 1,
                          in_channels='auto', num_levels='auto')],
    'DyHead': lambda: [_neck('dyhead/atss_r50_fpn_dyhead_1x_coco.py', 0, in_channels='auto'),
                       _neck('dyhead/atss_r50_fpn_dyhead_1x_coco.py', 1, in_channels='auto',
                             num_blocks=1)],
    'YOLOV3Neck': lambda: _neck('yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py',
                                in_channels='auto', num_scales='auto', out_channels=[96] * 4),
    # mmdet ships no SSH config
    'SSH': lambda: dict(type='SSH', num_scales='auto', in_channels='auto', out_channels=[64] * 4),
    'DilatedEncoder': lambda: _neck('yolof/yolof_r50-c5_8xb8-1x_coco.py', in_channels='auto'),
    'CTResNetNeck': lambda: _neck('centernet/centernet_r18_8xb16-crop512-140e_coco.py',
                                  in_channels='auto'),
}

_DOUBLING = r'{where}: {kind} {why}, so each level it uses must have twice the stride of the ' \
            r'previous one; got strides \[{strides}\]\. Choose backbone levels \(out_indices\)'
# Pairings a neck cannot take, and the message resolve_config must give. All come from
# output_stride=16 (strides 4, 8, 16, 16) fed to necks that resize by fixed factors of 2: built by
# hand, each fails at forward with a size mismatch, except FPN_CARAFE, which crops its 2x
# upsampled map to fit and so adds misaligned features without an error.
INCOMPATIBLE = {
    ('resnet18_os16', 'PAFPN'): _DOUBLING.format(
        where=r'model\.neck', kind='PAFPN', why='adds a stride-2 bottom-up path',
        strides='4, 8, 16, 16'),
    ('resnet18_os16', 'FPN_CARAFE'): _DOUBLING.format(
        where=r'model\.neck', kind='FPN_CARAFE', why='upsamples by 2 and adds',
        strides='4, 8, 16, 16'),
    ('resnet18_os16', 'FPG'): _DOUBLING.format(  # start_level=1
        where=r'model\.neck', kind='FPG', why='sums neighbouring levels made by stride-2 convs',
        strides='8, 16, 16'),
    ('resnet18_os16', 'HRFPN'): _DOUBLING.format(
        where=r'model\.neck', kind='HRFPN', why=r'upsamples input i by 2\*\*i onto input 0',
        strides='4, 8, 16, 16'),
    ('resnet18_os16', 'YOLOXPAFPN'): _DOUBLING.format(
        where=r'model\.neck', kind='YOLOXPAFPN', why='upsamples by 2 and concatenates',
        strides='4, 8, 16, 16'),
    ('resnet18_os16', 'CSPNeXtPAFPN'): _DOUBLING.format(
        where=r'model\.neck', kind='CSPNeXtPAFPN', why='upsamples by 2 and concatenates',
        strides='4, 8, 16, 16'),
    ('resnet18_os16', 'YOLOV3Neck'): _DOUBLING.format(
        where=r'model\.neck', kind='YOLOV3Neck', why='upsamples by 2 and concatenates',
        strides='4, 8, 16, 16'),
    ('resnet18_os16', 'DyHead'): _DOUBLING.format(  # fed FPN's outputs (start_level=1)
        where=r'model\.neck\[1\]', kind='DyHead',
        why='fuses each level with a stride-2 conv of the level before',
        strides='8, 16, 16, 32, 64'),
}


@functools.lru_cache(maxsize=None)
def backbone_maps(backbone_id):
    """The real backbone's outputs on one random image (built and run once per backbone)."""
    cfg = BACKBONES[backbone_id]
    backbone = MODELS.build(cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        outs = backbone(torch.rand(1, 3, *MATRIX_SIZE))
    check_shapes([o.shape for o in outs], feature_specs(cfg), MATRIX_SIZE)
    return outs


def test_matrix_covers_every_neck():
    # the matrix has a config for every neck resolve_config can wire
    assert set(NECK_CONFIGS) == set(NECKS)


@pytest.mark.parametrize('neck_type', list(NECK_CONFIGS))
@pytest.mark.parametrize('backbone_id', list(BACKBONES))
def test_neck_matrix(backbone_id, neck_type):
    # a neck wired by resolve_config takes the backbone's real maps and returns the levels the
    # table predicts (channels, ceil(input / stride)); a pairing it cannot take fails in
    # resolve_config with a ValueError naming the neck and the rule, not at forward
    model = dict(backbone=BACKBONES[backbone_id], neck=NECK_CONFIGS[neck_type]())
    expected_error = INCOMPATIBLE.get((backbone_id, neck_type))
    if expected_error is not None:
        with pytest.raises(ValueError, match=expected_error):
            resolve_config(model)
        return
    model = resolve_config(model)
    levels = predicted_levels(model)
    neck = MODELS.build(model['neck']).eval()
    with torch.no_grad():
        outs = neck(backbone_maps(backbone_id))
    check_shapes([o.shape for o in outs], levels, MATRIX_SIZE)


@pytest.mark.parametrize('backbone, neck, message', [
    # NASFPN's cells always make P3-P7: num_outs must be 5 whatever the backbone gives
    (timm('resnet18', (1, 2, 3, 4)), NECK_CONFIGS['NASFPN']() | dict(num_outs=4),
     r'model\.neck: NASFPN always returns 5 levels \(P3-P7\), so num_outs must be 5, got 4'),
    # NASFCOS_FPN sizes its outputs like inputs 1..3: it needs four input levels
    (timm('resnet18', (2, 3, 4)), NECK_CONFIGS['NASFCOS_FPN'](),
     r'model\.neck: NASFCOS_FPN wires exactly three levels .* needs at least four input levels'),
    # per-level out_channels (the user's choice) must have one entry per level fed
    (timm('resnet18', (1, 2, 3, 4)), NECK_CONFIGS['YOLOV3Neck']() | dict(out_channels=[96] * 3),
     r'model\.neck: out_channels=\[96, 96, 96\] has 3 entries but the neck gets 4 levels'),
    # FPN-style necks run top-down from their last level: levels must come shallow to deep
    (timm('resnet18', (4, 3, 2)), NECK_CONFIGS['FPN'](),
     r'model\.neck: FPN needs its levels in increasing stride order .* got strides \[16, 8\]'
     r'.*out_indices=\(2, 3, 4\)'),
    (timm('resnet18', (4, 3, 2)), NECK_CONFIGS['ChannelMapper'](),
     r'model\.neck: ChannelMapper needs its levels in increasing stride order'),
], ids=['NASFPN-num_outs', 'NASFCOS_FPN-3-levels', 'YOLOV3Neck-out_channels',
        'FPN-levels-in-increasing-stride-order', 'ChannelMapper-levels-in-increasing-stride-order'])
def test_neck_level_count_errors(backbone, neck, message):
    # level-count rules of the table fail in resolve_config, naming the neck and the field
    with pytest.raises(ValueError, match=message):
        resolve_config(dict(backbone=backbone, neck=neck))


# ---------------------------------------------------------------------------------------------
# 2. One test per entry
# ---------------------------------------------------------------------------------------------

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
    assert strides(predicted_levels(model)) == [8, 16, 32, 64, 128]


def test_fpn_dropblock():
    # same conventions as FPN (it subclasses it); max-pooled extra level
    model = mmdet_model('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                        timm('resnet18', (1, 2, 3, 4)),
                        neck=dict(type='FPN_DropBlock', in_channels='auto'))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [64, 128, 256, 512]
    assert strides(predicted_levels(model)) == [4, 8, 16, 32, 64]


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
    assert strides(predicted_levels(model)) == [4, 8, 16, 32, 64]


def test_fpn_carafe():
    model = mmdet_model('carafe/faster-rcnn_r50_fpn-carafe_1x_coco.py',
                        timm('regnety_002', (1, 2, 3, 4)), neck=dict(in_channels='auto'))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [24, 56, 152, 368]
    # CARAFE's upsampler has no CPU kernel in mmcv; the wiring is the same with 'nearest'
    model['neck']['upsample_cfg'] = dict(type='nearest')
    assert strides(predicted_levels(model)) == [4, 8, 16, 32, 64]


def test_fpg():
    model = mmdet_model('fpg/retinanet_r50_fpg_crop640_50e_coco.py', timm('resnet18', (1, 2, 3, 4)),
                        neck=dict(in_channels='auto', stack_times=2, paths=['bu', 'bu'],
                                  skip_inds=[(0, 1), (0,), (), (), ()]))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [64, 128, 256, 512]
    assert strides(predicted_levels(model)) == [8, 16, 32, 64, 128]


def test_nasfpn():
    model = mmdet_model('nas_fpn/retinanet_r50_nasfpn_crop640-50e_coco.py',
                        timm('mobilenetv3_large_100', (1, 2, 3, 4)),
                        neck=dict(in_channels='auto', stack_times=1),
                        bbox_head=dict(anchor_generator=dict(strides='auto')))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [24, 40, 112, 960]
    assert model['bbox_head']['anchor_generator']['strides'] == [8, 16, 32, 64, 128]
    assert strides(predicted_levels(model)) == [8, 16, 32, 64, 128]


def test_nasfcos_fpn():
    # start_level=1 by default; outputs are sized like inputs 1..3, then strided-conv extras
    model = mmdet_model('nas_fcos/nas-fcos_r50-caffe_fpn_nashead-gn-head_4xb4-1x_coco.py',
                        timm('resnet18', (1, 2, 3, 4)),
                        neck=dict(in_channels='auto', conv_cfg=None),  # DCNv2: no CPU kernel
                        bbox_head=dict(strides='auto'))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [64, 128, 256, 512]
    assert model['bbox_head']['strides'] == [8, 16, 32, 64, 128]
    assert strides(predicted_levels(model)) == [8, 16, 32, 64, 128]


def test_hrfpn():
    # HRFPN fuses all inputs at the first level's resolution, then pools by 2**i per output
    model = mmdet_model('hrnet/faster-rcnn_hrnetv2p-w18-1x_coco.py',
                        timm('hrnet_w18_small', (1, 2, 3, 4)),
                        neck=dict(in_channels='auto'),
                        roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto')))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [128, 256, 512, 1024]
    assert model['roi_head']['bbox_roi_extractor']['featmap_strides'] == [4, 8, 16, 32]
    assert strides(predicted_levels(model)) == [4, 8, 16, 32, 64]


def test_bfp_after_fpn():
    # Libra R-CNN: neck=[FPN, BFP]; BFP takes one int (FPN's width) and the level count
    model = mmdet_model('libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py',
                        timm('convnext_atto', (0, 1, 2, 3)))
    model['neck'][0]['in_channels'] = 'auto'
    model['neck'][1].update(in_channels='auto', num_levels='auto')
    model = resolve_config(model)
    assert model['neck'][0]['in_channels'] == [40, 80, 160, 320]
    assert model['neck'][1]['in_channels'] == 256 and model['neck'][1]['num_levels'] == 5
    assert strides(predicted_levels(model)) == [4, 8, 16, 32, 64]


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
    assert strides(predicted_levels(model)) == [8, 16, 32, 64]


def test_yoloxpafpn():
    model = mmdet_model('yolox/yolox_tiny_8xb8-300e_coco.py',
                        timm('mobilenetv3_large_100', (2, 3, 4)),
                        neck=dict(in_channels='auto'), bbox_head=dict(strides='auto'))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [40, 112, 960]
    assert model['bbox_head']['strides'] == [8, 16, 32]
    assert strides(predicted_levels(model)) == [8, 16, 32]


def test_cspnext_pafpn():
    model = mmdet_model('rtmdet/rtmdet_tiny_8xb32-300e_coco.py', timm('regnety_002', (2, 3, 4)),
                        neck=dict(in_channels='auto', norm_cfg=dict(type='BN')),
                        bbox_head=dict(anchor_generator=dict(strides='auto')))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [56, 152, 368]
    assert model['bbox_head']['anchor_generator']['strides'] == [8, 16, 32]
    assert strides(predicted_levels(model)) == [8, 16, 32]


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
    assert strides(predicted_levels(model)) == [32, 16, 8]


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
    assert strides(predicted_levels(model)) == [16, 32, None, None, None, None]


def test_dilated_encoder():
    # YOLOF: one int, the last level
    model = mmdet_model('yolof/yolof_r50-c5_8xb8-1x_coco.py', timm('resnet18', (4,)),
                        neck=dict(in_channels='auto'),
                        bbox_head=dict(anchor_generator=dict(strides='auto')))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == 512
    assert model['bbox_head']['anchor_generator']['strides'] == [32]
    assert strides(predicted_levels(model)) == [32]


def test_ct_resnet_neck():
    # CenterNet: one int (the last level), three stride-2 deconvs -> stride 4
    model = mmdet_model('centernet/centernet_r18_8xb16-crop512-140e_coco.py',
                        timm('efficientnet_b0', (4,)),
                        neck=dict(in_channels='auto'), bbox_head=dict(in_channels='auto'))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == 320
    assert model['bbox_head']['in_channels'] == 64
    assert strides(predicted_levels(model)) == [4]


def test_ssh():
    # mmdet ships no SSH config: num_scales and in_channels per level, out_channels chosen
    model = dict(backbone=timm('resnet18', (2, 3, 4)),
                 neck=dict(type='SSH', num_scales='auto', in_channels='auto',
                           out_channels=[64, 64, 64]))
    model = resolve_config(model)
    assert model['neck']['in_channels'] == [128, 256, 512] and model['neck']['num_scales'] == 3
    assert strides(predicted_levels(model)) == [8, 16, 32]


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
    assert strides(predicted_levels(model)) == [8, 16, 32, 64, 128]
