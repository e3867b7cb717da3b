"""tools/: train.py, test.py and the dist scripts run end to end on the CPU with a tiny config
(ResNet-18 RetinaNet at 128x128 on a few generated images), and a resumed run ends with exactly
the weights of an uninterrupted one."""
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import ROOT, free_port
from timm_backbones._checkpoint import checkpoint_loading

MMDET_TOOLS = os.path.join(importlib.util.find_spec('mmdet').submodule_search_locations[0],
                           '.mim', 'tools')
TIMEOUT = 300

TINY_CONFIG = """
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '{root}/configs/_base_/timm_runtime.py']
data_root = '{data_root}'
synthetic = dict(num_train=8, num_val=4, img_size=(128, 128), obj_size=(24, 64), max_objects=2)
model = dict(
    backbone=dict(_delete_=True, type='TimmBackbone', model_name='resnet18', pretrained=False),
    neck=dict(in_channels='auto', out_channels=32),
    bbox_head=dict(num_classes=5, in_channels='auto', feat_channels=32, stacked_convs=1),
    test_cfg=dict(score_thr=0.0))  # an untrained model still predicts boxes to evaluate
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
dataset = dict(type='SyntheticShapesDataset', data_root=data_root, synthetic=synthetic)
train_dataloader = dict(
    _delete_=True, batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(dataset, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=True),
                 pipeline=train_pipeline))
val_dataloader = dict(
    _delete_=True, batch_size=2, num_workers=0, persistent_workers=False, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(dataset, ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='SyntheticCocoMetric', data_root=data_root,
                     synthetic=synthetic, metric='bbox')
test_evaluator = val_evaluator
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4, val_interval=1000)
val_cfg = None  # no evaluation while training: tools/test.py evaluates
val_dataloader = None
val_evaluator = None
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=3)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=2),
                     visualization=dict(draw=False))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0, deterministic=True)
"""


def run(args, **env):
    """Run a command from the repository root; returns its output, failing with its tail.

    One OpenMP thread per process: on a busy machine, torch's spinning worker threads make tiny
    CPU runs tens of times slower.
    """
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]), **env)
    full_env.setdefault('OMP_NUM_THREADS', '1')
    proc = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{args} failed ({proc.returncode}):\n{out[-6000:]}'
    return out


def train(config, work_dir, *extra, script=None):
    return run([sys.executable, script or os.path.join(ROOT, 'tools', 'train.py'), config,
                '--work-dir', str(work_dir), *extra])


def load(path):
    with checkpoint_loading(str(path)):
        return torch.load(path)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('tools')
    config = root / 'tiny_retinanet.py'
    config.write_text(
        textwrap.dedent(TINY_CONFIG).format(root=ROOT, data_root=f'{root}/data/'))
    return root, str(config)


@pytest.fixture(scope='module')
def trained(tiny):
    """4 iterations, a checkpoint every 2: the uninterrupted run."""
    root, config = tiny
    log = train(config, root / 'full')
    return root / 'full', log


def test_package_import_registers_what_configs_name():
    # the shared base config's custom_imports register everything the configs name; the plugin
    # import itself stays light: `import timm_backbones` loads no mmdet datasets (pycocotools,
    # matplotlib), only `timm_backbones.data` does
    run([sys.executable, '-c', textwrap.dedent("""
        import importlib, sys
        import timm_backbones
        assert 'mmdet.datasets' not in sys.modules and 'pycocotools' not in sys.modules
        from mmengine.config import Config
        cfg = Config.fromfile('configs/_base_/timm_runtime.py', import_custom_modules=False)
        from mmdet.registry import DATASETS, HOOKS, METRICS, MODELS, RUNNERS
        assert MODELS.get('TimmBackbone') is not None and MODELS.get('timm.resnet18') is not None
        assert RUNNERS.get(cfg.runner_type) is not None, cfg.runner_type
        assert HOOKS.get('LossCurveHook') is not None
        for name in cfg.custom_imports.imports:
            importlib.import_module(name)
        assert DATASETS.get('SyntheticShapesDataset') is not None
        assert METRICS.get('SyntheticCocoMetric') is not None
        assert timm_backbones.SyntheticShapesDataset is DATASETS.get('SyntheticShapesDataset')
        """)])


def test_train_runs_and_logs(trained):
    work_dir, log = trained
    assert 'Iter(train) [4/4]' in log
    assert (work_dir / 'iter_2.pth').is_file() and (work_dir / 'iter_4.pth').is_file()
    # the config dumped to the work dir is the resolved one
    dumped = (work_dir / 'tiny_retinanet.py').read_text()
    assert 'in_channels=[\n' in dumped or 'in_channels=[64, 128, 256, 512]' in dumped
    assert "'auto'" not in dumped


