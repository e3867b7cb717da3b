"""Every weight-loading path verifies what it loaded (`_weights.py`): `pretrained=` files,
`init_cfg=Pretrained` (with and without prefix), `init_detector` and the runner's
`load_checkpoint` (load_from, tools/test.py, resume) report loaded/total tensors and fail clearly
when nothing or too little matched (expected vs found names, the prefix that would match).
Weight files are made here (random models saved and loaded back; `files` in conftest.py)."""
import logging

import numpy as np
import pytest
import torch
from mmengine.config import Config

from helpers import ROOT
from timm_backbones import TimmBackbone, init_detector
from timm_backbones._weights import LoadReport, _timm_load_report, check_load, key_mismatch_hint

DEMO = f'{ROOT}/configs/retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py'


def _same(a, b):
    return all(torch.equal(v, b[k]) for k, v in a.items())


# ---- how names would match ---------------------------------------------------------------------

def test_key_mismatch_hint():
    expected = ['model.conv1.weight', 'model.bn1.weight']
    assert key_mismatch_hint(expected, ['backbone.model.conv1.weight']) == ('strip', 'backbone.')
    assert key_mismatch_hint(expected, ['conv1.weight', 'bn1.weight']) == ('add', 'model.')
    assert key_mismatch_hint(expected, ['encoder.weight']) is None


def test_check_load_rules(log_lines):
    names = tuple(f'w{i}' for i in range(10))
    check_load(LoadReport('t', 'f', names, names, names))
    assert 'loaded 10/10 tensors of t from f' in log_lines
    check_load(LoadReport('t', 'f', names, names[:6], names[:6]))  # partial: a warning
    assert any('loaded 6/10' in line and "'w6'" in line for line in log_lines)
    with pytest.raises(ValueError, match='loaded 4/10 tensors.*too few matched'):
        check_load(LoadReport('t', 'f', names, names[:4], names[:4]))
    with pytest.raises(ValueError, match='loaded 0/10.*names match but the shapes differ.*2 names matched with other shapes'):
        check_load(LoadReport('t', 'f', names, (), names[:2], mismatched=names[:2]))


# ---- pretrained= -------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['timm.pth', 'timm.safetensors'])
def test_pretrained_file_reports_loaded_total(files, log_lines, name):
    paths, timm_model, _ = files
    backbone = TimmBackbone('resnet18', pretrained=paths[name])
    assert torch.equal(backbone.model.conv1.weight, timm_model.conv1.weight)
    total = len(backbone.model.state_dict())
    assert f"loaded {total}/{total} tensors of timm 'resnet18' (feature extractor) from the " \
           f"file {paths[name]!r}" in log_lines


def test_pretrained_partial_file_warns_with_missing_names(files, log_lines):
    backbone = TimmBackbone('resnet18', pretrained=files[0]['half.pth'])
    total = len(backbone.model.state_dict())
    assert any(f'/{total} tensors' in line and 'not in the file' in line for line in log_lines)


def test_pretrained_detector_checkpoint_points_to_init_cfg(files):
    # mmengine's checkpoint (numpy, HistoryBuffer) and a plain torch.save of a detector's weights
    with pytest.raises(ValueError, match=r"detector checkpoint.*init_cfg=dict\(type='Pretrained'"
                                         r".*prefix='backbone.'"):
        TimmBackbone('resnet18', pretrained=files[0]['detector.pth'])
    with pytest.raises(ValueError, match="detector checkpoint.*prefix='backbone.'"):
        TimmBackbone('resnet18', pretrained=files[0]['detector_plain.pth'])


def test_pretrained_backbone_state_dict_names_the_prefix(files):
    # a TimmBackbone's own state dict (names model.*): timm loads nothing; the error says why
    with pytest.raises(ValueError, match=r"(?s)loaded 0/\d+ tensors.*Expected names like "
                                         r"'conv1.weight'.*'model.conv1.weight'.*"
                                         r"prefix='model.'.*init_cfg"):
        TimmBackbone('resnet18', pretrained=files[0]['backbone.pth'])


