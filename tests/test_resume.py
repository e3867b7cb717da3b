"""Exact resume with the shipped demo config's own dataloader settings (one persistent worker,
RandomFlip, mmdet's AspectRatioBatchSampler): trained by tools/train.py, SIGKILLed after the
epoch-1 checkpoint, resumed with --resume, and compared bit for bit (weights and optimizer state)
with an uninterrupted run; and the same weights with 0 and 2 workers (per-sample augmentation
seeding, `timm_backbones/engine/_seeding.py`). The config is the demo's, shrunk (few small images,
3 epochs, no validation)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT
from timm_backbones._checkpoint import checkpoint_loading

DEMO = os.path.join(ROOT, 'configs', 'retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py')
TIMEOUT = 300
EPOCHS = 3  # conftest.py's RESUME_EPOCHS


def _env():
    # one OpenMP thread per process: identical arithmetic in every run, and fast on a busy CPU
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))


def _train_cmd(config, work_dir, *extra):
    return [sys.executable, os.path.join(ROOT, 'tools', 'train.py'), str(config),
            '--work-dir', str(work_dir), *extra]


def train(config, work_dir, *extra):
    proc = subprocess.run(_train_cmd(config, work_dir, *extra), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'training failed ({proc.returncode}):\n{out[-6000:]}'
    return out


def load(path):
    with checkpoint_loading(str(path)):
        return torch.load(path)


def assert_same_state(a, b):
    """Weights, optimizer state and scheduler state equal bit for bit."""
    assert a['state_dict'].keys() == b['state_dict'].keys()
    differ = [k for k, v in a['state_dict'].items() if not torch.equal(v, b['state_dict'][k])]
    assert not differ, f'{len(differ)} of {len(a["state_dict"])} tensors differ: {differ[:5]}'
    opt_a, opt_b = a['optimizer'], b['optimizer']
    assert opt_a['state'].keys() == opt_b['state'].keys() and opt_a['state']
    for key, state in opt_a['state'].items():
        for name, value in state.items():
            other = opt_b['state'][key][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) \
                else value == other, (key, name)
    assert opt_a['param_groups'] == opt_b['param_groups']
    assert a['param_schedulers'] == b['param_schedulers']


@pytest.fixture(scope='module')
def demo(resume_demo):
    """The demo config, shrunk (conftest.py's `resume_demo`; validation not run)."""
    return resume_demo


@pytest.fixture(scope='module')
def uninterrupted(resume_uninterrupted):
    return resume_uninterrupted


def test_resume_after_sigkill_is_bit_exact(demo, uninterrupted):
    root, config = demo
    work_dir = root / 'killed'
    proc = subprocess.Popen(_train_cmd(config, work_dir), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: workers die too
    last = work_dir / 'last_checkpoint'  # written once epoch_1.pth is complete
    deadline = time.monotonic() + TIMEOUT
    try:
        while not (last.is_file() and last.read_text().strip().endswith('epoch_1.pth')):
            assert proc.poll() is None, 'training ended before its first checkpoint'
            assert time.monotonic() < deadline, 'no epoch-1 checkpoint in time'
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (work_dir / f'epoch_{EPOCHS}.pth').exists(), 'killed too late to test a resume'
    log = train(config, work_dir, '--resume')
    assert 'resumed epoch: 1' in log or 'Epoch(train) [2]' in log
    assert 'Epoch(train) [1]' not in log
    assert_same_state(load(uninterrupted / f'epoch_{EPOCHS}.pth'),
                      load(work_dir / f'epoch_{EPOCHS}.pth'))


def test_same_weights_with_0_and_2_workers(demo, uninterrupted):
    root, config = demo
    reference = load(uninterrupted / 'epoch_2.pth')  # 1 persistent worker
    for workers, persistent in ((0, False), (2, True)):
        work_dir = root / f'workers{workers}'
        train(config, work_dir, '--cfg-options', 'train_cfg.max_epochs=2',
              f'train_dataloader.num_workers={workers}',
              f'train_dataloader.persistent_workers={persistent}')
        assert_same_state(reference, load(work_dir / 'epoch_2.pth'))


def test_resume_is_bit_exact_with_main_process_randomness(demo):
    # the model draws random numbers in the main process during training (here stochastic
    # depth, drop_path_rate=0.2; the shipped Mask R-CNN configs' RoI samplers do it too): the
    # run resumed from epoch_1.pth ends bit-identical to the uninterrupted one. Before the
    # per-iteration seeding (`IterationSeedHook`) it did not: mmengine reseeds the main process
    # at the start of a resumed run, so epoch 2 repeated epoch 1's draws.
    root, config = demo
    options = ('--cfg-options', 'train_cfg.max_epochs=2', 'model.backbone.drop_path_rate=0.2')
    full, resumed = root / 'droppath_full', root / 'droppath_resumed'
    train(config, full, *options)
    resumed.mkdir()
    log = train(config, resumed, '--resume', str(full / 'epoch_1.pth'), *options)
    assert 'Epoch(train) [1]' not in log and 'Epoch(train) [2]' in log
    assert_same_state(load(full / 'epoch_2.pth'), load(resumed / 'epoch_2.pth'))
