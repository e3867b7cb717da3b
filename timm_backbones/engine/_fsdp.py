"""FSDP policies for timm backbones, usable from a config by name: `timm_block_wrap_policy` makes
every block / stage of every `TimmBackbone` its own FSDP unit, `timm_block_check_fn` selects the
same modules for activation checkpointing. Both are registered in mmengine's root `FUNCTIONS`,
where mmengine 0.10's `MMFullyShardedDataParallel` (`auto_wrap_policy='...'`) and
`FSDPStrategy` (`activation_checkpointing=dict(check_fn='...')`) look names up:

    strategy = dict(
        type='FSDPStrategy',
        model_wrapper=dict(auto_wrap_policy='timm_block_wrap_policy'),
        activation_checkpointing=dict(check_fn='timm_block_check_fn'),
        state_dict_cfg='full')

The blocks are found from each backbone's timm model when it is built (`_blocks.py`: the module
of every `feature_info` level and the rest of its stack), not from a list of classes, so the same
config works whatever timm model is the backbone. Everything else (the stem, the simple pyramid,
the neck and the heads) stays in the root unit.

Mixed precision for the blocks only: `auto_wrap_policy=dict(type='timm_block_wrap_policy',
mixed_precision=dict(param_dtype='bfloat16'))` (read by `TimmBackboneFlexibleRunner`, which
builds `TimmBlockWrapPolicy(mixed_precision=...)` from it) runs the blocks in that precision
(their inputs cast to it) while the root unit keeps the model's (`TimmBackbone` returns its maps
in its input's dtype), so the neck and heads, whose mmcv kernels (RoIAlign) have no bfloat16
version, run as usual. A `mixed_precision` on the model wrapper itself applies to everything.
"""
from typing import Any, Dict, Mapping, Optional, Set, Union

import torch
from mmengine.registry import FUNCTIONS
from torch import nn
from torch.distributed.fsdp import MixedPrecision
from torch.distributed.fsdp.wrap import _Policy

from .._blocks import is_block

__all__ = ['TimmBlockWrapPolicy', 'timm_block_wrap_policy', 'timm_block_check_fn',
           'block_mixed_precision', 'resolve_wrap_policy']

POLICY_NAME = 'timm_block_wrap_policy'
_DTYPES = ('param_dtype', 'reduce_dtype', 'buffer_dtype')


def block_mixed_precision(cfg: Union[Mapping[str, Any], MixedPrecision]) -> MixedPrecision:
    """FSDP's `MixedPrecision` for the blocks from a config dict (dtypes by name, e.g.
    `dict(param_dtype='bfloat16')`; reduce and buffer dtypes default to the parameters'); the
    blocks' inputs are cast to it (`cast_forward_inputs=True`).

    Example:
        >>> block_mixed_precision(dict(param_dtype='bfloat16')).param_dtype
        torch.bfloat16
    """
    if isinstance(cfg, MixedPrecision):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f'{POLICY_NAME}: mixed_precision must be a dict of FSDP MixedPrecision '
                        f"arguments, e.g. dict(param_dtype='bfloat16'), got {cfg!r}")
    args: Dict[str, Any] = dict(cfg)
    unknown = sorted(set(args) - set(MixedPrecision.__dataclass_fields__))
    if unknown:
        raise TypeError(f'{POLICY_NAME}: unknown mixed_precision keys {unknown}; FSDP '
                        f'MixedPrecision takes {sorted(MixedPrecision.__dataclass_fields__)}')
    for key in _DTYPES:
        value = args.get(key)
        if isinstance(value, str):
            dtype = getattr(torch, value, None)
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise ValueError(f"{POLICY_NAME}: mixed_precision {key}={value!r} is not a "
                                 f"torch floating-point dtype; use e.g. 'bfloat16' or 'float16'.")
            args[key] = dtype
    if args.get('param_dtype') is None:
        raise ValueError(f'{POLICY_NAME}: mixed_precision needs param_dtype (the dtype the '
                         f"blocks compute in), e.g. dict(param_dtype='bfloat16'); got {cfg!r}")
    for key in ('reduce_dtype', 'buffer_dtype'):
        args.setdefault(key, args['param_dtype'])
    args.setdefault('cast_forward_inputs', True)
    return MixedPrecision(**args)


