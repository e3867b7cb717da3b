"""Layer-wise learning-rate decay for timm backbones: `TimmLayerDecayOptimWrapperConstructor`
(registered in mmdet's OPTIM_WRAPPER_CONSTRUCTORS) and the per-parameter settings it applies,
`layer_decay_settings`.

Every backbone parameter gets the lr scale and the weight-decay choice that timm's own
`timm.optim.param_groups_layer_decay` gives it in the *full* timm model (built on the meta device:
no weights), with timm's `no_weight_decay()` names, as `timm.optim.create_optimizer_v2` passes
them. The feature wrappers lack `group_matcher` and rename modules (FeatureListNet: `stages.0` ->
`stages_0`; FeatureGetterNet keeps the model under `model.`), so parameter names are mapped from
the wrapper onto the full model, once per model on a meta-device build of the wrapper (its
shapes confirm each match); the backbone's own parameters are then found by name with FSDP
and activation-checkpoint wrapper parts dropped (`_names.unwrapped_name`), so an FSDP-wrapped
model (`use_orig_params=True`, whose parameters are flat shards) gets a plain one's groups.
The classifier head (not in the backbone) holds timm's top layer, so the last backbone layer
gets `rate`, as in timm's fine-tuning recipes (a headless tag such as `.mae` is built with a
head for this). Necks, heads and the simple pyramid keep the base lr.

The constructor builds on mmengine's `DefaultOptimWrapperConstructor`, so `custom_keys`,
`norm_decay_mult`, `bias_decay_mult`, ... compose with it: the layer scale multiplies whatever lr
they give, and timm's no-decay parameters get weight_decay 0.
"""
import logging
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from timm.optim import param_groups_layer_decay
from torch import nn

from .._backbone import TimmBackbone
from .._cache import Memo, kwargs_key
from .._meta_ops import on_meta
from .._names import full_name, unwrapped_name
from .._timm import create_features

__all__ = ['TimmLayerDecayOptimWrapperConstructor', 'layer_decay_settings', 'LayerSetting',
           'NoGroupMatcherError']

LayerSetting = Tuple[float, bool]  # (lr scale, whether weight decay applies)
# timm fine-tunes a model with a classifier head, its top layer; headless tags get one, so the
# last backbone block gets `rate` whatever the tag
_HEAD_CLASSES = 1000


class NoGroupMatcherError(ValueError):
    """The timm model has no `group_matcher`: its layers, and so layer decay, are unknown."""


_SETTINGS = Memo('layer-decay settings', 64)


def _wrapper_settings(model_name: str, kwargs: Dict[str, Any], out_indices: Tuple[int, ...],
                      rate: float) -> Dict[str, LayerSetting]:
    """timm's layer-decay settings by parameter name of the feature extractor (meta-device
    builds, cached)."""
    return _SETTINGS.get((model_name, kwargs_key(kwargs), tuple(out_indices), rate),
                         lambda: _read_wrapper_settings(model_name, kwargs, out_indices, rate))


def _read_wrapper_settings(model_name: str, kwargs: Dict[str, Any], out_indices: Tuple[int, ...],
                           rate: float) -> Dict[str, LayerSetting]:
    by_full = _read_settings(model_name, kwargs, rate)
    with on_meta():
        wrapper = create_features(model_name, kwargs, out_indices)
    names = _map_names(model_name, wrapper, {n: shape for n, (_, shape) in by_full.items()})
    return {n: by_full[full][0] for n, full in names.items()}


