"""Broken files on every door: each kind of broken file (truncated, zero-byte, a JPEG renamed
.pth, a checkpoint of another model, a safetensors file, a directory) handed to each door that
takes a file (`pretrained=`, `init_cfg=Pretrained`, `load_from`, `--resume`, `tools/test.py
CHECKPOINT`, `timm_backbones.init_detector`, mmdet's `DetInferencer`) gets an error naming the
file, what is wrong and the fix: never torch's own `PytorchStreamReader` text. A table: `EXPECTED`
(kind -> door -> the message's pattern). The detector is the demo's (resnet18 RetinaNet).

The truncated file is `epoch_2.pth` in a folder that also holds a complete `epoch_1.pth`: the
fix named is that previous complete checkpoint.
"""
import io
import os
import re

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from helpers import DEMO_CONFIG, run_tool, ROOT
from timm_backbones import TimmBackbone, init_detector

KINDS = ('truncated', 'empty', 'jpeg', 'other_model', 'safetensors', 'directory')
DOORS = ('pretrained', 'init_cfg', 'load_from', 'resume', 'init_detector', 'DetInferencer',
         'tools/test.py')

TRUNCATED = r"is a truncated PyTorch checkpoint \(\d+ bytes.*Fix: use the previous complete " \
            r"checkpoint in that folder, '[^']*epoch_1\.pth'"
EMPTY = r'is not a PyTorch checkpoint.*empty \(0 bytes\)'
JPEG = r'is not a PyTorch checkpoint.*a JPEG image'
DIRECTORY = r'is a directory, not a checkpoint file. Fix: pass the checkpoint file inside it'
SAFETENSORS_REFUSED = r'is a safetensors file .*not a training checkpoint.*pretrained='
OTHER_DETECTOR = r'(?s)loaded 0/\d+ tensors of the (model|detector) from .*another model'

# kind -> door -> (what the message names first, pattern); None: the file loads (not broken there)
OPTION = {'pretrained': "pretrained='",
          'init_cfg': "init_cfg=dict(type='Pretrained') checkpoint '",
          'load_from': "load_from (tools/test.py: CHECKPOINT) '", 'resume': "--resume '",
          'init_detector': "init_detector checkpoint '", 'DetInferencer': "checkpoint '",
          'tools/test.py': "load_from (tools/test.py: CHECKPOINT) '"}
EXPECTED = {
    'truncated': dict({door: TRUNCATED for door in DOORS},
                      resume=r"the file is a truncated PyTorch checkpoint \(\d+ bytes.*Fix: resume "
                             r"from the previous complete checkpoint instead: --resume "
                             r"[^ ]*epoch_1\.pth"),
    'empty': dict({door: EMPTY for door in DOORS},
                  resume=r'the file is empty \(0 bytes\).*Fix: pass a complete checkpoint'),
    'jpeg': {door: JPEG for door in DOORS},
    'directory': {door: DIRECTORY for door in DOORS},
    'safetensors': dict(
        {door: SAFETENSORS_REFUSED for door in DOORS},
        pretrained=None,  # timm weights as safetensors: what pretrained= takes
        init_cfg=r"(?s)loaded 0/\d+ tensors of TimmBackbone.*lack the prefix 'model.'.*"
                 r"pretrained='/path/to/weights'",
        init_detector=r"(?s)loaded 0/\d+ tensors of the detector.*lack the prefix "
                      r"'backbone.model.'.*model.backbone.pretrained="),
    'other_model': dict(
        {door: OTHER_DETECTOR for door in DOORS},
        pretrained=r'(?s)loaded 0/\d+ tensors of timm .*another model.*pretrained= takes',
        init_cfg=r"(?s)loaded 0/\d+ tensors of TimmBackbone.*another model.*init_cfg=Pretrained",
        # mmdet's DetInferencer loads non-strictly: mmengine warns of missing keys, no error
        DetInferencer=None),
}
# where the message's text names the option (errors about the file's content name the file)
NAMES_OPTION = ('truncated', 'empty', 'jpeg', 'directory')


