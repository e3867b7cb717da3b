"""`TimmBackboneFlexibleRunner` (FSDP through mmengine's FlexibleRunner) on the CPU, with the
shipped FSDP config shrunk (`helpers.small_fsdp_config`: ViTDet-style Mask R-CNN on vit_tiny,
frozen_stages=1, layer decay, timm block policies, activation checkpointing):

- two gloo processes train it through `tools/dist_train.sh`, and the weights after 4 steps equal
  those of one process on the same global batch (2 images a step: batch 1 per process; the one
  process accumulates 2 batches of 1, because mmdet normalizes some losses per batch, e.g. the
  mask loss by the batch's positives, so one batch of 2 is another objective);
- an FSDP run resumed from its checkpoint (with mmdet's own tools/train.py) ends exactly where the
  uninterrupted run does; a DDP run (TimmBackboneRunner) resumes from the FSDP checkpoint, and an
  FSDP run from the DDP one, and both end there too; `init_detector` (ours and mmdet's) loads the
  FSDP checkpoint;
- configuration mistakes fail up front, and the shipped ViT-L config resolves and builds (on the
  meta device); under the other strategies, timm's fused norm + act layers survive sync-norm
  conversions and DDP runs on CPUs.

Both runs start from the same weights (`load_from`), seed each sample's augmentation
(`sample_seeding`), have no dropout or drop path, and take every sampler candidate in the heads,
so they are deterministic.
"""
import importlib.util
import os
import shutil
import sys

import pytest
import torch
from mmengine.config import Config
from timm.layers import BatchNormAct2d

from helpers import FSDP_CONFIG, ROOT, free_port, small_fsdp_config
from test_runner import detector_cfg, dist_env  # noqa: F401 - dist_env is a fixture
from test_tools import run  # a command from the repository root, one OpenMP thread each
from timm_backbones import TimmBackboneFlexibleRunner, build_detector, resolve_config
from timm_backbones._checkpoint import checkpoint_loading
from timm_backbones._meta_ops import on_meta
from timm_backbones.engine import TimmBlockWrapPolicy, layer_decay_settings
from timm_backbones.engine._fsdp import resolve_wrap_policy

MMDET_TOOLS = os.path.join(importlib.util.find_spec('mmdet').submodule_search_locations[0],
                           '.mim', 'tools')
STEPS = 4


def dist_train(config, work_dir, *options, script=None):
    """2 gloo processes: tools/dist_train.sh, or `script` (a tools/train.py) under torchrun."""
    port = str(free_port())
    if script is None:
        args = [os.path.join(ROOT, 'tools', 'dist_train.sh'), config, '2']
    else:
        args = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                f'--master_port={port}', script, config, '--launcher', 'pytorch']
    return run(args + ['--work-dir', str(work_dir), *options], PORT=port, PYTHON=sys.executable)


def load(path):
    with checkpoint_loading(str(path)):
        return torch.load(path)


def resume_from(checkpoint, work_dir):
    """A work dir whose latest checkpoint is a copy of `checkpoint` (as if the run that wrote it
    had been killed after writing it)."""
    os.makedirs(work_dir)
    shutil.copy(checkpoint, work_dir / os.path.basename(checkpoint))
    (work_dir / 'last_checkpoint').write_text(str(work_dir / os.path.basename(checkpoint)))
    return work_dir


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def assert_same_state(a, b):
    """Weights, optimizer state (with its parameter names) and schedulers equal bit for bit."""
    assert max_difference(a['state_dict'], b['state_dict']) == 0
    opt_a, opt_b = a['optimizer'], b['optimizer']
    assert opt_a['state'].keys() == opt_b['state'].keys() and opt_a['state']
    for key, state in opt_a['state'].items():
        for name, value in state.items():
            assert torch.equal(value, opt_b['state'][key][name]), (key, name)
    assert opt_a['param_groups'] == opt_b['param_groups']
    assert a['param_schedulers'] == b['param_schedulers']


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    """The small config and a checkpoint of its initial weights, which every run loads."""
    root = tmp_path_factory.mktemp('flexible')
    config = small_fsdp_config(root)
    torch.manual_seed(0)
    init = root / 'init.pth'
    torch.save({'state_dict': build_detector(Config.fromfile(config)).state_dict()}, init)
    return root, config, init


@pytest.fixture(scope='module')
def fsdp_run(small):
    """Two processes, FSDP, 4 steps, a checkpoint each step."""
    root, config, init = small
    log = dist_train(config, root / 'fsdp', '--cfg-options', f'load_from={init}')
    return root / 'fsdp', log


