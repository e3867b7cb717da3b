"""Resume after a kill anywhere: tools/train.py on the shipped demo config (shrunk, conftest.py's
`resume_demo`: one persistent worker, RandomFlip, the epoch loop, 3 epochs with a checkpoint
each) is SIGKILLed at a chosen point by a test-only fault module (`FAULTS`, imported before
tools/train.py runs; `TB_FAULT` says where), then continued with `--resume`; the final weights,
optimizer and scheduler state must equal the uninterrupted run's bit for bit, and the log must
say where the run continued from. Kill points:

- mid-checkpoint-write: the write of epoch_2.pth dies after 1 MiB (fast suite);
- an empty `last_checkpoint` (as a kill while mmengine truncated and rewrote it left it before
  the atomic writes): `--resume` continues from the newest complete checkpoint (fast suite);
- while writing `last_checkpoint` (after 10 bytes of its second write), during validation
  (the first validation batch after epoch 2), in a dataloader worker (its 40th sample, in epoch 2),
  mid-checkpoint-write with `max_keep_ckpts=1`
  (`slow`). Between iterations: tests/test_resume.py.
"""
import os
import signal
import subprocess
import sys

import pytest

from helpers import ROOT
from test_resume import EPOCHS, TIMEOUT, _env, assert_same_state, load, train

FAULTS = '''
"""Test-only fault injection for tests/test_kill_resume.py: SIGKILL this process at the point
TB_FAULT names (nothing without it)."""
import builtins
import os
import signal

KIND, _, ARG = os.environ.get('TB_FAULT', '').partition(':')


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class DyingFile:
    """A file that dies after `limit` bytes were written (they are flushed to disk first)."""

    def __init__(self, f, limit):
        self.f, self.limit, self.written = f, limit, 0

    def write(self, data):
        if self.written + len(data) >= self.limit:
            self.f.write(data[:self.limit - self.written])
            self.f.flush()
            os.fsync(self.f.fileno())
            die()
        self.written += len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def dying_open(match, limit, nth):
    seen = [0]

    def open_(file, mode='r', *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        if 'w' in mode and match in os.path.basename(str(file)):
            seen[0] += 1
            if seen[0] == nth:
                return DyingFile(f, limit)
        return f
    return open_


if KIND == 'checkpoint':  # ARG: 'epoch_2.pth:1048576': its write dies after that many bytes
    from mmengine.fileio.backends import local_backend
    name, limit = ARG.split(':')
    local_backend.open = dying_open(name, int(limit), 1)
elif KIND == 'pointer':  # ARG: '2:10': the 2nd write of last_checkpoint dies after 10 bytes
    from timm_backbones.engine import _atomic
    nth, limit = ARG.split(':')
    _atomic.open = dying_open('last_checkpoint', int(limit), int(nth))
elif KIND == 'val':  # ARG: epoch: dies at the first validation batch after that epoch
    from mmengine.runner import loops
    run_iter = loops.ValLoop.run_iter

    def val_iter(self, idx, data_batch):
        if self.runner.epoch == int(ARG):
            die()
        return run_iter(self, idx, data_batch)
    loops.ValLoop.run_iter = val_iter
elif KIND == 'worker':  # ARG: n: a dataloader worker dies on its n-th sample
    import torch.utils.data
    from mmdet.datasets.transforms import PackDetInputs
    transform, count = PackDetInputs.transform, [0]

    def pack(self, results):
        if torch.utils.data.get_worker_info() is not None:
            count[0] += 1
            if count[0] == int(ARG):
                die()
        return transform(self, results)
    PackDetInputs.transform = pack
'''
RUN = ('import runpy, sys, _tb_fault; sys.argv = sys.argv[1:]; '
       'runpy.run_path(sys.argv[0], run_name="__main__")')


@pytest.fixture(scope='module')
def faults(tmp_path_factory):
    folder = tmp_path_factory.mktemp('faults')
    (folder / '_tb_fault.py').write_text(FAULTS)
    return folder


