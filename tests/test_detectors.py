"""Timm backbones in real mmdet detectors, end to end on the CPU.

1. The neck matrix: representative backbones x every neck of `_necks.NECKS`, each neck taken from
   mmdet's own config and wired by `resolve_config`, run on the real backbone's maps; a pairing
   the neck cannot take fails in `resolve_config` with a ValueError naming the neck and the rule.
2. One training step (loss, backward) of RetinaNet, Faster R-CNN, FCOS, YOLOF, DINO and RTMDet
   built from mmdet's configs with a small timm backbone, and a prediction for two of them.
3. Plain (ViT, DeiT, EVA02, register-token ViT) and windowed (Swin) models in RetinaNet and
   Mask R-CNN on a non-square input.

Everything runs on tiny inputs with random weights; models are built once per test.
"""
import copy
import functools
import math

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmdet.utils import register_all_modules
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

import timm_backbones  # noqa: F401  (registers the modules)
from mmdet_configs import mmdet_model, model_config, timm
from timm_backbones._necks import NECKS, Level
from timm_backbones._plan import feature_specs
from timm_backbones._resolve import resolve_config

register_all_modules()

BN = dict(type='BN')  # for configs written with SyncBN (no process group on the CPU)


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    # One intra-op thread: on a shared, busy 2-core machine two threads stall each other (one
    # efficientnet_b0 forward measured 4 s with 2 threads, 0.04 s with 1). Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def predicted_levels(model):
    """The levels the neck table says `model['neck']` (a dict or a chain) returns."""
    levels = tuple(Level(s.channels, s.stride) for s in feature_specs(model['backbone']))
    for cfg in (model['neck'] if isinstance(model['neck'], list) else [model['neck']]):
        levels = NECKS[cfg['type']].outputs(cfg, levels, 'neck')
    return levels


def check_shapes(shapes, levels, size):
    """Each map (NCHW shape) has its level's channels and ceil(input / stride) pixels per side
    (levels of unknown stride: channels only)."""
    shapes = [tuple(s) for s in shapes]
    assert len(shapes) == len(levels), (shapes, levels)
    for shape, level in zip(shapes, levels):
        assert shape[1] == level.channels, (shape, level)
        if level.stride is not None:
            assert shape[-2:] == tuple(math.ceil(s / level.stride) for s in size), \
                (shape, level, size)


# ---------------------------------------------------------------------------------------------
# 1. Neck matrix
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
    levels = [Level(s.channels, s.stride) for s in feature_specs(cfg)]
    check_shapes([o.shape for o in outs], levels, MATRIX_SIZE)
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
], ids=['NASFPN-num_outs', 'NASFCOS_FPN-3-levels', 'YOLOV3Neck-out_channels'])
def test_neck_level_count_errors(backbone, neck, message):
    # level-count rules of the table fail in resolve_config, naming the neck and the field
    with pytest.raises(ValueError, match=message):
        resolve_config(dict(backbone=backbone, neck=neck))


# ---------------------------------------------------------------------------------------------
# 2. A training step of mmdet's detectors with timm backbones
# ---------------------------------------------------------------------------------------------

def build_detector(model):
    """Resolve a model config ('auto' fields from the timm backbone) and build it."""
    resolved = resolve_config(model)
    torch.manual_seed(0)  # random weights, the same every run
    detector = MODELS.build(ConfigDict(resolved))  # heads read train_cfg/test_cfg attributes
    detector.init_weights()
    return detector, resolved


_BOXES = ((8., 12., 70., 90.), (40., 30., 120., 100.))


