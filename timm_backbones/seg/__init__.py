"""Segmentation with mmseg 1.x: importing `timm_backbones.seg` (the segmentation configs in
`configs/seg/` list it in `custom_imports`) registers the plugin in mmseg's registries:
`TimmBackbone` and `timm.<arch>` (MODELS, which then resolves configs with timm backbones when it
builds them), `TimmBackboneRunner` (RUNNERS), `LossCurveHook` (HOOKS),
`TimmLayerDecayOptimWrapperConstructor` (OPTIM_WRAPPER_CONSTRUCTORS), the per-sample seeding
wrappers (DATASETS, DATA_SAMPLERS) and `SyntheticShapesSegDataset` (DATASETS).

The wiring itself is `resolve_config`'s (`wiring/_seg_heads.py`); this package only needs mmseg
for registration, and `import timm_backbones` never imports it.
"""
from ._data import SyntheticShapesSegDataset
from ._registry import SEG_TIMM_MODELS, register_in

__all__ = ['SyntheticShapesSegDataset', 'SEG_TIMM_MODELS', 'register_in']
