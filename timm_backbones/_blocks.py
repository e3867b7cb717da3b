"""The blocks and stages of a timm feature extractor, as the units that FSDP shards one at a time
and activation checkpointing recomputes (`engine/_fsdp.py` registers the policies that read them).

They are found from the model itself, never from a list of model families: the module of every
`feature_info` level (ViT/EVA/DeiT: each block; ConvNeXt, Swin, ResNet: each stage), and, where
that module is one item of a stack (`nn.Sequential` / `nn.ModuleList`, e.g. EfficientNet's
`blocks`, whose levels are only some of its items), every other item of the stack. Only modules
holding parameters count, and only the outermost of nested ones. `TimmBackbone` marks its blocks
when it is built (`mark_blocks`), so a policy that sees one module at a time (mmengine calls
FSDP's wrap policy and the checkpoint `check_fn` with a module only) recognises them
(`is_block`), in copies of the model too.
"""
from typing import Dict, List, Sequence

from torch import nn

from ._names import wrapper_path
from ._specs import FeatureSpec

__all__ = ['BLOCK_FLAG', 'block_paths', 'mark_blocks', 'is_block']

BLOCK_FLAG = '_timm_backbones_block'  # attribute set on the modules of `mark_blocks`

_STACKS = (nn.Sequential, nn.ModuleList)


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def block_paths(model: nn.Module, levels: Sequence[FeatureSpec]) -> List[str]:
    """The paths in `model` of its blocks / stages (see the module docstring), in module order.

    Args:
        model: A timm feature extractor (as `TimmBackbone.model`).
        levels: Its feature levels (`feature_info`), in level order.

    Example:
        >>> model = timm.create_model('vit_tiny_patch16_224', features_only=True)
        >>> block_paths(model, plan_backbone('vit_tiny_patch16_224').levels)[:2]
        ['model.blocks.0', 'model.blocks.1']
    """
    modules: Dict[str, nn.Module] = dict(model.named_modules())
    found = set()
    for level in levels:
        path = wrapper_path(modules, level.module)
        if not path:  # pruned away (after the last requested level) or not a module
            continue
        found.add(path)
        parent, _, _ = path.rpartition('.')
        if isinstance(modules.get(parent), _STACKS):
            found.update(f'{parent}.{name}' for name, _ in modules[parent].named_children())
    paths = [p for p in modules if p in found and _has_parameters(modules[p])]
    return [p for p in paths if not any(p.startswith(q + '.') for q in paths)]


def mark_blocks(model: nn.Module, levels: Sequence[FeatureSpec]) -> List[str]:
    """Mark the blocks / stages of `model` (`block_paths`) for `is_block`; returns their paths.

    Example:
        >>> paths = mark_blocks(model, plan.levels)
        >>> is_block(model.get_submodule(paths[0]))
        True
    """
    paths = block_paths(model, levels)
    for path in paths:
        setattr(model.get_submodule(path), BLOCK_FLAG, True)
    return paths


def is_block(module: nn.Module) -> bool:
    """Whether `module` is a block / stage of a `TimmBackbone`'s timm model (`mark_blocks`).

    Example:
        >>> is_block(TimmBackbone('vit_tiny_patch16_224').model.model.blocks[3])
        True
    """
    # the module's own attribute: FSDP and checkpoint wrappers forward unknown attributes to the
    # module they wrap, but are not blocks themselves (they would be checkpointed twice)
    return vars(module).get(BLOCK_FLAG, False) is True
