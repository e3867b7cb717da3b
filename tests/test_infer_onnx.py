"""tools/infer_onnx.py: the deploy-target runtime needs onnxruntime, numpy and opencv only (run
here in a process where importing torch, mmdet, mmcv, mmengine or timm_backbones fails), replays
the test pipeline from the graph's metadata and gives mmdet's detections in image pixels, with
the class names of the metadata."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from helpers import DEMO_CONFIG, ROOT

INFER = os.path.join(ROOT, 'tools', 'infer_onnx.py')
BLOCKED = ('torch', 'mmdet', 'mmcv', 'mmengine', 'timm', 'timm_backbones', 'torchvision')
BLOCKER = f'''
import sys
BLOCKED = {BLOCKED!r}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{{name}} is blocked: the deploy runtime must not need it')
sys.meta_path.insert(0, Blocker())
'''


@pytest.fixture(scope='module')
def bare_env(tmp_path_factory):
    """An environment whose sitecustomize blocks torch, mmdet and this package."""
    folder = tmp_path_factory.mktemp('bare')
    (folder / 'sitecustomize.py').write_text(BLOCKER)
    return dict(os.environ, PYTHONPATH=str(folder), OMP_NUM_THREADS='1')


def run(args, env):
    return subprocess.run([sys.executable, *args], cwd=str(env['PYTHONPATH']), env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_environment_blocks_torch(bare_env):
    proc = run(['-c', 'import torch'], bare_env)
    assert proc.returncode != 0 and 'torch is blocked' in proc.stderr


def test_infer_onnx_gives_predict_detections_without_torch(demo, bare_env, tmp_path):
    # rule: without torch or mmdet, the tool's detections (resized as the pipeline resizes,
    # boxes mapped back to the image) are mmdet's predict on the same files
    model, _, onnx, _ = demo
    rng = np.random.default_rng(1)
    files = []
    for i, (h, w) in enumerate([(200, 300), (256, 256), (331, 149)]):
        low = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        path = str(tmp_path / f'img{i}.png')
        cv2.imwrite(path, cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR))
        files.append(path)
    out = tmp_path / 'out'
    proc = run([INFER, *files, '--model', str(onnx), '--out', str(out), '--score-thr', '0'],
               bare_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / 'detections.json').read_text())
    cfg = Config.fromfile(DEMO_CONFIG)
    pipeline = Compose([t for t in cfg.test_dataloader.dataset.pipeline
                        if t['type'] != 'LoadAnnotations'])
    compared = 0
    for path in files:
        with torch.no_grad():
            ref = model.test_step(pseudo_collate([pipeline(dict(img_path=path, img_id=0))]))[0]
        ref = ref.pred_instances
        dets = report[path]
        assert len(dets) == len(ref) > 0
        for det, box, score, label in zip(dets, ref.bboxes, ref.scores, ref.labels):
            assert det['label'] == int(label) and det['name'] == model.dataset_meta['classes'][
                int(label)]
            assert abs(det['score'] - float(score)) <= 1e-4
            assert np.allclose(det['box'], box.numpy(), rtol=1e-3, atol=0.02)
        compared += len(dets)
        drawn = cv2.imread(str(out / os.path.basename(path)))
        assert drawn.shape == cv2.imread(path).shape and (drawn != cv2.imread(path)).any()
    assert compared > 0


def test_infer_onnx_refuses_a_raw_graph(tmp_path, bare_env):
    # rule: a --raw graph (head tensors) is named as such, with the fix
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node('Identity', ['inputs'], ['cls'])], 'raw',
                              [helper.make_tensor_value_info('inputs', TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info('cls', TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)]),
              str(tmp_path / 'raw.onnx'))
    image = str(tmp_path / 'a.png')
    cv2.imwrite(image, np.zeros((8, 8, 3), np.uint8))
    proc = run([INFER, image, '--model', str(tmp_path / 'raw.onnx'), '--out', str(tmp_path)],
               bare_env)
    assert proc.returncode == 1 and 'is not an end-to-end graph of tools/export.py' in \
        proc.stderr and 'without --raw' in proc.stderr


def load_tool():
    """tools/infer_onnx.py as a module (here, where torch is available for the references)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('infer_onnx', INFER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('step', [
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='Resize', scale=(320, 200), keep_ratio=False),
    dict(type='Pad', size=(640, 640), pad_val=dict(img=(114, 114, 114))),
    dict(type='Pad', size_divisor=32, pad_val=dict(img=0)),
    dict(type='Pad', pad_to_square=True, pad_val=dict(img=7)),
])
def test_resize_and_pad_replay_mmdet(step):
    # rule: the runtime's Resize / Pad give mmdet's transforms' image and scale factor
    from mmdet.registry import TRANSFORMS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    infer = load_tool()
    image = np.random.default_rng(0).integers(0, 256, (211, 317, 3), dtype=np.uint8)
    expected = TRANSFORMS.build(step)(dict(img=image.copy(), img_shape=image.shape[:2],
                                           ori_shape=image.shape[:2]))
    if step['type'] == 'Resize':
        got, scale = infer.resize(image, step)
        assert np.allclose(scale, expected['scale_factor'])
    else:
        got = infer.pad(image, step)
    assert got.shape == expected['img'].shape and (got == expected['img']).all()


def test_paste_mask_is_mmdets():
    # rule: masks are pasted into the image as mmdet's _do_paste_mask pastes them
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
    infer = load_tool()
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 28, 28, generator=g)
    boxes = torch.tensor([[10.3, 20.7, 80.2, 60.1], [0., 0., 149., 99.], [140.5, 90.2, 170., 130.],
                          [30., 40., 30.5, 41.], [-5., -3., 20., 12.]])
    for mask, box in zip(masks, boxes):
        ours = infer.paste_mask(mask.numpy(), box.numpy(), (100, 150))
        theirs = _do_paste_mask(mask[None, None], box[None], 100, 150, skip_empty=False)[0][0]
        assert np.abs(ours - theirs.numpy()).max() < 1e-5
