"""deploy/_end2end.py (+ _dense.py, _rcnn.py, _detr.py, _settings.py): `End2EndDetector` in
PyTorch gives mmdet's own `predict` detections (boxes, scores, labels, masks) for every shipped
detector family, from uint8 images through the in-graph preprocessing and post-processing; what
it cannot reproduce fails up front naming the detector, the setting or part, and the fix.

The cases swap in a small backbone (`resnet18`: the post-processing does not depend on it);
`tests/test_export_end2end.py` exports the shipped backbones. RetinaNet (PVTv2 config), ATSS,
YOLOF and RTMDet run in `make test-slow` (their kinds of post-processing are in the fast ones)."""
import pytest
import torch

from helpers import (FAMILIES, assert_same_detections, family_detector, mmdet_model,
                     reference_detections, timm, uint8_images)
from timm_backbones import build_detector
from timm_backbones.deploy import End2EndDetector, ExportError, family_of, output_names

SIZE = (128, 160)  # H, W: small, non-square, a multiple of 32
ODD = (117, 150)  # not a multiple of the pad divisor: padded in the graph, clipped to 117x150
# DINO picks its 900 queries among the encoder's tokens: it needs >= 900 of them (mmdet's
# predict fails below); 224x256 gives 1192 at strides 8..64
DINO_SIZE, DINO_ODD = (224, 256), (221, 250)


# one family per kind of post-processing in the fast suite (anchors, points + centerness,
# two-stage, masks, cascade, DETR); the others in make test-slow
FAST = ['retinanet-demo', 'fcos', 'faster-rcnn', 'mask-rcnn', 'cascade-rcnn', 'dino']
PARAMS = [f if f in FAST else pytest.param(f, marks=pytest.mark.slow) for f in sorted(FAMILIES)]


# fewer RPN proposals than the configs' 1000 (the same code runs, on less work)
SMALL = {'model.backbone.model_name': 'resnet18'}
SMALL_RPN = {'model.test_cfg.rpn.nms_pre': 300, 'model.test_cfg.rpn.max_per_img': 150}


def small(family):
    return {**SMALL, **(SMALL_RPN if 'rcnn' in family else {})}


@pytest.mark.parametrize('family', PARAMS)
def test_family_equals_predict(family, one_thread):
    # rule: the same detections as predict for every shipped family (eager)
    model = family_detector(family, **small(family))
    e2e = End2EndDetector(model).eval()
    images = uint8_images(2, DINO_SIZE if family == 'dino' else SIZE)
    with torch.no_grad():
        outputs = e2e(images)
    assert assert_same_detections(outputs, reference_detections(model, images)) > 0
    assert e2e.output_names == (['boxes', 'scores', 'labels', 'num_dets', 'masks']
                                if family == 'mask-rcnn' else
                                ['boxes', 'scores', 'labels', 'num_dets'])


@pytest.mark.parametrize('family', [
    'retinanet-demo', pytest.param('faster-rcnn', marks=pytest.mark.slow),
    pytest.param('dino', marks=pytest.mark.slow)])
def test_padding_in_the_graph_equals_predict(family, one_thread):
    # rule: an image whose size is no multiple of pad_size_divisor is padded as the data
    # preprocessor pads it, boxes are clipped to the unpadded image, DINO masks the padding
    # (Faster R-CNN and DINO in make test-slow: a minute each on the shared 2-core machine)
    model = family_detector(family, **small(family))
    assert End2EndDetector(model).preprocess.divisor == 32
    size = DINO_ODD if family == 'dino' else ODD
    images = uint8_images(1, size, seed=1)
    with torch.no_grad():
        outputs = End2EndDetector(model).eval()(images)
    assert assert_same_detections(outputs, reference_detections(model, images)) > 0
    boxes = outputs[0][0, :int(outputs[3][0])]
    assert boxes[:, 2].max() <= size[1] and boxes[:, 3].max() <= size[0]


def test_thresholds_come_from_test_cfg(one_thread):
    # rule: K is max_per_img, score_thr and nms_pre are the config's
    model = family_detector('retinanet-demo', **{'model.test_cfg.max_per_img': 7,
                                                 'model.test_cfg.score_thr': 0.3})
    with torch.no_grad():
        boxes, scores, labels, num_dets = End2EndDetector(model)(uint8_images(1, SIZE))
    assert boxes.shape == (1, 7, 4) and scores.shape == labels.shape == (1, 7)
    n = int(num_dets[0])
    assert (scores[0, :n] > 0.3).all()
    assert_same_detections((boxes, scores, labels, num_dets),
                           reference_detections(model, uint8_images(1, SIZE)))


def test_unsupported_settings_fail_naming_them():
    model = family_detector('retinanet-demo')
    model.bbox_head.test_cfg['nms'] = dict(type='soft_nms', iou_threshold=0.5)
    with pytest.raises(ExportError, match=r"RetinaNet: model.test_cfg.nms.type='soft_nms'.*"
                                          r"Set model.test_cfg.nms.type='nms'"):
        End2EndDetector(model)  # rule: only mmcv's nms has an in-graph equivalent
    model.bbox_head.test_cfg['nms'] = dict(type='nms', iou_threshold=0.5)
    model.bbox_head.test_cfg['max_per_img'] = -1
    with pytest.raises(ExportError, match=r'model.test_cfg.max_per_img=-1: .*fixed-size .*'
                                          r'--cfg-options model.test_cfg.max_per_img=100'):
        End2EndDetector(model)  # rule: the graph's K must be a positive int
    model.bbox_head.test_cfg['max_per_img'] = 50
    del model.bbox_head.test_cfg['nms_pre']
    with pytest.raises(ExportError, match=r'model.test_cfg.nms_pre=None'):
        End2EndDetector(model)  # rule: nms_pre too (no fixed size without it)


@pytest.mark.parametrize('path, backbone, message', [
    ('yolox/yolox_tiny_8xb8-300e_coco.py', dict(out_indices=(-3, -2, -1)),
     r'YOLOX: YOLOXHead overrides predict_by_feat, _bbox_post_process of BaseDenseHead.*--raw'),
    ('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', dict(out_indices=(-3, -2, -1)),
     r'DeformableDETR: .* and DINO, not DeformableDETR \(DetectionTransformer\).*--raw'),
])
def test_unsupported_families_fail_naming_them(path, backbone, message):
    # rule: a family whose post-processing the graph does not reproduce is refused up front
    changes = dict(neck=dict(in_channels='auto'))
    model = build_detector(mmdet_model(path, timm('resnet18', **backbone), **changes)).eval()
    with pytest.raises(ExportError, match=message):
        family_of(model)


def test_output_names():
    assert output_names(family_detector('retinanet-demo')) == ['boxes', 'scores', 'labels',
                                                                 'num_dets']


def test_deploy_is_a_layer_above_the_engine():
    # rule: deploy/ builds on the package; nothing in the package imports it back (tools do)
    import glob
    import os

    from helpers import ROOT
    from test_layout import _imported
    for path in glob.glob(os.path.join(ROOT, 'timm_backbones', '**', '*.py'), recursive=True):
        if os.sep + 'deploy' + os.sep not in path:
            assert not [n for n in _imported(path) if n.startswith('timm_backbones.deploy')], path
