"""`slow` sweeps over every timm architecture (run with `make test-slow`).

Each architecture must either wire into a RetinaNet (feature_specs -> resolve_config -> meta
build of backbone + FPN, shape-checked meta forward at a detection-sized input) or be rejected up
front with a clear error of ours (never a cryptic failure inside the build). Plain models (levels
at one stride) must come out as a true 4..32 pyramid.
"""
import pytest
import timm

import timm_backbones  # noqa: F401  (registers the modules)
from timm_backbones.sweep import check_architecture, check_layer_decay, is_plain


@pytest.mark.slow
@pytest.mark.parametrize('name', timm.list_models())
def test_architecture_wires_into_retinanet(name):
    result = check_architecture(name, frozen=False)
    assert result.status in ('ok', 'rejected'), result.reason
    if result.status == 'ok' and is_plain(name):
        assert result.strides == [4, 8, 16, 32]  # a true pyramid, not four stride-16 maps


@pytest.mark.slow
@pytest.mark.parametrize('name', timm.list_models())
def test_layer_decay_groups_or_clear_error(name):
    # every architecture gets timm's layer-decay groups or the clear no-group_matcher error
    status, reason = check_layer_decay(name)
    assert status in ('groups', 'no_group_matcher', 'rejected'), reason


def test_layer_decay_check_itself():
    assert check_layer_decay('convnext_atto') == ('groups', '13 layers')  # stem + 12 blocks
    assert check_layer_decay('pit_ti_224')[0] == 'no_group_matcher'


def test_sweep_check_itself():
    """The fast suite runs the sweep's check on a few models (so it cannot rot)."""
    assert check_architecture('resnet18').status == 'ok'
    vit = check_architecture('vit_tiny_patch16_224')
    assert vit.status == 'ok' and vit.strides == [4, 8, 16, 32]
    beit = check_architecture('beit_base_patch16_224', frozen=False)  # fixed size: built for it
    assert beit.status == 'ok'
    crossvit = check_architecture('crossvit_tiny_240', frozen=False)  # resizes its input
    assert crossvit.status == 'rejected' and 'does not describe its outputs' in crossvit.reason
