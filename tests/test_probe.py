"""`_probe.py`: meta-device builds and forwards, their memoized results (failures too), which
models get timm's dynamic-size arguments, and how failures under the fast meta kernels are read."""
import pytest
import timm
import torch

from timm_backbones import _probe
from timm_backbones._cache import clear_caches
from timm_backbones._plan import plan_backbone
from timm_backbones._probe import probe, runs_at_any_size


def test_failed_probes_are_cached():
    # rule: a build that fails is not repeated (the failure is cached and raised again)
    clear_caches()
    calls = []
    real = _probe.create_features

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    _probe.create_features = counting
    try:
        for _ in range(3):
            with pytest.raises(ValueError, match='dynamic_img_size'):
                probe('resnet18', dict(in_chans=3, dynamic_img_size=True))
    finally:
        _probe.create_features = real
    assert len(calls) == 1  # once on the meta device; refused arguments: no CPU build, no repeat


def test_models_that_run_at_any_size_get_no_dynamic_size_arguments():
    # rule: timm's dynamic-size arguments are tried only on models that need them
    clear_caches()
    calls = []
    real = _probe.create_features

    def counting(name, kwargs, *args, **kw):
        calls.append(dict(kwargs))
        return real(name, kwargs, *args, **kw)

    _probe.create_features = counting
    try:
        plan = plan_backbone('resnet18')
    finally:
        _probe.create_features = real
    assert calls == [dict(in_chans=3)] and plan.kwargs == dict(in_chans=3)
    assert runs_at_any_size('resnet18', dict(in_chans=3))
    # a fixed-size ViT does need them, and gets them
    assert not runs_at_any_size('vit_tiny_patch16_224', dict(in_chans=3))
    assert plan_backbone('vit_tiny_patch16_224').kwargs['dynamic_img_size'] is True


@pytest.mark.parametrize('name', ['resnet18', 'resnet50.a1_in1k', 'resnet19', 'resnet50.nope',
                                  'convnext_tiny_in22ft1k', 'resnet*', 'conv_stem'])
def test_fast_architecture_check_agrees_with_timm(name):
    # rule: check_model_name's fast path (one exact timm.list_models lookup) accepts exactly the
    # architectures timm lists; tags and unknown names go on to the full check
    from timm_backbones._timm import _is_architecture
    assert _is_architecture(name) == (name in timm.list_models())


def test_a_fast_meta_kernel_bug_is_raised_not_read_as_a_size_limit(monkeypatch):
    # rule: a forward that fails only under fast_meta is a bug of ours, raised as such; it must
    # not pass for "the model does not run at this size"
    from timm_backbones import _meta_ops
    clear_caches()
    table = dict(_meta_ops._fast_ops())

    def wrong_relu(func, args, kwargs):  # a broken kernel
        raise RuntimeError('broken kernel')

    table[torch.ops.aten.relu.default] = wrong_relu
    table[torch.ops.aten.relu_.default] = wrong_relu
    monkeypatch.setattr(_meta_ops._FastMeta, '_ops', table)
    with pytest.raises(RuntimeError, match='bug in timm_backbones.* fast meta kernels'):
        plan_backbone('resnet18')
    monkeypatch.undo()
    clear_caches()
    assert plan_backbone('resnet18').pad_divisor == 1


def test_dynamic_size_models_keep_their_arguments():
    # rule: a ViT-style model that runs at any size as built still gets timm's dynamic-size
    # arguments (the plan is the one trying them always gave: pad divisor 1, not the patch)
    plan = plan_backbone('vit_base_patch16_dinov3')
    assert plan.kwargs.get('dynamic_img_pad') is True and plan.pad_divisor == 1


def test_meta_forwards_make_their_tensors_on_the_meta_device(monkeypatch):
    # rule: trial forwards run with the meta device as the default, so tensors a model makes
    # while it runs take no memory or time (ConViT rebuilds an N^2 x 3 index table in every
    # block: 600 MB each at 1344x1344 if made on the CPU)
    from timm.models.convit import GPSA
    made = []
    real = GPSA.get_rel_indices

    def spy(self, num_patches):
        made.append(torch.empty(()).device.type)  # where a tensor made here lands
        return real(self, num_patches)

    monkeypatch.setattr(GPSA, 'get_rel_indices', spy)
    clear_caches()
    plan = plan_backbone('convit_tiny', input_size=(448, 448))
    assert plan.fixed_size == (448, 448) and made and set(made) == {'meta'}


@pytest.mark.parametrize('name', ['convit_tiny', 'eva02_tiny_patch14_224', 'levit_128',
                                  'maxvit_tiny_tf_224', 'inception_v3', 'mobilevitv2_050'])
def test_trial_forwards_without_the_default_device_give_what_on_meta_gives(name, monkeypatch):
    # rule: trial forwards start without torch's default-device mode and fall back to on_meta
    # at the first tensor a model makes on the CPU (ConViT's index tables, EVA's rotary
    # embeddings): the plan is the one every forward under on_meta gives
    clear_caches()
    fast = plan_backbone(name)
    monkeypatch.setattr(_probe._Trials, '_run', lambda self, hw: _probe._shapes_or_error(
        self.model, self._input(hw), _probe.on_meta()))
    clear_caches()
    assert plan_backbone(name) == fast