def make_batch(detector, size, num_images=2, masks=False, training=True):
    """`num_images` random images of `size` (H, W), image i with i + 1 boxes (and masks), put
    through the detector's data preprocessor."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    inputs, samples = [], []
    for i in range(num_images):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             scale_factor=(1., 1.)))
        boxes = torch.tensor(_BOXES[:i + 1])
        gt = InstanceData(bboxes=boxes, labels=torch.tensor([1, 3][:i + 1]))
        if masks:
            bitmaps = np.zeros((len(boxes), h, w), dtype=np.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                bitmaps[k, y1:y2, x1:x2] = 1
            gt.masks = BitmapMasks(bitmaps, h, w)
        sample.gt_instances = gt
        samples.append(sample)
    return detector.data_preprocessor(dict(inputs=inputs, data_samples=samples),
                                      training=training)


def train_step(detector, data, unused=None):
    """One loss + backward; the loss is finite and every trainable backbone parameter gets a
    finite gradient (the timm features really feed the loss), except those under the module
    `unused` (a backbone output the neck does not read): exactly those get none."""
    detector.train()
    losses = detector(**data, mode='loss')
    total, log_vars = detector.parse_losses(losses)
    total.backward()
    assert torch.isfinite(total), log_vars
    params = [(n, p) for n, p in detector.backbone.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None]
    expected = [n for n, _ in params if unused and n.startswith(unused + '.')]
    assert missing == expected, f'backbone parameters without a gradient: {missing}'
    got = [p.grad for n, p in params if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in got)
    assert any(g.abs().sum() > 0 for g in got)
    return log_vars


def predict(detector, size, num_images=2):
    """mode='predict' in eval mode: one result per image, boxes (N, 4) with scores and labels."""
    detector.eval()
    data = make_batch(detector, size, num_images=num_images, training=False)
    with torch.no_grad():
        preds = detector(**data, mode='predict')
    assert len(preds) == num_images
    for pred in preds:
        boxes = pred.pred_instances.bboxes
        assert boxes.ndim == 2 and boxes.shape[1] == 4
        assert len(pred.pred_instances.scores) == len(pred.pred_instances.labels) == len(boxes)
    return preds


SMALL = (128, 160)


def test_retinanet_loss_and_predict():
    # RetinaNet: FPN in_channels from the backbone, anchor strides filled for FPN's P3-P7
    model = mmdet_model('retinanet/retinanet_r50_fpn_1x_coco.py',
                        timm('convnext_atto', (0, 1, 2, 3)),
                        neck=dict(in_channels='auto'),
                        bbox_head=dict(anchor_generator=dict(strides='auto')))
    detector, cfg = build_detector(model)
    assert cfg['neck']['in_channels'] == [40, 80, 160, 320]
    assert cfg['bbox_head']['anchor_generator']['strides'] == [8, 16, 32, 64, 128]
    log_vars = train_step(detector, make_batch(detector, SMALL))
    assert {'loss_cls', 'loss_bbox'} <= set(log_vars)
    predict(detector, SMALL)


def test_faster_rcnn_loss_and_predict():
    # two-stage: RPN anchor strides and RoI featmap_strides follow FPN's levels
    model = mmdet_model('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                        timm('resnet18', (1, 2, 3, 4)),
                        neck=dict(in_channels='auto'),
                        rpn_head=dict(anchor_generator=dict(strides='auto')),
                        roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto')))
    detector, cfg = build_detector(model)
    assert cfg['neck']['in_channels'] == [64, 128, 256, 512]
    assert cfg['rpn_head']['anchor_generator']['strides'] == [4, 8, 16, 32, 64]
    assert cfg['roi_head']['bbox_roi_extractor']['featmap_strides'] == [4, 8, 16, 32]
    log_vars = train_step(detector, make_batch(detector, SMALL))
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox'} <= set(log_vars)
    predict(detector, SMALL)


def test_fcos_loss():
    # anchor-free head: FCOS's point strides filled for FPN's P3-P7
    model = mmdet_model('fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
                        timm('efficientnet_b0', (1, 2, 3, 4)),
                        neck=dict(in_channels='auto'), bbox_head=dict(strides='auto'))
    detector, cfg = build_detector(model)
    assert cfg['neck']['in_channels'] == [24, 40, 112, 320]
    assert cfg['bbox_head']['strides'] == [8, 16, 32, 64, 128]
    log_vars = train_step(detector, make_batch(detector, SMALL))
    assert {'loss_cls', 'loss_bbox', 'loss_centerness'} <= set(log_vars)


def test_yolof_loss():
    # single level: DilatedEncoder takes the last backbone level as one int
    model = mmdet_model('yolof/yolof_r50-c5_8xb8-1x_coco.py',
                        timm('mobilenetv3_large_100', (4,)),
                        neck=dict(in_channels='auto'),
                        bbox_head=dict(anchor_generator=dict(strides='auto')))
    detector, cfg = build_detector(model)
    assert cfg['neck']['in_channels'] == 960
    assert cfg['bbox_head']['anchor_generator']['strides'] == [32]
    log_vars = train_step(detector, make_batch(detector, SMALL))
    assert {'loss_cls', 'loss_bbox'} <= set(log_vars)


def test_dino_loss():
    # DETR family: ChannelMapper's 3 backbone levels + 1 extra conv level = the attention's
    # num_levels (written 4 in the config: checked). Fewer queries and layers keep it fast.
    model = mmdet_model('dino/dino-4scale_r50_8xb2-12e_coco.py',
                        timm('convnext_atto', (1, 2, 3)),
                        neck=dict(in_channels='auto'), num_queries=30,
                        encoder=dict(num_layers=1), decoder=dict(num_layers=1),
                        dn_cfg=dict(group_cfg=dict(num_dn_queries=10)))
    detector, cfg = build_detector(model)
    assert cfg['neck']['in_channels'] == [80, 160, 320]
    assert cfg['encoder']['layer_cfg']['self_attn_cfg']['num_levels'] == 4
    log_vars = train_step(detector, make_batch(detector, (256, 320)))
    assert {'loss_cls', 'loss_bbox', 'loss_iou', 'dn_loss_cls'} <= set(log_vars)


def test_rtmdet_loss():
    # CSPNeXtPAFPN on three doubling levels; prior strides filled (SyncBN -> BN for the CPU)
    model = mmdet_model('rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
                        timm('regnety_002', (2, 3, 4)),
                        neck=dict(in_channels='auto', norm_cfg=BN),
                        bbox_head=dict(norm_cfg=BN, anchor_generator=dict(strides='auto')))
    detector, cfg = build_detector(model)
    assert cfg['neck']['in_channels'] == [56, 152, 368]
    assert cfg['bbox_head']['anchor_generator']['strides'] == [8, 16, 32]
    log_vars = train_step(detector, make_batch(detector, SMALL))
    assert {'loss_cls', 'loss_bbox'} <= set(log_vars)


# ---------------------------------------------------------------------------------------------
# 3. Plain (same-stride) and windowed models in detectors
# ---------------------------------------------------------------------------------------------

PLAIN = ['vit_tiny_patch16_224', 'deit_tiny_patch16_224', 'eva02_tiny_patch14_224',
         'vit_pwee_patch16_reg1_gap_256']
WINDOWED = ['swin_tiny_patch4_window7_224']
LARGE = (320, 416)  # non-square, not the models' 224/256: any-size inputs


def record_outputs(*modules):
    """Shapes of what each module returned in its latest forward, by module."""
    seen = {}
    for module in modules:
        module.register_forward_hook(
            lambda m, args, out: seen.__setitem__(m, tuple(tuple(o.shape) for o in out)))
    return seen


def plain_detector(path, name, **changes):
    """mmdet's config `path` with the timm model's default levels: a simple pyramid at strides
    4-32 for plain models, the four stages for Swin."""
    model = mmdet_model(path, timm(name), neck=dict(in_channels='auto'),
                        data_preprocessor=dict(pad_size_divisor='auto'), **changes)
    detector, cfg = build_detector(model)
    # the levels the neck reads: FPN's start_level=1 (RetinaNet) drops stride 4 (see below)
    start = 1 if model['neck'].get('start_level', 0) == 1 and name in PLAIN else 0
    assert detector.backbone.out_strides == [4, 8, 16, 32][start:]
    assert cfg['data_preprocessor']['pad_size_divisor'] == 32
    return detector, cfg


# Time budget (~3 s per model and detector here): every model takes one training step in
# RetinaNet and one in Mask R-CNN (with masks), one image each; the steps' forwards also record
# the backbone and FPN outputs for the shape checks. Mask R-CNN also predicts once with ViT.
@pytest.mark.parametrize('name', PLAIN + WINDOWED)
def test_retinanet_plain_and_windowed(name):
    # plain models feed FPN through the automatic simple pyramid (strides 4-32) and Swin its
    # stages; on a non-square input every map is ceil(input / stride), and RetinaNet trains
    detector, cfg = plain_detector('retinanet/retinanet_r50_fpn_1x_coco.py', name,
                                   bbox_head=dict(anchor_generator=dict(strides='auto')))
    assert cfg['bbox_head']['anchor_generator']['strides'] == [8, 16, 32, 64, 128]
    seen = record_outputs(detector.backbone, detector.neck)
    data = make_batch(detector, LARGE, num_images=1)
    assert tuple(data['inputs'].shape[-2:]) == LARGE
    # FPN's start_level=1 skips the first level: for plain models resolve_config makes the
    # automatic pyramid build only the strides FPN reads (8, 16, 32; start_level 0), so every
    # pyramid branch gets a gradient (an unused branch would make DDP fail)
    if detector.backbone.pyramid is not None:
        assert cfg['backbone']['pyramid_strides'] == [8, 16, 32]
        assert cfg['neck']['start_level'] == 0
    train_step(detector, data)
    specs = detector.backbone.feature_specs
    check_shapes(seen[detector.backbone], [Level(s.channels, s.stride) for s in specs], LARGE)
    check_shapes(seen[detector.neck], predicted_levels(cfg), LARGE)


@pytest.mark.parametrize('name', PLAIN + WINDOWED)
def test_mask_rcnn_plain_and_windowed(name):
    # Mask R-CNN: FPN's P2-P6 from the same levels; RoI extractors pool from strides 4-32
    detector, cfg = plain_detector(
        'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', name,
        rpn_head=dict(anchor_generator=dict(strides='auto')),
        roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto'),
                      mask_roi_extractor=dict(featmap_strides='auto')))
    assert cfg['rpn_head']['anchor_generator']['strides'] == [4, 8, 16, 32, 64]
    assert cfg['roi_head']['mask_roi_extractor']['featmap_strides'] == [4, 8, 16, 32]
    seen = record_outputs(detector.backbone, detector.neck)
    log_vars = train_step(detector, make_batch(detector, LARGE, num_images=1, masks=True))
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(log_vars)
    specs = detector.backbone.feature_specs
    check_shapes(seen[detector.backbone], [Level(s.channels, s.stride) for s in specs], LARGE)
    check_shapes(seen[detector.neck], predicted_levels(cfg), LARGE)
    if name == 'vit_tiny_patch16_224':
        preds = predict(detector, LARGE, num_images=1)
        assert preds[0].pred_instances.masks.shape[-2:] == LARGE
