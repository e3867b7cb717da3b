"""Tests of `LossCurveHook` with a stand-in runner (the hook reads only `work_dir` and `iter`)."""
import json
from types import SimpleNamespace

import pytest
import torch

from timm_backbones.engine import _hooks
from timm_backbones.engine._hooks import LossCurveHook


def _train(hook, runner, start, stop):
    """Feeds iterations [start, stop) the way a train loop does (runner.iter is 0-based)."""
    for it in range(start, stop):
        runner.iter = it
        outputs = dict(loss=torch.tensor(3.0 - it / 100), loss_cls=torch.tensor(2.0 - it / 100),
                       loss_bbox=1.0, acc=torch.tensor(50.0), loss_list=torch.ones(2))
        hook.after_train_iter(runner, batch_idx=it, data_batch=None, outputs=outputs)


def _read(tmp_path):
    with open(tmp_path / 'loss_curve.json') as f:
        return json.load(f)


def test_writes_png_and_json(tmp_path):
    # Every scalar entry named like a loss is recorded per iteration and saved after training.
    runner = SimpleNamespace(work_dir=str(tmp_path), iter=0)
    hook = LossCurveHook()
    hook.before_train(runner)
    _train(hook, runner, 0, 50)
    assert not (tmp_path / 'loss_curve.png').exists()  # interval=0: nothing before epoch end
    hook.after_train(runner)
    curves = _read(tmp_path)
    assert sorted(curves) == ['loss', 'loss_bbox', 'loss_cls']  # not acc, not a 2-element tensor
    assert curves['loss']['iter'] == list(range(1, 51))
    assert curves['loss_cls']['value'][:2] == pytest.approx([2.0, 1.99])
    assert curves['loss_bbox']['value'] == [1.0] * 50
    png = (tmp_path / 'loss_curve.png').read_bytes()
    assert png.startswith(b'\x89PNG') and len(png) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ['loss_curve.json', 'loss_curve.png']


def test_epoch_and_interval_writes(tmp_path):
    # Files are refreshed after each epoch and, if asked, every `interval` iterations.
    runner = SimpleNamespace(work_dir=str(tmp_path), iter=0)
    hook = LossCurveHook(interval=10, smooth=1)
    hook.before_train(runner)
    _train(hook, runner, 0, 15)
    assert _read(tmp_path)['loss']['iter'][-1] == 10
    hook.after_train_epoch(runner)
    assert _read(tmp_path)['loss']['iter'][-1] == 15
    with pytest.raises(ValueError, match='interval must be >= 0'):
        LossCurveHook(interval=-1)


def test_resume_keeps_points_before_resume_iteration(tmp_path):
    # On resume, saved points up to the resume iteration are reloaded; later ones are replaced.
    runner = SimpleNamespace(work_dir=str(tmp_path), iter=0)
    hook = LossCurveHook()
    hook.before_train(runner)
    _train(hook, runner, 0, 40)
    hook.after_train(runner)
    runner.iter = 30  # checkpoint of iteration 30
    resumed = LossCurveHook()
    resumed.before_train(runner)
    _train(resumed, runner, 30, 35)
    resumed.after_train(runner)
    assert _read(tmp_path)['loss']['iter'] == list(range(1, 36))
    # A fresh run (iter 0) in the same work dir starts over.
    runner.iter = 0
    fresh = LossCurveHook()
    fresh.before_train(runner)
    assert fresh.curves == {}


def test_only_main_process_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(_hooks, 'is_main_process', lambda: False)
    runner = SimpleNamespace(work_dir=str(tmp_path), iter=0)
    hook = LossCurveHook()
    hook.before_train(runner)
    _train(hook, runner, 0, 5)
    hook.after_train(runner)
    assert list(tmp_path.iterdir()) == []


def test_registered():
    from mmdet.registry import HOOKS
    assert isinstance(HOOKS.build(dict(type='LossCurveHook', interval=5)), LossCurveHook)
