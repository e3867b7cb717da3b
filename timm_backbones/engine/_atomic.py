"""Checkpoints that survive a kill at any byte, and a resume that finds the last complete one.

The runners (`TimmRunnerMixin`) write each checkpoint, and the work dir's `last_checkpoint`
pointer after it, so that a process killed at any moment (preemption, the OOM killer, a full
disk) leaves either the previous state or the new one, never a truncated file under a final name:

- `atomic_checkpoint`: mmengine writes the checkpoint to a temporary name in the same folder
  (`.epoch_2.pth.tmp-<pid>`); it is then flushed to disk (`fsync`), renamed over the final name
  (`os.replace`, atomic on POSIX) and the folder is synced, so the rename itself is durable.
  A full disk (or any other `OSError`) while writing removes the temporary file and stops the
  run with a `CheckpointWriteError` naming the file and the free space; earlier checkpoints
  are untouched.
- `atomic_pointer_writes`: mmengine's `CheckpointHook` rewrites `last_checkpoint` with a plain
  `open(path, 'w')` after each save (truncate, then write). While the runner calls its hooks,
  that one `open` is given an atomic writer (temporary file, fsync, rename, folder fsync); every
  other file it opens goes to Python's own `open`.
- `removals_after_saves`: the old checkpoints the hook deletes (`max_keep_ckpts`) are deleted
  after the new checkpoint and the pointer are written (mmengine deletes first: with
  `max_keep_ckpts=1` a kill during the write left nothing to resume from).
- `resume_source`: what `--resume` (auto) continues from: the checkpoint `last_checkpoint` names
  when that file is complete; otherwise (an empty or cut pointer, a missing or truncated file)
  the newest complete `epoch_N.pth` / `iter_N.pth` in the work dir, with a log line saying so;
  no checkpoint at all is said in the log too (the run starts from scratch, never silently).
- `check_resume_file`: an explicit `--resume FILE` that is truncated, empty or missing fails with
  a `ValueError` naming the file, what is wrong and the newest complete checkpoint beside it.
"""
import builtins
import contextlib
import errno
import logging
import os
import shutil
from typing import IO, Any, Iterator, List, Optional, Sequence, Tuple

from mmengine.logging import print_log

from .._checkpoint import checkpoint_problem, complete_checkpoints

__all__ = ['CheckpointWriteError', 'atomic_checkpoint', 'atomic_write', 'atomic_pointer_writes',
           'removals_after_saves', 'fsync_dir', 'resume_source', 'check_resume_file', 'POINTER']

POINTER = 'last_checkpoint'  # mmengine's name for the work dir's pointer file
_TMP = '.tmp-'  # temporary files are '.<final name>.tmp-<pid>'


class CheckpointWriteError(OSError):
    """A checkpoint (or `last_checkpoint`) could not be written; the previous ones are intact."""


def _tmp_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f'.{name}{_TMP}{os.getpid()}')


