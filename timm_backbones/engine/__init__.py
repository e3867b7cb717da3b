"""Engine pieces: the mmengine runner for timm backbone configs, detector building for
inference (`build_detector`, `init_detector`) and training hooks. Importing it registers
`TimmBackboneRunner` (RUNNERS) and `LossCurveHook` (HOOKS) in mmdet's registries.
"""
from ._api import build_detector, init_detector, load_config
from ._hooks import LossCurveHook
from ._runner import TimmBackboneRunner

__all__ = ['TimmBackboneRunner', 'build_detector', 'init_detector', 'load_config',
           'LossCurveHook']
