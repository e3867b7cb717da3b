"""How timm's feature wrappers rename the model they wrap, as one mapping: FeatureListNet
flattens the first level of sequential containers (`stages.0.blocks` -> `stages_0.blocks`),
FeatureGetterNet and FeatureHookNet keep the model under a prefix (`model.`, `body.`). A name in
the wrapper maps back to the full model's name with `full_name`; stages are located with it
(`_freeze.py`), loaded weights counted (`_weights.py`) and layer decay mapped
(`engine/_layer_decay.py`).

Model wrappers applied around parts of a model insert their own parts into names: FSDP units
(`blocks.0._fsdp_wrapped_module.norm1.weight`) and activation-checkpoint wrappers
(`_checkpoint_wrapped_module`). `unwrapped_name` drops them, and every mapping here starts from
it, so the names of an FSDP-wrapped model map like the plain model's.
"""
from typing import Callable, Iterable, Iterator, Optional

__all__ = ['WRAPPER_PARTS', 'unwrapped_name', 'spellings', 'full_name', 'wrapper_path']

# The name parts of torch's FSDP units (`FullyShardedDataParallel`) and activation-checkpoint
# wrappers (`checkpoint_wrapper`): the attribute under which each keeps the module it wraps.
WRAPPER_PARTS = ('_fsdp_wrapped_module', '_checkpoint_wrapped_module')


def unwrapped_name(name: str) -> str:
    """`name` without the parts FSDP units and activation-checkpoint wrappers insert: the name
    the module or parameter has in the model without those wrappers.

    Example:
        >>> unwrapped_name('blocks.0._fsdp_wrapped_module._checkpoint_wrapped_module.norm1.weight')
        'blocks.0.norm1.weight'
    """
    return '.'.join(p for p in name.split('.') if p not in WRAPPER_PARTS)


def spellings(wrapper_name: str) -> Iterator[str]:
    """The full-model names a wrapper name may stand for, most literal first: the name as it is
    (FSDP and checkpoint-wrapper parts dropped, `unwrapped_name`), then with leading parts
    dropped (a wrapper prefix), each also with its first part unflattened at an underscore
    (`stages_0.x` -> `stages.0.x`).

    Example:
        >>> list(spellings('stages_0.w'))
        ['stages_0.w', 'stages.0.w', 'w']
    """
    parts = unwrapped_name(wrapper_name).split('.')
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
    (timm's `feature_info` names), the shortest if several do (under FSDP: the unit wrapping the
    module); '' if none (e.g. pruned away).

    Example:
        >>> wrapper_path(['stem_0', 'stages_0', 'stages_1'], 'stages.1')
        'stages_1'
    """
    if not name:
        return ''
    found = [p for p in paths if p and full_name(p, name.__eq__) is not None]
    return min(found, key=lambda p: (len(p), p)) if found else ''
