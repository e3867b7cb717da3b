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
- `check_checkpoint_file` / `checkpoint_kind` / `read_checkpoint`: files are inspected before
  torch reads them (size 0, a directory, a zip archive without its end record = truncated,
  torch's legacy pickle magic, the safetensors header): a missing, empty, truncated or
  directory "checkpoint", one that is no PyTorch (or safetensors) file (an HTML error page saved
  as .pth, a Git LFS pointer, a JPEG) or a safetensors file where a training checkpoint is
  needed is named as such, with the option that named it and the fix (for a truncated file in
  a work dir: the previous complete checkpoint, `complete_checkpoints`).
"""
import collections
import contextlib
import inspect
import os
import pickle
import re
import zipfile
from types import FunctionType
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['checkpoint_loading', 'allow_mmengine_globals', 'to_plain_checkpoint',
           'from_plain_checkpoint', 'WeightsOnlyError', 'checkpoint_kind', 'checkpoint_problem',
           'check_checkpoint_file', 'complete_checkpoints', 'inspect_local_checkpoints',
           'previous_complete', 'read_checkpoint', 'state_dict_from']


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
        raise WeightsOnlyError(_weights_only_message(filename)) from err


def allow_mmengine_globals() -> None:
    """Allow, for every `torch.load(weights_only=True)` of the process, what mmengine writes into
    checkpoints besides tensors (numpy arrays and scalars, `HistoryBuffer` and its statistics
    methods) and nothing else, so mmdet's own APIs (`init_detector`, `DetInferencer`, the
    runners) read mmengine checkpoints; and have them name broken files
    (`inspect_local_checkpoints`). Called when the package is imported; idempotent."""
    torch.serialization.add_safe_globals(_safe_globals())
    inspect_local_checkpoints()


def _inspected(load_from_local: Callable[..., Any]) -> Callable[..., Any]:
    def load(filename: str, map_location: Any = None) -> Any:
        checkpoint_kind(os.path.expanduser(filename), 'checkpoint', safetensors=False)
        return load_from_local(filename, map_location)
    load.__wrapped__ = load_from_local  # type: ignore[attr-defined]
    return load


def inspect_local_checkpoints() -> None:
    """mmengine's loader of local checkpoint files (`CheckpointLoader`, used by mmdet's
    `DetInferencer`, `mmdet.apis.init_detector` and the runners) inspects each file before torch
    reads it (`checkpoint_kind`): an empty, truncated, directory, non-checkpoint or safetensors
    file gets an error naming it, what is wrong and the fix instead of torch's. The files that
    load are loaded as before. Idempotent.

    Example:
        >>> inspect_local_checkpoints()
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    local = CheckpointLoader._schemes.get('')
    if local is None or hasattr(local, '__wrapped__'):
        return
    # force=True replaces mmengine's own loader of the '' (local file) prefix, wrapped
    CheckpointLoader.register_scheme(prefixes='', loader=_inspected(local), force=True)


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

class WeightsOnlyError(RuntimeError):
    """A checkpoint holds types `torch.load(weights_only=True)` refuses (`checkpoint_loading`)."""


_CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')  # mmengine CheckpointHook's names


def _file_kind(head: bytes, size: int) -> Optional[str]:
    """'zip' (torch >= 1.6), 'pickle' (torch's legacy format), 'safetensors', or None."""
    if head.startswith(b'PK\x03\x04'):
        return 'zip'
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return 'pickle'
    if len(head) >= 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < size:
        return 'safetensors'
    return None


def _is_local(filename: Any) -> bool:
    return isinstance(filename, (str, os.PathLike)) and '://' not in os.fspath(filename) and \
        not os.fspath(filename).startswith(('open-mmlab:', 'mmcls:', 'openmmlab:'))


def checkpoint_problem(path: Any) -> Optional[str]:
    """What makes a local `path` no complete checkpoint file ('missing (no such file)', 'a
    directory, ...', 'empty (0 bytes) ...', 'truncated ...'), or None. A zip checkpoint (torch
    >= 1.6) is complete when its end-of-archive record, written last, is there; legacy and
    safetensors files are taken as they are. Names that are no local file (URLs) give None.

    Example:
        >>> checkpoint_problem('work_dirs/x/epoch_2.pth')  # None: complete
    """
    if not _is_local(path):
        return None
    path = os.fspath(path)
    if os.path.isdir(path):
        return 'a directory, not a checkpoint file'
    if not os.path.exists(path):
        return 'missing (no such file)'
    size = os.path.getsize(path)
    if size == 0:
        return 'empty (0 bytes), e.g. from an interrupted save or download'
    with open(path, 'rb') as f:
        head = f.read(4)
    if head == b'PK\x03\x04' and not zipfile.is_zipfile(path):
        return (f'a truncated PyTorch checkpoint ({size} bytes; the end of its zip archive is '
                f'missing), e.g. from an interrupted save, copy or download')
    return None


def complete_checkpoints(folder: str) -> List[str]:
    """The complete `epoch_N.pth` / `iter_N.pth` checkpoints in `folder`, oldest first (by
    modification time, then N).

    Example:
        >>> complete_checkpoints('work_dirs/x')[-1]
        'work_dirs/x/epoch_2.pth'
    """
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        match = _CHECKPOINT_NAME.match(name)
        path = os.path.join(folder, name)
        if match and checkpoint_problem(path) is None:
            found.append((os.path.getmtime(path), int(match.group(2)), path))
    return [path for *_, path in sorted(found)]


