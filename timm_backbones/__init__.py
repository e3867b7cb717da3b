"""timm_backbones: every timm feature-extraction model as a first-class mmdet 3.x backbone.

Importing the package registers `TimmBackbone` and one `timm.<arch>` entry per timm architecture
in mmdet's `MODELS` registry.
"""
from ._backbone import TimmBackbone
from ._plan import feature_specs
from ._pyramid import SimplePyramid
from ._registry import TIMM_MODELS
from ._resolve import has_timm_backbone, resolve_config
from ._specs import FeatureSpec
from .version import __version__

__all__ = ['TimmBackbone', 'FeatureSpec', 'feature_specs', 'resolve_config', 'has_timm_backbone',
           'SimplePyramid', 'TIMM_MODELS', '__version__']
