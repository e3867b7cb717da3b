"""timm_backbones: every timm feature-extraction model as a first-class mmdet 3.x backbone.

Importing the package registers, in mmdet's registries: `TimmBackbone` and one `timm.<arch>`
entry per timm architecture (MODELS), `TimmBackboneRunner` (RUNNERS), `SyntheticShapesDataset`
(DATASETS), `SyntheticCocoMetric` (METRICS) and `LossCurveHook` (HOOKS).
"""
from ._api import build_detector, init_detector
from ._backbone import TimmBackbone
from ._hooks import LossCurveHook
from ._plan import feature_specs
from ._pyramid import SimplePyramid
from ._registry import TIMM_MODELS
from ._resolve import has_timm_backbone, resolve_config
from ._runner import TimmBackboneRunner
from ._specs import FeatureSpec
from ._synthetic_data import SyntheticCocoMetric, SyntheticShapesDataset, make_synthetic_coco
from .version import __version__

__all__ = ['TimmBackbone', 'FeatureSpec', 'feature_specs', 'resolve_config', 'has_timm_backbone',
           'init_detector', 'build_detector', 'TimmBackboneRunner', 'SimplePyramid',
           'SyntheticShapesDataset', 'SyntheticCocoMetric', 'make_synthetic_coco',
           'LossCurveHook', 'TIMM_MODELS', '__version__']
