"""Loading weights, verified: reading checkpoint files weights-only, and checking what a load
matched.

- `checkpoint_loading`: mmengine 0.10 calls plain `torch.load`, whose default is
  `weights_only=True` since torch 2.6, and its own checkpoints hold numpy arrays and
  `HistoryBuffer`s, so they fail to load. The few non-tensor types mmengine writes are
  allow-listed here, and nothing else.
- `check_checkpoint_file` / `read_checkpoint`: a file that is no PyTorch (or safetensors)
  checkpoint (an HTML error page saved as .pth, a Git LFS pointer, text) is named as such
  instead of getting advice about trusting it.
- `load_verified` / `LoadReport` / `check_load`: every weight load reports loaded/total tensors
  and fails when nothing or too little matched, showing expected vs found key names and the
  prefix that would make them match.
"""
import collections
import contextlib
import inspect
import logging
import os
import pickle
from dataclasses import dataclass
from types import FunctionType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from torch import Tensor, nn

__all__ = ['checkpoint_loading', 'check_checkpoint_file', 'read_checkpoint', 'state_dict_from',
           'LoadReport', 'check_load', 'verify_state_dict', 'load_verified', 'key_mismatch_hint', 'recording_loads',
           'tensor_ids', 'MIN_LOADED']

# Fewer matched tensors than this fraction of the target's is an error, not a partial load.
MIN_LOADED = 0.5


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
    except (pickle.UnpicklingError, EOFError) as err:
        check_checkpoint_file(filename)  # a file that is no checkpoint at all says so
        if isinstance(err, EOFError):
            raise
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


def check_checkpoint_file(filename: Any) -> Optional[str]:
    """The format of a local checkpoint file ('zip', 'pickle' or 'safetensors'); a `ValueError`
    saying "not a PyTorch checkpoint" (with what it looks like) for any other file. Names that
    are no local file (URLs, `open-mmlab://...`) return None: their loaders check them.

    Example:
        >>> check_checkpoint_file('work_dirs/x/epoch_1.pth')
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
    if check_checkpoint_file(filename) == 'safetensors':
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


# ---- what a load matched -----------------------------------------------------------------------

def key_mismatch_hint(expected: Sequence[str], found: Sequence[str]) -> Optional[Tuple[str, str]]:
    """How `found` names would match `expected`: ('strip', p) when found names are p + an
    expected name, ('add', p) when expected names are p + a found name; the prefix explaining
    most names wins. None if no prefix explains any.

    Example:
        >>> key_mismatch_hint(['conv.weight'], ['backbone.conv.weight'])
        ('strip', 'backbone.')
    """
    expected_set, found_set = set(expected), set(found)
    votes: collections.Counter = collections.Counter()
    for names, targets, how in ((found, expected_set, 'strip'), (expected, found_set, 'add')):
        for name in names:
            parts = name.split('.')
            for i in range(1, len(parts)):
                if '.'.join(parts[i:]) in targets:
                    votes[(how, '.'.join(parts[:i]) + '.')] += 1
                    break
    return votes.most_common(1)[0][0] if votes else None


@dataclass(frozen=True)
class LoadReport:
    """What a weight load matched.

    Args:
        target: What was loaded into (e.g. "TimmBackbone('resnet18')").
        source: Where the weights came from (a file name).
        expected: Tensor names of the target (the ones counted).
        loaded: Those that received a tensor from the source.
        found: Tensor names the source offered (after any prefix was applied).
        mismatched: Names present in both, with different shapes (not loaded).
    """
    target: str
    source: str
    expected: Tuple[str, ...]
    loaded: Tuple[str, ...]
    found: Tuple[str, ...]
    mismatched: Tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Number of tensors of the target."""
        return len(self.expected)

    @property
    def missing(self) -> Tuple[str, ...]:
        """Tensors of the target that got nothing (kept their previous values)."""
        loaded = set(self.loaded)
        return tuple(k for k in self.expected if k not in loaded)

    def summary(self) -> str:
        """'loaded 102/102 tensors of ... from ...'."""
        return (f'loaded {len(self.loaded)}/{self.total} tensors of {self.target} from '
                f'{self.source}')


def _examples(names: Sequence[str], n: int = 4) -> str:
    names = list(names)
    more = f' ... ({len(names)} in all)' if len(names) > n else ''
    return ', '.join(repr(k) for k in names[:n]) + more if names else '(none)'


