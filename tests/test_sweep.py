"""The sweep (sweep.py, tools/sweep.py): the per-architecture check in the shipped families, and
the parallel, resumable tool behind docs/compatibility.csv.

The `slow` test runs every timm architecture through every matrix family (`make test-slow`;
`make compatibility` writes the same as the published matrix). The fast tests run the check and
the tool on a small subset.
"""
import csv
import importlib.util
import os

import pytest
import timm
import torch

import timm_backbones  # noqa: F401  (registers the modules)
from helpers import ROOT
from timm_backbones.families import family_model
from timm_backbones.sweep import (MATRIX_FAMILIES, check_architecture, check_family,
                                  check_layer_decay, is_plain)

_spec = importlib.util.spec_from_file_location('sweep_tool', os.path.join(ROOT, 'tools',
                                                                          'sweep.py'))
sweep_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep_tool)


@pytest.mark.slow
@pytest.mark.parametrize('name', timm.list_models())
def test_architecture_in_every_family(name):
    # rule: every architecture works in every matrix family or is rejected up front with a
    # clear error of ours (never a failure inside the build); plain models get a true pyramid
    result = check_architecture(name)
    for family, found in result.families.items():
        assert found.status in ('ok', 'rejected'), (family, found.reason)
    if result.families['retinanet'].status == 'ok' and is_plain(name):
        model = family_model('retinanet', name)
        from timm_backbones import feature_specs
        assert [s.stride for s in feature_specs(model['backbone'])] == [4, 8, 16, 32]


@pytest.mark.slow
@pytest.mark.parametrize('name', timm.list_models())
def test_layer_decay_groups_or_clear_error(name):
    # every architecture gets timm's layer-decay groups or the clear no-group_matcher error
    status, reason = check_layer_decay(name)
    assert status in ('groups', 'no_group_matcher', 'rejected'), reason


def test_layer_decay_check_itself():
    assert check_layer_decay('convnext_atto') == ('groups', '13 layers')  # stem + 12 blocks
    assert check_layer_decay('pit_ti_224')[0] == 'no_group_matcher'


@pytest.mark.parametrize('family', MATRIX_FAMILIES)
def test_check_family_ok(family):
    # rule: a CNN and a plain ViT work in every matrix family (meta build + checked forward)
    assert check_family(family, 'resnet18').status == 'ok'
    assert check_family(family, 'vit_tiny_patch16_224').status == 'ok'


def test_the_matrix_is_every_shipped_family():
    from timm_backbones.families import FAMILIES
    assert set(MATRIX_FAMILIES) == set(FAMILIES)


@pytest.mark.parametrize('name', ['inception_v3', 'levit_128', 'mobilevitv2_050'])
def test_maps_off_the_nominal_size_fit_rtmdet(name):
    # these failed in RTMDet's CSPNeXtPAFPN with a shape error (maps one or two pixels off
    # input / stride, concatenated after a 2x upsample); now their maps are exact
    assert check_family('rtmdet', name).status == 'ok'


def test_check_runs_every_size_and_checks_maps_exactly(monkeypatch):
    # rule: the backbone runs at each check size (one not a multiple of 32) and at the size the
    # config pads it to; a map one pixel off ceil(input / stride) is a failure
    from timm_backbones import TimmBackbone
    seen = []
    real = TimmBackbone.forward

    def spy(self, x):
        seen.append(tuple(x.shape[-2:]))
        return real(self, x)

    monkeypatch.setattr(TimmBackbone, 'forward', spy)
    assert check_architecture('resnet18', families=('retinanet',)).families[
        'retinanet'].status == 'ok'
    assert seen == [(608, 800), (427, 569), (448, 576)]
    monkeypatch.setattr(TimmBackbone, '_crop', lambda self, out, stride, hw: out)
    result = check_architecture('inception_v3', families=('retinanet',)).families['retinanet']
    assert result.status == 'failed' and 'retinanet backbone: map 0' in result.reason


def test_convit_is_checked_on_the_meta_device(monkeypatch):
    # ConViT's per-block index tables are made on the meta device in the check's forwards too
    # (they took over 600 s per architecture on the CPU at the 1344x1344 canvas)
    from timm.models.convit import GPSA
    made = []
    real = GPSA.get_rel_indices

    def spy(self, num_patches):
        made.append(torch.empty(()).device.type)
        return real(self, num_patches)

    monkeypatch.setattr(GPSA, 'get_rel_indices', spy)
    assert check_architecture('convit_tiny', families=('yolof',)).families[
        'yolof'].status == 'ok'
    assert made and set(made) == {'meta'}


def test_check_architecture_describes_and_rejects():
    # rule: the row says what the model is; a model whose outputs disagree with feature_info
    # is rejected in every family with the reason
    r = check_architecture('resnet18', families=('retinanet',))
    assert (r.levels, r.channels, r.strides, r.layout, r.output_strides) == \
        (5, [64, 64, 128, 256, 512], [2, 4, 8, 16, 32], 'NCHW', [8, 16])
    assert r.families['retinanet'].status == 'ok' and 11 < r.params < 12
    fixed = check_architecture('beit_base_patch16_224', families=('yolof',))
    assert fixed.fixed_size == '224x224' and fixed.families['yolof'].status == 'ok'
    crossvit = check_architecture('crossvit_tiny_240', families=('retinanet', 'dino'))
    assert {f.status for f in crossvit.families.values()} == {'rejected'}
    assert 'does not describe its outputs' in crossvit.families['dino'].reason


