"""TimmBackbone: outputs match specs, registry spellings, freezing, norms, checkpointing,
weights, and one block per bad-input rule."""
import math

import numpy as np
import pytest
import timm
import torch
from mmdet.registry import MODELS
from mmengine.logging import HistoryBuffer
from helpers import HOOK_BASED, NHWC, NON_SQUARE, REPRESENTATIVE
from torch import nn

import timm_backbones  # noqa: F401  (registers the modules)
from timm_backbones import TimmBackbone, feature_specs


def _check_outputs(backbone, outs, size):
    assert isinstance(outs, tuple) and len(outs) == len(backbone.feature_specs)
    for out, spec in zip(outs, backbone.feature_specs):
        assert out.dim() == 4 and out.shape[1] == spec.channels, (out.shape, spec)
        # exactly ceil(input / stride): timm's maps are padded and cropped to it
        assert list(out.shape[2:]) == [math.ceil(s / spec.stride) for s in size], \
            (out.shape, spec, size)
        assert out.is_contiguous() or out.permute(0, 2, 3, 1).is_contiguous()


# models whose timm maps miss ceil(input / stride), one per way, with their plan's
# (pad_divisor, exact_divisor, margin): convnext's 4x4 patch stem gives floor(input / 4) at odd
# sizes (exact at multiples of 32); mobilevitv2 resizes odd maps inside its blocks (one pixel
# too many; exact at multiples of 64); inception's unpadded convolutions leave its maps up to 2
# pixels short at stride 32 at every size (64 px more padding covers them)
OFF_NOMINAL = {'convnext_atto': (1, 32, 0), 'mobilevitv2_050': (1, 64, 0),
               'inception_v3': (1, 32, 64)}


@pytest.mark.parametrize('name', list(OFF_NOMINAL))
def test_maps_are_exactly_ceil_input_over_stride(name):
    # rule: at any input size (odd sides too), every map is exactly ceil(input / stride), what
    # necks that upsample by 2 and concatenate need; the plan says how inputs are padded for it
    # (zeros at the bottom/right), and the maps are timm's maps of the padded image, cropped
    backbone = TimmBackbone(name).eval()
    plan = backbone.plan
    assert (plan.pad_divisor, plan.exact_divisor, plan.margin) == OFF_NOMINAL[name]
    for size in ((97, 131), (201, 263)):
        x = torch.rand(1, 3, *size)
        run = plan.run_size(size)
        assert run[0] % plan.exact_divisor == 0 and run[0] >= size[0] + plan.margin
        with torch.no_grad():
            outs = backbone(x)
            raw = backbone.model(torch.nn.functional.pad(x, (0, run[1] - size[1], 0,
                                                             run[0] - size[0])))
        _check_outputs(backbone, outs, size)
        for out, full in zip(outs, raw):
            assert torch.equal(out, full[..., :out.shape[-2], :out.shape[-1]])


def test_fixed_size_model_with_short_maps():
    # pit's unpadded patch embedding leaves its stride-8 map a pixel short: built for 320x416
    # it takes inputs up to 312x408 (its maps cover them), larger ones fail with the reason
    backbone = TimmBackbone('pit_ti_224', input_size=(320, 416)).eval()
    assert backbone.plan.margin == 8 and backbone.plan.max_input == (312, 408)
    with torch.no_grad():
        _check_outputs(backbone, backbone(torch.rand(1, 3, 312, 408)), (312, 408))
        with pytest.raises(ValueError, match=r'only runs at 320x416.*its maps cover 312x408'):
            backbone(torch.rand(1, 3, 313, 408))