def test_resume_matches_uninterrupted_run(tiny, trained):
    # stopped after the checkpoint at iteration 2 (mmdet's own tools/train.py, which works
    # through the config's runner_type), then resumed to iteration 4 with ours
    root, config = tiny
    full_dir, _ = trained
    train(config, root / 'resumed', '--cfg-options', 'train_cfg.max_iters=2',
          script=os.path.join(MMDET_TOOLS, 'train.py'))
    assert not (root / 'resumed' / 'iter_4.pth').exists()
    log = train(config, root / 'resumed', '--resume')
    assert 'Iter(train) [3/4]' in log and 'Iter(train) [1/4]' not in log
    full, resumed = load(full_dir / 'iter_4.pth'), load(root / 'resumed' / 'iter_4.pth')
    assert full['state_dict'].keys() == resumed['state_dict'].keys()
    for key, value in full['state_dict'].items():
        assert torch.equal(value, resumed['state_dict'][key]), key
    for key, state in full['optimizer']['state'].items():
        assert torch.equal(state['momentum_buffer'],
                           resumed['optimizer']['state'][key]['momentum_buffer'])
    assert full['param_schedulers'] == resumed['param_schedulers']


def test_dist_train_two_cpu_processes(tiny):
    root, config = tiny
    log = run([os.path.join(ROOT, 'tools', 'dist_train.sh'), config, '2',
               '--work-dir', str(root / 'dist'), '--cfg-options', 'train_cfg.max_iters=2'],
              PYTHON=sys.executable, PORT=str(free_port()))
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # world size 2
    assert "'gloo'" in log  # chosen by the runner: no CUDA here
    assert 'Iter(train) [2/2]' in log
    assert (root / 'dist' / 'iter_2.pth').is_file()


def test_test_evaluates_a_checkpoint_and_writes_out(tiny, trained):
    root, config = tiny
    full_dir, _ = trained
    out = root / 'test' / 'results.pkl'
    log = run([sys.executable, os.path.join(ROOT, 'tools', 'test.py'), config,
               str(full_dir / 'iter_4.pth'), '--work-dir', str(root / 'test'), '--out', str(out)])
    assert 'coco/bbox_mAP' in log
    with open(out, 'rb') as f:
        results = pickle.load(f)  # written by mmdet's DumpDetResults
    assert len(results) == 4 and {'pred_instances', 'img_id'} <= set(results[0])


def test_amp_without_a_gpu_is_a_clear_error(tiny, tmp_path):
    # mmengine's AmpOptimWrapper asserts deep in the runner on CPUs; the tool says why up front
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train.py'), tiny[1],
                           '--work-dir', str(tmp_path), '--amp'], cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert '--amp needs a CUDA, NPU, MLU or MUSA device' in proc.stderr


@pytest.mark.parametrize('script', ['train.py', 'test.py'])
def test_config_syntax_error_names_the_file(tmp_path, script):
    # mmengine parses the config source as '<unknown>'; the tools name the file and line
    config = tmp_path / 'broken_config.py'
    config.write_text("model = dict(type='RetinaNet'\nx = 1\n")
    args = [str(config), 'checkpoint.pth'] if script == 'test.py' else [str(config)]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', script), *args,
                           '--work-dir', str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert f'(in the config file {config}, line 1)' in proc.stderr.splitlines()[-1]


def test_specs_speed_times_both_sides_per_round(tmp_path):
    # rule: tools/specs_speed.py times a cold feature_specs and a raw timm meta build in fresh
    # processes; a model's ratio is its median specs time over its median raw time, reported
    # with the range of the per-round ratios (with 2 rounds the median is the mean, whose ratio
    # lies within that range)
    out = tmp_path / 'speed.json'
    log = run([sys.executable, os.path.join(ROOT, 'tools', 'specs_speed.py'), '--models',
               'resnet18', '--rounds', '2', '--json', str(out)])
    found = json.loads(out.read_text())
    row = found['models']['resnet18']
    low, high = row['round_ratios']
    assert 0 < row['raw_s'] and 0 < row['specs_s']
    assert abs(row['ratio'] - row['specs_s'] / row['raw_s']) < 0.01
    assert low - 0.01 <= row['ratio'] <= high + 0.01
    assert found['summary']['models'] == 1 and found['summary']['median_ratio'] == row['ratio']
    assert 'resnet18' in log and 'per round' in log