def previous_complete(path: str) -> Optional[str]:
    """The newest complete checkpoint beside `path` (other than it), or None."""
    others = [p for p in complete_checkpoints(os.path.dirname(os.path.abspath(path)))
              if os.path.abspath(p) != os.path.abspath(path)]
    return others[-1] if others else None


def _option(option: Optional[str], filename: Any) -> str:
    if not option:
        return repr(str(filename))
    return f'{option}{str(filename)!r}' if option.endswith('=') else \
        f'{option} {str(filename)!r}'


def check_checkpoint_file(filename: Any, option: Optional[str] = None,
                          safetensors: bool = True) -> None:
    """Raise a clear error for a local file that cannot be a checkpoint (see `checkpoint_kind`).

    Example:
        >>> check_checkpoint_file('work_dirs/x/epoch_1.pth', option='load_from')
    """
    checkpoint_kind(filename, option, safetensors)


def checkpoint_kind(filename: Any, option: Optional[str] = None,
                    safetensors: bool = True) -> Optional[str]:
    """The format of a local checkpoint file ('zip', 'pickle' or 'safetensors'), found by
    inspecting the file (never by reading torch's messages). Otherwise an error naming the
    option, the file, what is wrong and the fix: `FileNotFoundError` for a missing file,
    `ValueError` for a directory, an empty or truncated file (with the previous complete
    checkpoint beside it, if any), a safetensors file where `safetensors=False` (a training
    checkpoint is needed), and anything else ("not a PyTorch checkpoint", with what it looks
    like). Names that are no local file (URLs, `open-mmlab://...`) return None: their loaders
    check them.

    Args:
        filename: The file.
        option: The option that named it, for messages (e.g. 'load_from', 'pretrained=').
        safetensors: Whether a safetensors file is acceptable here.

    Example:
        >>> checkpoint_kind('work_dirs/x/epoch_1.pth')
        'zip'
    """
    if not _is_local(filename):
        return None
    name = _option(option, filename)
    problem = checkpoint_problem(filename)
    if problem is not None:
        previous = previous_complete(os.fspath(filename)) if os.path.isfile(filename) else None
        if problem.startswith('missing'):
            raise FileNotFoundError(
                f'{name}: no such file. Check the path (relative paths are taken from the '
                f'current directory, {os.getcwd()!r}).')
        if problem.startswith('a directory'):
            fix = ('pass the checkpoint file inside it (e.g. .../epoch_N.pth); FSDP runs must '
                   "write full checkpoints (strategy.state_dict_cfg='full')")
        elif previous is not None:
            fix = f'use the previous complete checkpoint in that folder, {previous!r}'
        else:
            fix = 'save or download the file again'
        if problem.startswith('empty'):
            raise ValueError(f'{name} is not a PyTorch checkpoint (nor a safetensors file): it is '
                             f'{problem}. Fix: {fix}.')
        raise ValueError(f'{name} is {problem}. Fix: {fix}.')
    size = os.path.getsize(filename)
    with open(filename, 'rb') as f:
        head = f.read(64)
    kind = _file_kind(head, size)
    if kind == 'safetensors' and not safetensors:
        raise ValueError(
            f'{name} is a safetensors file (tensors only, e.g. timm weights), not a training '
            f'checkpoint. Fix: pass a checkpoint written by training (work_dirs/.../epoch_N.pth); '
            f'for timm weights use model.backbone.pretrained={str(filename)!r}.')
    if kind is not None:
        return kind
    text = head.lstrip().lower()
    if text.startswith((b'<!doctype', b'<html', b'<?xml', b'<head')):
        looks = ('it is an HTML page, e.g. an error or login page saved by a failed download: '
                 'download the file again')
    elif text.startswith(b'version https://git-lfs'):
        looks = 'it is a Git LFS pointer: fetch the real file (git lfs pull)'
    elif head.startswith(b'\xff\xd8\xff'):
        looks = 'it is a JPEG image'
    elif head.startswith(b'\x89PNG'):
        looks = 'it is a PNG image'
    else:
        looks = f'it starts with {head[:32]!r}'
    raise ValueError(f'{name} is not a PyTorch checkpoint (nor a safetensors file): '
                     f'{looks}. Pass a file written by torch.save or safetensors.')


def read_checkpoint(filename: str, map_location: str = 'cpu', option: Optional[str] = None,
                    safetensors: bool = True) -> Any:
    """Load a checkpoint weights-only: a local torch or safetensors file (checked first, see
    `checkpoint_kind`), or any name mmengine's `CheckpointLoader` takes (URLs, ...). A file
    torch cannot read after all (a corrupt archive) is a `ValueError` naming `option` and the
    file.

    Example:
        >>> state = state_dict_from(read_checkpoint('work_dirs/x/epoch_1.pth'))
    """
    kind = checkpoint_kind(filename, option, safetensors)
    try:
        if kind == 'safetensors':
            from safetensors.torch import load_file
            return load_file(str(filename), device=map_location)
        from mmengine.runner import CheckpointLoader
        with checkpoint_loading(str(filename)):
            return CheckpointLoader.load_checkpoint(str(filename), map_location=map_location)
    except (ValueError, WeightsOnlyError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt file of any kind: say which and what
        if kind is None:  # not a local file: its loader's error stands
            raise
        raise ValueError(
            f'{_option(option, filename)}: torch could not read it ({type(err).__name__}); the '
            f'file is damaged. Fix: save or download it again'
            f'{_previous_hint(filename)}.') from err


def _previous_hint(filename: str) -> str:
    previous = previous_complete(filename)
    return f', or use the previous complete checkpoint in that folder, {previous!r}' \
        if previous else ''


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
