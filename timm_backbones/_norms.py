"""Normalization layers: the one owner of norm handling for backbones and runners alike.

- `set_norm_eval`: every normalization layer to eval mode (`norm_eval`).
- `to_frozen_bn`: timm's frozen batch norms (`frozen_bn`).
- `convert_sync_batchnorm` / `revert_sync_batchnorm`: SyncBN both ways, for the backbone's
  `sync_bn=True` and the runner's `sync_bn='torch'|'mmcv'` alike, keeping timm's fused
  activations. mmengine's and torch's converters turn timm's `BatchNormAct2d` (a BatchNorm2d
  subclass with the activation folded in) into a plain `SyncBatchNorm` / `BatchNormXd` whose
  forward never calls the activation. Here batch norms with a fused activation go through timm's
  converter (`BatchNormAct2d` <-> `SyncBatchNormAct`), all others through mmengine's.
- `check_sync_bn_device`: sync norms cannot run where DistributedDataParallel refuses them.
"""
from typing import Callable, List

from mmengine.model import convert_sync_batchnorm as mm_convert_sync_batchnorm
from mmengine.model import revert_sync_batchnorm as mm_revert_sync_batchnorm
from timm.layers import BatchNormAct2d, SyncBatchNormAct
from timm.layers import convert_sync_batchnorm as timm_convert_sync_batchnorm
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

__all__ = ['NORM_TYPES', 'set_norm_eval', 'to_frozen_bn', 'convert_sync_batchnorm',
           'revert_sync_batchnorm', 'sync_norm_types', 'check_sync_bn_device',
           'SYNC_BN_IMPLEMENTATIONS']

SYNC_BN_IMPLEMENTATIONS = ('torch', 'mmcv')
# Every normalization layer, timm's BatchNormAct2d / SyncBatchNormAct (subclasses of _NormBase)
# included. GroupNorm / LayerNorm behave the same in both modes, but users asking for norm_eval
# expect to find them in eval mode too.
NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def set_norm_eval(model: nn.Module) -> None:
    """Put every normalization layer of `model` in eval mode (running stats stop moving)."""
    for m in model.modules():
        if isinstance(m, NORM_TYPES):
            m.eval()


def to_frozen_bn(model: nn.Module) -> nn.Module:
    """Replace BatchNorm2d / BatchNormAct2d by timm's frozen versions (fused acts kept)."""
    return freeze_batch_norm_2d(model)


def convert_sync_batchnorm(model: nn.Module, implementation: str = 'torch') -> nn.Module:
    """Every batch norm of `model` to SyncBatchNorm, keeping timm's fused activations.

    timm's `BatchNormAct2d` (batch norm + activation in one module) becomes timm's
    `SyncBatchNormAct` (always torch's SyncBatchNorm underneath); other batch norms become
    `implementation`'s SyncBatchNorm (mmengine's converter). Sync norms are left as they are.
    Parameters and buffers are shared with the old modules, and the frozen stages of every
    `TimmBackbone` in `model` stay frozen.

    Args:
        model: Any model; converted in place where possible.
        implementation: 'torch' or 'mmcv', as mmengine's `sync_bn` option.

    Returns:
        The converted model (a new module only if `model` itself is a batch norm).

    Example:
        >>> m = convert_sync_batchnorm(TimmBackbone('efficientnet_b0'))
        >>> type(m.model.bn1).__name__
        'SyncBatchNormAct'
    """
    if implementation not in SYNC_BN_IMPLEMENTATIONS:
        raise ValueError(f'sync_bn must be one of {SYNC_BN_IMPLEMENTATIONS}, got '
                         f'{implementation!r}')

    def convert(module: nn.Module) -> nn.Module:
        if isinstance(module, nn.SyncBatchNorm) or not isinstance(module, _BatchNorm):
            return module
        if isinstance(module, BatchNormAct2d):
            return timm_convert_sync_batchnorm(module)
        return _convert_one(module, lambda m: mm_convert_sync_batchnorm(m, implementation))

    return _replace_modules(model, convert)