@pytest.mark.parametrize('name', REPRESENTATIVE)
def test_outputs_match_specs_non_square(name):
    backbone = TimmBackbone(name).eval()
    with torch.no_grad():
        outs = backbone(torch.rand(1, 3, *NON_SQUARE))
        _check_outputs(backbone, backbone(torch.rand(1, 3, 97, 131)), (97, 131))  # odd sides
    _check_outputs(backbone, outs, NON_SQUARE)
    # the specs computed without weights, from the config alone, are those of the real timm
    # model (its own feature_info at the returned levels) and of the real outputs
    specs = feature_specs(dict(type='TimmBackbone', model_name=name))
    real = backbone.model.feature_info.get_dicts(keys=('num_chs', 'reduction'))
    assert [(s.channels, s.stride) for s in specs] == [(d['num_chs'], d['reduction'])
                                                       for d in real]
    assert [s.channels for s in specs] == [o.shape[1] for o in outs]
    assert backbone.out_channels == [s.channels for s in backbone.feature_specs]
    assert backbone.out_strides == [s.stride for s in backbone.feature_specs]


@pytest.mark.parametrize('name', REPRESENTATIVE)
def test_both_registry_spellings(name):
    a = MODELS.build(dict(type='TimmBackbone', model_name=name, out_indices=(-1, -2)))
    b = MODELS.build(dict(type=f'timm.{name}', out_indices=(-1, -2)))
    assert type(a) is type(b) is TimmBackbone
    assert a.feature_specs == b.feature_specs
    # out_indices order is output order
    assert [s.index for s in a.feature_specs] == [len(a.levels) - 1, len(a.levels) - 2]
    with torch.no_grad():
        _check_outputs(a, a.eval()(torch.rand(1, 3, 224, 224)), (224, 224))


def test_every_architecture_is_registered():
    # the pinned timm 1.0.31 has 1371 architectures; each is reachable as `timm.<arch>` through
    # mmdet's registry (scope split at the first dot), and builds the named model
    from timm_backbones import TIMM_MODELS
    assert timm.__version__ != '1.0.31' or len(TIMM_MODELS.module_dict) == 1371
    for arch in ('resnet50', 'convnext_tiny', 'vit_base_patch16_224', timm.list_models()[-1]):
        assert MODELS.get(f'timm.{arch}') is TIMM_MODELS.module_dict[arch]
    assert MODELS.build(dict(type='timm.resnet18')).model_name == 'resnet18'


def test_pretrained_tag_as_model_name():
    backbone = MODELS.build(dict(type='TimmBackbone', model_name='resnet18.a1_in1k'))
    assert backbone.out_channels == [64, 128, 256, 512]


def _bn_stats(module):
    return {n: b.clone() for n, b in module.named_buffers() if 'running' in n}


# frozen_stages: tests/test_freeze.py


@pytest.mark.parametrize('name', ['resnet18', 'efficientnet_b0', 'convnext_atto',
                                  'mobilenetv3_large_100', 'densenet121'])
def test_norm_eval_keeps_running_stats(name):
    backbone = TimmBackbone(name, norm_eval=True).train()
    norms = [m for m in backbone.modules() if isinstance(m, timm_backbones._norms.NORM_TYPES)]
    assert norms and all(not m.training for m in norms)
    before = _bn_stats(backbone)
    backbone(torch.rand(2, 3, 96, 96))
    after = _bn_stats(backbone)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # without norm_eval the stats do move (so the check above can fail)
    plain = TimmBackbone(name).train()
    before = _bn_stats(plain)
    plain(torch.rand(2, 3, 96, 96))
    if before:
        assert any(not torch.equal(before[k], v) for k, v in _bn_stats(plain).items())


def test_frozen_bn_keeps_fused_activation():
    from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
    plain = TimmBackbone('efficientnet_b0').eval()
    assert any(isinstance(m, BatchNormAct2d) for m in plain.modules())
    frozen = TimmBackbone('efficientnet_b0', frozen_bn=True)
    frozen.load_state_dict(plain.state_dict(), strict=False)
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in frozen.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        expected = plain(x)
    frozen = TimmBackbone('efficientnet_b0', frozen_bn=True)
    _copy_weights(plain, frozen)
    with torch.no_grad():
        got = frozen.train()(x)  # frozen BN behaves like eval BN even in train mode
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b)