def fsync_dir(folder: str) -> None:
    """Make a rename inside `folder` durable (POSIX: sync the directory entry)."""
    try:
        fd = os.open(folder or '.', os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles: nothing more to do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_error(path: str, err: OSError, what: str) -> CheckpointWriteError:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f'{shutil.disk_usage(folder).free / 2**30:.2f} GiB free on its disk'
    except OSError:
        free = 'free space unknown'
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = ('Free disk space (or point --work-dir at a larger disk), then continue with '
           'tools/train.py CONFIG --resume.' if full else
           'Check the folder (permissions, disk), then continue with tools/train.py CONFIG '
           '--resume.')
    return CheckpointWriteError(
        err.errno, f'could not write {what} {path!r} ({"disk full" if full else err.strerror}; '
                   f'{free}). Training stopped; the previous checkpoints and last_checkpoint are '
                   f'unchanged and complete. {fix}')


@contextlib.contextmanager
def atomic_checkpoint(path: str) -> Iterator[str]:
    """Write a file atomically: the body writes to the yielded temporary name (same folder); on
    success it is synced to disk and renamed to `path`, and the folder is synced. On any error
    the temporary file is removed and `path` is left as it was; an `OSError` (a full disk)
    becomes a `CheckpointWriteError` naming the file and the free space.

    Args:
        path: The final file name.

    Example:
        >>> with atomic_checkpoint('work_dirs/x/epoch_2.pth') as tmp:
        ...     torch.save(checkpoint, tmp)
    """
    tmp = _tmp_name(path)
    try:
        yield tmp
        if os.path.exists(tmp):  # nothing written (another rank, a remote backend): nothing to do
            _fsync_file(tmp)
            os.replace(tmp, path)
            fsync_dir(os.path.dirname(path))
    except OSError as err:
        _remove(tmp)
        if isinstance(err, CheckpointWriteError):
            raise
        raise _write_error(path, err, 'the checkpoint') from err
    except BaseException:
        _remove(tmp)
        raise


def atomic_write(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_checkpoint`).

    Example:
        >>> atomic_write('work_dirs/x/last_checkpoint', b'work_dirs/x/epoch_2.pth')
    """
    with atomic_checkpoint(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


class _PointerWriter:
    """What `open(last_checkpoint, 'w')` returns inside `atomic_pointer_writes`: collects the
    text and writes it atomically on close."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._parts: List[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def close(self) -> None:
        try:
            atomic_write(self.path, ''.join(self._parts).encode())
        except CheckpointWriteError as err:
            raise CheckpointWriteError(err.errno, str(err).replace('the checkpoint',
                                                                   'the pointer')) from err

    def __enter__(self) -> '_PointerWriter':
        return self

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is None:
            self.close()


def _open_pointer_atomically(file: Any, mode: str = 'r', *args: Any, **kwargs: Any) -> IO:
    if mode == 'w' and isinstance(file, (str, os.PathLike)) and \
            os.path.basename(os.fspath(file)) == POINTER:
        return _PointerWriter(os.fspath(file))  # type: ignore[return-value]
    return builtins.open(file, mode, *args, **kwargs)


@contextlib.contextmanager
def atomic_pointer_writes() -> Iterator[None]:
    """Inside: mmengine's `CheckpointHook` writes `last_checkpoint` atomically. The hook writes
    it with `open(path, 'w')` (mmengine 0.10, `CheckpointHook._save_checkpoint_with_step`);
    that module's `open` is this module's atomic writer for files named `last_checkpoint`
    (Python's `open` for any other), and Python's own again on exit.

    Example:
        >>> with atomic_pointer_writes():
        ...     runner.call_hook('after_train_epoch')
    """
    from mmengine.hooks import checkpoint_hook
    module = vars(checkpoint_hook)
    if module.get('open') is _open_pointer_atomically:  # nested
        yield
        return
    module['open'] = _open_pointer_atomically
    try:
        yield
    finally:
        module.pop('open', None)


class _DeferredRemovals:
    """A `CheckpointHook`'s file backend whose `remove` / `rmtree` are recorded, not done;
    everything else is the backend's own."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.pending: List[Tuple[str, str]] = []

    def remove(self, path: str) -> None:
        self.pending.append(('remove', path))

    def rmtree(self, path: str) -> None:
        self.pending.append(('rmtree', path))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


@contextlib.contextmanager
def removals_after_saves(hooks: Sequence[Any]) -> Iterator[None]:
    """Inside: the old checkpoints a `CheckpointHook` deletes (`max_keep_ckpts`, a former best
    checkpoint) are deleted on exit, after the new checkpoint and `last_checkpoint` are written,
    and not at all if the save failed. mmengine deletes the oldest kept checkpoint *before* it
    writes the new one: with `max_keep_ckpts=1` a kill during that write left no complete
    checkpoint to resume from.

    Example:
        >>> with removals_after_saves(runner.hooks):
        ...     runner.call_hook('after_train_epoch')
    """
    from mmengine.hooks import CheckpointHook
    deferred = []
    for hook in hooks:
        backend = getattr(hook, 'file_backend', None)
        if isinstance(hook, CheckpointHook) and backend is not None and \
                not isinstance(backend, _DeferredRemovals):
            hook.file_backend = _DeferredRemovals(backend)
            deferred.append(hook)
    try:
        yield
    except BaseException:
        for hook in deferred:
            hook.file_backend = hook.file_backend.backend
        raise
    for hook in deferred:
        proxy, hook.file_backend = hook.file_backend, hook.file_backend.backend
        for kind, path in proxy.pending:
            getattr(hook.file_backend, kind)(path)


# ---- which checkpoint to resume from -----------------------------------------------------------

def _newest_other(work_dir: str, path: str) -> Optional[str]:
    others = [p for p in complete_checkpoints(work_dir)
              if os.path.abspath(p) != os.path.abspath(path)]
    return others[-1] if others else None


def _remove_stale_temporaries(work_dir: str) -> None:
    """Temporary files of writes killed half-way (no process finishes them)."""
    for name in os.listdir(work_dir):
        if name.startswith('.') and _TMP in name and \
                not name.endswith(f'{_TMP}{os.getpid()}'):
            _remove(os.path.join(work_dir, name))
            print_log(f'removed {name!r} from {work_dir}: a checkpoint write that was '
                      f'interrupted (the complete checkpoints are unaffected)', logger='current')


def resume_source(work_dir: str) -> Optional[str]:
    """The checkpoint an automatic `--resume` continues from (see the module docstring), or None
    (logged as a warning) when the work dir holds no complete checkpoint.

    Example:
        >>> resume_source('work_dirs/x')
        'work_dirs/x/epoch_2.pth'
    """
    if os.path.isdir(work_dir):
        _remove_stale_temporaries(work_dir)
    pointer = os.path.join(work_dir, POINTER)
    named = ''
    if os.path.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip()
    problem = checkpoint_problem(named) if named else None
    if named and problem is None:
        print_log(f'--resume: resuming from {named!r} (named by {pointer!r})', logger='current')
        return named
    newest = _newest_other(work_dir, named)
    if not os.path.isfile(pointer):
        why = f'there is no {POINTER} file in {work_dir!r}'
    elif not named:
        why = f'{pointer!r} is empty (a write of it was interrupted)'
    else:
        why = f'{pointer!r} names {named!r}, which is {problem}'
    if newest is None:
        print_log(f'--resume: {why}, and {work_dir!r} holds no complete checkpoint '
                  f'(epoch_N.pth / iter_N.pth): training starts from scratch.',
                  logger='current', level=logging.WARNING)
        return None
    print_log(f'--resume: {why}; resuming from the newest complete checkpoint in the work dir, '
              f'{newest!r}.', logger='current', level=logging.WARNING)
    return newest


def check_resume_file(path: str, option: str = '--resume') -> None:
    """Raise a `ValueError` naming `path`, what is wrong with it and the fix (the newest
    complete checkpoint beside it, if any) when it is no complete checkpoint file.

    Example:
        >>> check_resume_file('work_dirs/x/epoch_3.pth')
    """
    if not isinstance(path, (str, os.PathLike)) or '://' in str(path):
        return
    path = os.fspath(path)
    problem = checkpoint_problem(path)
    if problem is None or problem.startswith('a directory'):  # a directory: checkpoint_kind's
        return
    newest = _newest_other(os.path.dirname(path) or '.', path)
    fix = (f'resume from the previous complete checkpoint instead: {option} {newest}' if newest
           else 'pass a complete checkpoint (work_dirs/.../epoch_N.pth), or --resume without a '
                'file to continue from the newest complete one in the work dir')
    raise ValueError(f'{option} {path!r}: the file is {problem}. Fix: {fix}.')
