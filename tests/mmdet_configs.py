"""Test helpers: mmdet's own configs (shipped inside the package) with a timm backbone swapped
in. `Config.fromfile('mmdet::...')` only resolves inside `_base_`, so configs load by path."""
import copy
import functools
import importlib.util
import os

from mmengine.config import Config

CONFIGS = os.path.join(importlib.util.find_spec('mmdet').submodule_search_locations[0],
                       '.mim', 'configs')


@functools.lru_cache(maxsize=None)
def model_config(path):
    """mmdet's model config `path` as a dict (cached: do not modify it)."""
    return Config.fromfile(os.path.join(CONFIGS, path)).model.to_dict()


def mmdet_model(path, backbone, **changes):
    """mmdet's model config `path` (under mmdet/.mim/configs) with a timm backbone and `changes`
    merged in (dicts merge key by key, like mmengine's config inheritance)."""
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