def _copy_weights(src, dst):
    """Copy parameters and BN statistics by name (frozen BN keeps the same names)."""
    dst_state = dst.state_dict()
    dst.load_state_dict({k: v for k, v in src.state_dict().items() if k in dst_state},
                        strict=False)


# one model per kind of checkpointed unit in the fast suite (CNN stages, NHWC stages, ViT blocks);
# more CNNs of the same kind in make test-slow (10-25 s each on a 2-core CPU)
@pytest.mark.parametrize('name', ['resnet18', 'swin_tiny_patch4_window7_224',
                                  'vit_tiny_patch16_224'] + [
    pytest.param(name, marks=pytest.mark.slow)
    for name in ('efficientnet_b0', 'convnext_atto', 'mobilenetv3_large_100', 'regnety_002')])
def test_with_cp_same_outputs_and_grads(name):
    torch.manual_seed(0)
    ref = TimmBackbone(name, drop_path_rate=0.0)
    cp = TimmBackbone(name, drop_path_rate=0.0, with_cp=True)
    cp.load_state_dict(ref.state_dict())
    # norm_eval-free comparison: eval norms so both see identical statistics
    ref.train()
    cp.train()
    for m in list(ref.modules()) + list(cp.modules()):
        if isinstance(m, timm_backbones._norms.NORM_TYPES):
            m.eval()
    calls = {id(ref): 0, id(cp): 0}  # checkpointing must really recompute in backward
    for model in (ref, cp):
        for m in model.modules():
            if not list(m.children()):
                m.register_forward_hook(
                    lambda *_, key=id(model): calls.__setitem__(key, calls[key] + 1))
    x = torch.rand(2, 3, 128, 160)
    outs = [ref(x), cp(x)]
    for o_ref, o_cp in zip(*outs):
        torch.testing.assert_close(o_ref, o_cp)
    assert calls[id(ref)] == calls[id(cp)]
    for model, o in zip((ref, cp), outs):
        sum(t.square().mean() for t in o).backward()
    assert calls[id(cp)] > calls[id(ref)], 'with_cp=True recomputed nothing'
    for (n, p_ref), (_, p_cp) in zip(ref.named_parameters(), cp.named_parameters()):
        if p_ref.grad is not None:
            torch.testing.assert_close(p_ref.grad, p_cp.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_with_cp_unsupported_is_clear():
    with pytest.raises(ValueError, match='with_cp=True is not supported.*Use with_cp=False'):
        TimmBackbone(HOOK_BASED[0], with_cp=True)  # FeatureHookNet: checkpointing has no effect
    with pytest.raises(ValueError, match='with_cp=True is not supported'):
        TimmBackbone('hrnet_w18_small', with_cp=True)


@pytest.mark.parametrize('name', ['resnet18', 'vit_tiny_patch16_224', 'efficientnet_b0'])
def test_pretrained_local_file_round_trip(tmp_path, name):
    source = timm.create_model(name)
    path = str(tmp_path / f'{name}.pth')
    torch.save(source.state_dict(), path)
    backbone = TimmBackbone(name, pretrained=path)
    expected = source.state_dict()
    loaded = 0
    for key, value in backbone.model.state_dict().items():
        src_key = _source_key(key, expected)
        if src_key is not None:
            assert torch.equal(value, expected[src_key]), key
            loaded += 1
    assert loaded >= 0.9 * len(backbone.model.state_dict())
    # init_weights() (run by mmengine's runner) never overwrites them
    backbone.init_weights()
    for key, value in backbone.model.state_dict().items():
        src_key = _source_key(key, expected)
        if src_key is not None:
            assert torch.equal(value, expected[src_key]), key


def _source_key(key, source_state):
    """Map a feature-wrapper key back to the original model's key."""
    for cand in (key, key.replace('_', '.', 1), key[len('model.'):] if key.startswith('model.')
                 else None):
        if cand is not None and cand in source_state:
            return cand
    return None


def test_init_cfg_pretrained_with_prefix(tmp_path):
    """A detector checkpoint's backbone weights load through init_cfg=Pretrained + prefix."""
    donor = TimmBackbone('resnet18')
    path = str(tmp_path / 'detector.pth')
    # as mmengine's runner writes it: numpy and HistoryBuffer beside the tensors (weights-only)
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in donor.state_dict().items()},
                'message_hub': {'log_scalars': {'train/loss': HistoryBuffer([1.0, 0.5], [1, 1])}},
                'meta': {'seed': np.int64(0), 'dataset_meta': {'w': np.ones(2)}}}, path)
    backbone = TimmBackbone('resnet18', init_cfg=dict(type='Pretrained', checkpoint=path,
                                                      prefix='backbone.'))
    assert not torch.equal(backbone.model.conv1.weight, donor.model.conv1.weight)
    backbone.init_weights()
    for k, v in donor.state_dict().items():
        assert torch.equal(backbone.state_dict()[k], v), k


