"""Atomic checkpoints (`timm_backbones/engine/_atomic.py`): the runner writes each checkpoint to a
temporary name and renames it, `last_checkpoint` is rewritten atomically, a full disk stops the
save with an error naming the file and the free space while the previous checkpoints stay
usable, and `--resume` finds the newest complete checkpoint when the pointer is broken. Runs the
demo detector (resnet18 RetinaNet) in-process; the kills themselves: test_kill_resume.py."""
import errno
import os
from types import SimpleNamespace

import pytest
from mmengine.config import Config
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.hooks import CheckpointHook, checkpoint_hook
from mmengine.runner import BaseLoop

from helpers import DEMO_CONFIG
from timm_backbones._checkpoint import checkpoint_kind, read_checkpoint
from timm_backbones.engine._atomic import (CheckpointWriteError, atomic_pointer_writes,
                                           check_resume_file, resume_source)


@pytest.fixture
def runner(tmp_path):
    from timm_backbones import TimmBackboneRunner
    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.work_dir = str(tmp_path / 'work_dir')
    cfg.train_dataloader = cfg.train_cfg = cfg.optim_wrapper = cfg.param_scheduler = None
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.default_hooks.checkpoint.update(interval=1, save_optimizer=False,
                                        save_param_scheduler=False, max_keep_ckpts=-1)
    runner = TimmBackboneRunner.from_cfg(cfg)
    hook = next(h for h in runner.hooks if isinstance(h, CheckpointHook))
    hook.before_train(runner)
    runner._hooks = [hook]  # only the checkpoint hook: no training loop is built
    return runner


class _Loop(BaseLoop):
    """A training loop standing at the end of an epoch (nothing built)."""

    def __init__(self, epoch):  # noqa: D107 - BaseLoop's would build a dataloader
        self.epoch, self.iter, self.max_epochs, self.max_iters = epoch, 0, 9, 99
        self.dataloader = SimpleNamespace(dataset=None)  # save_checkpoint reads its metainfo

    def run(self):
        pass


def save_epoch(runner, epoch):
    """What mmengine does at the end of training epoch `epoch`: the CheckpointHook saves
    epoch_{epoch}.pth and rewrites last_checkpoint."""
    runner._train_loop = _Loop(epoch - 1)
    runner.call_hook('after_train_epoch')


def files(folder):
    return sorted(os.listdir(folder))


def test_checkpoint_and_pointer_written_atomically(runner):
    save_epoch(runner, 1)
    work_dir = runner.work_dir
    assert {'epoch_1.pth', 'last_checkpoint'} <= set(files(work_dir))
    assert not [name for name in files(work_dir) if name.startswith('.')]  # no temporary file
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        assert f.read() == os.path.join(work_dir, 'epoch_1.pth')
    assert checkpoint_kind(os.path.join(work_dir, 'epoch_1.pth')) == 'zip'
    assert 'open' not in vars(checkpoint_hook)  # mmengine's module is itself again


def test_full_disk_stops_with_clear_error(runner, monkeypatch):
    # rule: ENOSPC during a save names the file and the free space; the previous checkpoint
    # and last_checkpoint stay complete, and no partial file remains
    save_epoch(runner, 1)
    work_dir = runner.work_dir

    def full_disk(self, obj, filepath):
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(LocalBackend, 'put', full_disk)
    with pytest.raises(CheckpointWriteError, match=r"(?s)could not write the checkpoint "
                       r"'[^']*epoch_2\.pth' \(disk full; [\d.]+ GiB free on its disk\).*"
                       r"previous checkpoints .* unchanged.*Free disk space") as err:
        save_epoch(runner, 2)
    assert err.value.errno == errno.ENOSPC
    assert not any(name.startswith('.') or name == 'epoch_2.pth' for name in files(work_dir))
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().endswith('epoch_1.pth')
    assert read_checkpoint(os.path.join(work_dir, 'epoch_1.pth'))['state_dict']