def test_pretrained_unrelated_weights(files):
    with pytest.raises(ValueError, match='loaded 0/.*no prefix makes the names match'):
        TimmBackbone('resnet18', pretrained=files[0]['other.pth'])


@pytest.mark.parametrize('name', ['page.pth', 'empty.pth'])
def test_pretrained_not_a_checkpoint(files, name):
    with pytest.raises(ValueError, match='is not a PyTorch checkpoint'):
        TimmBackbone('resnet18', pretrained=files[0][name])


# ---- init_cfg=Pretrained -----------------------------------------------------------------------

@pytest.mark.parametrize('name, prefix', [('backbone.pth', None), ('detector.pth', 'backbone.')])
def test_init_cfg_pretrained_reports_loaded_total(files, log_lines, name, prefix):
    paths, _, donor = files
    init_cfg = dict(type='Pretrained', checkpoint=paths[name])
    if prefix:
        init_cfg['prefix'] = prefix
    backbone = TimmBackbone('resnet18', init_cfg=init_cfg)
    backbone.init_weights()
    assert _same(donor.state_dict(), backbone.state_dict())
    total = len(donor.state_dict())
    assert any(f"loaded {total}/{total} tensors of TimmBackbone('resnet18')" in line
               for line in log_lines)


def test_init_cfg_timm_state_dict_points_to_pretrained(files):
    # a plain timm state dict: names lack 'model.'; before, 0 tensors changed silently
    backbone = TimmBackbone('resnet18', init_cfg=dict(type='Pretrained',
                                                      checkpoint=files[0]['timm.pth']))
    with pytest.raises(ValueError, match=r"(?s)loaded 0/\d+ tensors.*lack the prefix 'model.'"
                                         r".*pretrained='/path/to/weights'"):
        backbone.init_weights()


def test_init_cfg_detector_checkpoint_without_prefix(files):
    backbone = TimmBackbone('resnet18', init_cfg=dict(type='Pretrained',
                                                      checkpoint=files[0]['detector.pth']))
    with pytest.raises(ValueError, match=r"loaded 0/.*prefix='backbone.'"):
        backbone.init_weights()


def test_init_cfg_wrong_prefix_lists_names(files):
    backbone = TimmBackbone('resnet18', init_cfg=dict(
        type='Pretrained', checkpoint=files[0]['detector.pth'], prefix='neck.'))
    with pytest.raises(ValueError, match=r"no tensor named neck\.\.\..*'backbone.model.conv1"):
        backbone.init_weights()


def test_init_cfg_not_a_checkpoint(files):
    backbone = TimmBackbone('resnet18', init_cfg=dict(type='Pretrained',
                                                      checkpoint=files[0]['page.pth']))
    with pytest.raises(ValueError, match='is not a PyTorch checkpoint.*HTML page'):
        backbone.init_weights()


def test_init_cfg_other_inits_still_apply(files):
    # a non-Pretrained init_cfg entry still goes to mmengine; Pretrained loads last
    paths, _, donor = files
    backbone = TimmBackbone('resnet18', init_cfg=[
        dict(type='Constant', val=0.5, layer='Conv2d'),
        dict(type='Pretrained', checkpoint=paths['backbone.pth'])])
    backbone.init_weights()
    assert _same(donor.state_dict(), backbone.state_dict())
    only_constant = TimmBackbone('resnet18', init_cfg=dict(type='Constant', val=0.5,
                                                           layer='Conv2d'))
    only_constant.init_weights()
    assert torch.all(only_constant.model.conv1.weight == 0.5)


# ---- init_detector and the runner --------------------------------------------------------------