def test_pretrained_true_offline_says_how_to_use_a_file(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(RuntimeError, match=r"pretrained='/path/to/resnet18.safetensors'"):
        TimmBackbone('resnet18', pretrained=True)


def test_in_channels():
    backbone = TimmBackbone('resnet18', in_channels=1)
    outs = backbone(torch.rand(1, 1, 64, 64))
    assert outs[-1].shape[1] == 512


@pytest.mark.parametrize('name,stride', [('resnet18', 16), ('resnet18', 8),
                                         ('convnext_atto', 16), ('efficientnet_b0', 16)])
def test_output_stride(name, stride):
    backbone = TimmBackbone(name, output_stride=stride).eval()
    assert max(backbone.out_strides) == stride
    with torch.no_grad():
        _check_outputs(backbone, backbone(torch.rand(1, 3, 128, 128)), (128, 128))


def test_drop_path_rate_and_model_kwargs():
    backbone = TimmBackbone('convnext_atto', drop_path_rate=0.2,
                            model_kwargs=dict(ls_init_value=0.5))
    rates = [m.drop_prob for m in backbone.modules() if type(m).__name__ == 'DropPath']
    assert rates and max(rates) == pytest.approx(0.2)
    gammas = [p for n, p in backbone.named_parameters() if n.endswith('gamma')]
    assert gammas and all(torch.all(g == 0.5) for g in gammas)


# ---- bad input: one case per rule, each checking the hint ---------------------------------------

def _rule(rule, build, error, match):
    return pytest.param(build, error, match, id=rule)


BAD_INPUTS = [
    _rule('unknown model names list close matches',
          lambda: TimmBackbone('resnet5O'), ValueError, 'Did you mean: resnet50'),
    _rule('unknown pretrained tag lists the tags',
          lambda: TimmBackbone('resnet18.nope'), ValueError, "has the tags .*'resnet18.a1_in1k'"),
    _rule('out_indices within the levels',
          lambda: TimmBackbone('resnet18', out_indices=(1, 5)), ValueError,
          r'(?s)out of range.*valid indices -5..4.*channels=512'),
    _rule('out_indices name each level once',
          lambda: TimmBackbone('resnet18', out_indices=(4, -1)), ValueError, 'name a level twice'),
    _rule('out_indices is a sequence',
          lambda: TimmBackbone('resnet18', out_indices=3), TypeError, 'list/tuple of ints'),
    _rule('output_stride is 8, 16 or 32',
          lambda: TimmBackbone('resnet18', output_stride=12), ValueError,
          'output_stride must be one of'),
    _rule('output_stride unsupported (TypeError inside timm)',
          lambda: TimmBackbone('vit_tiny_patch16_224', output_stride=8), ValueError,
          "'vit_tiny_patch16_224' does not support output_stride=8.*native output stride 16"),
    _rule('output_stride unsupported (bare AssertionError inside timm)',
          lambda: TimmBackbone('dla34', output_stride=16), ValueError,
          "'dla34' does not support output_stride=16"),
    _rule('frozen_stages within the stages',
          lambda: TimmBackbone('resnet18', frozen_stages=7), ValueError,
          r'(?s)frozen_stages=7 out of range.*1\.\.4 \(the stem and that many stages\)'),
    _rule('frozen_stages needs locatable stages',
          lambda: TimmBackbone('hrnet_w18_small', frozen_stages=2), ValueError,
          "frozen_stages=2 is not available for 'hrnet_w18_small'.*frozen_stages=-1"),
    _rule('unknown options are named with close matches',
          lambda: TimmBackbone('resnet18', out_indice=(1, 2)), TypeError,
          r"TimmBackbone got unknown option\(s\) 'out_indice' \(did you mean 'out_indices'\?\)"),
    _rule('unknown options in configs too',
          lambda: feature_specs(dict(type='timm.resnet18', norm_evl=True)), TypeError,
          r"unknown option\(s\) 'norm_evl' \(did you mean 'norm_eval'\?\)"),
    _rule('model_kwargs may not set managed arguments',
          lambda: TimmBackbone('resnet18', model_kwargs=dict(in_chans=1)), ValueError,
          "model_kwargs may not contain 'in_chans'.*in_channels"),
    _rule('pretrained file must exist',
          lambda: TimmBackbone('resnet18', pretrained='/nonexistent/weights.pth'),
          FileNotFoundError, 'no such file'),
    _rule('in_channels is a positive int',
          lambda: TimmBackbone('resnet18', in_channels=0), ValueError,
          'in_channels must be a positive int'),
    _rule('timm.<arch> names the model already',
          lambda: MODELS.build(dict(type='timm.resnet18', model_name='resnet50')), TypeError,
          'names the model already'),
    _rule('frozen_bn and sync_bn exclude each other',
          lambda: TimmBackbone('resnet18', frozen_bn=True, sync_bn=True), ValueError,
          'frozen_bn=True and sync_bn=True exclude each other'),
    _rule('norm_eval is a bool (a string is not read as True)',
          lambda: TimmBackbone('resnet18', norm_eval='False'), TypeError,
          "norm_eval must be True or False, got 'False' .*without quotes"),
    _rule('with_cp is a bool',
          lambda: TimmBackbone('resnet18', with_cp='False'), TypeError,
          'with_cp must be True or False'),
    _rule('frozen_bn and sync_bn are bools',
          lambda: TimmBackbone('resnet18', frozen_bn=1), TypeError,
          'frozen_bn must be True or False, got 1'),
    _rule('drop_path_rate is a number',
          lambda: TimmBackbone('convnext_atto', drop_path_rate='0.1'), TypeError,
          r"drop_path_rate must be a number in \[0, 1\) or None, got '0.1' \(str\)"),
    _rule('drop_path_rate is in [0, 1)',
          lambda: TimmBackbone('convnext_atto', drop_path_rate=2.0), ValueError,
          r'drop_path_rate=2.0 is out of range.*\[0, 1\)'),
    _rule('model_kwargs is a dict',
          lambda: TimmBackbone('resnet18', model_kwargs='drop_rate=0.1'), TypeError,
          r'model_kwargs must be a dict.*model_kwargs=dict\(drop_rate=0.1\)'),
    _rule('output_stride is an int',
          lambda: TimmBackbone('resnet18', output_stride=16.0), ValueError,
          'output_stride must be one of .*got 16.0'),
    _rule('pretrained is a bool or a path',
          lambda: TimmBackbone('resnet18', pretrained=''), TypeError,
          "pretrained must be False, True or a file path, got ''"),
    _rule('init_cfg is a dict or a list of dicts',
          lambda: TimmBackbone('resnet18', init_cfg='weights.pth'), TypeError,
          r"init_cfg must be a dict with a type.*type='Pretrained'"),
    _rule('init_cfg Pretrained needs a checkpoint',
          lambda: TimmBackbone('resnet18', init_cfg=dict(type='Pretrained')), TypeError,
          r"type='Pretrained' needs checkpoint="),
    _rule('pyramid_strides refused on hierarchical models',
          lambda: TimmBackbone('resnet18', pyramid_strides=(8, 16, 32)), ValueError,
          r"pyramid_strides only apply to the simple pyramid.*'resnet18' is hierarchical.*"
          r'Remove pyramid_strides'),
    _rule('pyramid_channels refused on hierarchical models',
          lambda: TimmBackbone('resnet18', pyramid_channels=256), ValueError,
          'pyramid_channels only apply to the simple pyramid.*hierarchical'),
    _rule('pyramid options refused where no pyramid is built',
          lambda: TimmBackbone('vit_tiny_patch16_224', pyramid=None, pyramid_strides=(8, 16)),
          ValueError, 'pyramid_strides only apply.*pyramid=None .*builds none'),
    _rule('pyramid_strides is a sequence',
          lambda: TimmBackbone('vit_tiny_patch16_224', pyramid_strides=16), TypeError,
          'pyramid_strides must be a list/tuple'),
    _rule('pyramid_channels is an int, not a bool',
          lambda: TimmBackbone('vit_tiny_patch16_224', pyramid_channels=True), ValueError,
          'pyramid_channels must be None or a positive int, got True'),
    _rule('input_size and model_kwargs sizes exclude each other',
          lambda: TimmBackbone('vit_tiny_patch16_224', input_size=(256, 256),
                               model_kwargs=dict(img_size=224)), ValueError,
          r"input_size=\(256, 256\) and model_kwargs \['img_size'\] both set the input size"),
    _rule('image channels match in_channels (at forward)',
          lambda: TimmBackbone('resnet18')(torch.rand(1, 1, 64, 64)), ValueError,
          r'built for in_channels=3 but got images with 1 channel.*in_channels=1'),
    _rule('forward takes NCHW batches',
          lambda: TimmBackbone('resnet18')(torch.rand(3, 64, 64)), ValueError,
          'takes an NCHW image batch'),
]


@pytest.mark.parametrize('build, error, match', BAD_INPUTS)
def test_bad_input(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_feature_specs_fall_back_to_a_cpu_build(monkeypatch):
    # a model that cannot be built on the meta device still gets its specs (from a CPU build)
    import timm_backbones._timm as timm_mod
    from timm_backbones._cache import clear_caches
    real_create = timm_mod._create

    def no_meta(model_name, kwargs, out_indices, meta, pretrained=False):
        if meta:
            raise RuntimeError('this model computes with tensors while being built')
        return real_create(model_name, kwargs, out_indices, meta, pretrained)

    monkeypatch.setattr(timm_mod, '_create', no_meta)
    clear_caches()
    specs = feature_specs(dict(type='timm.regnety_002', in_channels=2))
    assert [s.stride for s in specs] == [4, 8, 16, 32]
    assert [s.channels for s in specs] == [24, 56, 152, 368]  # regnety_002's widths
    assert TimmBackbone('regnety_002', in_channels=2).feature_specs == specs


@pytest.mark.parametrize('name', NHWC)
def test_nhwc_outputs_are_contiguous_nchw(name):
    backbone = TimmBackbone(name).eval()
    assert backbone.plan.output_format == 'NHWC'
    with torch.no_grad():
        outs = backbone(torch.rand(1, 3, 224, 224))
    assert all(o.is_contiguous() for o in outs)


def test_feature_info_mismatch_is_an_exception_not_an_assert(monkeypatch):
    # the meta-device plan and the real build must agree; if not, a RuntimeError (kept under
    # python -O), naming the model
    import timm_backbones._backbone as backbone_mod
    real = backbone_mod.level_specs
    monkeypatch.setattr(backbone_mod, 'level_specs',
                        lambda info: real(info)[:-1])  # the built model "lost" a level
    with pytest.raises(RuntimeError, match="feature_info for 'resnet18' differs between"):
        TimmBackbone('resnet18')