def test_old_checkpoint_deleted_only_after_the_new_one(runner, monkeypatch):
    # rule: with max_keep_ckpts=1 mmengine's hook deletes epoch_1.pth before it writes
    # epoch_2.pth; a kill during that write left nothing to resume from. The deletion now waits
    # until the new checkpoint and last_checkpoint are written; a failed save deletes nothing
    hook = runner.hooks[0]
    hook.max_keep_ckpts = 1
    hook.before_train(runner)
    save_epoch(runner, 1)
    work_dir = runner.work_dir
    seen = []
    save = type(runner).save_checkpoint

    def watched(self, *args, **kwargs):
        seen.append(os.path.exists(os.path.join(work_dir, 'epoch_1.pth')))
        return save(self, *args, **kwargs)
    monkeypatch.setattr(type(runner), 'save_checkpoint', watched)
    save_epoch(runner, 2)
    assert seen == [True]  # epoch_1.pth still there while epoch_2.pth was written
    ckpts = lambda: [n for n in files(work_dir) if n.endswith('.pth') or n.startswith('.')]  # noqa
    assert ckpts() == ['epoch_2.pth']  # then deleted, as asked
    monkeypatch.setattr(LocalBackend, 'put', lambda self, obj, path: (_ for _ in ()).throw(
        OSError(errno.EIO, 'I/O error')))
    with pytest.raises(CheckpointWriteError):
        save_epoch(runner, 3)
    assert ckpts() == ['epoch_2.pth']  # nothing deleted
    assert isinstance(hook.file_backend, LocalBackend)  # the hook's own backend again


def test_pointer_write_interrupted_keeps_old_pointer(tmp_path):
    # rule: the hook's open(last_checkpoint, 'w') writes a temporary file, renamed on close;
    # an error before the close leaves the old pointer as it was
    pointer = tmp_path / 'last_checkpoint'
    pointer.write_text('old')
    with atomic_pointer_writes():
        with pytest.raises(KeyboardInterrupt):
            with checkpoint_hook.open(str(pointer), 'w') as f:
                f.write('ne')
                raise KeyboardInterrupt
        assert pointer.read_text() == 'old'
        with checkpoint_hook.open(str(pointer), 'w') as f:
            f.write('new')
    assert pointer.read_text() == 'new' and files(tmp_path) == ['last_checkpoint']
    assert 'open' not in vars(checkpoint_hook)


@pytest.fixture
def work_dir(tmp_path):
    """epoch_1.pth and epoch_2.pth (complete), epoch_3.pth truncated."""
    import torch
    for epoch in (1, 2, 3):
        path = tmp_path / f'epoch_{epoch}.pth'
        torch.save({'state_dict': {'w': torch.zeros(1000)}}, path)
        os.utime(path, (epoch, epoch))
    data = (tmp_path / 'epoch_3.pth').read_bytes()
    (tmp_path / 'epoch_3.pth').write_bytes(data[:len(data) // 2])
    return tmp_path


@pytest.mark.parametrize('pointer, says', [
    ('', 'is empty'),
    ('epoch_3.pth', 'is a truncated PyTorch checkpoint'),
    ('epoch_9.pth', 'is missing'),
    ('epoch_', 'is missing'),  # a pointer cut while written
    (None, 'there is no last_checkpoint file'),
])
def test_resume_source_falls_back_to_newest_complete(work_dir, log_lines, pointer, says):
    if pointer is not None:
        (work_dir / 'last_checkpoint').write_text(
            str(work_dir / pointer) if pointer else '')
    assert resume_source(str(work_dir)) == str(work_dir / 'epoch_2.pth')
    assert any(says in line and "resuming from the newest complete checkpoint in the work "
               f"dir, '{work_dir / 'epoch_2.pth'}'" in line for line in log_lines), log_lines


def test_resume_source_nothing_to_resume_says_so(tmp_path, log_lines):
    assert resume_source(str(tmp_path)) is None
    assert any('holds no complete checkpoint' in line and 'starts from scratch' in line
               for line in log_lines)


def test_resume_source_follows_a_good_pointer(work_dir):
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    assert resume_source(str(work_dir)) == str(work_dir / 'epoch_1.pth')


def test_explicit_resume_of_truncated_file_names_previous(work_dir):
    with pytest.raises(ValueError, match=r"--resume '[^']*epoch_3.pth': the file is a truncated "
                                         r".*Fix: resume from the previous complete checkpoint "
                                         r"instead: --resume [^ ]*epoch_2.pth"):
        check_resume_file(str(work_dir / 'epoch_3.pth'))