@pytest.fixture(scope='module')
def broken(tmp_path_factory):
    """kind -> path, and the demo detector's config."""
    import timm
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp('broken')
    cfg = Config.fromfile(DEMO_CONFIG)
    torch.manual_seed(0)
    model = init_detector(cfg)
    work = root / 'work_dir'
    work.mkdir()
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': 1, 'iter': 4}},
               work / 'epoch_1.pth')
    data = (work / 'epoch_1.pth').read_bytes()
    (work / 'epoch_2.pth').write_bytes(data[:len(data) // 2])
    os.utime(work / 'epoch_1.pth', (1, 1))
    paths = {'truncated': work / 'epoch_2.pth', 'empty': root / 'empty.pth',
             'jpeg': root / 'photo.pth', 'other_model': root / 'other.pth',
             'safetensors': root / 'resnet18.safetensors', 'directory': root / 'ckpt.pth'}
    paths['empty'].write_bytes(b'')
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg, format='JPEG')
    paths['jpeg'].write_bytes(jpeg.getvalue())
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2))
    torch.save({'state_dict': other.state_dict(), 'meta': {'epoch': 1, 'iter': 1}},
               paths['other_model'])
    save_file(timm.create_model('resnet18').state_dict(), str(paths['safetensors']))
    paths['directory'].mkdir()
    return {k: str(v) for k, v in paths.items()}, cfg


@pytest.fixture(scope='module')
def runner(broken, tmp_path_factory):
    from timm_backbones import TimmBackboneRunner
    cfg = broken[1].copy()
    cfg.work_dir = str(tmp_path_factory.mktemp('runner'))
    cfg.train_dataloader = cfg.train_cfg = cfg.optim_wrapper = cfg.param_scheduler = None
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    return TimmBackboneRunner.from_cfg(cfg)


def open_door(door, path, cfg, runner):
    if door == 'pretrained':
        TimmBackbone('resnet18', pretrained=path)
    elif door == 'init_cfg':
        TimmBackbone('resnet18', init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights()
    elif door == 'load_from':
        runner.load_checkpoint(path)
    elif door == 'resume':
        runner.resume(path)
    elif door == 'init_detector':
        init_detector(cfg, path)
    elif door == 'DetInferencer':
        from mmdet.apis import DetInferencer
        DetInferencer(model=DEMO_CONFIG, weights=path, device='cpu', show_progress=False)
    else:
        raise AssertionError(door)


def _check(message, kind, door, path):
    expected = EXPECTED[kind][door]
    assert 'PytorchStreamReader' not in message and 'can not be found' not in message
    assert re.search(expected, message), f'{kind} x {door}: {message}'
    assert path in message, f'{kind} x {door}: the file is not named: {message}'
    if kind in NAMES_OPTION:
        assert OPTION[door] + path in message, f'{kind} x {door}: the option is not named'


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('door', DOORS[:-1])
def test_broken_file_on_door(broken, runner, door, kind, one_thread):
    paths, cfg = broken
    path = paths[kind]
    if EXPECTED[kind][door] is None:
        open_door(door, path, cfg, runner)  # loads (pretrained=: timm safetensors weights)
        return
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        open_door(door, path, cfg, runner)
    _check(str(err.value), kind, door, path)


@pytest.mark.parametrize('kind', [
    'truncated', *[pytest.param(k, marks=pytest.mark.slow) for k in KINDS[1:]]])
def test_broken_file_on_tools_test(broken, kind, tmp_path):
    # tools/test.py CONFIG CHECKPOINT: the same message, and no traceback from torch
    paths, _ = broken
    proc = run_tool(os.path.join(ROOT, 'tools', 'test.py'), DEMO_CONFIG, paths[kind],
                    '--work-dir', str(tmp_path), timeout=600)
    assert proc.returncode != 0
    _check(proc.stdout + proc.stderr, kind, 'tools/test.py', paths[kind])
