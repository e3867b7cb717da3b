"""Engine pieces: the mmengine runner for timm backbone configs, detector building for
inference (`build_detector`, `init_detector`), training hooks and timm's layer-wise lr decay.
Importing it registers `TimmBackboneRunner` (RUNNERS), `LossCurveHook` (HOOKS) and
`TimmLayerDecayOptimWrapperConstructor` (OPTIM_WRAPPER_CONSTRUCTORS) in mmdet's registries.
"""
from ._api import build_detector, init_detector, load_config
from ._hooks import LossCurveHook
from ._layer_decay import (NoGroupMatcherError, TimmLayerDecayOptimWrapperConstructor,
                           layer_decay_settings)
from ._runner import TimmBackboneRunner

__all__ = ['TimmBackboneRunner', 'build_detector', 'init_detector', 'load_config',
           'LossCurveHook', 'TimmLayerDecayOptimWrapperConstructor', 'layer_decay_settings',
           'NoGroupMatcherError']