def test_check_family_reports_a_broken_wiring(monkeypatch):
    # rule: a failure inside the build or forward is 'failed' with its reason, not an exception;
    # a config resolve_config refuses is 'rejected' with its message
    from timm_backbones import sweep
    real = sweep.family_model

    def with_changes(changes):
        def model(family, arch):
            found = real(family, arch)
            for part, values in changes.items():
                found[part].update(values)
            return found
        return model

    monkeypatch.setattr(sweep, 'family_model', with_changes(dict(bbox_head=dict(type='NoHead'))))
    result = check_family('retinanet', 'resnet18')
    assert result.status == 'failed' and 'NoHead' in result.reason
    monkeypatch.setattr(sweep, 'family_model', with_changes(dict(neck=dict(in_channels=[1]))))
    result = check_family('retinanet', 'resnet18')
    assert result.status == 'rejected' and "in_channels='auto'" in result.reason


def test_check_family_reports_maps_off_the_layout_contract(monkeypatch):
    # rule: the matrix checks the layout contract: a backbone handing on maps that are not
    # NCHW-contiguous fails the check (meta tensors have strides)
    from timm_backbones import TimmBackbone
    from timm_backbones._cache import clear_caches
    clear_caches()  # maps of earlier checks are memoized with their backbone
    monkeypatch.setattr(TimmBackbone, 'memory_format', property(lambda self: torch.channels_last))
    try:
        result = check_family('retinanet', 'resnet18')
    finally:
        clear_caches()
    assert result.status == 'failed' and 'not contiguous_format' in result.reason, result


def _rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_sweep_tool_parallel_resumable(tmp_path, capsys):
    # rule: the tool checks in worker processes, writes one CSV row per architecture and the
    # Markdown report, and a second run resumes (keeps finished rows, checks nothing again)
    out, md = str(tmp_path / 'm.csv'), str(tmp_path / 'm.md')
    args = ['--filter', 'resnet1*', '--limit', '3', '--families', 'retinanet', 'yolof',
            '--jobs', '2', '--csv', out, '--md', md]
    sweep_tool.main(args)
    rows = _rows(out)
    assert [r['arch'] for r in rows] == timm.list_models('resnet1*')[:3]
    assert all(r['retinanet'] == 'ok' and r['yolof'] == 'ok' for r in rows)
    report = open(md).read()
    assert '| RetinaNet + FPN (`retinanet`) | 3 | 0 | 0 | 0 |' in report
    assert 'timm 1.0.31' in report or f'timm {timm.__version__}' in report
    err = capsys.readouterr().err
    assert '[3/3]' in err  # progress
    rows[0]['seconds'] = '999.00'  # a marker: a resumed run keeps this row as it is
    sweep_tool.write_rows(out, rows, ['retinanet', 'yolof'])
    sweep_tool.main(args)
    assert '3 already in' in capsys.readouterr().err
    assert _rows(out)[0]['seconds'] == '999.00'


def test_sweep_tool_timeout(tmp_path):
    # rule: an architecture past the time limit is killed and recorded as 'timeout'
    out = str(tmp_path / 't.csv')
    sweep_tool.main(['--filter', 'dla34', '--families', 'retinanet', '--timeout', '0.05',
                     '--csv', out, '--quiet'])
    assert [(r['arch'], r['retinanet']) for r in _rows(out)] == [('dla34', 'timeout')]


def test_check_seg_family_reports_a_broken_wiring(monkeypatch):
    # rule: in a segmentation family the check runs backbone, neck and every decode and
    # auxiliary head, so a wiring bug (here: the heads' in_channels filled one too high) is
    # 'failed' with the reason; a config resolve_config refuses is 'rejected' with its message
    from timm_backbones import sweep
    from timm_backbones.wiring import _resolve
    real_fill, real_model = _resolve._fill_or_check, sweep.family_model

    def off_by_one(cfg, key, expected, feed, where):
        if key == 'in_channels':
            expected = [c + 1 for c in expected] if isinstance(expected, list) else expected + 1
        real_fill(cfg, key, expected, feed, where)

    monkeypatch.setattr(_resolve, '_fill_or_check', off_by_one)
    for family in ('upernet', 'segformer', 'fpn'):
        result = check_family(family, 'resnet18')
        assert result.status == 'failed' and 'channel' in result.reason, (family, result)
    monkeypatch.undo()

    def stale(family, arch):
        found = real_model(family, arch)
        found['decode_head']['in_channels'] = [1, 2, 3, 4]
        return found
    monkeypatch.setattr(sweep, 'family_model', stale)
    result = check_family('segformer', 'resnet18')
    assert result.status == 'rejected' and "in_channels='auto'" in result.reason


def test_sweep_tool_on_segmentation_families(tmp_path):
    # rule: tools/sweep.py --families takes the segmentation families
    out, md = str(tmp_path / 's.csv'), str(tmp_path / 's.md')
    sweep_tool.main(['--filter', 'resnet1*', '--limit', '2', '--families', 'upernet',
                     'mask2former', '--jobs', '2', '--csv', out, '--md', md, '--quiet'])
    assert [(r['upernet'], r['mask2former']) for r in _rows(out)] == [('ok', 'ok')] * 2
    assert '| UPerNet + FCN auxiliary head (`upernet`) | 2 | 0 | 0 | 0 |' in open(md).read()
