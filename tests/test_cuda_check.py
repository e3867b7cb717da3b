"""`check_mmcv_cuda_ops`: a detector going to CUDA with an mmcv built without CUDA ops fails at
once with the fix (mmcv's answer monkeypatched: no GPU needed)."""
import sys

import pytest
import torch
from mmcv import ops

from timm_backbones.engine._cuda_check import check_mmcv_cuda_ops


@pytest.mark.parametrize('device', [None, 'cpu', torch.device('cpu'), 'meta'])
def test_non_cuda_devices_are_not_checked(monkeypatch, device):
    # only CUDA devices need mmcv's CUDA ops: mmcv is not even asked for the others
    monkeypatch.setattr(ops, 'get_compiling_cuda_version', lambda: pytest.fail('asked'))
    check_mmcv_cuda_ops(device)


@pytest.mark.parametrize('device', ['cuda', 'cuda:1', torch.device('cuda', 0), 0])
def test_cpu_build_on_cuda_is_refused_with_the_fix(monkeypatch, device):
    # mmcv built without CUDA ops answers 'not available': a clear error naming the fix
    monkeypatch.setattr(ops, 'get_compiling_cuda_version', lambda: 'not available')
    with pytest.raises(RuntimeError, match='built without CUDA ops') as err:
        check_mmcv_cuda_ops(device)
    message = str(err.value)
    assert "'not available'" in message and 'make install' in message
    assert 'MMCV_WHEEL=' in message and 'cuda' in message


def test_cuda_build_passes(monkeypatch):
    # mmcv built with CUDA ops answers its CUDA version: nothing to say
    monkeypatch.setattr(ops, 'get_compiling_cuda_version', lambda: '13.0')
    check_mmcv_cuda_ops('cuda')


def test_missing_compiled_ops_are_refused(monkeypatch):
    # mmcv without any compiled ops (mmcv.ops does not import): the same fix
    monkeypatch.setitem(sys.modules, 'mmcv.ops', None)
    with pytest.raises(RuntimeError, match='has no compiled ops') as err:
        check_mmcv_cuda_ops('cuda:0')
    assert 'make install' in str(err.value)


def test_bad_device():
    # a device torch does not know: the value and examples of good ones
    with pytest.raises(ValueError, match=r"device='gpu0' is not a device; use e.g."):
        check_mmcv_cuda_ops('gpu0')


@pytest.mark.parametrize('runner', ['TimmBackboneRunner', 'TimmBackboneFlexibleRunner'])
def test_runners_check_before_the_model_moves(monkeypatch, runner):
    # rule: both runners ask before they move the model to the device (tools/train.py's route)
    import types

    import timm_backbones
    from timm_backbones.engine import _flexible_runner, _runner
    monkeypatch.setattr(ops, 'get_compiling_cuda_version', lambda: 'not available')
    for module in (_runner, _flexible_runner):
        monkeypatch.setattr(module, 'get_device', lambda: 'cuda')
    cls = getattr(timm_backbones, runner)
    with pytest.raises(RuntimeError, match='built without CUDA ops'):
        if runner == 'TimmBackboneRunner':
            cls.wrap_model(types.SimpleNamespace(distributed=False), None, torch.nn.Linear(1, 1))
        else:
            cls._build_model(types.SimpleNamespace(model=dict(type='RetinaNet')))  # a config


def test_init_detector_checks_the_device(monkeypatch):
    # rule: timm_backbones.init_detector(device='cuda') asks before moving the detector
    from helpers import DEMO_CONFIG
    from timm_backbones import init_detector
    monkeypatch.setattr(ops, 'get_compiling_cuda_version', lambda: 'not available')
    with pytest.raises(RuntimeError, match='built without CUDA ops'):
        init_detector(DEMO_CONFIG, device='cuda')
