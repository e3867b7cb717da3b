"""TimmBackbone's speed options: `channels_last=True` and `compile=...` give the default
layout's / eager outputs (and gradients), keep parameter names, and reject bad values clearly.
Speed itself is measured in tools/benchmark.py, not asserted here."""
import copy
import os

import pytest
import torch
from mmengine.config import Config

from helpers import ROOT
from timm_backbones import TimmBackbone, feature_specs
from timm_backbones.engine import build_detector
from timm_backbones.engine._export import TensorForward

CONFIG = os.path.join(ROOT, 'configs', 'retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py')
SIZE = (64, 96)
CL = torch.channels_last


def pair(name, **options):
    """The default backbone and one with `options`, with the same weights."""
    torch.manual_seed(0)
    ref = TimmBackbone(name, drop_path_rate=0.0)
    other = TimmBackbone(name, drop_path_rate=0.0, **options)
    other.load_state_dict(ref.state_dict())
    return ref, other


def image(batch=2, size=SIZE):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize('name', [
    'resnet18',  # CNN, BatchNormAct
    'efficientnet_b0',  # depthwise convs, SE
    'convnext_atto',  # LayerNorm2d: permutes internally
    'mambaout_femto',  # NHWC model
    'vit_tiny_patch16_224',  # ViT + simple pyramid (deconvs)
])
def test_channels_last_equals_default_layout(name):
    ref, cl = pair(name, channels_last=True)
    convs = [m.weight for m in cl.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=CL) for w in convs)  # weights converted
    assert ref.state_dict().keys() == cl.state_dict().keys()
    ref.eval(), cl.eval()
    with torch.no_grad():
        expected, got = ref(image()), cl(image())
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert g.shape == e.shape  # NCHW shapes, whatever the memory format
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_channels_last_training_step_equals_default():
    # rule: same loss gradients in training mode (batch norm statistics included)
    ref, cl = pair('resnet18', channels_last=True)
    for model in (ref, cl):
        model.train()
        sum(o.square().mean() for o in model(image())).backward()
    torch.testing.assert_close(cl.model.conv1.weight.grad, ref.model.conv1.weight.grad,
                               rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(cl.model.bn1.running_mean, ref.model.bn1.running_mean)


def test_channels_last_in_a_detector_config():
    # rule: the option works from a shipped config (--cfg-options model.backbone.channels_last)
    cfg = Config.fromfile(CONFIG)
    torch.manual_seed(0)
    ref = build_detector(cfg).eval()
    cfg.model.backbone.channels_last = True
    cl = build_detector(cfg).eval()
    cl.load_state_dict(ref.state_dict())
    x = image(1, (128, 128))
    with torch.no_grad():
        expected, got = TensorForward(ref, (128, 128))(x), TensorForward(cl, (128, 128))(x)
        assert cl.backbone(x)[0].is_contiguous(memory_format=CL)
    assert cl.backbone.model.conv1.weight.is_contiguous(memory_format=CL)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_speed_options_are_backbone_options():
    # rule: feature_specs(cfg) accepts every TimmBackbone option and they change no spec
    plain = feature_specs(dict(type='TimmBackbone', model_name='resnet18'))
    assert feature_specs(dict(type='TimmBackbone', model_name='resnet18', channels_last=True,
                              compile=dict(mode='max-autotune'))) == plain


def test_bad_values_are_clear():
    with pytest.raises(TypeError, match="channels_last must be True or False, got 'yes'"):
        TimmBackbone('resnet18', channels_last='yes')
    with pytest.raises(TypeError, match=r"unknown torch.compile argument\(s\) \['mod'\]"):
        TimmBackbone('resnet18', compile=dict(mod='max-autotune'))  # a typo of mode
    with pytest.raises(TypeError, match="compile must be False, True or a dict.*got 'inductor'"):
        TimmBackbone('resnet18', compile='inductor')


def test_compile_equals_eager():
    # rule: torch.compile (default backend, inductor) gives eager's outputs; names unchanged
    ref, compiled = pair('resnet18', compile=True)
    assert compiled.state_dict().keys() == ref.state_dict().keys()
    ref.eval(), compiled.eval()
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    with torch.no_grad():
        expected = ref(image())
        got = compiled(image())
    assert counters['stats']['unique_graphs'] >= 1, 'nothing was compiled'
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_compiled_copy_runs_its_own_weights():
    # rule: deepcopy (e.g. mmdet's EMA hooks) gives an independent compiled backbone
    torch.manual_seed(0)
    compiled = TimmBackbone('resnet18', compile=dict(backend='eager')).eval()
    clone = copy.deepcopy(compiled)
    with torch.no_grad():
        for p in clone.parameters():
            p.zero_()
        out, cloned = compiled(image(1))[0], clone(image(1))[0]
    assert out.abs().sum() > 0 and cloned.abs().sum() == 0