def _read_settings(model_name: str, kwargs: Dict[str, Any], rate: float
                   ) -> Dict[str, Tuple[LayerSetting, torch.Size]]:
    try:
        with on_meta():
            full = timm.create_model(model_name, **kwargs)
            if getattr(full, 'num_classes', None) == 0:  # a headless tag (e.g. '.mae')
                full = timm.create_model(model_name, **dict(kwargs, num_classes=_HEAD_CLASSES))
    except Exception as err:  # noqa: BLE001 - timm's build errors have many types
        raise ValueError(
            f'layer_decay_rate: the full timm model {model_name!r} (with {kwargs}) does not '
            f'build, so its layers cannot be read ({type(err).__name__}: {err}). Remove '
            f'layer_decay_rate (use the default optimizer constructor).') from err
    if not callable(getattr(full, 'group_matcher', None)):
        raise NoGroupMatcherError(
            f"layer_decay_rate: timm's {type(full).__name__} ({model_name!r}) has no "
            f'group_matcher, so its layers are not known (timm itself would group parameters by '
            f'count). Layer-wise lr decay is unavailable for this model: remove '
            f"layer_decay_rate and constructor='TimmLayerDecayOptimWrapperConstructor', or set "
            f"per-module lr_mult with paramwise_cfg=dict(custom_keys={{'backbone.model.<module>': "
            f'dict(lr_mult=...)}}).')
    no_decay = getattr(full, 'no_weight_decay', lambda: set())()
    try:
        groups = param_groups_layer_decay(full, weight_decay=1.0, layer_decay=rate,
                                          no_weight_decay_list=no_decay)
    except Exception as err:  # noqa: BLE001 - a group_matcher timm does not implement
        raise ValueError(
            f"layer_decay_rate: timm's group_matcher of {model_name!r} failed "
            f'({type(err).__name__}: {err}); layer-wise lr decay is unavailable for this model. '
            f'Remove layer_decay_rate.') from err
    by_id = {id(p): (float(g['lr_scale']), g['weight_decay'] > 0)
             for g in groups for p in g['params']}
    return {n: (by_id[id(p)], p.shape) for n, p in full.named_parameters()}


def _map_names(model_name: str, wrapper: nn.Module, full_shapes: Dict[str, torch.Size]
               ) -> Dict[str, str]:
    """Wrapper parameter name -> full-model parameter name of the same shape
    (`_names.full_name`: wrapper prefixes dropped, flattened containers unflattened)."""
    found = {}
    for name, param in wrapper.named_parameters():
        match = full_name(name, lambda n: full_shapes.get(n) == param.shape)
        if match is None:
            raise RuntimeError(
                f'layer decay: the parameter {name!r} of the timm feature extractor for '
                f'{model_name!r} has no counterpart in the full timm model. This is a bug in '
                f'timm_backbones; please report it with the model name.')
        found[name] = match
    return found


