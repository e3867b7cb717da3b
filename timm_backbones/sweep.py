"""Sweeps over timm's architectures: each one through `feature_specs`, `resolve_config` and a
meta-device build of backbone + FPN + RetinaNet head with a shape-checked meta forward at a
detection-sized input. Used by `tools/sweep.py` and the `slow` tests (public: tools import
nothing private).
"""
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ._plan import feature_specs, plan_backbone, plan_from_config
from ._specs import size_near

__all__ = ['SweepResult', 'check_architecture', 'retinanet_config', 'is_plain',
           'check_layer_decay']

DETECTION_SIZE = (608, 800)  # H, W: a detection-like, non-square input


@dataclass
class SweepResult:
    """The outcome for one architecture.

    Args:
        name: timm architecture.
        status: 'ok', 'rejected' (a clear ValueError/TypeError of ours, before any build) or
            'failed' (anything else: a bug to fix).
        reason: The error message (empty when ok).
        specs_seconds: Time of `feature_specs` (cold cache).
        strides: Output strides of the backbone.
        frozen_stages: Whether frozen_stages=1 could be located (None: not checked).
    """
    name: str
    status: str
    reason: str = ''
    specs_seconds: float = 0.0
    strides: List[int] = field(default_factory=list)
    frozen_stages: Optional[bool] = None


def retinanet_config(backbone: Dict) -> Dict:
    """A RetinaNet model config with every channel and stride left to `resolve_config`."""
    return dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor='auto'),
        backbone=backbone,
        neck=dict(type='FPN', in_channels='auto', out_channels=64, start_level=0,
                  add_extra_convs='on_input', num_outs=5),
        bbox_head=dict(
            type='RetinaHead', num_classes=3, in_channels=64, stacked_convs=1, feat_channels=64,
            anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                  scales_per_octave=3, ratios=[0.5, 1.0, 2.0], strides='auto'),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                            target_stds=[1.0, 1.0, 1.0, 1.0]),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                          loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.05,
                      nms=dict(type='nms', iou_threshold=0.5), max_per_img=10))


def _check_maps(maps, strides: List[int], size: Tuple[int, int], channels: List[int],
                what: str) -> None:
    for out, stride, c in zip(maps, strides, channels):
        expect = [math.ceil(s / stride) for s in size]
        if out.shape[1] != c or not all(size_near(g, s, stride)
                                        for g, s in zip(out.shape[2:], size)):
            raise AssertionError(f'{what}: got {tuple(out.shape)}, expected {c} channels and '
                                 f'about {expect} at stride {stride}')


def check_architecture(name: str, size: Tuple[int, int] = DETECTION_SIZE,
                       frozen: bool = True) -> SweepResult:
    """Run one architecture through the whole wiring on the meta device.

    Example:
        >>> check_architecture('resnet18').status
        'ok'
    """
    from mmdet.registry import MODELS

    from .wiring import resolve_config
    backbone_cfg = dict(type='TimmBackbone', model_name=name)
    start = time.perf_counter()
    try:
        specs = feature_specs(backbone_cfg)
        seconds = time.perf_counter() - start
        if plan_from_config(backbone_cfg).fixed_size is not None:
            # a fixed-size model: build it for a square canvas holding the detection input
            # (some such models only take square sizes); smaller inputs are padded to it
            backbone_cfg['input_size'] = (max(size), max(size))
            specs = feature_specs(backbone_cfg)
        model_cfg = resolve_config(dict(model=retinanet_config(backbone_cfg)))['model']
    except (ValueError, TypeError) as err:
        return SweepResult(name, 'rejected', f'{type(err).__name__}: {err}',
                           time.perf_counter() - start)
    result = SweepResult(name, 'ok', specs_seconds=seconds, strides=[s.stride for s in specs])
    try:
        with torch.device('meta'):
            backbone = MODELS.build(model_cfg['backbone']).eval()
            neck = MODELS.build(model_cfg['neck']).eval()
        divisor = model_cfg['data_preprocessor']['pad_size_divisor']
        padded = tuple(-(-s // divisor) * divisor for s in size)
        with torch.no_grad():
            feats = backbone(torch.empty(1, 3, *padded, device='meta'))
            _check_maps(feats, result.strides, padded, [s.channels for s in specs], 'backbone')
            outs = neck(feats)
        strides = model_cfg['bbox_head']['anchor_generator']['strides']
        _check_maps(outs, strides, padded, [64] * len(outs), 'FPN')
    except Exception as err:  # the sweep records every failure with its reason
        return SweepResult(name, 'failed', f'{type(err).__name__}: {err}', seconds,
                           result.strides)
    if frozen:
        from ._backbone import TimmBackbone
        try:
            with torch.device('meta'):
                TimmBackbone(name, frozen_stages=1)
            result.frozen_stages = True
        except ValueError:
            result.frozen_stages = False
    return result


def is_plain(name: str) -> bool:
    """Whether the architecture's default levels share one stride (ViT-like); False for models
    that cannot be planned.

    Example:
        >>> is_plain('vit_tiny_patch16_224'), is_plain('resnet18')
        (True, False)
    """
    try:
        levels = plan_backbone(name, pyramid=None).levels
    except (ValueError, TypeError):
        return False
    return len({s.stride for s in levels}) == 1


def check_layer_decay(name: str, rate: float = 0.75) -> Tuple[str, str]:
    """Whether `TimmLayerDecayOptimWrapperConstructor` gives the default backbone of `name`
    layer-decay groups (meta device, no weights).

    Returns:
        (status, reason): 'groups' (every backbone parameter got timm's layer scale; reason
        names the number of layers), 'no_group_matcher' (the clear error for models without
        one), 'rejected' (the backbone itself is rejected with a clear error of ours, before
        layer decay) or 'failed' (anything else: a bug to fix).

    Example:
        >>> check_layer_decay('convnext_atto')[0]
        'groups'
    """
    from ._backbone import TimmBackbone
    from .engine import NoGroupMatcherError, layer_decay_settings
    try:
        with torch.device('meta'):
            backbone = TimmBackbone(name)
    except (ValueError, TypeError) as err:
        return 'rejected', f'{type(err).__name__}: {err}'
    try:
        settings = layer_decay_settings(backbone, rate)
    except NoGroupMatcherError as err:
        return 'no_group_matcher', str(err)
    except Exception as err:  # the sweep records every failure with its reason
        return 'failed', f'{type(err).__name__}: {err}'
    named = [n for n, _ in backbone.model.named_parameters()]
    if len(settings) != len(named):
        return 'failed', f'{len(settings)} of {len(named)} parameters got a layer scale'
    return 'groups', f'{len({s for s, _ in settings.values()})} layers'
