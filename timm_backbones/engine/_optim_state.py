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
    (`by_name=True`), else by position in the order of this run's optimizer. Parameters, and
    the groups holding them, are matched by name where the checkpoint has names; a checkpoint
    without them (written by plain mmengine) is matched by position, as torch does.

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
    saved = [_saved_names(state, g, i, current, filename) for i, g in enumerate(groups)]
    group_of = {name: i for i, cur in enumerate(current) for name in cur}
    order = []  # the group of this run's optimizer each saved group is
    for i, group_names in enumerate(saved):
        targets = {group_of.get(name) for name in group_names}
        if len(targets) != 1 or None in targets:
            unknown = [n for n in group_names if n not in group_of][:4]
            raise ValueError(_mismatch(filename, f'parameters in group {i} that this run\'s '
                                                 f'optimizer has not {unknown}' if unknown else
                                                 f'group {i} split over several groups here'))
        order.append(targets.pop())
    missing = [n for j, cur in enumerate(current) if j not in order for n in cur][:4]
    if len(set(order)) != len(order) or missing or \
            any(sorted(saved[i]) != sorted(current[j]) for i, j in enumerate(order)):
        raise ValueError(_mismatch(filename, f'other parameter groups (this run\'s optimizer '
                                             f'also has {missing or "other members"})'))
    if _by_name(state):
        by_key = {name: name for names_ in saved for name in names_}
    else:
        by_key = {name: key for group, names_ in zip(groups, saved)
                  for key, name in zip(group['params'], names_)}
    placed = sorted(range(len(groups)), key=order.__getitem__)  # saved groups in this run's order
    out = dict(state)
    if by_name:
        out['state'] = {name: state['state'][key] for name, key in by_key.items()
                        if key in state['state']}
        out['param_groups'] = [{k: v for k, v in dict(groups[i], params=current[order[i]]).items()
                                if k != NAMES} for i in placed]
        return out
    index = {name: k for k, name in enumerate(n for cur in current for n in cur)}
    out['state'] = {index[name]: state['state'][key] for name, key in by_key.items()
                    if key in state['state']}
    out['param_groups'] = [dict(groups[i], params=[index[n] for n in current[order[i]]],
                                **{NAMES: current[order[i]]}) for i in placed]
    return out


def _saved_names(state: Mapping[str, Any], group: Mapping[str, Any], i: int,
                 current: List[List[str]], filename: str) -> List[str]:
    """The parameter names of saved group i: its `params` (by name), its `param_names`, or
    (a checkpoint without names) those of this run's group i, by position."""
    if _by_name(state):
        return list(group['params'])
    if NAMES in group:
        return list(group[NAMES])
    if len(state['param_groups']) != len(current):
        raise ValueError(_mismatch(filename, f'{len(state["param_groups"])} parameter groups, '
                                             f'this run\'s optimizer {len(current)}'))
    if len(group['params']) != len(current[i]):
        raise ValueError(_mismatch(filename, f'group {i} holds {len(group["params"])} '
                                             f'parameters, this run\'s {len(current[i])}'))
    return current[i]


def _mismatch(filename: str, what: str) -> str:
    return (f'cannot resume the optimizer from {filename!r}: its state has {what}. Resume with '
            f'the optimizer configuration (optim_wrapper, paramwise_cfg) and model the '
            f'checkpoint was written with, or start from its weights only (load_from=... '
            f'without --resume).')
