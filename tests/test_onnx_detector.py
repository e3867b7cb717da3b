"""deploy/_onnx_detector.py and tools/test.py CONFIG MODEL.onnx: an end-to-end graph evaluated
like a checkpoint, through the config's own test pipeline, dataloader and evaluator, with
detections mapped back to the original images as mmdet maps them.

The demo's checkpoint here is random (spread class scores, `family_detector`): its mAP is near
zero, so the test also compares every image's detections of both runs (tools/test.py --out)."""
import os
import pickle
import re

import pytest
import torch
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from helpers import (DEMO_CONFIG, FAMILIES, ROOT, assert_same_detections, family_detector,
                     run_tool)
from timm_backbones.deploy import OnnxDetector, export_end2end, onnx_test_config

TEST_PY = os.path.join(ROOT, 'tools', 'test.py')


def pipeline_batch(cfg, sizes, tmp_path):
    """Images of the given (h, w) sizes written to files and put through the config's test
    pipeline: the packed batch mmengine's test loop gives a model."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    items = []
    for i, (h, w) in enumerate(sizes):
        low = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        image = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)
        path = str(tmp_path / f'{i}.png')
        cv2.imwrite(path, image)
        items.append(dict(img_path=path, img_id=i))
    pipeline = Compose([t for t in cfg.test_dataloader.dataset.pipeline
                        if t['type'] != 'LoadAnnotations'])
    return pseudo_collate([pipeline(item) for item in items])


def test_onnx_detector_rescales_as_predict(demo, tmp_path):
    # rule: images the pipeline resizes (scale factors != 1, several sizes in one batch) get
    # predict's detections in original-image coordinates. The reference is predict one image
    # at a time: mmdet pads a batch of mixed sizes to its largest image, which changes the
    # features near the borders; OnnxDetector runs equal-size images together (the demo's and
    # mmdet's COCO test sets: equal sizes, batches of one)
    model, _, onnx, _ = demo
    cfg = Config.fromfile(DEMO_CONFIG)
    batch = pipeline_batch(cfg, [(200, 300), (200, 300), (256, 256), (331, 149)], tmp_path)
    assert {tuple(s.scale_factor) for s in batch['data_samples']} != {(1.0, 1.0)}
    with torch.no_grad():
        reference = [model.test_step(dict(inputs=[i], data_samples=[s]))[0]
                     for i, s in zip(batch['inputs'], batch['data_samples'])]
    outputs = OnnxDetector(str(onnx)).test_step(batch)
    for out, ref in zip(outputs, reference):
        dets = out.pred_instances
        padded = (torch.zeros(1, 50, 4), torch.zeros(1, 50), torch.full((1, 50), -1),
                  torch.tensor([len(dets)]))
        padded[0][0, :len(dets)], padded[1][0, :len(dets)] = dets.bboxes, dets.scores
        padded[2][0, :len(dets)] = dets.labels
        assert assert_same_detections(padded, [ref.pred_instances]) > 0


def test_onnx_detector_refuses_other_graphs_and_modes(demo, tmp_path):
    with pytest.raises(FileNotFoundError, match='no ONNX file at'):
        OnnxDetector(str(tmp_path / 'missing.onnx'))
    detector = OnnxDetector(str(demo[2]))
    with pytest.raises(ValueError, match="mode='predict' only, got 'loss'"):
        detector([torch.zeros(3, 64, 64, dtype=torch.uint8)], mode='loss')
    with pytest.raises(ValueError, match=r'\(3, H, W\) uint8 images .* got \(3, 64, 64\) '
                                         r'torch.float32'):
        detector([torch.zeros(3, 64, 64)])  # rule: the graph takes the pipeline's uint8


def test_onnx_of_other_classes_is_refused(demo):
    # rule: a graph exported for other classes cannot silently be scored against this dataset
    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.test_dataloader.dataset.metainfo = dict(classes=('a', 'b'))
    with pytest.raises(ValueError, match=r"exported for the classes \['circle', .* \(5\), but "
                                         r"the config's test dataset has \['a', 'b'\] \(2\)"):
        onnx_test_config(cfg, demo[2])


def metrics(stdout):
    """bbox_mAP, bbox_mAP_50 of mmdet's printout."""
    found = re.search(r'coco/bbox_mAP: (-?[\d.]+)\s+coco/bbox_mAP_50: (-?[\d.]+)', stdout)
    assert found, stdout[-3000:]
    return float(found.group(1)), float(found.group(2))


