"""timm_backbones: every timm feature-extraction model as a first-class mmdet 3.x backbone.

Layout:
    core (this folder): `FeatureSpec` (`_specs`), creating timm models (`_timm`), reading them
        without weights (`_probe`), planning a backbone (`_plan`), `TimmBackbone`
        (`_backbone`), the simple pyramid (`_pyramid`), frozen stages (`_freeze`), norm layers
        and SyncBN (`_norms`), checkpoint loading (`_checkpoint`), registration (`_registry`).
    wiring/: `resolve_config` and its neck and head rules.
    engine/: `TimmBackboneRunner`, `build_detector` / `init_detector`, hooks.
    data/: the built-in synthetic dataset and metric.
    sweep: checks of timm architectures through the whole wiring (tools/sweep.py).

Importing the package registers, in mmdet's registries: `TimmBackbone` and one `timm.<arch>`
entry per timm architecture (MODELS), `TimmBackboneRunner` (RUNNERS), `SyntheticShapesDataset`
(DATASETS), `SyntheticCocoMetric` (METRICS), `LossCurveHook` (HOOKS) and
`TimmLayerDecayOptimWrapperConstructor` (OPTIM_WRAPPER_CONSTRUCTORS).
"""
from ._backbone import TimmBackbone
from ._plan import feature_specs
from ._pyramid import SimplePyramid
from ._registry import TIMM_MODELS
from ._specs import FeatureSpec
from .data import SyntheticCocoMetric, SyntheticShapesDataset, make_synthetic_coco
from .engine import (LossCurveHook, TimmBackboneRunner, TimmLayerDecayOptimWrapperConstructor,
                     build_detector, init_detector)
from .version import __version__
from .wiring import has_timm_backbone, resolve_config

__all__ = ['TimmBackbone', 'FeatureSpec', 'feature_specs', 'resolve_config', 'has_timm_backbone',
           'init_detector', 'build_detector', 'TimmBackboneRunner', 'SimplePyramid',
           'SyntheticShapesDataset', 'SyntheticCocoMetric', 'make_synthetic_coco',
           'LossCurveHook', 'TimmLayerDecayOptimWrapperConstructor', 'TIMM_MODELS',
           '__version__']
