"""Generic stage freezing for timm feature extractors (`frozen_stages`).

Nothing here knows a model family: stages are located from `feature_info` module names, in the
order modules are registered. Norm layers are `_norms.py`'s.
"""
from typing import List, Sequence, Tuple

from torch import nn

__all__ = ['find_module', 'stage_split']


def find_module(model: nn.Module, name: str) -> str:
    """The path in `model` of the module timm's `feature_info` calls `name`.

    timm's feature wrappers rename modules: FeatureListNet flattens `stages.0` to `stages_0`,
    FeatureGetterNet keeps the original model under `model.`.

    Args:
        model: A timm feature extractor.
        name: A `feature_info` module name.

    Returns:
        The module path, or '' if the wrapper has no such module (e.g. pruned away).

    Example:
        >>> find_module(timm.create_model('convnext_atto', features_only=True), 'stages.1')
        'stages_1'
    """
    if not name:
        return ''
    paths = [p for p, _ in model.named_modules()]
    head, _, rest = name.partition('.')
    candidates = [name, name.replace('.', '_')]
    if rest:  # FeatureListNet joins only the first levels: 'a.b.c' -> 'a_b.c'
        first, _, tail = rest.partition('.')
        candidates.append(f'{head}_{first}.{tail}' if tail else f'{head}_{first}')
    for cand in candidates:
        if cand in paths:
            return cand
    # wrappers keep the original model under a prefix ('model.', 'body.', 'model.encoder.')
    nested = [p for p in paths if any(p.endswith('.' + c) for c in candidates)]
    return min(nested, key=len) if nested else ''


def stage_split(model: nn.Module, level_paths: Sequence[str], num_frozen: int
                ) -> Tuple[List[nn.Parameter], List[str]]:
    """The parameters and the modules of the stem and the first `num_frozen` feature levels.

    Modules are taken in registration order (`named_modules()`), which timm models follow in
    their forward: the stem is everything before level 0's module, level k ends with the last
    module inside level k's module.

    Args:
        model: A timm feature extractor.
        level_paths: Paths (see `find_module`) of every level's module, in level order; '' for
            a level the wrapper does not hold (pruned after the last requested level).
        num_frozen: 0 freezes the stem only, k the stem and levels 0..k-1.

    Returns:
        (parameters to freeze, paths of the maximal modules to keep in eval mode). Paths, not
        module objects: they stay valid when a converter (SyncBN, frozen BN) swaps modules.
    """
    names = [n for n, _ in model.named_modules()]
    modules = [m for _, m in model.named_modules()]
    if num_frozen == 0:
        cut = names.index(level_paths[0]) - 1 if level_paths[0] else len(names) - 1
    else:
        path = level_paths[num_frozen - 1]
        if not path:  # level pruned away: everything the wrapper holds comes before it
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
