"""How timm's feature wrappers rename the model they wrap, as one mapping: FeatureListNet
flattens the first level of sequential containers (`stages.0.blocks` -> `stages_0.blocks`),
FeatureGetterNet and FeatureHookNet keep the model under a prefix (`model.`, `body.`). A name in
the wrapper maps back to the full model's name with `full_name`; stages are located with it
(`_freeze.py`), loaded weights counted (`_weights.py`) and layer decay mapped
(`engine/_layer_decay.py`).
"""
from typing import Callable, Iterable, Iterator, Optional

__all__ = ['spellings', 'full_name', 'wrapper_path']


def spellings(wrapper_name: str) -> Iterator[str]:
    """The full-model names a wrapper name may stand for, most literal first: the name as it is,
    then with leading parts dropped (a wrapper prefix), each also with its first part unflattened
    at an underscore (`stages_0.x` -> `stages.0.x`).

    Example:
        >>> list(spellings('stages_0.w'))
        ['stages_0.w', 'stages.0.w', 'w']
    """
    parts = wrapper_name.split('.')
    for i in range(len(parts)):
        head, rest = parts[i], parts[i + 1:]
        yield '.'.join([head] + rest)
        for k, char in enumerate(head):
            if char == '_' and 0 < k < len(head) - 1:
                yield '.'.join([head[:k], head[k + 1:]] + rest)


def full_name(wrapper_name: str, accept: Callable[[str], bool]) -> Optional[str]:
    """The first spelling of `wrapper_name` (see `spellings`) that `accept` takes (e.g. a name
    of the full model with the same shape), or None.

    Example:
        >>> full_name('model.blocks.0.norm1.weight', {'blocks.0.norm1.weight'}.__contains__)
        'blocks.0.norm1.weight'
    """
    return next((s for s in spellings(wrapper_name) if accept(s)), None)


def wrapper_path(paths: Iterable[str], name: str) -> str:
    """The path among a wrapper's module `paths` that stands for the full model's module `name`
    (timm's `feature_info` names), the shortest if several do; '' if none (e.g. pruned away).

    Example:
        >>> wrapper_path(['stem_0', 'stages_0', 'stages_1'], 'stages.1')
        'stages_1'
    """
    if not name:
        return ''
    found = [p for p in paths if p and full_name(p, name.__eq__) is not None]
    return min(found, key=lambda p: (len(p), p)) if found else ''
