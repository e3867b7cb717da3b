"""Engine pieces: the mmengine runners for timm backbone configs (`Runner` and, for FSDP,
`FlexibleRunner`), detector building on every route (registries that resolve what they build,
`build_detector`, `init_detector`), ONNX export (`export_onnx`, `check_onnx`), training hooks,
timm's layer-wise lr decay and FSDP policies for timm blocks, and what the command-line tools
share (`tool_config`, `add_backbone_argument`), and the fast GPU training recipe
(`fast_recipe`, `tools/train.py --fast`). Importing it
registers `TimmBackboneRunner` and `TimmBackboneFlexibleRunner` (RUNNERS), `LossCurveHook`
(HOOKS) and `TimmLayerDecayOptimWrapperConstructor` (OPTIM_WRAPPER_CONSTRUCTORS), and the
per-sample augmentation seeding `PerSampleSeedDataset` (DATASETS) and `PerSampleSeedSampler`
(DATA_SAMPLERS) in mmdet's registries, and `timm_block_wrap_policy` / `timm_block_check_fn` in
mmengine's root FUNCTIONS (where FSDPStrategy looks them up).
"""
from ._api import build_detector, init_detector, install_resolving_build, load_config
from ._export import check_onnx, export_onnx, flatten_tensors, run_onnx
from ._flexible_runner import TimmBackboneFlexibleRunner
from ._fsdp import TimmBlockWrapPolicy, timm_block_check_fn, timm_block_wrap_policy
from ._hooks import LossCurveHook
from ._layer_decay import (NoGroupMatcherError, TimmLayerDecayOptimWrapperConstructor,
                           layer_decay_settings)
from ._recipe import FAST_DTYPES, fast_recipe
from ._runner import TimmBackboneRunner
from ._tools import add_backbone_argument, tool_config
from ._seeding import (IterationSeedHook, PerSampleSeedDataset, PerSampleSeedSampler,
                       SampleIndex, per_sample_seed_dataloader, seeded)

__all__ = ['TimmBackboneRunner', 'TimmBackboneFlexibleRunner', 'TimmBlockWrapPolicy',
           'timm_block_wrap_policy',
           'timm_block_check_fn', 'build_detector', 'init_detector', 'load_config',
           'install_resolving_build',
           'LossCurveHook', 'IterationSeedHook', 'TimmLayerDecayOptimWrapperConstructor',
           'layer_decay_settings',
           'NoGroupMatcherError', 'export_onnx', 'check_onnx', 'run_onnx', 'flatten_tensors',
           'PerSampleSeedDataset', 'PerSampleSeedSampler', 'SampleIndex', 'seeded',
           'per_sample_seed_dataloader', 'add_backbone_argument', 'tool_config',
           'fast_recipe', 'FAST_DTYPES']
