"""mmdet's model zoo as the compatibility suite (zoo.py): the families and their representative
configs, a fast sample of the sweep, the table's files; the full sweep is `slow`."""
import os

import pytest

from timm_backbones.zoo import (EXCLUDED, NATIVE, ZOO_BACKBONES, ZooFamily, ZooResult,
                                check_zoo_config, read_zoo_csv, write_zoo_csv,
                                write_zoo_markdown, zoo_configs_root, zoo_families, zoo_sweep)

from helpers import ROOT

DOCS_CSV = os.path.join(ROOT, 'docs', 'zoo.csv')
SAMPLE = [('retinanet', 'resnet18'), ('mask_rcnn', 'convnext_atto'), ('yolact', 'resnet18'),
          ('sparse_rcnn', 'vit_tiny_patch16_224'), ('tood', 'resnet18')]


@pytest.fixture(scope='module')
def families():
    return {f.name: f for f in zoo_families()}


def test_every_folder_is_a_family_or_left_out_with_a_reason(families):
    # rule: each config folder of the installed mmdet has a representative config (the base
    # ResNet-50 one where there is one) or the reason it is left out
    folders = {p.name for p in zoo_configs_root().iterdir() if p.is_dir()}
    assert set(families) == folders
    assert families['retinanet'].config == 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
    assert families['faster_rcnn'].config == 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
    for name in ('bytetrack', 'glip', '_base_'):
        if name in families:
            assert families[name].config is None and families[name].excluded == EXCLUDED[name]
    assert all(f.config or f.excluded for f in families.values())


@pytest.mark.parametrize('family,arch', SAMPLE)
def test_sample_of_the_sweep(families, family, arch, one_thread):
    # rule: swapped, resolved, built, one training step and predict on CPU
    assert check_zoo_config(families[family].config, arch) == ('pass', '')


def test_the_batch_carries_what_the_config_loads(families):
    # rule: masks, semantic maps and proposals only where the config's training pipeline loads
    # them (given proposals replace a two-stage detector's RPN; masks confuse RTMDet's assigner)
    from timm_backbones.engine import load_config
    from timm_backbones.zoo import _annotations, _batch
    seen = {name: _annotations(load_config(families[name].config))
            for name in ('faster_rcnn', 'mask_rcnn', 'fast_rcnn', 'rtmdet', 'panoptic_fpn')}
    assert seen['faster_rcnn'] == dict(masks=False, sem_seg=False, proposals=False)
    assert seen['mask_rcnn'] == dict(masks=True, sem_seg=False, proposals=False)
    assert seen['fast_rcnn']['proposals'] and not seen['rtmdet']['masks']
    assert seen['panoptic_fpn'] == dict(masks=True, sem_seg=True, proposals=False)
    sample = _batch((64, 80), 2, **seen['faster_rcnn'])['data_samples'][1]
    assert 'masks' not in sample.gt_instances and 'proposals' not in sample
    assert 'gt_sem_seg' not in sample and len(sample.ignored_instances) == 0


def test_mmdet_failures_are_counted_apart(monkeypatch):
    # rule: a swap failing where mmdet's own backbone fails too is 'mmdet-fails', with mmdet's
    # reason; a swap that passes passes
    outcomes = {None: ('fail', 'CARAFE needs CUDA'), 'a': ('fail', 'other'), 'b': ('pass', '')}
    monkeypatch.setattr('timm_backbones.zoo.check_zoo_config',
                        lambda config, arch, *_: outcomes[arch])
    rows = zoo_sweep([ZooFamily('carafe', 'mmdet::carafe/x.py')], ['a', 'b'])
    assert [(r.backbone, r.status, r.reason) for r in rows] == [
        (NATIVE, 'fail', 'CARAFE needs CUDA'), ('a', 'mmdet-fails', 'CARAFE needs CUDA'),
        ('b', 'pass', '')]


def test_csv_and_markdown(tmp_path):
    # rule: the CSV round-trips (the sweep resumes from it); the Markdown has one row per
    # family and lists the folders left out
    rows = [ZooResult('retinanet', 'mmdet::retinanet/r.py', b, 'pass', '', 1.0)
            for b in (NATIVE, *ZOO_BACKBONES)]
    write_zoo_csv(rows[:2], tmp_path / 'z.csv')
    write_zoo_csv(rows[2:], tmp_path / 'z.csv', append=True)
    assert read_zoo_csv(tmp_path / 'z.csv') == rows
    families = [ZooFamily('retinanet', 'mmdet::retinanet/r.py'), ZooFamily('sort', None, 'video')]
    write_zoo_markdown(rows, families, tmp_path / 'z.md')
    text = (tmp_path / 'z.md').read_text()
    assert '| retinanet | `retinanet/r.py` | pass | pass | pass | pass |' in text
    assert '| sort | video |' in text


@pytest.mark.slow
def test_full_sweep_matches_the_published_table(families, one_thread):
    # rule: docs/zoo.csv is what the sweep gives today (regenerate with tools/zoo_sweep.py);
    # timeouts depend on the machine's load and are not compared
    published = {(r.family, r.backbone): r.status for r in read_zoo_csv(DOCS_CSV)}
    rows = zoo_sweep(list(families.values()), ZOO_BACKBONES)
    now = {(r.family, r.backbone): r.status for r in rows}
    changed = {k: (published.get(k), v) for k, v in now.items()
               if 'timeout' not in (published.get(k), v) and published.get(k) != v}
    assert not changed, f'(published, now): {changed}'
