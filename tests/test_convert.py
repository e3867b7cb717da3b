"""timm_backbones.convert and tools/convert_checkpoint.py: native mmdet backbones and their
TimmBackbone twins compute the same outputs with converted weights (eval and train mode), the
conversion is exact both ways, the tool converts whole checkpoints, and bad input fails naming
the key or value.

Outputs are compared exactly (`torch.equal`): the twins run the same ops in the same order, and
they are bit-identical (measured: largest difference 0 in every case, eval and train mode, BN
statistics and gradients included). EfficientNet's native Swish modules run as `nn.SiLU` here
(the same function in one op, as timm runs it; `test_efficientnet_swish_rounding` checks mmdet's
own Swish within float rounding), and one of its weight gradients differs at float rounding
(`test_gradients_and_frozen_params_equal`, with the reason). The depth-50 ResNet, ResNeXt and ResNeSt output checks are
`slow`.
CSPNeXt (RTMDet) is checked with torch's BN eps/momentum, as RTMDet's configs set it (SyncBN);
mmdet's own default (eps 1e-3, momentum 0.03) is refused.
"""
import copy
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import timm_backbones  # noqa: F401  (registers TimmBackbone)
from timm_backbones import TimmBackbone
from timm_backbones._twins import EFFICIENTNET_ARCHS, HRNET_NAMES, _hrnet_extra
from timm_backbones.convert import (CSPNEXT_NAMES, NO_TWIN, REGNET_NAMES, RESNEST_NAMES,
                                    TWIN_TYPES,
                                    convert_state_dict, key_map, native_config, twin_config)
from helpers import swish_as_silu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'convert_checkpoint.py')


def build_native(cfg, silu=True):
    """The native backbone with seeded random weights, BN statistics and affine parameters.
    EfficientNet's Swish modules run torch's SiLU (`silu`), as timm's do: see
    `test_efficientnet_swish_rounding` for mmdet's own Swish."""
    import mmdet.models  # noqa: F401
    from mmdet.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(cfg))
    randomize(model)
    if silu and cfg['type'] == 'EfficientNet':
        assert swish_as_silu(model) > 0
    return model