def test_two_processes_train_with_fsdp(small, fsdp_run):
    root, _, init = small
    work_dir, log = fsdp_run
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert "using the 'gloo' process group backend" in log
    assert 'loaded 156/156 tensors of the model' in log  # load_from, verified, into FSDP
    assert 'layer-wise lr decay 0.8: 132 parameters' in log  # frozen stem and blocks.0 excluded
    assert f'Iter(train) [{STEPS}/{STEPS}]' in log
    checkpoint = load(work_dir / f'iter_{STEPS}.pth')
    assert torch.serialization.get_unsafe_globals_in_checkpoint(
        str(work_dir / f'iter_{STEPS}.pth')) == []  # plain: any weights-only reader loads it
    state, start = checkpoint['state_dict'], load(init)['state_dict']
    assert state.keys() == start.keys()  # a full state dict, the plain model's names
    frozen = [k for k in state if torch.equal(state[k], start[k])]
    assert len(frozen) == 16 and all(k.startswith('backbone.model.model.') for k in frozen)
    assert 'backbone.model.model.blocks.0.mlp.fc2.weight' in frozen  # frozen_stages=1
    groups = checkpoint['optimizer']['param_groups']
    assert len(groups) == len(state) - 16 and all(len(g['param_names']) == 1 for g in groups)


def test_fsdp_equals_one_process_on_the_same_global_batch(small, fsdp_run):
    root, config, init = small
    work_dir, _ = fsdp_run
    run([sys.executable, os.path.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
         str(root / 'single'), '--cfg-options', f'load_from={init}',
         'runner_type=mmdet.TimmBackboneRunner', f'train_cfg.max_iters={2 * STEPS}',
         'optim_wrapper.accumulative_counts=2'])
    fsdp = load(work_dir / f'iter_{STEPS}.pth')['state_dict']
    single = load(root / 'single' / f'iter_{2 * STEPS}.pth')['state_dict']
    start = load(init)['state_dict']
    difference, moved = max_difference(fsdp, single), max_difference(single, start)
    print(f'FSDP (2 processes) vs 1 process after {STEPS} steps: max |difference| '
          f'{difference:.3g}, max |update| {moved:.3g}')
    assert moved > 1e-4  # the weights did move
    assert difference <= 1e-6, f'max difference {difference} (updates up to {moved})'


def test_fsdp_resume_is_exact(small, fsdp_run):
    # with mmdet's own tools/train.py: the config selects the runner
    root, config, _ = small
    work_dir, _ = fsdp_run
    resumed = resume_from(work_dir / 'iter_2.pth', root / 'fsdp_resumed')
    log = dist_train(config, resumed, '--resume', script=os.path.join(MMDET_TOOLS, 'train.py'))
    assert 'resumed epoch: 0, iter: 2' in log and 'Iter(train) [1/4]' not in log
    assert_same_state(load(work_dir / f'iter_{STEPS}.pth'), load(resumed / f'iter_{STEPS}.pth'))


@pytest.mark.slow
def test_ddp_and_fsdp_resume_from_each_others_checkpoints(small, fsdp_run):
    """FSDP checkpoint -> DDP (TimmBackboneRunner) -> its checkpoint -> FSDP: the same weights
    and optimizer state as the uninterrupted FSDP run. Marked slow: two more 2-process training
    runs (about a minute on the 2-core machine, several when it is shared), beyond the fast
    suite's budget; `make test-slow PYTEST_ARGS='-k flexible'` runs it."""
    root, config, _ = small
    work_dir, _ = fsdp_run
    ddp = resume_from(work_dir / 'iter_2.pth', root / 'ddp_resumed')
    log = dist_train(config, ddp, '--resume', '--cfg-options',
                     'runner_type=mmdet.TimmBackboneRunner', f'train_cfg.max_iters={STEPS - 1}')
    assert 'resumed epoch: 0, iter: 2' in log and "runner_type = 'mmdet.TimmBackboneRunner'" in log
    fsdp = resume_from(ddp / f'iter_{STEPS - 1}.pth', root / 'fsdp_from_ddp')
    log = dist_train(config, fsdp, '--resume')
    assert f'resumed epoch: 0, iter: {STEPS - 1}' in log
    assert_same_state(load(work_dir / f'iter_{STEPS}.pth'), load(fsdp / f'iter_{STEPS}.pth'))


def test_init_detector_loads_fsdp_checkpoints(small, fsdp_run):
    from mmdet.apis import init_detector as mmdet_init_detector

    from timm_backbones import init_detector
    _, config, _ = small
    work_dir, _ = fsdp_run
    path = str(work_dir / f'iter_{STEPS}.pth')
    state = load(path)['state_dict']
    for model in (init_detector(config, path),
                  mmdet_init_detector(config, path, palette='random', device='cpu')):
        assert max_difference(model.state_dict(), state) == 0
        assert model.dataset_meta['classes'][0] == 'circle'