def layer_decay_settings(backbone: TimmBackbone, rate: float) -> Dict[str, LayerSetting]:
    """Per parameter of a TimmBackbone's timm model: the lr scale and whether weight decay
    applies, as timm's `param_groups_layer_decay` gives them in the full timm model.

    Args:
        backbone: The backbone (its `plan` holds the timm arguments it was built with); its
            blocks may be FSDP units (with `use_orig_params=True`) or checkpoint-wrapped.
        rate: The layer decay rate (timm's `layer_decay`), 0 < rate <= 1.

    Returns:
        {name in `backbone.named_parameters()` (e.g. `'model.layer1.0.conv1.weight'`):
        (lr scale, decays)}; the pyramid's parameters are not included (base lr).

    Raises:
        NoGroupMatcherError: The model has no `group_matcher` (its layers are unknown).

    Example:
        >>> settings = layer_decay_settings(TimmBackbone('convnext_atto'), 0.8)
        >>> settings['model.stem_0.weight'], settings['model.stages_3.blocks.1.mlp.fc2.bias']
        ((0.0549..., True), (0.8, False))
    """
    by_name = _wrapper_settings(backbone.model_name, backbone.plan.kwargs,
                                backbone.plan.timm_indices, float(rate))
    found = {}
    for name, _ in backbone.model.named_parameters():
        setting = by_name.get(unwrapped_name(name))
        if setting is None:
            flat = (' It is a flat parameter of FSDP: layer decay needs the original parameters, '
                    "model_wrapper=dict(use_orig_params=True) (mmengine's default)."
                    if 'flat_param' in name else ' This is a bug in timm_backbones; please '
                    'report it with the model name.')
            raise RuntimeError(f'layer decay: the parameter {name!r} of the timm feature '
                               f'extractor for {backbone.model_name!r} has no counterpart in the '
                               f'full timm model.{flat}')
        found[f'model.{name}'] = setting
    return found


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TimmLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor plus timm's layer-wise lr decay for timm backbones.

    Configured with `paramwise_cfg=dict(layer_decay_rate=0.75, ...)`: every parameter of every
    `TimmBackbone` in the model gets lr x (the scale timm's `param_groups_layer_decay` gives it in
    the full timm model) and weight_decay 0 where timm excludes it (1-D parameters and the model's
    `no_weight_decay()` names). The other `paramwise_cfg` keys (`custom_keys`, `norm_decay_mult`,
    `bias_lr_mult`, ...) work as in `DefaultOptimWrapperConstructor`, and the layer scale
    multiplies the lr they give. Necks and heads keep the base lr. Every trainable parameter is in
    exactly one group.

    Args:
        optim_wrapper_cfg: The optim_wrapper config (with `optimizer`, which must set `lr`).
        paramwise_cfg: Must contain `layer_decay_rate` (0 < rate <= 1).

    Example:
        >>> optim_wrapper = dict(
        ...     type='OptimWrapper',
        ...     constructor='TimmLayerDecayOptimWrapperConstructor',
        ...     paramwise_cfg=dict(layer_decay_rate=0.75, norm_decay_mult=0.0),
        ...     optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05))
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        rate = (paramwise_cfg or {}).get('layer_decay_rate')
        if rate is None:
            raise ValueError(
                'TimmLayerDecayOptimWrapperConstructor needs paramwise_cfg=dict('
                f'layer_decay_rate=...) (e.g. 0.75), got paramwise_cfg={paramwise_cfg!r}. Without '
                "layer decay, use the default constructor (remove constructor=...).")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f'paramwise_cfg.layer_decay_rate must be a number in (0, 1] (lr of '
                             f'layer i = lr x rate ** (top layer - i)), got {rate!r}.')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        if self.base_lr is None:
            raise ValueError('TimmLayerDecayOptimWrapperConstructor: the optimizer config must set '
                             f'lr (layer scales multiply it), got {self.optimizer_cfg!r}.')
        self.layer_decay_rate = float(rate)
        # `layer_decay_rate` stays in paramwise_cfg: the default constructor ignores keys it does
        # not know, and a non-empty paramwise_cfg makes it build one group per parameter

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module: Optional[float] = None) -> None:
        """mmengine's groups (one per parameter, recursively), then, at the root call, each
        timm backbone parameter's group gets its layer scale and weight decay."""
        super().add_params(params, module, prefix, is_dcn_module)
        if prefix == '':  # the root call (children always have a non-empty prefix)
            self._apply_layer_decay(params, module)

    def _apply_layer_decay(self, params: List[dict], model: nn.Module) -> None:
        settings: Dict[int, LayerSetting] = {}
        backbones = [(n, m) for n, m in model.named_modules() if isinstance(m, TimmBackbone)]
        if not backbones:
            raise ValueError(
                'paramwise_cfg.layer_decay_rate: the model has no TimmBackbone, so there are no '
                'timm layers to decay. Remove layer_decay_rate and the constructor, or use a timm '
                "backbone (type='TimmBackbone' or 'timm.<arch>').")
        for _, backbone in backbones:
            found = layer_decay_settings(backbone, self.layer_decay_rate)
            named = dict(backbone.named_parameters())
            settings.update({id(named[n]): s for n, s in found.items()})
        scales = []
        for group in params:
            setting = settings.get(id(group['params'][0]))
            if setting is None:
                continue
            scale, decays = setting
            group['lr'] = group.get('lr', self.base_lr) * scale
            if not decays:
                group['weight_decay'] = 0.0
            scales.append(scale)
        if scales:
            print_log(f'layer-wise lr decay {self.layer_decay_rate}: {len(scales)} parameters of '
                      f"{', '.join(n or 'the model' for n, _ in backbones)} with lr scales "
                      f'{min(scales):.3g}..{max(scales):.3g} ({len(set(scales))} layers)',
                      logger='current', level=logging.INFO)
