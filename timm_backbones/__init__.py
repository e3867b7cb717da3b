"""timm_backbones: every timm feature-extraction model as a first-class mmdet 3.x backbone.

Layout:
    core (this folder): `FeatureSpec` (`_specs`), creating timm models (`_timm`), reading them
        without weights (`_probe`), planning a backbone (`_plan`), `TimmBackbone`
        (`_backbone`), the simple pyramid (`_pyramid`), frozen stages (`_freeze`), norm layers
        and SyncBN (`_norms`), checkpoint loading (`_checkpoint`), registration (`_registry`).
    wiring/: `resolve_config` and its neck and head rules.
    engine/: `TimmBackboneRunner`, `TimmBackboneFlexibleRunner` (FSDP) and its policies,
        `build_detector` / `init_detector`, hooks.
    data/: the built-in synthetic dataset and metric.
    sweep: checks of timm architectures through the whole wiring (tools/sweep.py).

Importing the package registers, in mmdet's registries: `TimmBackbone` and one `timm.<arch>`
entry per timm architecture (MODELS), `TimmBackboneRunner` and `TimmBackboneFlexibleRunner`
(RUNNERS), `LossCurveHook` (HOOKS) and `TimmLayerDecayOptimWrapperConstructor`
(OPTIM_WRAPPER_CONSTRUCTORS), and the FSDP policies `timm_block_wrap_policy` /
`timm_block_check_fn` in mmengine's root FUNCTIONS; it makes mmengine's and
mmdet's MODELS resolve configs with timm backbones when they build them (`engine/_api.py`), and
allows what mmengine writes into checkpoints for weights-only loading (`_checkpoint.py`). The
plugin import stays light: the built-in data (`SyntheticShapesDataset` in DATASETS,
`SyntheticCocoMetric` in METRICS) needs mmdet's datasets and pycocotools, so it registers when
`timm_backbones.data` is imported (the shared base config `configs/_base_/timm_runtime.py` lists
it in `custom_imports`) or when one of its names is first read from this package.
"""
import importlib
from typing import Any

from ._backbone import TimmBackbone
from ._checkpoint import allow_mmengine_globals
from ._plan import BackbonePlan, feature_specs
from ._pyramid import SimplePyramid
from ._registry import TIMM_MODELS
from ._specs import FeatureSpec
from .engine import (LossCurveHook, TimmBackboneFlexibleRunner, TimmBackboneRunner,
                     TimmLayerDecayOptimWrapperConstructor, build_detector, init_detector)
from .version import __version__
from .wiring import has_timm_backbone, resolve_config

__all__ = ['TimmBackbone', 'FeatureSpec', 'BackbonePlan', 'feature_specs', 'resolve_config',
           'has_timm_backbone', 'init_detector', 'build_detector', 'TimmBackboneRunner',
           'TimmBackboneFlexibleRunner',
           'SimplePyramid',
           'SyntheticShapesDataset', 'SyntheticCocoMetric', 'make_synthetic_coco',
           'LossCurveHook', 'TimmLayerDecayOptimWrapperConstructor', 'TIMM_MODELS',
           '__version__']

allow_mmengine_globals()  # mmdet's own APIs read mmengine checkpoints weights-only

_LAZY = {'SyntheticShapesDataset': 'data', 'SyntheticCocoMetric': 'data',
         'make_synthetic_coco': 'data'}


def __getattr__(name: str) -> Any:
    """The built-in data's public names, imported on first use (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
