"""Checkpoint files: reading them weights-only, naming files that are no checkpoint, and writing
checkpoints that any weights-only reader loads. Loading tensors into models, verified, is
`_weights.py`'s.

- `checkpoint_loading` / `allow_mmengine_globals`: mmengine 0.10 calls plain `torch.load`, whose
  default is `weights_only=True` since torch 2.6, and its checkpoints hold numpy arrays and
  `HistoryBuffer`s. The few non-tensor types mmengine writes are allow-listed (inside
  `checkpoint_loading`; process-wide once the package is imported), and nothing else.
- `to_plain_checkpoint` / `from_plain_checkpoint`: `TimmBackboneRunner` writes those objects as
  tensors and plain containers, so its checkpoints load under the weights-only default before
  any plugin is imported (mmdet's `DetInferencer(weights=...)` reads the config from the
  checkpoint), and turns them back into `HistoryBuffer`s when it resumes.
- `check_checkpoint_file` / `read_checkpoint`: a file that is no PyTorch (or safetensors)
  checkpoint (an HTML error page saved as .pth, a Git LFS pointer, text) is named as such
  instead of getting advice about trusting it.
"""
import collections
import contextlib
import inspect
import os
import pickle
from types import FunctionType
from typing import Any, Dict, Iterator, List, Mapping, Optional

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['checkpoint_loading', 'allow_mmengine_globals', 'to_plain_checkpoint',
           'from_plain_checkpoint', 'checkpoint_kind', 'check_checkpoint_file', 'read_checkpoint',
           'state_dict_from']


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
    `HistoryBuffer` and its statistics methods; `allow_mmengine_globals`, which stays in effect:
    torch's own `safe_globals` context would take them away again on exit) and nothing else. A
    file that needs more fails with a `RuntimeError` naming the types and how to load it if it is
    trusted, a file that is no checkpoint says so.

    Args:
        filename: The checkpoint being loaded (for the error message).

    Example:
        >>> with checkpoint_loading('work_dirs/x/iter_4.pth'):
        ...     ckpt = torch.load('work_dirs/x/iter_4.pth')
    """
    allow_mmengine_globals()
    try:
        yield
    except (pickle.UnpicklingError, EOFError) as err:
        check_checkpoint_file(filename)  # a file that is no checkpoint at all says so
        if isinstance(err, EOFError):
            raise
        raise RuntimeError(_weights_only_message(filename)) from err


def allow_mmengine_globals() -> None:
    """Allow, for every `torch.load(weights_only=True)` of the process, what mmengine writes into
    checkpoints besides tensors (numpy arrays and scalars, `HistoryBuffer` and its statistics
    methods) and nothing else, so mmdet's own APIs (`init_detector`, `DetInferencer`, the
    runners) read mmengine checkpoints. Called when the package is imported; idempotent."""
    torch.serialization.add_safe_globals(_safe_globals())


_PLAIN_BUFFER = '__history_buffer__'  # marks a HistoryBuffer written as a plain dict


def to_plain_checkpoint(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint with its message hub in tensors and plain containers (in place): each
    `HistoryBuffer` becomes a marked dict of its histories, numpy arrays become tensors and numpy
    scalars Python numbers. `from_plain_checkpoint` restores the buffers.

    Example:
        >>> ckpt = to_plain_checkpoint({'message_hub': {'log_scalars': {'loss': HistoryBuffer()}}})
    """
    if isinstance(checkpoint.get('message_hub'), Mapping):
        checkpoint['message_hub'] = _plain(checkpoint['message_hub'])
    return checkpoint