def check_load(report: LoadReport, min_fraction: float = MIN_LOADED, advice: str = '') -> None:
    """Log the load (info when complete, a warning naming what is missing otherwise); raise a
    `ValueError` when nothing, or less than `min_fraction` of the target, was loaded, showing a
    few expected and found names, the prefix that would match them and `advice`.

    Example:
        >>> check_load(LoadReport('TimmBackbone', 'w.pth', ('a',), ('a',), ('a',)))
    """
    loaded, total = len(report.loaded), report.total
    if total and loaded >= max(min_fraction * total, 1):
        if loaded == total:
            print_log(f'{report.summary()}', logger='current')
        else:
            print_log(f'{report.summary()}; not in the file (left as they were): '
                      f'{_examples(report.missing, 8)}', logger='current', level=logging.WARNING)
        return
    matched = set(report.loaded) | set(report.mismatched)
    unmatched = [k for k in report.found if k not in matched]
    hint = key_mismatch_hint([k for k in report.expected if k not in matched], unmatched)
    if report.mismatched and not unmatched:
        why = ('the names match but the shapes differ: the file holds weights of another '
               'variant or configuration of the model')
    elif hint is None:
        why = 'no prefix makes the names match: the file holds weights of another model'
    elif hint[0] == 'strip':
        why = f"the file's names are the expected ones with {hint[1]!r} in front (prefix={hint[1]!r})"
    else:
        why = f"the file's names lack the prefix {hint[1]!r} of the expected ones"
    shapes = (f' {len(report.mismatched)} names matched with other shapes: '
              f'{_examples(report.mismatched)}.' if report.mismatched else '')
    raise ValueError(
        f'{report.summary()}: too few matched (at least {min_fraction:.0%} needed). Expected '
        f'names like {_examples(report.expected)}; the file has {_examples(report.found)}: '
        f'{why}.{shapes} {advice}'.rstrip())


def verify_state_dict(module: nn.Module, state_dict: Mapping[str, Any], target: str,
                      source: str, scope: str = '', min_fraction: float = MIN_LOADED,
                      advice: str = '') -> LoadReport:
    """`check_load` of loading `state_dict` into `module`, counting the tensors whose names
    start with `scope` (nothing is loaded here).

    Args:
        module: Where the tensors go.
        state_dict: Name -> tensor, names as in `module.state_dict()`.
        target: What `module` is, for messages.
        source: Where the tensors came from, for messages.
        scope: Count only the target's tensors under this name prefix (e.g. 'backbone.').
        min_fraction: See `check_load`.
        advice: Appended to the error (what to do instead).

    Example:
        >>> verify_state_dict(detector, state, 'the detector', path, scope='backbone.').total
        102
    """
    own = module.state_dict()
    expected = tuple(k for k in own if k.startswith(scope))
    found = tuple(k for k in state_dict if isinstance(k, str))
    shape = {k: tuple(getattr(v, 'shape', ())) for k, v in state_dict.items()}
    loaded = tuple(k for k in expected if k in shape and shape[k] == tuple(own[k].shape))
    mismatched = tuple(k for k in expected if k in shape and shape[k] != tuple(own[k].shape))
    report = LoadReport(target, source, expected, loaded, found, mismatched)
    check_load(report, min_fraction, advice)
    return report


def load_verified(module: nn.Module, state_dict: Mapping[str, Any], target: str, source: str,
                  scope: str = '', min_fraction: float = MIN_LOADED, advice: str = ''
                  ) -> LoadReport:
    """`verify_state_dict`, then load (strict=False, with mmengine's `load_state_dict`, which
    logs what did not match).

    Example:
        >>> report = load_verified(backbone, state_dict_from(read_checkpoint(path)),
        ...                        'TimmBackbone', path)
    """
    from mmengine.runner import load_state_dict
    report = verify_state_dict(module, state_dict, target, source, scope, min_fraction, advice)
    load_state_dict(module, dict(state_dict), strict=False, logger='current')
    return report


@contextlib.contextmanager
def recording_loads() -> Iterator[List[Tuple[nn.Module, Tuple[str, ...], Any]]]:
    """Record every `nn.Module.load_state_dict` call made inside the block (as
    (module, names given, result)), e.g. timm's own pretrained loading, whose result timm does
    not return. Single-threaded use only (it swaps the method on `nn.Module` meanwhile).

    Example:
        >>> with recording_loads() as calls:
        ...     model = timm.create_model('resnet18', pretrained=True, ...)
    """
    calls: List[Tuple[nn.Module, Tuple[str, ...], Any]] = []
    original = nn.Module.load_state_dict

    def load_state_dict(self: nn.Module, state_dict: Mapping[str, Any], *args: Any,
                        **kwargs: Any) -> Any:
        result = original(self, state_dict, *args, **kwargs)
        calls.append((self, tuple(state_dict), result))
        return result

    nn.Module.load_state_dict = load_state_dict  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        nn.Module.load_state_dict = original  # type: ignore[method-assign]


def tensor_ids(module: nn.Module, names: Optional[Sequence[str]] = None) -> Dict[int, str]:
    """id(tensor) -> name for the parameters and buffers of `module` (or those in `names`)."""
    state = module.state_dict(keep_vars=True)
    return {id(t): k for k, t in state.items()
            if isinstance(t, Tensor) and (names is None or k in names)}