def revert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every SyncBatchNorm of `model` back to a batch norm, keeping timm's fused activations.

    timm's `SyncBatchNormAct` becomes `BatchNormAct2d` (with the same activation and drop
    modules); other sync norms become mmengine's `BatchNormXd` (mmengine's converter, which also
    handles mmcv's SyncBatchNorm). Frozen stages of every `TimmBackbone` stay frozen.

    Args:
        model: Any model; converted in place where possible.

    Returns:
        The converted model.

    Example:
        >>> m = revert_sync_batchnorm(TimmBackbone('efficientnet_b0', sync_bn=True))
        >>> type(m.model.bn1).__name__
        'BatchNormAct2d'
    """
    def revert(module: nn.Module) -> nn.Module:
        if isinstance(module, SyncBatchNormAct):
            return _to_batchnorm_act(module)
        if isinstance(module, sync_norm_types()):
            return _convert_one(module, mm_revert_sync_batchnorm)
        return module

    return _replace_modules(model, revert)


def sync_norm_types() -> tuple:
    """The sync norm classes: torch's, and mmcv's where its compiled ops are installed."""
    types: List[type] = [nn.SyncBatchNorm]
    try:
        from mmcv.ops import SyncBatchNorm as MMCVSyncBatchNorm
    except ImportError:  # mmcv without compiled ops
        pass
    else:
        types.append(MMCVSyncBatchNorm)
    return tuple(types)


def check_sync_bn_device(model: nn.Module, device: str) -> None:
    """DistributedDataParallel refuses SyncBatchNorm on CPUs; say which option to drop.

    Args:
        model: The model about to be wrapped.
        device: The device it runs on ('cpu', 'cuda', ...).
    """
    if device != 'cpu':
        return
    sync = sorted({type(m).__name__ for m in model.modules() if isinstance(m, sync_norm_types())})
    if sync:
        raise ValueError(
            f'the model has {sync} layers, which only run on GPUs (DistributedDataParallel '
            f'refuses them on CPUs), and this distributed run has no CUDA device. For CPU runs '
            f"remove sync_bn from the config (mmengine's option) and set sync_bn=False on timm "
            f'backbones (--cfg-options model.backbone.sync_bn=False), or run without a launcher '
            f'(sync norms are then reverted to batch norms).')


def _convert_one(module: nn.Module, convert: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Apply a recursive converter to one norm module only (its children are put back as they
    were: _replace_modules visits them itself), keeping its train/eval mode."""
    children = dict(module.named_children())
    new = convert(module)
    for name, child in children.items():
        new.add_module(name, child)
    new.train(module.training)
    return new


def _to_batchnorm_act(module: SyncBatchNormAct) -> BatchNormAct2d:
    """timm's SyncBatchNormAct back to BatchNormAct2d, sharing parameters and buffers."""
    new = BatchNormAct2d(module.num_features, module.eps, module.momentum, module.affine,
                         module.track_running_stats)
    if module.affine:
        new.weight, new.bias = module.weight, module.bias
    new.running_mean, new.running_var = module.running_mean, module.running_var
    new.num_batches_tracked = module.num_batches_tracked
    for name in ('drop', 'act'):  # timm sets both on SyncBatchNormAct
        if hasattr(module, name):
            setattr(new, name, getattr(module, name))
    if hasattr(module, 'qconfig'):
        new.qconfig = module.qconfig
    new.train(module.training)
    return new


def _replace_modules(model: nn.Module, convert: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace every module m of `model` (itself included) by convert(m). TimmBackbone keeps its
    frozen stages by path, so they stay frozen in the replaced modules."""
    def visit(module: nn.Module) -> nn.Module:
        new = convert(module)
        for name, child in list(new.named_children()):
            new_child = visit(child)
            if new_child is not child:
                new.add_module(name, new_child)
        return new

    return visit(model)