# ---- configuration ------------------------------------------------------------------------------

def fsdp_cfg(tmp_path, **strategy):
    cfg = Config.fromfile(FSDP_CONFIG)
    cfg.model.backbone.pretrained = False
    cfg.work_dir = str(tmp_path)
    cfg.strategy.update(strategy)
    return cfg


def test_fsdp_needs_a_launcher(tmp_path):
    with pytest.raises(ValueError, match=r"needs a distributed launcher: run "
                                         r"tools/dist_train.sh CONFIG N"):
        TimmBackboneFlexibleRunner.from_cfg(fsdp_cfg(tmp_path))


@pytest.mark.parametrize('strategy, message', [
    (dict(state_dict_cfg='local'), r"state_dict_cfg='local' writes one checkpoint shard per "
                                   r"rank.*Set strategy.state_dict_cfg='full'"),
    (dict(skip_init_weights=True), r"skip_init_weights=True .*timm initialises the backbone.*"
                                   r"Remove skip_init_weights"),
])
def test_fsdp_settings_that_lose_weights_are_refused(tmp_path, strategy, message):
    # checked before any process group is set up
    cfg = fsdp_cfg(tmp_path, **strategy)
    cfg.launcher = 'pytorch'
    with pytest.raises(ValueError, match=message):
        TimmBackboneFlexibleRunner.from_cfg(cfg)


def test_the_shipped_vit_large_config(tmp_path):
    # rule: it resolves and builds (on the meta device: 308 M parameters), each of its 24 blocks
    # is found for the policies, its blocks compute in bfloat16, layer decay is ViTDet's
    cfg = fsdp_cfg(tmp_path)
    assert cfg.runner_type == 'mmdet.TimmBackboneFlexibleRunner'
    resolved = resolve_config(cfg)
    with on_meta():
        model = build_detector(resolved, init_weights=False)
    assert sum(p.numel() for p in model.backbone.parameters()) > 300e6
    assert model.backbone.block_paths == [f'model.blocks.{i}' for i in range(24)]
    policy = resolve_wrap_policy(cfg.strategy.model_wrapper.auto_wrap_policy)
    assert isinstance(policy, TimmBlockWrapPolicy)
    assert policy.mixed_precision.param_dtype == torch.bfloat16
    assert policy.mixed_precision.reduce_dtype == torch.float32
    units = policy._run_policy(model, set(), {})
    assert [n for n, m in model.named_modules() if m in units] == \
        [f'backbone.model.model.blocks.{i}' for i in range(24)]
    assert cfg.strategy.activation_checkpointing.check_fn == 'timm_block_check_fn'
    rate = cfg.optim_wrapper.paramwise_cfg.layer_decay_rate
    settings = layer_decay_settings(model.backbone, rate)
    assert settings['model.model.blocks.23.mlp.fc2.weight'] == (0.8, True)
    assert settings['model.model.blocks.0.mlp.fc2.weight'][0] == pytest.approx(0.8 ** 24)


# ---- norms and CPUs under the other strategies --------------------------------------------------

def flexible(tmp_path, launcher, strategy=None, name='efficientnet_b0', **backbone):
    """The runner with a small RetinaNet on `name` (test_runner.py's), its model built."""
    runner = TimmBackboneFlexibleRunner(
        model=detector_cfg(name, **backbone), work_dir=str(tmp_path), launcher=launcher,
        default_scope='mmdet', strategy=strategy, env_cfg=dict(dist_cfg=dict(backend='nccl')))
    runner._build_model()
    return runner


def test_one_process_reverts_sync_norms_keeping_timm_activations(tmp_path):
    # SingleDeviceStrategy would revert SyncBatchNormAct to BatchNormXd without its activation
    runner = flexible(tmp_path, 'none', sync_bn=True)
    bn1 = runner.model.backbone.model.bn1
    assert type(bn1) is BatchNormAct2d and type(bn1.act).__name__ == 'SiLU'


def test_ddp_strategy_on_cpus(tmp_path, dist_env):
    # CPU DistributedDataParallel (device_ids=None) under DDPStrategy; its sync_bn converts with
    # timm's converter (SyncBatchNormAct), which DDP refuses on CPUs: the error says what to drop
    runner = flexible(tmp_path, 'pytorch', name='resnet18')
    runner.strategy.prepare(runner.model)
    assert type(runner.strategy.model).__name__ == 'MMDistributedDataParallel'
    with pytest.raises(ValueError, match=r"\['SyncBatchNormAct'\] layers.*sync_bn=False"):
        flexible(tmp_path / 'sync', 'pytorch', strategy=dict(type='DDPStrategy', sync_bn='torch'))
