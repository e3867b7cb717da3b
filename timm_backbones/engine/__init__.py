"""Engine pieces: the mmengine runner for timm backbone configs, detector building on every
route (registries that resolve what they build, `build_detector`, `init_detector`), ONNX export (`export_onnx`, `check_onnx`),
training hooks and timm's layer-wise lr decay. Importing it registers `TimmBackboneRunner`
(RUNNERS), `LossCurveHook` (HOOKS) and `TimmLayerDecayOptimWrapperConstructor`
(OPTIM_WRAPPER_CONSTRUCTORS), and the per-sample augmentation seeding `PerSampleSeedDataset`
(DATASETS) and `PerSampleSeedSampler` (DATA_SAMPLERS) in mmdet's registries.
"""
from ._api import build_detector, init_detector, install_resolving_build, load_config
from ._export import check_onnx, export_onnx, flatten_tensors, run_onnx
from ._hooks import LossCurveHook
from ._layer_decay import (NoGroupMatcherError, TimmLayerDecayOptimWrapperConstructor,
                           layer_decay_settings)
from ._runner import TimmBackboneRunner
from ._seeding import (PerSampleSeedDataset, PerSampleSeedSampler, SampleIndex,
                       per_sample_seed_dataloader, seeded)

__all__ = ['TimmBackboneRunner', 'build_detector', 'init_detector', 'load_config',
           'install_resolving_build',
           'LossCurveHook', 'TimmLayerDecayOptimWrapperConstructor', 'layer_decay_settings',
           'NoGroupMatcherError', 'export_onnx', 'check_onnx', 'run_onnx', 'flatten_tensors',
           'PerSampleSeedDataset', 'PerSampleSeedSampler', 'SampleIndex', 'seeded',
           'per_sample_seed_dataloader']
