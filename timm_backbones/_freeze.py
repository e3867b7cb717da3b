"""Generic stage freezing for timm feature extractors (`frozen_stages`, with mmdet's meaning).

mmdet's backbones count `frozen_stages` the same way on every family: -1 freezes nothing, 0 the
stem, k the stem and the first k stages. Here the stem is everything before the first feature
level of stride >= 4 (resnet's stride-2 level `act1` belongs to the stem, as mmdet's ResNet puts
conv1/bn1 there), and the stages are the levels from that one on (plain models such as ViT: one
stage per block, with `patch_embed` and the position/class tokens in the stem). So
`frozen_stages=1` on timm's resnet50 freezes what mmdet's `ResNet(depth=50, frozen_stages=1)`
freezes, and the same number means the same thing after a backbone swap.

Nothing here knows a model family: stages are located from `feature_info` strides and module
names, in the order modules are registered. Norm layers are `_norms.py`'s.
"""
from typing import List, Sequence, Tuple

from torch import nn

from ._names import wrapper_path
from ._specs import FeatureSpec

__all__ = ['STEM_STRIDE', 'find_module', 'first_stage', 'stage_split', 'freeze_stages']

STEM_STRIDE = 4  # levels of smaller stride belong to the stem (mmdet's stages start at stride 4)


def first_stage(levels: Sequence[FeatureSpec]) -> int:
    """The index of the first level of stride >= `STEM_STRIDE`: the first stage. Levels before it
    (strides 1 and 2: resnet's act1, efficientnet's blocks.0, vgg's first convs) are stem.

    Args:
        levels: Every feature level of the model, in level order.

    Example:
        >>> first_stage(plan_backbone('resnet50').levels)  # strides 2, 4, 8, 16, 32
        1
    """
    for i, level in enumerate(levels):
        if level.stride >= STEM_STRIDE:
            return i
    return len(levels)


def find_module(model: nn.Module, name: str) -> str:
    """The path in `model` of the module timm's `feature_info` calls `name` (the wrappers rename
    modules: `_names.wrapper_path`).

    Args:
        model: A timm feature extractor.
        name: A `feature_info` module name.

    Returns:
        The module path, or '' if the wrapper has no such module (e.g. pruned away).

    Example:
        >>> find_module(timm.create_model('convnext_atto', features_only=True), 'stages.1')
        'stages_1'
    """
    return wrapper_path((p for p, _ in model.named_modules()), name)


def freeze_stages(model: nn.Module, levels: Sequence[FeatureSpec], frozen_stages: int,
                  last_built: int, model_name: str) -> List[str]:
    """Freeze the stem and the first `frozen_stages` stages of a timm feature extractor
    (`requires_grad=False`) and return the paths of their modules, to keep in eval mode.

    Args:
        model: The feature extractor.
        levels: Every feature level of the model (`feature_info`), in level order.
        frozen_stages: 0 (the stem) or k (the stem and k stages).
        last_built: The deepest level the extractor holds (later ones are pruned).
        model_name: For error messages.

    Example:
        >>> paths = freeze_stages(model, plan.levels, 1, 4, 'resnet18')
    """
    start = first_stage(levels)
    needed = range(start, min(start + max(frozen_stages, 1), len(levels)))
    paths = [find_module(model, levels[i].module) for i in needed]
    missing = [levels[i].module for i, p in zip(needed, paths) if not p and i <= last_built]
    if missing:
        raise ValueError(
            f'frozen_stages={frozen_stages} is not available for {model_name!r}: timm\'s '
            f'feature_info names module(s) {missing} that are not modules of its feature '
            f'extractor, so the stages cannot be located. Use frozen_stages=-1 and freeze '
            f'parameters with an optimizer paramwise_cfg (lr_mult=0) instead.')
    params, frozen_paths = stage_split(model, paths, frozen_stages)
    for param in params:
        param.requires_grad = False
    return frozen_paths


def stage_split(model: nn.Module, stage_paths: Sequence[str], num_frozen: int
                ) -> Tuple[List[nn.Parameter], List[str]]:
    """The parameters and the modules of the stem and the first `num_frozen` stages.

    Modules are taken in registration order (`named_modules()`), which timm models follow in
    their forward: the stem is everything before stage 0's module, stage k ends with the last
    module inside stage k's module.

    Args:
        model: A timm feature extractor.
        stage_paths: Paths (see `find_module`) of every stage's module (the levels from
            `first_stage` on), in order; '' for a stage the wrapper does not hold (pruned after
            the last requested level).
        num_frozen: 0 freezes the stem only, k the stem and stages 0..k-1.

    Returns:
        (parameters to freeze, paths of the maximal modules to keep in eval mode). Paths, not
        module objects: they stay valid when a converter (SyncBN, frozen BN) swaps modules.

    Example:
        >>> model = timm.create_model('resnet18', features_only=True)
        >>> _, paths = stage_split(model, ['layer1', 'layer2', 'layer3', 'layer4'], 1)
        >>> paths
        ['conv1', 'bn1', 'act1', 'maxpool', 'layer1']
    """
    names = [n for n, _ in model.named_modules()]
    modules = [m for _, m in model.named_modules()]
    if num_frozen == 0:
        first = stage_paths[0] if stage_paths else ''
        cut = names.index(first) - 1 if first else len(names) - 1
    else:
        path = stage_paths[num_frozen - 1]
        if not path:  # stage pruned away: everything the wrapper holds comes before it
            cut = len(names) - 1
        else:
            cut = max(i for i, n in enumerate(names) if n == path or n.startswith(path + '.'))
    params = [p for m in modules[:cut + 1] for p in m.parameters(recurse=False)]
    eval_modules = []  # maximal modules whose whole subtree lies in the frozen prefix
    i = 0
    while i <= cut:
        end = _subtree_end(names, i)
        if end <= cut:
            eval_modules.append(names[i])
            i = end + 1
        else:
            i += 1
    return params, eval_modules


def _subtree_end(names: List[str], i: int) -> int:
    """Index of the last descendant of module i (`named_modules()` lists a subtree contiguously)."""
    if names[i] == '':
        return len(names) - 1
    prefix, j = names[i] + '.', i
    while j + 1 < len(names) and names[j + 1].startswith(prefix):
        j += 1
    return j
