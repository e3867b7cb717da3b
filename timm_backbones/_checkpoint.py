"""Weights-only checkpoint loading for mmengine checkpoints under torch >= 2.6.

mmengine 0.10 calls plain `torch.load`, whose default is `weights_only=True` since torch 2.6, and
its own checkpoints hold numpy arrays and `HistoryBuffer`s, so they fail to load. The few
non-tensor types mmengine writes are allow-listed here, and nothing else.
"""
import contextlib
import inspect
import os
import pickle
from types import FunctionType
from typing import Any, Iterator, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['checkpoint_loading']


def _history_buffer_getattr(obj: Any, name: Any, *default: Any) -> Any:
    """`getattr` as unpickled from mmengine checkpoints: `HistoryBuffer` pickles its statistics
    methods as `getattr(HistoryBuffer, 'mean')`. Nothing else may be looked up."""
    if obj is HistoryBuffer and not default and isinstance(name, str) and \
            not name.startswith('_') and \
            isinstance(inspect.getattr_static(HistoryBuffer, name, None), FunctionType):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({obj!r}, {name!r}) while loading a checkpoint: only the statistics '
        f'methods of mmengine HistoryBuffer are allowed.')


def _numpy_globals() -> List[Any]:
    """The numpy globals of pickled arrays and scalars, under numpy 1 and numpy 2 names."""
    found: List[Any] = [np.ndarray, np.dtype]
    found += [type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64,
                                          np.uint8, np.uint16, np.uint32, np.uint64,
                                          np.float16, np.float32, np.float64)]
    multiarray = getattr(np, '_core', None) or np.core
    for name in ('_reconstruct', 'scalar'):
        fn = getattr(multiarray.multiarray, name)
        found += [(fn, f'numpy._core.multiarray.{name}'), (fn, f'numpy.core.multiarray.{name}')]
    return found


def _safe_globals() -> List[Any]:
    return _numpy_globals() + [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')]


def _allowed_names() -> set:
    return {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
            for g in _safe_globals()}


@contextlib.contextmanager
def checkpoint_loading(filename: str) -> Iterator[None]:
    """Context for loading mmengine checkpoints with `torch.load(weights_only=True)`.

    Allows what mmengine writes into checkpoints besides tensors (numpy arrays and scalars,
    `HistoryBuffer` and its statistics methods) and nothing else. A file that needs more fails
    with a `RuntimeError` naming the types and how to load it if it is trusted.

    Args:
        filename: The checkpoint being loaded (for the error message).

    Example:
        >>> with checkpoint_loading('work_dirs/x/iter_4.pth'):
        ...     ckpt = torch.load('work_dirs/x/iter_4.pth')
    """
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            yield
    except pickle.UnpicklingError as err:
        raise RuntimeError(_weights_only_message(filename)) from err


def _weights_only_message(filename: str) -> str:
    unsafe = ''
    if isinstance(filename, str) and os.path.isfile(filename):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
        except Exception:  # noqa: BLE001 - only for the message; torch's error follows anyway
            names = []
        names = [n for n in names if n not in _allowed_names()]
        if names:
            unsafe = f' It holds {names}, which are not on the allow-list.'
    return (
        f'Cannot load the checkpoint {filename!r} with torch.load(weights_only=True), the '
        f'default since torch 2.6.{unsafe} timm_backbones allows tensors, containers, numpy '
        f"arrays and mmengine's HistoryBuffer (what mmengine writes). If you trust the file, "
        f'either allow the listed types before loading '
        f'(torch.serialization.add_safe_globals([...]); the error above names them), or set the '
        f'environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 to unpickle it completely '
        f'(this runs any code the file contains). Otherwise, re-save only its tensors: '
        f"torch.save({{'state_dict': ckpt['state_dict']}}, path) where the file comes from.")