def _plain(value: Any) -> Any:
    if isinstance(value, HistoryBuffer):
        log, count = value.data
        return {_PLAIN_BUFFER: True, 'log_history': torch.from_numpy(np.asarray(log)),
                'count_history': torch.from_numpy(np.asarray(count)),
                'max_length': value.max_length}
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def from_plain_checkpoint(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """Undo `to_plain_checkpoint` (in place): marked dicts of the message hub become
    `HistoryBuffer`s again (checkpoints written by plain mmengine are left as they are).

    Example:
        >>> ckpt = from_plain_checkpoint(to_plain_checkpoint(ckpt))
    """
    hub = checkpoint.get('message_hub')
    if isinstance(hub, Mapping) and isinstance(hub.get('log_scalars'), Mapping):
        hub['log_scalars'] = {k: _history_buffer(v) for k, v in hub['log_scalars'].items()}
    return checkpoint


def _history_buffer(value: Any) -> Any:
    if not (isinstance(value, Mapping) and value.get(_PLAIN_BUFFER)):
        return value
    return HistoryBuffer(value['log_history'].tolist(), value['count_history'].tolist(),
                         value['max_length'])


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


# ---- what kind of file -------------------------------------------------------------------------

def _file_kind(head: bytes, size: int) -> Optional[str]:
    """'zip' (torch >= 1.6), 'pickle' (torch's legacy format), 'safetensors', or None."""
    if head.startswith(b'PK\x03\x04'):
        return 'zip'
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return 'pickle'
    if len(head) >= 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < size:
        return 'safetensors'
    return None


def check_checkpoint_file(filename: Any) -> None:
    """Raise a `ValueError` saying "not a PyTorch checkpoint" (with what it looks like) for a
    local file that is no torch or safetensors checkpoint (see `checkpoint_kind`).

    Example:
        >>> check_checkpoint_file('work_dirs/x/epoch_1.pth')
    """
    checkpoint_kind(filename)


def checkpoint_kind(filename: Any) -> Optional[str]:
    """The format of a local checkpoint file ('zip', 'pickle' or 'safetensors'); a `ValueError`
    saying "not a PyTorch checkpoint" (with what it looks like) for any other file. Names that
    are no local file (URLs, `open-mmlab://...`) return None: their loaders check them.

    Example:
        >>> checkpoint_kind('work_dirs/x/epoch_1.pth')
        'zip'
    """
    if not isinstance(filename, (str, os.PathLike)) or not os.path.isfile(filename):
        return None
    size = os.path.getsize(filename)
    with open(filename, 'rb') as f:
        head = f.read(64)
    kind = _file_kind(head, size)
    if kind is not None:
        return kind
    text = head.lstrip().lower()
    if not head:
        looks = 'it is empty (0 bytes), e.g. from an interrupted download or save'
    elif text.startswith((b'<!doctype', b'<html', b'<?xml', b'<head')):
        looks = ('it is an HTML page, e.g. an error or login page saved by a failed download: '
                 'download the file again')
    elif text.startswith(b'version https://git-lfs'):
        looks = 'it is a Git LFS pointer: fetch the real file (git lfs pull)'
    else:
        looks = f'it starts with {head[:32]!r}'
    raise ValueError(f'{str(filename)!r} is not a PyTorch checkpoint (nor a safetensors file): '
                     f'{looks}. Pass a file written by torch.save or safetensors.')


def read_checkpoint(filename: str, map_location: str = 'cpu') -> Any:
    """Load a checkpoint weights-only: a local torch or safetensors file (checked first, see
    `check_checkpoint_file`), or any name mmengine's `CheckpointLoader` takes (URLs, ...).

    Example:
        >>> state = state_dict_from(read_checkpoint('work_dirs/x/epoch_1.pth'))
    """
    if checkpoint_kind(filename) == 'safetensors':
        from safetensors.torch import load_file
        return load_file(str(filename), device=map_location)
    from mmengine.runner import CheckpointLoader
    with checkpoint_loading(str(filename)):
        return CheckpointLoader.load_checkpoint(str(filename), map_location=map_location)


def state_dict_from(checkpoint: Any, filename: str = '') -> Dict[str, Any]:
    """The tensors of a loaded checkpoint, as mmengine reads them: its `state_dict` (mmengine,
    mmdet) or `model` entry, else the dict itself; a leading `module.` (DDP) stripped.

    Example:
        >>> state_dict_from({'state_dict': {'module.conv.weight': w}})
        {'conv.weight': w}
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'checkpoint {filename!r} holds a {type(checkpoint).__name__}, not a '
                         f'dict of tensors (a state dict, or a dict with a state_dict entry).')
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    return collections.OrderedDict(
        (k[len('module.'):] if isinstance(k, str) and k.startswith('module.') else k, v)
        for k, v in checkpoint.items())