class TimmBlockWrapPolicy(_Policy):
    """FSDP auto-wrap policy: each block / stage of a `TimmBackbone` is one FSDP unit, with the
    root's FSDP arguments or, given `mixed_precision`, in that precision.

    Registered (without mixed precision) in mmengine's root FUNCTIONS as
    `'timm_block_wrap_policy'`. It is also callable as a pre-2.0 FSDP policy function.

    Args:
        mixed_precision: FSDP `MixedPrecision` (or a dict, see `block_mixed_precision`) for the
            blocks only; None: the root's.

    Example:
        >>> FullyShardedDataParallel(detector, auto_wrap_policy=TimmBlockWrapPolicy(
        ...     mixed_precision=dict(param_dtype='bfloat16')), ...)
    """

    def __init__(self, mixed_precision: Optional[Union[Mapping[str, Any],
                                                        MixedPrecision]] = None) -> None:
        self.mixed_precision = None if mixed_precision is None else \
            block_mixed_precision(mixed_precision)

    def _run_policy(self, root_module: nn.Module, ignored_modules: Set[nn.Module],
                    root_kwargs: Dict[str, Any]) -> Dict[nn.Module, Dict[str, Any]]:
        """The blocks of the model and their FSDP arguments (torch's `_Policy` interface)."""
        kwargs = dict(root_kwargs)
        if self.mixed_precision is not None:
            kwargs['mixed_precision'] = self.mixed_precision
        return {m: dict(kwargs) for m in root_module.modules()
                if m not in ignored_modules and is_block(m)}

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int = 0,
                 **unused: Any) -> bool:
        """The policy as a function (FSDP's older interface): descend, wrap the blocks."""
        if unused:
            raise TypeError(
                f'{POLICY_NAME} got {sorted(unused)}: mmengine passes the keys of '
                f"auto_wrap_policy=dict(type='{POLICY_NAME}', ...) to the function, which cannot "
                f"take them. Use runner_type='mmdet.TimmBackboneFlexibleRunner' (it builds "
                f'TimmBlockWrapPolicy(...) from that dict), or '
                f"auto_wrap_policy='{POLICY_NAME}'.")
        return True if recurse else is_block(module)

    def __repr__(self) -> str:
        return f'TimmBlockWrapPolicy(mixed_precision={self.mixed_precision})'


timm_block_wrap_policy = TimmBlockWrapPolicy()
FUNCTIONS.register_module(name=POLICY_NAME, module=timm_block_wrap_policy)


@FUNCTIONS.register_module(name='timm_block_check_fn')
def timm_block_check_fn(module: nn.Module) -> bool:
    """Activation-checkpointing `check_fn`: True for each block / stage of a `TimmBackbone`.

    mmengine 0.10's FSDPStrategy passes no arguments to a `check_fn` besides the module (extra
    ones in its config are dropped), so this one takes none.

    Example:
        >>> apply_activation_checkpointing(fsdp_model, check_fn=timm_block_check_fn)
    """
    return is_block(module)


def resolve_wrap_policy(policy: Any) -> Any:
    """`model_wrapper.auto_wrap_policy` as FSDP takes it: a dict naming this policy (by its name
    or object) becomes `TimmBlockWrapPolicy(**rest)`; anything else is returned as it is.

    Example:
        >>> resolve_wrap_policy(dict(type='timm_block_wrap_policy',
        ...                          mixed_precision=dict(param_dtype='bfloat16')))
        TimmBlockWrapPolicy(mixed_precision=MixedPrecision(param_dtype=torch.bfloat16, ...))
    """
    if isinstance(policy, Mapping) and policy.get('type') in (POLICY_NAME, timm_block_wrap_policy,
                                                              TimmBlockWrapPolicy):
        return TimmBlockWrapPolicy(**{k: v for k, v in policy.items() if k != 'type'})
    return policy
