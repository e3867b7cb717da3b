"""Timm backbones in real mmdet detectors, end to end on the CPU (the neck matrix is in
test_necks.py).

2. One training step (loss, backward) of RetinaNet, Faster R-CNN, FCOS, YOLOF, DINO and RTMDet
   built from mmdet's configs with a small timm backbone, and a prediction for two of them.
3. Plain (ViT, DeiT, EVA02, register-token ViT) and windowed (Swin) models in RetinaNet and
   Mask R-CNN on a non-square input.

Everything runs on tiny inputs with random weights; models are built once per test.
"""

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
from helpers import PLAIN, WINDOWED, check_shapes, mmdet_model, predicted_levels, timm
from timm_backbones import resolve_config

register_all_modules()

BN = dict(type='BN')  # for configs written with SyncBN (no process group on the CPU)


pytestmark = pytest.mark.usefixtures('one_thread')


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
    # FPN's start_level=1 (RetinaNet) does not read level 0: a plain model's pyramid passes its
    # stride-16 source through there instead of building a stride-4 branch (see below)
    skipped = model['neck'].get('start_level', 0) == 1 and name in PLAIN
    patch = detector.backbone.levels[-1].stride  # the source's stride: 16, or 14 for EVA02
    assert detector.backbone.out_strides == ([patch] if skipped else [4]) + [8, 16, 32]
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
    # automatic pyramid build only the strides FPN reads (8, 16, 32) and pass its source through
    # at level 0, so every pyramid parameter gets a gradient (an unused branch would make DDP
    # fail; train_step checks it); the config's own start_level is kept
    if detector.backbone.pyramid is not None:
        assert cfg['backbone']['pyramid_strides'] == [None, 8, 16, 32]
        assert cfg['neck']['start_level'] == 1
    train_step(detector, data)
    specs = detector.backbone.feature_specs
    check_shapes(seen[detector.backbone], specs, LARGE)
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
    check_shapes(seen[detector.backbone], specs, LARGE)
    check_shapes(seen[detector.neck], predicted_levels(cfg), LARGE)
    if name == 'vit_tiny_patch16_224':
        preds = predict(detector, LARGE, num_images=1)
        assert preds[0].pred_instances.masks.shape[-2:] == LARGE
