"""The optimizer state in checkpoints, one format whichever strategy wrote it, so a run resumes
from a checkpoint of another kind (FSDP from DDP and back).

FSDP writes and reads its optimizer state keyed by parameter name (`FSDP.optim_state_dict`:
`state` by name, each group's `params` a list of names); DDP and single-device runs by position
(torch's `Optimizer.state_dict`: `state` by index, `params` lists of indices, matched to the
optimizer's parameters by position when loaded). Checkpoints written by the timm runners hold
torch's form with each group's parameter names beside its indices (`param_names`, torch's own
key for named optimizers): `saved_state` makes it from either kind when a checkpoint is written
(plain mmengine reads it as ever), `resume_state` turns it into what the resuming run loads,
matching parameters by name. Names are those of the model without FSDP and checkpoint-wrapper
parts (`_names.unwrapped_name`), which are also FSDP's.
"""
from typing import Any, Dict, List, Mapping

from torch.optim import Optimizer

__all__ = ['saved_state', 'resume_state']

NAMES = 'param_names'


def _is_torch_form(state: Any) -> bool:
    return isinstance(state, Mapping) and isinstance(state.get('state'), Mapping) and \
        isinstance(state.get('param_groups'), list)


def _by_name(state: Mapping[str, Any]) -> bool:
    return any(isinstance(p, str) for g in state['param_groups'] for p in g['params'])


def _current_names(optimizer: Optimizer, names: Mapping[int, str]) -> List[List[str]]:
    return [[names[id(p)] for p in group['params']] for group in optimizer.param_groups]


def saved_state(state: Any, optimizer: Optimizer, names: Mapping[int, str]) -> Any:
    """The optimizer state as checkpoints hold it: torch's form (by index) with `param_names` in
    each group. Other states (several optimizers, a rank's empty FSDP state) are returned as
    they are.

    Args:
        state: What the strategy wrote: by position (`optimizer.state_dict()`) or by name
            (`FSDP.optim_state_dict`).
        optimizer: The run's optimizer (its groups give the names of a state by position).
        names: id(parameter) -> parameter name.

    Example:
        >>> ckpt['optimizer'] = saved_state(ckpt['optimizer'], optimizer, names)
    """
    if not _is_torch_form(state) or not state['param_groups']:
        return state
    out = dict(state)
    if not _by_name(state):
        if all(NAMES in g for g in state['param_groups']):
            return state
        out['param_groups'] = [dict(g, **{NAMES: cur})
                               for g, cur in zip(state['param_groups'],
                                                 _current_names(optimizer, names))]
        return out
    index: Dict[str, int] = {}
    groups = []
    for group in state['param_groups']:
        ids = [index.setdefault(name, len(index)) for name in group['params']]
        groups.append(dict(group, params=ids, **{NAMES: list(group['params'])}))
    out['state'] = {index[name]: value for name, value in state['state'].items()}
    out['param_groups'] = groups
    return out


def resume_state(state: Any, optimizer: Optimizer, names: Mapping[int, str], by_name: bool,
                 filename: str = '') -> Any:
    """The checkpoint's optimizer state as the resuming run loads it: by name for FSDP
    (`by_name=True`), else by position in the order of this run's optimizer. Parameters are
    matched by name where the checkpoint has names; a checkpoint without them (written by plain
    mmengine) is matched by position, as torch does.

    Args:
        state: The checkpoint's `optimizer` entry (see `saved_state`; FSDP's own form too).
        optimizer: The resuming run's optimizer.
        names: id(parameter) -> parameter name, for this run's model.
        by_name: Whether the run loads a state keyed by name (FSDP).
        filename: The checkpoint, for error messages.

    Raises:
        ValueError: The groups of the checkpoint and of this run's optimizer differ (another
            optimizer or parameter-wise configuration, or another model).

    Example:
        >>> ckpt['optimizer'] = resume_state(ckpt['optimizer'], optimizer, names, by_name=True)
    """
    if not _is_torch_form(state):
        return state
    current = _current_names(optimizer, names)
    groups = state['param_groups']
    if len(groups) != len(current):
        raise ValueError(_mismatch(filename, f'{len(groups)} parameter groups, this run\'s '
                                             f'optimizer {len(current)}'))
    saved_names = []
    for i, (group, cur) in enumerate(zip(groups, current)):
        if _by_name(state):
            group_names = list(group['params'])
        elif NAMES in group:
            group_names = list(group[NAMES])
        elif len(group['params']) == len(cur):  # positional, as torch loads it
            group_names = cur
        else:
            raise ValueError(_mismatch(filename, f'group {i} holds {len(group["params"])} '
                                                 f'parameters, this run\'s {len(cur)}'))
        if sorted(group_names) != sorted(cur):
            extra = sorted(set(group_names) - set(cur))[:4]
            missing = sorted(set(cur) - set(group_names))[:4]
            raise ValueError(_mismatch(filename, f'group {i} differs: only in the checkpoint '
                                                 f'{extra}, only in this run {missing}'))
        saved_names.append(group_names)
    if _by_name(state):
        by_key = {name: name for names_ in saved_names for name in names_}
    else:
        by_key = {name: key for group, names_ in zip(groups, saved_names)
                  for key, name in zip(group['params'], names_)}
    out = dict(state)
    if by_name:
        out['state'] = {name: state['state'][key] for name, key in by_key.items()
                        if key in state['state']}
        out['param_groups'] = [{k: v for k, v in dict(g, params=cur).items() if k != NAMES}
                               for g, cur in zip(groups, current)]
        return out
    index = {name: i for i, name in enumerate(n for cur in current for n in cur)}
    out['state'] = {index[name]: state['state'][key] for name, key in by_key.items()
                    if key in state['state']}
    out['param_groups'] = [dict(g, params=[index[n] for n in cur], **{NAMES: cur})
                           for g, cur in zip(groups, current)]
    return out


def _mismatch(filename: str, what: str) -> str:
    return (f'cannot resume the optimizer from {filename!r}: its state has {what}. Resume with '
            f'the optimizer configuration (optim_wrapper, paramwise_cfg) and model the '
            f'checkpoint was written with, or start from its weights only (load_from=... '
            f'without --resume).')
