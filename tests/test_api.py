"""engine/_api.py: every route that builds a detector from a config builds the same resolved,
initialized model: mmdet's and mmengine's registries resolve configs with timm backbones when
they build them (so mmdet's own APIs and tools need nothing but the configs' custom_imports),
and `build_detector` / `init_detector` leave no parameter or buffer uninitialized."""
import os

import pytest
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import Registry, init_default_scope

from helpers import ROOT, built_deterministic, nonfinite
from timm_backbones import build_detector, init_detector, resolve_config
from timm_backbones.engine import install_resolving_build

DEMO = os.path.join(ROOT, 'configs', 'retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py')


def _model_cfg(path=DEMO, **changes):
    cfg = Config.fromfile(path)
    cfg.model.backbone.pretrained = False
    cfg.merge_from_dict(changes)
    return cfg.model


@pytest.mark.parametrize('registry', [MODELS, ROOT_MODELS], ids=['mmdet', 'mmengine'])
def test_registries_build_configs_with_auto_fields(registry):
    # rule: MODELS.build(cfg.model) (what mmdet's init_detector, DetInferencer and analysis
    # tools call) resolves 'auto' as the runner does
    init_default_scope('mmdet')
    model = registry.build(_model_cfg())
    expected = resolve_config(_model_cfg())
    assert model.neck.lateral_convs[0].conv.in_channels == expected.neck.in_channels[0] == 128
    assert model.bbox_head.prior_generator.strides == [(s, s) for s in
                                                       expected.bbox_head.anchor_generator.strides]
    assert model.data_preprocessor.pad_size_divisor == 32


def test_registries_reject_stale_values_like_the_runner():
    # rule: a wrong explicit value fails with the same clear error on every route
    init_default_scope('mmdet')
    cfg = _model_cfg(**{'model.neck.in_channels': [64, 128, 256]})
    with pytest.raises(ValueError) as resolved:
        resolve_config(cfg)
    with pytest.raises(ValueError) as built:
        MODELS.build(cfg)
    assert str(built.value) == str(resolved.value)
    assert "model.neck.in_channels=[64, 128, 256]" in str(built.value)


def test_install_resolving_build_on_another_registry():
    # rule: a downstream registry (e.g. mmseg's) gets the same behaviour; installing is
    # idempotent; other configs build as before
    registry = Registry('test models', parent=ROOT_MODELS, scope='resolve_test')
    install_resolving_build(registry)
    build_func = registry.build_func
    install_resolving_build(registry)
    assert registry.build_func is build_func
    assert getattr(MODELS.build_func, 'resolves_timm_backbones', False)
    init_default_scope('mmdet')
    assert MODELS.build(dict(type='FPN', in_channels=[8, 16], out_channels=4, num_outs=2))


def test_init_detector_initializes_every_tensor():
    # rule: a model built without a checkpoint is initialized: no parameter or buffer is left as
    # torch.Tensor(...) memory (DETR's level_embed). torch's deterministic mode fills
    # uninitialized memory with NaN, so a missed init_weights() shows, whatever the allocator
    # hands out (build_detector on every shipped config: test_configs.py::test_config_builds)
    cfg = Config.fromfile(os.path.join(ROOT, 'configs',
                                       'dino-4scale_timm-swin-tiny_8xb2-12e_coco.py'))
    cfg.model.backbone.pretrained = False
    assert not nonfinite(built_deterministic(init_detector, cfg))


def test_the_check_sees_a_missed_init_weights():
    # the NaN check above fails for a detector built without init_weights()
    cfg = Config.fromfile(os.path.join(ROOT, 'configs',
                                       'dino-4scale_timm-swin-tiny_8xb2-12e_coco.py'))
    cfg.model.backbone.pretrained = False
    assert nonfinite(built_deterministic(build_detector, cfg, init_weights=False)) == \
        ['level_embed']
