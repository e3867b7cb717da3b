"""Registration in a models registry: `'TimmBackbone'`, and one `'timm.<arch>'` entry per timm
architecture, held by a child registry with scope `timm` (mmengine resolves `timm.resnet50` by
splitting the scope off at the first dot and looking in the registry's children). Done for
mmdet's `MODELS` on import; `register_backbones` does it for another package's registry (mmseg's,
in `timm_backbones.seg`).
"""
from typing import Any, Callable

import timm
from mmdet.registry import MODELS
from mmengine.registry import Registry

from ._backbone import TimmBackbone

__all__ = ['TIMM_MODELS', 'register_all', 'register_backbones']

ARCH_SCOPE = 'timm'


def _builder(arch: str) -> Callable[..., TimmBackbone]:
    def build(**kwargs: Any) -> TimmBackbone:
        if 'model_name' in kwargs:
            raise TypeError(f"type='timm.{arch}' names the model already; drop model_name="
                            f"{kwargs['model_name']!r}, or use type='TimmBackbone'.")
        return TimmBackbone(model_name=arch, **kwargs)
    build.__name__ = build.__qualname__ = arch
    build.__doc__ = f"TimmBackbone(model_name='{arch}', ...)"
    return build


def register_all(registry: Registry) -> int:
    """Register `timm.<arch>` for every architecture of `timm.list_models()` in a `timm`-scoped
    registry (idempotent); returns the count."""
    for arch in timm.list_models():
        if arch not in registry.module_dict:
            registry.register_module(name=arch, module=_builder(arch))
    return len(registry.module_dict)


def register_backbones(models: Registry) -> Registry:
    """Register `TimmBackbone` in a models registry, and `timm.<arch>` in a child registry of it
    with scope `timm` (created once; idempotent).

    Args:
        models: A models registry (mmdet's, mmseg's, ...).

    Returns:
        The `timm`-scoped child registry.

    Example:
        >>> from mmseg.registry import MODELS
        >>> register_backbones(MODELS).get('resnet50')  # doctest: +SKIP
    """
    if models.module_dict.get(TimmBackbone.__name__) is not TimmBackbone:
        models.register_module(module=TimmBackbone)
    child = models.children.get(ARCH_SCOPE)
    if child is None:
        child = Registry('model', parent=models, scope=ARCH_SCOPE)
    register_all(child)
    return child


TIMM_MODELS = register_backbones(MODELS)
