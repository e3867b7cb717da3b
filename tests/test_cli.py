"""The `timm-backbones` command: list, show, config, check (cli.py)."""
import io
import json
import os
import subprocess
import sys

import pytest
from mmengine.config import Config

from timm_backbones import TimmBackbone, build_detector, feature_specs, resolve_config
from timm_backbones.cli import auto_changes, main
from timm_backbones.engine import TimmBackboneRunner
from timm_backbones.families import FAMILIES

from helpers import ROOT


def run(*argv):
    """(exit status, stdout) of `timm-backbones ARGV`, in this process."""
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def write(tmp_path, text, name='cfg.py'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize('family', list(FAMILIES))
def test_config_prints_a_config_that_resolves_and_builds(family, tmp_path):
    # rule: `config DETECTOR ARCH` prints a complete config (the family's shipped config, by
    # absolute path, with the backbone swapped) that resolves and builds as printed
    code, text = run('config', family, 'resnet18', '--no-pretrained')
    assert code == 0
    assert f"_base_ = ['{FAMILIES[family].path}']" in text
    cfg = Config.fromfile(write(tmp_path, text))
    # from the shipped runtime: mmdet's registry, mmseg's for segmentation families
    assert cfg.runner_type == f'{FAMILIES[family].package}.TimmBackboneRunner'
    assert cfg.model.backbone.model_name == 'resnet18' and cfg.model.backbone.pretrained is False
    resolved = resolve_config(cfg)
    assert "'auto'" not in str(resolved.model)
    model = build_detector(resolved)
    assert isinstance(model.backbone, TimmBackbone)


@pytest.mark.parametrize('family,arch', [('retinanet', 'vit_tiny_patch16_224'),
                                         ('yolof', 'vit_tiny_patch16_224'),
                                         ('rtmdet', 'convnext_atto'),
                                         ('dino', 'beit_base_patch16_224'),
                                         ('segformer', 'vit_tiny_patch16_224'),
                                         ('upernet', 'beit_base_patch16_224')])
def test_config_for_other_kinds_of_backbone(family, arch, tmp_path):
    # rule: plain (ViT), stride-4-first and fixed-size backbones get configs that resolve too;
    # a fixed-size model is built for the family's canvas
    code, text = run('config', family, arch)
    assert code == 0
    cfg = Config.fromfile(write(tmp_path, text))
    assert cfg.model.backbone.pretrained is True  # the default: timm's weights
    resolved = resolve_config(cfg)
    assert "'auto'" not in str(resolved.model)
    if arch.startswith('beit'):
        assert tuple(cfg.model.backbone.input_size) == (FAMILIES[family].canvas,) * 2
    if arch.startswith('beit') and family == 'upernet':  # tested on crops of that size
        assert cfg.model.test_cfg.mode == 'slide' and tuple(cfg.model.test_cfg.crop_size) == \
            (512, 512)


def test_config_unknown_detector_or_arch():
    # rule: an unknown family is an argument error (exit 2, choices listed); an unknown
    # architecture exits 1 with close matches
    with pytest.raises(SystemExit) as err:
        run('config', 'retina', 'resnet18')
    assert err.value.code == 2
    code, _ = run('config', 'retinanet', 'resnet19x')
    assert code == 1


# ---- check -------------------------------------------------------------------------------------
def test_check_prints_what_each_auto_became(tmp_path, capsys):
    # rule: `check` resolves without weights and prints every filled field with its value
    code, out = run('check', os.path.join(ROOT, 'configs', 'faster-rcnn_timm-regnety-032_fpn_'
                                                 '1x_coco.py'))
    assert code == 0
    channels = [s.channels for s in feature_specs(dict(type='timm.regnety_032'))]
    assert f"model.neck.in_channels = {channels}   ('auto')" in out
    assert 'resolves (no weights allocated)' in out


def test_check_a_segmentation_config():
    # rule: `check` works on segmentation configs as on detection ones
    code, out = run('check', os.path.join(ROOT, 'configs', 'seg', 'upernet_timm-convnext-tiny_'
                                                 '4xb4-160k_ade20k-512x512.py'),
                    '--cfg-options', 'model.backbone.model_name=resnet18',
                    'model.backbone.pretrained=False')
    assert code == 0
    assert "model.decode_head.in_channels = [64, 128, 256, 512]   ('auto')" in out
    assert "model.auxiliary_head.in_index = 2   ('auto')" in out
    assert "model.auxiliary_head.in_channels = 256   ('auto')" in out


def test_check_with_cfg_options(tmp_path):
    # rule: --cfg-options are applied before resolving, as tools/train.py does
    code, out = run('check', os.path.join(ROOT, 'configs', 'retinanet_timm-pvt-v2-b2_fpn_1x_'
                                                 'coco.py'),
                    '--cfg-options', 'model.backbone.model_name=resnet18')
    assert code == 0
    assert "model.neck.in_channels = [64, 128, 256, 512]   ('auto')" in out


def test_check_fails_like_the_runner(tmp_path, capsys):
    # rule: an unresolvable config exits 1 with the error (and fix) the runner gives
    path = os.path.join(ROOT, 'configs', 'yolof_timm-resnet50-c5_8xb8-1x_coco.py')
    options = ['model.backbone.model_name=vit_tiny_patch16_224', 'model.backbone.pretrained=False',
               'model.bbox_head.anchor_generator.strides=[32]']  # ViT: stride 16
    code, out = run('check', path, '--cfg-options', *options)
    assert code == 1 and out == ''
    message = capsys.readouterr().err
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(dict(o.split('=') for o in options[:1]))
    cfg.merge_from_dict({'model.backbone.pretrained': False,
                         'model.bbox_head.anchor_generator.strides': [32]})
    cfg.work_dir = str(tmp_path)
    with pytest.raises(ValueError) as runner_err:
        TimmBackboneRunner.from_cfg(cfg)
    assert f'ValueError: {runner_err.value}' in message
    assert "Fix: set strides='auto'" in message


def test_auto_changes_lists_filled_fields():
    # rule: changed and added fields are reported with their path, nested lists of dicts too
    before = dict(a=dict(b='auto', c=1), d=[dict(e='auto')])
    after = dict(a=dict(b=[1, 2], c=1, f=3), d=[dict(e=4)])
    assert auto_changes(before, after) == [('a.b', 'auto', [1, 2]), ('a.f', None, 3),
                                           ('d[0].e', 'auto', 4)]


# ---- list / show -------------------------------------------------------------------------------
def test_list_rows_and_filters():
    # rule: one aligned row per architecture matching the pattern; filters select plain /
    # hierarchical / output_stride models
    code, out = run('list', 'resnet1*', '--live')
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ['arch', 'levels', 'channels', 'strides']
    row = next(line for line in lines if line.startswith('resnet18 '))
    assert '64 64 128 256 512' in row and '2 4 8 16 32' in row and '8,16' in row
    assert lines[0].index('strides') == lines[1].index('2 4 8')  # aligned columns
    code, out = run('list', 'vit_tiny_patch16_2*', '--plain', '--json', '--live')
    rows = json.loads(out)
    assert rows and all(r['plain'] == 'true' and r['strides'].split()[0] == '16' for r in rows)
    code, out = run('list', 'vit_tiny_patch16_2*', '--hierarchical', '--json', '--live')
    assert json.loads(out) == []
    code, out = run('list', 'convnext_at*', '--output-stride', '--json', '--live')
    assert [r['arch'] for r in json.loads(out)] == ['convnext_atto', 'convnext_atto_ols',
                                                    'convnext_atto_rms']


def test_list_unknown_pattern():
    # rule: a pattern matching nothing exits 1
    assert run('list', 'no_such_model*')[0] == 1


def test_show_levels_and_backbone_dict():
    # rule: `show` marks the chosen levels and prints a backbone dict that builds those outputs
    code, out = run('show', 'resnet18', '--out-indices', '-3', '-2', '-1')
    assert code == 0
    assert [line.split()[1] for line in out.splitlines() if line.startswith('*')] == \
        ['2', '3', '4']
    line = next(line for line in out.splitlines() if line.startswith('backbone='))
    backbone = eval(line[len('backbone='):].rstrip(','), {'dict': dict})  # noqa: S307
    assert [s.channels for s in feature_specs(backbone)] == [128, 256, 512]


def test_show_unknown_arch():
    # rule: an unknown architecture exits 1 (close matches on stderr)
    assert run('show', 'resnet18x')[0] == 1


def test_python_m_entry_point():
    # rule: `python -m timm_backbones` is the same command
    out = subprocess.run([sys.executable, '-m', 'timm_backbones', 'config', 'yolof', 'resnet18'],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert f"_base_ = ['{FAMILIES['yolof'].path}']" in out
