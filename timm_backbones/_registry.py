"""Registration in mmdet's `MODELS`: `'TimmBackbone'`, and one `'timm.<arch>'` entry per timm
architecture, held by a child registry with scope `timm` (mmengine resolves `timm.resnet50` by
splitting the scope off at the first dot).
"""
from typing import Any, Callable

import timm
from mmdet.registry import MODELS
from mmengine.registry import Registry

from ._backbone import TimmBackbone

__all__ = ['TIMM_MODELS', 'register_all']

MODELS.register_module(module=TimmBackbone)
TIMM_MODELS = Registry('model', parent=MODELS, scope='timm')


def _builder(arch: str) -> Callable[..., TimmBackbone]:
    def build(**kwargs: Any) -> TimmBackbone:
        if 'model_name' in kwargs:
            raise TypeError(f"type='timm.{arch}' names the model already; drop model_name="
                            f"{kwargs['model_name']!r}, or use type='TimmBackbone'.")
        return TimmBackbone(model_name=arch, **kwargs)
    build.__name__ = build.__qualname__ = arch
    build.__doc__ = f"TimmBackbone(model_name='{arch}', ...)"
    return build


def register_all() -> int:
    """Register `timm.<arch>` for every architecture of `timm.list_models()`; returns the count."""
    for arch in timm.list_models():
        if arch not in TIMM_MODELS.module_dict:
            TIMM_MODELS.register_module(name=arch, module=_builder(arch))
    return len(TIMM_MODELS.module_dict)


register_all()