def randomize(model):
    """Every tensor random (BN variances positive), so no mapped key can hide behind an init."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith('running_var'):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith(('bn1.weight', 'bn2.weight', 'bn3.weight', 'bn.weight')) \
                    or '.weight' in name and tensor.dim() == 1:
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.5 + 0.5)
            else:
                fan_in = tensor[0].numel() if tensor.dim() > 1 else 10
                tensor.copy_(torch.randn(tensor.shape, generator=gen) / fan_in ** 0.5)


def twin_with_weights(native_cfg, native):
    twin_cfg = twin_config(native_cfg)
    twin = TimmBackbone(**{k: v for k, v in twin_cfg.items() if k != 'type'})
    twin.load_state_dict(convert_state_dict(native.state_dict(), 'timm', native_cfg, prefix=''))
    return twin


# cheap enough to run forward/backward on both sides; every twin's key map is checked below
OUTPUT_CASES = [
    dict(type='ResNet', depth=18, norm_eval=False),
    pytest.param(dict(type='ResNet', depth=50, norm_eval=False, frozen_stages=1),
                 marks=pytest.mark.slow),
    dict(type='ResNetV1d', depth=50, norm_eval=False),
    dict(type='ResNet', depth=34, deep_stem=True, avg_down=True, norm_eval=False),
    pytest.param(dict(type='ResNeXt', depth=50, groups=32, base_width=4, norm_eval=False),
                 marks=pytest.mark.slow),
    dict(type='RegNet', arch='regnetx_400mf', norm_eval=False),
    dict(type='RegNet', arch=dict(w0=24, wa=24.48, wm=2.54, group_w=16, depth=22, bot_mul=1.0),
         norm_eval=False, out_indices=(1, 2, 3)),
    pytest.param(dict(type='ResNeSt', depth=50, stem_channels=64, radix=2, reduction_factor=4,
                      avg_down_stride=True, norm_eval=False), marks=pytest.mark.slow),
    # RTMDet-tiny's backbone with BN (RTMDet: SyncBN, same arithmetic on one process)
    dict(type='CSPNeXt', arch='P5', deepen_factor=0.167, widen_factor=0.375,
         norm_cfg=dict(type='BN'), act_cfg=dict(type='SiLU', inplace=True),
         out_indices=(0, 1, 2, 3, 4)),
    # HRNet (timm's plain branch outputs) and EfficientNet (TF-"same" and symmetric padding)
    dict(type='HRNet', extra=_hrnet_extra('hrnet_w18_small'), norm_eval=False),
    dict(type='EfficientNet', arch='b0', out_indices=(1, 2, 3, 4, 5)),
    dict(type='EfficientNet', arch='b1', out_indices=(3, 4, 5), conv_cfg=None,
         norm_cfg=dict(type='BN', eps=1e-3, momentum=0.01)),
]
ALL_TWINS = (
    [dict(type='ResNet', depth=d) for d in (18, 34, 50, 101, 152)]
    + [dict(type='ResNetV1d', depth=d) for d in (18, 34, 50, 101, 152)]
    + [dict(type='ResNet', depth=50, deep_stem=True)]
    + [dict(type='ResNeXt', depth=d, groups=g, base_width=w)
       for d, g, w in ((50, 32, 4), (101, 32, 4), (101, 32, 8), (101, 64, 4))]
    + [dict(type='RegNet', arch=name) for name in REGNET_NAMES]
    + [dict(type='ResNeSt', depth=d, stem_channels=s) for d, s in RESNEST_NAMES]
    + [dict(type='CSPNeXt', deepen_factor=d, widen_factor=w, norm_cfg=dict(type='SyncBN'))
       for d, w in CSPNEXT_NAMES]
    + [dict(type='HRNet', extra=_hrnet_extra(name)) for name in HRNET_NAMES]
    + [dict(type='EfficientNet', arch=a, out_indices=(3, 4, 5)) for a in EFFICIENTNET_ARCHS]
    + [dict(type='EfficientNet', arch='b0', out_indices=(5,), conv_cfg=None)])


def case_id(cfg):
    if not isinstance(cfg, dict):
        return None
    return '-'.join(str(v if not isinstance(v, dict) else 'archdict') for k, v in cfg.items()
                    if k in ('type', 'depth', 'arch', 'groups', 'deep_stem', 'out_indices',
                             'widen_factor', 'stem_channels', 'conv_cfg')) + (
        '-' + '-'.join(map(str, cfg['extra']['stage4']['num_channels'][:1]
                           + cfg['extra']['stage1']['num_blocks'])) if 'extra' in cfg else '')


@pytest.mark.parametrize('cfg', ALL_TWINS, ids=case_id)
def test_key_map_is_one_to_one(cfg):
    # every native tensor has exactly one twin tensor of the same shape (meta builds)
    mapping = key_map(cfg)
    assert len(set(mapping.values())) == len(mapping)
    twin = twin_config(cfg)
    assert native_config(twin)['type'] in TWIN_TYPES


@pytest.mark.parametrize('cfg', OUTPUT_CASES, ids=case_id)
def test_outputs_equal(cfg):
    # same weights -> same maps, in eval mode and in train mode (BN batch statistics)
    native = build_native(cfg)
    twin = twin_with_weights(cfg, native)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for train in (False, True):
        native.train(train)
        twin.train(train)
        with torch.no_grad():
            a, b = native(x), twin(x)
        assert len(a) == len(b)
        for i, (u, v) in enumerate(zip(a, b)):
            assert u.shape == v.shape, (train, i)
            assert torch.equal(u, v), (train, i, (u - v).abs().max())
    # and the BN statistics moved identically in train mode
    twin_sd = convert_state_dict(twin.state_dict(), 'mmdet', cfg, prefix='')
    for key, value in native.state_dict().items():
        assert torch.equal(value, twin_sd[key]), key


@pytest.mark.parametrize('cfg', [
    dict(type='ResNetV1d', depth=18, frozen_stages=1, norm_eval=True),
    dict(type='CSPNeXt', deepen_factor=0.167, widen_factor=0.375, norm_cfg=dict(type='BN'),
         frozen_stages=1, norm_eval=True),
    dict(type='EfficientNet', arch='b0', out_indices=(3, 4, 5), frozen_stages=3, norm_eval=True),
    dict(type='HRNet', extra=_hrnet_extra('hrnet_w18_small'))], ids=case_id)
def test_gradients_and_frozen_params_equal(cfg):
    # frozen_stages / norm_eval behave the same, and gradients match per mapped name
    native = build_native(cfg)
    twin = twin_with_weights(cfg, native)
    native.train()
    twin.train()
    mapping = key_map(cfg)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for model in (native, twin):
        sum(o.square().mean() for o in model(x)).backward()
    native_params = dict(native.named_parameters())
    twin_params = dict(twin.named_parameters())
    trainable = {mapping[n] for n, p in native_params.items() if p.requires_grad}
    assert trainable == {n for n, p in twin_params.items() if p.requires_grad}
    for name, param in native_params.items():
        other = twin_params[mapping[name]]
        if param.grad is None:
            assert other.grad is None, name
        elif cfg['type'] == 'EfficientNet':
            # mmdet's Conv2dAdaptivePadding pads explicitly (F.pad, then a conv without
            # padding); timm pads stride-1 'same' convs inside the conv: the same outputs, but
            # another weight-gradient kernel (measured: 7e-8 of the largest component, in the
            # last 3x3 depthwise conv only)
            scale = param.grad.abs().max().item()
            assert torch.allclose(param.grad, other.grad, rtol=0, atol=1e-6 * scale), name
        else:
            assert torch.equal(param.grad, other.grad), name


def test_different_weights_are_caught():
    # the comparison is sensitive: two same-shaped tensors swapped give other outputs
    cfg = dict(type='ResNet', depth=18)
    native = build_native(cfg)
    native.eval()  # mmdet's ResNet.train() returns None
    state = convert_state_dict(native.state_dict(), 'timm', cfg, prefix='')
    a, b = 'model.layer1.0.conv1.weight', 'model.layer1.1.conv1.weight'
    state[a], state[b] = state[b], state[a]
    twin = TimmBackbone('resnet18', out_indices=(1, 2, 3, 4), norm_eval=True).eval()
    twin.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(native(x)[-1], twin(x)[-1])


def test_cspnext_different_weights_are_caught():
    # the CSPNeXt mapping is checked too: two same-shaped stage convs swapped differ
    cfg = dict(type='CSPNeXt', deepen_factor=0.167, widen_factor=0.375,
               norm_cfg=dict(type='BN'))
    native = build_native(cfg)
    native.eval()  # mmdet's CSPNeXt.train() returns None
    state = convert_state_dict(native.state_dict(), 'timm', cfg, prefix='')
    a = 'model.model.stages.1.1.short_conv.conv.weight'
    b = 'model.model.stages.1.1.main_conv.conv.weight'
    state[a], state[b] = state[b], state[a]
    twin = twin_with_weights(cfg, native).eval()
    twin.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(native(x)[-1], twin(x)[-1])
    assert twin_config(cfg)['out_indices'] == (2, 3, 4)  # mmdet's indices count the stem too
    assert native_config('cspnext_s')['deepen_factor'] == 0.33


def detector_state(cfg):
    native = build_native(cfg)
    state = {f'backbone.{k}': v for k, v in native.state_dict().items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.randn(4, 4, 1, 1)
    state['bbox_head.retina_cls.bias'] = torch.randn(9)
    return state


def test_round_trip_is_exact():
    # native -> timm -> native gives the same keys, in the same order, bit-identical tensors
    cfg = dict(type='ResNetV1d', depth=18)
    state = detector_state(cfg)
    timm_state = convert_state_dict(state, 'timm', cfg)
    assert 'backbone.model.bn1.weight' in timm_state and 'backbone.stem.7.weight' not in timm_state
    assert timm_state['neck.lateral_convs.0.conv.weight'] is state['neck.lateral_convs.0.conv.weight']
    back = convert_state_dict(timm_state, 'mmdet', 'resnet18d')
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_efficientnet_swish_rounding():
    # mmdet's EfficientNet as it is (mmcv's Swish, x * sigmoid(x) in two ops) vs timm's fused
    # SiLU: the same math, float rounding apart (measured on b3 in train mode: 3e-6 at stride 32)
    cfg = dict(type='EfficientNet', arch='b3', out_indices=(3, 4, 5),
               norm_cfg=dict(type='BN', eps=1e-3, momentum=0.01))
    native = build_native(cfg, silu=False)
    twin = twin_with_weights(cfg, native)
    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(2))
    for train in (False, True):
        native.train(train)
        twin.train(train)
        with torch.no_grad():
            for u, v in zip(native(x), twin(x)):
                assert torch.allclose(u, v, rtol=0, atol=1e-5 * v.abs().max().item())
                assert train or not torch.equal(u, v)  # not the exact check above


def test_round_trip_hrnet_efficientnet():
    # the twins that are not ResNet-like: HRNet (same names), EfficientNet (paired by position)
    for cfg, name in ((dict(type='HRNet', extra=_hrnet_extra('hrnet_w18_small')),
                       dict(type='TimmBackbone', model_name='hrnet_w18_small',
                            out_indices=(1, 2, 3, 4), model_kwargs=dict(feature_location=''))),
                      (dict(type='EfficientNet', arch='b0', out_indices=(3, 4, 5)),
                       'tf_efficientnet_b0')):
        state = detector_state(cfg)
        timm_state = convert_state_dict(state, 'timm', cfg)
        back = convert_state_dict(timm_state, 'mmdet', name if isinstance(name, str) else name)
        assert list(back) == list(state)
        assert all(back[k] is state[k] for k in state)
    assert key_map(cfg)['layers.1.0.depthwise_conv.conv.weight'] == 'model.blocks.0.0.conv_dw.weight'
    # the shipped RetinaNet EfficientNet-B3 backbone: SyncBN, BN eps/momentum, drop path carried
    twin = twin_config(dict(type='EfficientNet', arch='b3', drop_path_rate=0.2,
                            out_indices=(3, 4, 5), frozen_stages=0, norm_eval=False,
                            norm_cfg=dict(type='SyncBN', requires_grad=True, eps=1e-3,
                                          momentum=0.01)))
    assert twin == dict(type='TimmBackbone', model_name='tf_efficientnet_b3',
                        out_indices=(2, 3, 4), frozen_stages=-1, norm_eval=False,
                        model_kwargs=dict(bn_eps=1e-3, bn_momentum=0.01), drop_path_rate=0.2,
                        sync_bn=True)
    native = native_config(twin)
    assert native['norm_cfg'] == dict(type='SyncBN', requires_grad=True, eps=1e-3, momentum=0.01)
    assert twin_config(native) == twin


def test_twin_config():
    # the twin of a shipped-style ResNet config: levels shifted by one, training options kept
    assert twin_config(dict(type='ResNet', depth=50, style='pytorch', frozen_stages=1,
                            norm_eval=True, out_indices=(0, 1, 2, 3),
                            norm_cfg=dict(type='BN', requires_grad=True))) == dict(
        type='TimmBackbone', model_name='resnet50', out_indices=(1, 2, 3, 4), frozen_stages=1,
        norm_eval=True)
    # mmdet's default norm_eval (True) is written out: TimmBackbone's default is False
    assert twin_config(dict(type='mmdet.RegNet', arch='regnetx_3.2gf', out_indices=(3,))) == \
        dict(type='TimmBackbone', model_name='regnetx_032', out_indices=(4,), frozen_stages=-1,
             norm_eval=True)
    assert twin_config(dict(type='ResNeXt', depth=101, groups=64, base_width=4,
                            norm_cfg=dict(type='SyncBN', requires_grad=True)))['sync_bn'] is True
    assert twin_config(dict(type='ResNet', depth=50, init_cfg=dict(
        type='Pretrained', checkpoint='torchvision://resnet50')), drop_init_cfg=True)[
        'model_name'] == 'resnet50'
    assert native_config('resnext101_32x8d') == dict(
        type='ResNeXt', depth=101, groups=32, base_width=8, out_indices=(0, 1, 2, 3),
        frozen_stages=-1, norm_eval=False, style='pytorch')


def test_bad_configs():
    with pytest.raises(ValueError, match="style='caffe'.*caffe style strides the 1x1"):
        twin_config(dict(type='ResNet', depth=50, style='caffe'))  # caffe style: other math
    with pytest.raises(ValueError, match="'SwinTransformer' has no timm twin"):
        twin_config(dict(type='SwinTransformer'))  # no twin, with the reason
    with pytest.raises(ValueError, match=r"HRNet with extra=.*hrnet_w18_small.*hrnet_w64"):
        twin_config(dict(type='HRNet', extra=dict(_hrnet_extra('hrnet_w18'), stage4=dict(
            _hrnet_extra('hrnet_w18')['stage4'], num_modules=2))))  # no timm HRNet has it
    with pytest.raises(ValueError, match='with_cp=True.*no gradient checkpointing'):
        twin_config(dict(type='HRNet', extra=_hrnet_extra('hrnet_w18'), with_cp=True))
    with pytest.raises(ValueError, match="TimmBackbone 'hrnet_w18' without.*'incre'"):
        native_config('hrnet_w18')  # timm's default HRNet features are not mmdet's
    with pytest.raises(ValueError, match="arch='es'.*ReLU"):
        twin_config(dict(type='EfficientNet', arch='es', out_indices=(5,)))  # EdgeTPU
    with pytest.raises(ValueError, match=r'out_indices=\(6,\).*1280'):
        twin_config(dict(type='EfficientNet'))  # mmdet's default index 6: the 1x1 head conv
    with pytest.raises(ValueError, match=r'out_indices=\(2, 3\).*include'):
        twin_config(dict(type='EfficientNet', out_indices=(2, 3)))  # mmdet prunes later layers
    with pytest.raises(ValueError, match='frozen_stages=1.*stem conv alone'):
        twin_config(dict(type='EfficientNet', out_indices=(5,), frozen_stages=1))
    with pytest.raises(ValueError, match="act_cfg=.*ReLU"):
        twin_config(dict(type='EfficientNet', out_indices=(5,), act_cfg=dict(type='ReLU')))
    with pytest.raises(ValueError, match=r"option\(s\) \['depth'\] are not options"):
        twin_config(dict(type='EfficientNet', out_indices=(5,), depth=3))
    with pytest.raises(ValueError, match='depth=26 has no timm twin.*18, 34, 50, 101, 152'):
        twin_config(dict(type='ResNet', depth=26))  # depth must be one of mmdet's
    with pytest.raises(ValueError, match="arch='regnety_400mf'"):
        twin_config(dict(type='RegNet', arch='regnety_400mf'))  # RegNetX archs only
    with pytest.raises(ValueError, match='avg_down=True and deep_stem=False'):
        twin_config(dict(type='ResNet', depth=50, avg_down=True))  # no timm equivalent
    with pytest.raises(ValueError, match='requires_grad'):
        twin_config(dict(type='ResNet', depth=50, norm_cfg=dict(type='BN', requires_grad=False)))
    with pytest.raises(ValueError, match='dcn='):
        twin_config(dict(type='ResNet', depth=50, dcn=dict(type='DCNv2')))  # no timm DCN
    with pytest.raises(ValueError, match="option unknown_opt=1"):
        twin_config(dict(type='ResNet', depth=50, unknown_opt=1))  # unknown options fail
    with pytest.raises(ValueError, match='drop_init_cfg=True'):
        twin_config(dict(type='ResNet', depth=50, init_cfg=dict(
            type='Pretrained', checkpoint='torchvision://resnet50')))  # mmdet-format weights
    with pytest.raises(ValueError, match="'convnext_tiny' has no native mmdet twin"):
        native_config('convnext_tiny')
    with pytest.raises(ValueError, match=r'levels 1\.\.4'):
        native_config(dict(type='TimmBackbone', model_name='resnet50', out_indices=(0, 1)))
    with pytest.raises(ValueError, match='eps=1e-3.*norm_cfg=dict'):
        twin_config(dict(type='CSPNeXt'))  # mmdet's default BN eps/momentum: not timm's
    with pytest.raises(ValueError, match=r'deepen_factor=0\.5.*tiny/s/m/l/x'):
        twin_config(dict(type='CSPNeXt', deepen_factor=0.5, norm_cfg=dict(type='BN')))
    with pytest.raises(ValueError, match="arch='P6'"):
        twin_config(dict(type='CSPNeXt', arch='P6', norm_cfg=dict(type='BN')))  # 5 stages
    with pytest.raises(ValueError, match='act_cfg'):
        twin_config(dict(type='CSPNeXt', act_cfg=dict(type='ReLU'), norm_cfg=dict(type='BN')))
    with pytest.raises(ValueError, match='radix=4'):
        twin_config(dict(type='ResNeSt', depth=50, radix=4))  # timm's resnest: radix 2
    with pytest.raises(ValueError, match=r'depth=101, stem_channels=64.*\(101, 128\)'):
        twin_config(dict(type='ResNeSt', depth=101))  # timm's resnest101e has the 128 stem
    assert 'CSPNeXt(default norm_cfg / P6 / options)' in NO_TWIN
    assert not any(why.startswith('not checked') for name, why in NO_TWIN.items()
                   if name.split('(')[0] in ('PyramidVisionTransformerV2', 'Res2Net', 'ResNeSt',
                                             'MobileNetV2', 'HRNet', 'EfficientNet'))
    assert 'HRNet' in TWIN_TYPES and 'EfficientNet' in TWIN_TYPES


def test_bad_state_dicts():
    cfg = dict(type='ResNet', depth=18)
    state = detector_state(cfg)
    with pytest.raises(ValueError, match="to='onnx'"):
        convert_state_dict(state, 'onnx', cfg)  # only two directions
    bad = dict(state, **{'backbone.layer9.weight': torch.zeros(1)})
    with pytest.raises(KeyError, match="'backbone.layer9.weight' is not a key"):
        convert_state_dict(bad, 'timm', cfg)  # an unknown backbone key is named
    bad = dict(state, **{'backbone.conv1.weight': torch.zeros(64, 3, 3, 3)})
    with pytest.raises(ValueError, match=r"'backbone.conv1.weight' has shape \(64, 3, 3, 3\).*"
                                         r"\(64, 3, 7, 7\)"):
        convert_state_dict(bad, 'timm', cfg)  # a shape mismatch is named
    bad = {k: v for k, v in state.items() if k != 'backbone.layer4.1.bn2.running_var'}
    with pytest.raises(KeyError, match='missing.*backbone.layer4.1.bn2.running_var'):
        convert_state_dict(bad, 'timm', cfg)  # missing keys are named
    converted = convert_state_dict(state, 'timm', cfg)
    with pytest.raises(KeyError, match='looks converted'):
        convert_state_dict(converted, 'timm', cfg)  # converting twice
    with pytest.raises(ValueError, match='has shape'):
        convert_state_dict(state, 'timm', dict(type='ResNet', depth=50))  # wrong arch


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)


def test_tool_round_trip(tmp_path):
    # whole mmengine checkpoints both ways; arch from meta['cfg'] or --arch
    cfg = dict(type='RegNet', arch='regnetx_400mf', out_indices=(0, 1, 2, 3))
    state = detector_state(cfg)
    text = Config(dict(model=dict(type='RetinaNet', backbone=cfg))).pretty_text
    checkpoint = dict(state_dict=state, meta=dict(cfg=text, epoch=3), optimizer={})
    src, mid, back = tmp_path / 'native.pth', tmp_path / 'timm.pth', tmp_path / 'back.pth'
    torch.save(checkpoint, src)
    result = run_tool(src, mid, '--to', 'timm')
    assert result.returncode == 0, result.stderr
    converted = torch.load(mid, weights_only=True)
    assert 'backbone.model.s1.b1.conv1.conv.weight' in converted['state_dict']
    assert converted['meta'] == checkpoint['meta']
    result = run_tool(mid, back, '--to', 'mmdet', '--arch', 'regnetx_004')
    assert result.returncode == 0, result.stderr
    restored = torch.load(back, weights_only=True)
    assert restored.keys() == checkpoint.keys() and restored['meta'] == checkpoint['meta']
    assert list(restored['state_dict']) == list(state)
    assert all(torch.equal(restored['state_dict'][k], v) for k, v in state.items())
    # a bare state dict needs --arch (in-process: the subprocess start costs ~15 s here)
    torch.save(state, src)
    tool = load_tool()
    with pytest.raises(SystemExit, match='pass --arch'):
        tool.main([str(src), str(mid), '--to', 'timm'])
    with pytest.raises(SystemExit, match="'backbone.conv1.weight' has shape"):
        tool.main([str(src), str(mid), '--to', 'timm', '--arch', 'resnet18'])  # wrong arch


def load_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location('convert_checkpoint', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
