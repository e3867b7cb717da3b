"""The early check that mmcv can run a detector on CUDA: a detector moved to a CUDA device with an
mmcv built without its CUDA ops (a CPU build, e.g. `make install` on a machine without nvcc)
otherwise fails deep inside the first mmcv op it meets (`nms_impl: implementation for device
cuda:0 not found`), often only at the first validation. `check_mmcv_cuda_ops` fails before, with
the fix.
"""
from typing import Optional, Union

import torch

__all__ = ['check_mmcv_cuda_ops']

NOT_AVAILABLE = 'not available'  # mmcv's answer (ops/csrc/pytorch/info.cpp) for a CPU build
FIX = ('Fix: run `make install` on this machine (it builds mmcv\'s CUDA ops when torch sees a '
       'GPU and nvcc is found; `make install FORCE_CUDA=1` insists and names what is missing), '
       'or install an mmcv 2.1.0 wheel built with CUDA ops for this torch: '
       '`make install MMCV_WHEEL=/path/to/mmcv-2.1.0-...whl`; or run on device=\'cpu\'.')


def check_mmcv_cuda_ops(device: Optional[Union[str, int, torch.device]]) -> None:
    """Raise a `RuntimeError` naming the problem and the fix when `device` is a CUDA device and
    the installed mmcv has no CUDA ops; do nothing for other devices.

    Args:
        device: Where the detector goes: 'cuda', 'cuda:1', a `torch.device`, a CUDA index, or
            anything else (None, 'cpu', 'meta': nothing to check).

    Raises:
        ValueError: `device` is not a device torch knows.
        RuntimeError: CUDA device, but mmcv's compiled ops are missing or CPU-only.

    Example:
        >>> check_mmcv_cuda_ops('cpu')  # nothing to check
    """
    if device is None:
        return
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f'device={device!r} is not a device; use e.g. \'cpu\', \'cuda\', '
                         f'\'cuda:0\' or a torch.device') from err
    if device.type != 'cuda':
        return
    import mmcv
    where = f'mmcv {mmcv.__version__} ({mmcv.__file__})'
    try:
        import mmcv.ops as ops
        built_for = ops.get_compiling_cuda_version()
    except ImportError as err:
        raise RuntimeError(f'the detector is going to {device}, but {where} has no compiled ops '
                           f'(mmcv.ops does not import: {err}). {FIX}') from err
    if not built_for or built_for == NOT_AVAILABLE:
        raise RuntimeError(
            f'the detector is going to {device}, but {where} was built without CUDA ops '
            f'(mmcv.ops.get_compiling_cuda_version() = {built_for!r}): its ops (nms, RoIAlign, '
            f'sigmoid_focal_loss, deformable attention) would fail inside the first forward on '
            f'{device}. {FIX}')