@pytest.fixture(scope='module')
def detector_checkpoint(tmp_path_factory):
    cfg = Config.fromfile(DEMO)
    model = init_detector(cfg)
    path = str(tmp_path_factory.mktemp('det') / 'epoch_1.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'seed': np.int64(0)}}, path)
    return cfg, model, path


def test_init_detector_reports_loaded_total(detector_checkpoint, log_lines):
    cfg, model, path = detector_checkpoint
    loaded = init_detector(cfg, path)
    assert _same(model.state_dict(), loaded.state_dict())
    total = len([k for k in model.state_dict() if k.startswith('backbone.')])
    assert f'loaded {total}/{total} tensors of the detector from {path}' in log_lines


@pytest.mark.parametrize('name, match', [
    ('timm.pth', r"(?s)loaded 0/\d+ tensors of the detector.*lack the prefix 'backbone.model.'"
                 r".*model.backbone.pretrained="),
    ('backbone.pth', r"(?s)loaded 0/\d+.*lack the prefix 'backbone.'.*init_cfg"),
    ('page.pth', 'is not a PyTorch checkpoint'),
])
def test_init_detector_wrong_checkpoint(detector_checkpoint, files, name, match):
    with pytest.raises(ValueError, match=match):
        init_detector(detector_checkpoint[0], files[0][name])


def test_runner_load_from_is_verified(detector_checkpoint, files, tmp_path):
    from timm_backbones import TimmBackboneRunner
    cfg = detector_checkpoint[0].copy()
    cfg.work_dir = str(tmp_path)
    cfg.train_dataloader = cfg.train_cfg = cfg.optim_wrapper = cfg.param_scheduler = None
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    runner = TimmBackboneRunner.from_cfg(cfg)
    log_lines = []
    handler = logging.Handler()
    handler.emit = lambda record: log_lines.append(record.getMessage())
    runner.logger.addHandler(handler)  # the runner's own logger is the current one now
    runner.load_checkpoint(detector_checkpoint[2])
    total = len([k for k in runner.model.state_dict() if k.startswith('backbone.')])
    assert f'loaded {total}/{total} tensors of the model from {detector_checkpoint[2]}' \
        in log_lines
    with pytest.raises(ValueError, match=r"loaded 0/\d+ tensors of the model.*lack the prefix"):
        runner.load_checkpoint(files[0]['timm.pth'])
    with pytest.raises(ValueError, match='is not a PyTorch checkpoint'):
        runner.load_checkpoint(files[0]['empty.pth'])


def test_tensors_timm_renamed_are_counted_by_value():
    # rule: a file whose names timm's own filter rewrites (converted checkpoints) still counts:
    # tensors match by value; constant tensors (fresh norm statistics, zero biases) only by
    # name, since their values say nothing about where they came from
    model = TimmBackbone('resnet18').model
    own = model.state_dict()
    renamed = {f'original.{k}': v.clone() for k, v in own.items()}
    report = _timm_load_report(model, renamed, 't', 'f')
    informative = [k for k, v in own.items() if v.numel() > 1 and not (v == v.flatten()[0]).all()]
    assert informative and sorted(report.loaded) == sorted(informative)
    same_names = {k: v.clone() for k, v in own.items()}
    assert len(_timm_load_report(model, same_names, 't', 'f').loaded) == len(own)
    other = {k: v + 1 for k, v in own.items()}  # same names, other values: nothing loaded
    assert _timm_load_report(model, other, 't', 'f').loaded == ()


def test_hub_failure_says_what_to_do_offline(monkeypatch):
    # rule: pretrained=True without network access fails naming the model, the cause and the
    # fixes: a local file, or pretrained=False where a detector checkpoint replaces the weights
    # (DetInferencer / init_detector build the backbone before loading the checkpoint)
    from timm_backbones import _weights

    def offline(*args, **kwargs):
        raise OSError('We could not connect to huggingface.co')

    monkeypatch.setattr(_weights, 'create_features', offline)
    with pytest.raises(RuntimeError, match=r"for 'resnet18' from timm's hub \(network access "
                                           r"needed\): OSError: We could not connect.*"
                                           r"pretrained='/path/to/resnet18.safetensors'.*"
                                           r"model.backbone.pretrained=False"):
        TimmBackbone('resnet18', pretrained=True)