def killed_run(faults, config, work_dir, fault, *extra):
    """tools/train.py with the fault `fault` (TB_FAULT); returns (return code, output)."""
    env = _env()
    env.update(TB_FAULT=fault, PYTHONPATH=os.pathsep.join([str(faults), env['PYTHONPATH']]))
    proc = subprocess.Popen(
        [sys.executable, '-c', RUN, os.path.join(ROOT, 'tools', 'train.py'), str(config),
         '--work-dir', str(work_dir), *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:  # workers of a dead main process, if any
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return proc.returncode, out


def pointer(work_dir):
    path = work_dir / 'last_checkpoint'
    return path.read_text().strip() if path.exists() else None


def resume_and_compare(config, work_dir, uninterrupted, *extra):
    log = train(config, work_dir, '--resume', *extra)
    assert_same_state(load(uninterrupted / f'epoch_{EPOCHS}.pth'),
                      load(work_dir / f'epoch_{EPOCHS}.pth'))
    return log


def test_killed_mid_checkpoint_write(resume_demo, resume_uninterrupted, faults):
    # rule: a kill half-way through a checkpoint leaves no truncated file under its final name;
    # --resume continues from the previous one, bit-exactly, and says it cleaned up
    root, config = resume_demo
    work_dir = root / 'killed_mid_checkpoint'
    code, out = killed_run(faults, config, work_dir, f'checkpoint:epoch_2.pth:{1 << 20}')
    assert code == -signal.SIGKILL, out[-3000:]
    assert not (work_dir / 'epoch_2.pth').exists()
    assert [p.name for p in work_dir.glob('.epoch_2.pth.tmp-*')], 'the half-written temporary'
    assert pointer(work_dir).endswith('epoch_1.pth')
    log = resume_and_compare(config, work_dir, resume_uninterrupted)
    assert 'a checkpoint write that was interrupted' in log
    assert 'resumed epoch: 1' in log and 'Epoch(train) [1]' not in log
    assert not list(work_dir.glob('.*.tmp-*'))


def test_resume_with_empty_pointer(resume_demo, resume_uninterrupted):
    # rule: an empty last_checkpoint (what a kill while mmengine rewrote it in place left) does
    # not stop --resume: the newest complete checkpoint is used, and the log says so
    root, config = resume_demo
    work_dir = root / 'empty_pointer'
    work_dir.mkdir()
    for epoch in (1, 2):
        name = f'epoch_{epoch}.pth'
        os.link(resume_uninterrupted / name, work_dir / name)
        os.utime(work_dir / name, (epoch, epoch))  # modification times in training order
    (work_dir / 'last_checkpoint').write_text('')
    log = resume_and_compare(config, work_dir, resume_uninterrupted)
    assert 'is empty' in log and 'resuming from the newest complete checkpoint' in log
    assert 'resumed epoch: 2' in log


@pytest.mark.slow
def test_killed_while_writing_pointer(resume_demo, resume_uninterrupted, faults):
    # rule: a kill while last_checkpoint is rewritten leaves the old pointer, complete
    root, config = resume_demo
    work_dir = root / 'killed_pointer'
    code, out = killed_run(faults, config, work_dir, 'pointer:2:10')
    assert code == -signal.SIGKILL, out[-3000:]
    assert pointer(work_dir).endswith('epoch_1.pth')  # the old state, whole
    assert (work_dir / 'epoch_2.pth').exists()
    log = resume_and_compare(config, work_dir, resume_uninterrupted)
    assert 'resumed epoch: 1' in log


@pytest.mark.slow
def test_killed_during_validation(resume_demo, resume_uninterrupted, faults):
    # rule: a kill during validation resumes from the checkpoint saved before it (that
    # epoch's validation is not repeated); training ends bit-exactly
    root, config = resume_demo
    work_dir = root / 'killed_val'
    val = ('--cfg-options', 'train_cfg.val_interval=1')
    code, out = killed_run(faults, config, work_dir, 'val:2', *val)
    assert code == -signal.SIGKILL, out[-3000:]
    assert pointer(work_dir).endswith('epoch_2.pth')
    log = resume_and_compare(config, work_dir, resume_uninterrupted, *val)
    assert 'resumed epoch: 2' in log and 'Epoch(val) [3]' in log


@pytest.mark.slow
def test_killed_dataloader_worker(resume_demo, resume_uninterrupted, faults):
    # rule: a worker killed mid-epoch stops the run with torch's error; --resume continues
    # from the last checkpoint bit-exactly
    root, config = resume_demo
    work_dir = root / 'killed_worker'
    code, out = killed_run(faults, config, work_dir, 'worker:40')
    assert code not in (0, None), out[-3000:]
    assert (work_dir / 'epoch_1.pth').exists(), out[-3000:]
    last = pointer(work_dir)
    log = resume_and_compare(config, work_dir, resume_uninterrupted)
    assert f'resumed epoch: {last[-5]}' in log


@pytest.mark.slow
def test_killed_mid_checkpoint_write_keeping_one(resume_demo, resume_uninterrupted, faults):
    # rule: with max_keep_ckpts=1 (mmengine deletes the old checkpoint before writing the new
    # one) a kill half-way through epoch_2.pth still leaves epoch_1.pth to resume from
    root, config = resume_demo
    work_dir = root / 'killed_mid_checkpoint_keep1'
    keep = ('--cfg-options', 'default_hooks.checkpoint.max_keep_ckpts=1')
    code, out = killed_run(faults, config, work_dir, f'checkpoint:epoch_2.pth:{1 << 20}', *keep)
    assert code == -signal.SIGKILL, out[-3000:]
    assert (work_dir / 'epoch_1.pth').exists() and not (work_dir / 'epoch_2.pth').exists()
    log = resume_and_compare(config, work_dir, resume_uninterrupted, *keep)
    assert 'resumed epoch: 1' in log
    assert [p.name for p in work_dir.glob('epoch_*.pth')] == [f'epoch_{EPOCHS}.pth']
