"""Shared test helpers (one module): paths, mmdet's (and mmseg's) own configs with a timm backbone
swapped in, the representative model lists the fast tests parametrize over, and a free local port.

`Config.fromfile('mmdet::...')` only resolves inside `_base_`, so mmdet's configs load by path.
"""
import copy
import functools
import importlib.util
import os
import socket

import torch
from mmengine.config import Config

from timm_backbones import feature_specs
from timm_backbones._specs import check_maps
from timm_backbones.wiring import neck_levels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMDET_CONFIGS = os.path.join(importlib.util.find_spec('mmdet').submodule_search_locations[0],
                             '.mim', 'configs')
MMSEG = importlib.util.find_spec('mmseg').submodule_search_locations[0]  # found, not imported
MMSEG_CONFIGS = os.path.join(MMSEG, '.mim', 'configs')

# ---- representative timm models ----------------------------------------------------------------
CNNS = ['resnet18', 'efficientnet_b0', 'mobilenetv3_large_100', 'regnety_002', 'densenet121',
        'hrnet_w18_small', 'dla34']
STRIDE4_FIRST = ['convnext_atto']
NHWC = ['swin_tiny_patch4_window7_224', 'mambaout_femto']
HOOK_BASED = ['xception41']
PLAIN = ['vit_tiny_patch16_224', 'deit_tiny_patch16_224', 'eva02_tiny_patch14_224',
         'vit_pwee_patch16_reg1_gap_256']
WINDOWED = ['swin_tiny_patch4_window7_224']
REPRESENTATIVE = CNNS + STRIDE4_FIRST + NHWC + HOOK_BASED
NON_SQUARE = (256, 320)  # H, W used in tests: non-square, small, valid for every model above


# ---- mmdet configs -----------------------------------------------------------------------------
def mmdet_config(path):
    """mmdet's config `path` (under mmdet/.mim/configs), as a fresh `Config`."""
    return Config.fromfile(os.path.join(MMDET_CONFIGS, path))


def mmseg_config(path):
    """mmseg's config `path` (under mmseg/.mim/configs), as a fresh `Config`."""
    return Config.fromfile(os.path.join(MMSEG_CONFIGS, path))


@functools.lru_cache(maxsize=None)
def model_config(path):
    """mmdet's model config `path` as a dict (cached: do not modify it)."""
    return mmdet_config(path).model.to_dict()


def mmdet_model(path, backbone, **changes):
    """mmdet's model config `path` with a timm backbone and `changes` merged in (dicts merge key
    by key, like mmengine's config inheritance)."""
    model = copy.deepcopy(model_config(path))
    model['backbone'] = backbone
    merge(model, changes)
    return model


def merge(base, changes):
    """Merge `changes` into `base` in place, dicts key by key."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def timm(name, out_indices=None, **kwargs):
    """A TimmBackbone config."""
    cfg = dict(type='TimmBackbone', model_name=name, **kwargs)
    if out_indices is not None:
        cfg['out_indices'] = out_indices
    return cfg


def free_port():
    """A free TCP port on 127.0.0.1 (for process groups)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ---- shapes ------------------------------------------------------------------------------------
def predicted_levels(model):
    """The levels the neck table says `model['neck']` (a dict or a chain) returns."""
    return neck_levels(model, feature_specs(model['backbone']))


def check_shapes(shapes, levels, size):
    """Each map (NCHW shape) has its level's channels and exactly ceil(input / stride) pixels
    per side, TimmBackbone's guarantee (levels of unknown stride: channels only)."""
    check_maps([tuple(s) for s in shapes], levels, size, 'maps', exact=True)


def nonfinite(model):
    """Names of the floating-point parameters and buffers of `model` holding NaN or infinity
    (under `torch.use_deterministic_algorithms(True)` uninitialized memory is NaN)."""
    return [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_floating_point() and not torch.isfinite(t).all()]
