"""The plugin in mmseg's registries: what `import timm_backbones` registers in mmdet's, registered
again where mmseg's builders look (a config with `default_scope='mmseg'` builds from mmseg's
registries and their parents, never from mmdet's), and mmseg's `MODELS` made to resolve configs
with timm backbones when it builds them (`install_resolving_build`), so mmseg's own
`tools/train.py`, `tools/test.py` and `MMSegInferencer` build resolved segmentors.
"""
from mmengine.registry import Registry
from mmseg.registry import (DATA_SAMPLERS, DATASETS, HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS,
                            RUNNERS)

from .._registry import register_backbones
from ..engine import (IterationSeedHook, LossCurveHook, PerSampleSeedDataset,
                      PerSampleSeedSampler, TimmBackboneRunner,
                      TimmLayerDecayOptimWrapperConstructor, install_resolving_build)

__all__ = ['SEG_TIMM_MODELS', 'register_in']


def register_in(registry: Registry, module: type) -> None:
    """`registry.register_module(module=module)`, once (importing this module twice, or
    another registration of the same class, is no clash; another class of that name is)."""
    if registry.module_dict.get(module.__name__) is not module:
        registry.register_module(module=module)


SEG_TIMM_MODELS = register_backbones(MODELS)  # TimmBackbone and timm.<arch>
install_resolving_build(MODELS)
register_in(RUNNERS, TimmBackboneRunner)
register_in(HOOKS, LossCurveHook)
register_in(HOOKS, IterationSeedHook)
register_in(OPTIM_WRAPPER_CONSTRUCTORS, TimmLayerDecayOptimWrapperConstructor)
register_in(DATASETS, PerSampleSeedDataset)
register_in(DATA_SAMPLERS, PerSampleSeedSampler)
