"""engine/_export.py and tools/export.py --raw: a detector's mode='tensor' forward exported with
torch's dynamo exporter runs in onnxruntime with eager's outputs, for a CNN (through the tool, from a
saved checkpoint), an NHWC model, a ViT with its simple pyramid and an EfficientNet, each in the
shipped synthetic RetinaNet config with its backbone swapped as users swap it (--cfg-options)."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT
from timm_backbones.engine import (check_onnx, export_onnx, flatten_tensors, init_detector,
                                   run_onnx)
from timm_backbones.engine._export import TensorForward

CONFIG = os.path.join(ROOT, 'configs', 'retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py')
SHAPE = (96, 128)  # H, W: small, non-square
# outputs are up to ~5 (RetinaNet's initialised class bias); measured differences 1e-7 .. 2e-6,
# while scaling the input by 1.001 changes the outputs by ~1e-4
TOLERANCE = 2e-5


def inputs(shape=SHAPE):
    return torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))


def detector(**backbone):
    """The synthetic RetinaNet config with backbone options, initialised as training starts."""
    options = {f'model.backbone.{k}': v for k, v in backbone.items()}
    torch.manual_seed(0)
    model = init_detector(CONFIG, cfg_options=options or None)
    model.init_weights()
    return model.eval()


def test_flatten_tensors_keeps_order():
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    assert [t.shape for t in flatten_tensors(([a, b], (c,)))] == [a.shape, b.shape, c.shape]
    assert [t.shape for t in flatten_tensors({'x': c, 'y': [a]})] == [c.shape, a.shape]
    with pytest.raises(TypeError, match="cannot export an output of type str"):
        flatten_tensors((a, 'boxes'))  # only tensors in tuples/lists/dicts


def test_shape_must_be_two_positive_ints(tmp_path):
    with pytest.raises(ValueError, match=r'shape must be \(H, W\).*got \(96,\)'):
        export_onnx(torch.nn.Identity(), tmp_path / 'x.onnx', (96,))


def test_tool_exports_a_checkpoint_cnn(tmp_path):
    # rule: the tool loads the checkpoint (weights-only) and the graph equals eager on it
    model = detector()
    ckpt = tmp_path / 'random.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    out = tmp_path / 'resnet18.onnx'
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'export.py'), CONFIG, str(ckpt),
         '--out', str(out), '--raw', '--shape', *map(str, SHAPE), '--check',
         '--cfg-options', 'model.backbone.pretrained=False'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert 'onnxruntime vs eager: max abs diff' in proc.stdout
    loaded = init_detector(CONFIG, str(ckpt))  # what the tool exported, loaded again
    with torch.no_grad():
        eager = TensorForward(loaded, SHAPE)(inputs())
    exported = run_onnx(out, inputs())
    # RetinaNet: class scores of the 4 FPN levels, then box regressions of the 4 levels
    assert len(exported) == len(eager) == 8
    assert [o.shape for o in exported] == [o.shape for o in eager]
    assert exported[0].shape[1] == 9 * 5  # 9 anchors x 5 classes of the synthetic config
    for a, b in zip(exported, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize('name', [
    'mambaout_femto',  # NHWC: timm returns channels-last maps, the backbone permutes them
    'vit_tiny_patch16_224',  # plain ViT: dynamic_img_size (bicubic pos-embed) + simple pyramid
    'efficientnet_b0',  # EfficientNetFeatures, depthwise convs, SiLU/sigmoid SE
])
def test_family_exports_and_matches_eager(name, tmp_path):
    # rule: onnxruntime runs the exported graph with eager's outputs
    model = detector(model_name=name)
    if name.startswith('vit'):
        assert model.backbone.pyramid is not None  # the pyramid is part of the graph
    out = tmp_path / f'{name}.onnx'
    names = export_onnx(model, out, SHAPE)
    assert len(names) == 8
    assert check_onnx(model, out, inputs()) < TOLERANCE


# The README's table of families that export (make test-slow); one model per family.
FAMILIES = ['resnet18', 'resnext26ts', 'efficientnet_b0', 'mobilenetv3_large_100', 'regnety_002',
            'densenet121', 'dla34', 'hrnet_w18_small', 'cspdarknet53', 'convnext_atto',
            'convnextv2_atto', 'edgenext_xx_small', 'efficientvit_b0', 'xception41',
            'swin_tiny_patch4_window7_224', 'mambaout_femto', 'pvt_v2_b0',
            'vit_tiny_patch16_224', 'deit3_small_patch16_224', 'eva02_tiny_patch14_224']


@pytest.mark.slow
@pytest.mark.parametrize('name', FAMILIES)
def test_families_export(name, tmp_path):
    model = detector(model_name=name)
    size = (128, 160)
    export_onnx(model, tmp_path / f'{name}.onnx', size)
    assert check_onnx(model, tmp_path / f'{name}.onnx', inputs(size)) < TOLERANCE