def test_test_py_evaluates_onnx_like_the_checkpoint(demo, tmp_path):
    # rule: tools/test.py CONFIG MODEL.onnx runs the config's test set in onnxruntime with the
    # same evaluator and printout as the checkpoint, mAP within 0.005, the same detections
    _, ckpt, onnx, _ = demo
    runs = {}
    for name, model in (('pth', ckpt), ('onnx', onnx)):
        out = tmp_path / f'{name}.pkl'
        proc = run_tool(TEST_PY, DEMO_CONFIG, str(model), '--work-dir', str(tmp_path / name),
                        '--out', str(out))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        runs[name] = metrics(proc.stdout), pickle.load(open(out, 'rb'))
    (map_pth, map50_pth), results_pth = runs['pth']
    (map_onnx, map50_onnx), results_onnx = runs['onnx']
    assert abs(map_onnx - map_pth) <= 0.005 and abs(map50_onnx - map50_pth) <= 0.005
    assert len(results_pth) == len(results_onnx) == 100  # the demo's val set
    detections = 0
    for a, b in zip(results_onnx, results_pth):
        assert a['img_id'] == b['img_id']
        pred, ref = a['pred_instances'], b['pred_instances']
        n = len(pred['labels'])
        padded = (torch.zeros(1, 50, 4), torch.zeros(1, 50), torch.full((1, 50), -1),
                  torch.tensor([n]))
        padded[0][0, :n], padded[1][0, :n], padded[2][0, :n] = pred['bboxes'], \
            pred['scores'], pred['labels']

        class Ref:  # the dumped dict as predict's InstanceData
            bboxes, scores, labels = ref['bboxes'], ref['scores'], ref['labels']

            def __len__(self):
                return len(self.labels)
        detections += assert_same_detections(padded, [Ref()])
    assert detections > 100


@pytest.mark.slow
def test_mask_rcnn_onnx_masks_as_predict(tmp_path, one_thread):
    """Mask R-CNN (shipped config) through OnnxDetector at scale factors != 1: boxes and pasted
    masks equal predict's (an export: minutes)."""
    model = family_detector('mask-rcnn')
    export_end2end(model, tmp_path / 'mask.onnx', (160, 192))
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', FAMILIES['mask-rcnn'][0]))
    cfg.test_dataloader.dataset.pipeline[1]['scale'] = (192, 160)  # Resize: keep it small
    batch = pipeline_batch(cfg, [(200, 300), (150, 110)], tmp_path)
    with torch.no_grad():  # one image at a time (see test_onnx_detector_rescales_as_predict)
        reference = [model.test_step(dict(inputs=[i], data_samples=[s]))[0]
                     for i, s in zip(batch['inputs'], batch['data_samples'])]
    outputs = OnnxDetector(str(tmp_path / 'mask.onnx')).test_step(batch)
    for out, ref in zip(outputs, reference):
        dets, k = out.pred_instances, 100
        n = len(dets)
        assert n > 0 and dets.masks.shape[-2:] == tuple(out.ori_shape)
        torch.testing.assert_close(dets.bboxes, ref.pred_instances.bboxes, rtol=1e-3, atol=1e-2)
        assert torch.equal(dets.labels, ref.pred_instances.labels) and k >= n
        agree = (dets.masks == ref.pred_instances.masks).float().mean().item()
        assert agree >= 0.999, agree
