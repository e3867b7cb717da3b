"""Tests of the synthetic shapes dataset: generator, on-disk contract, mmdet dataset and metric."""
import hashlib
import json
import os
import os.path as osp
import threading

import numpy as np
import pytest
from pycocotools.coco import COCO

from timm_backbones.data import _synthetic as _synthetic_data
from timm_backbones.data._synthetic import (SHAPE_CLASSES, SyntheticCocoMetric,
                                            SyntheticShapesDataset, make_synthetic_coco)

SMALL = dict(num_train=12, num_val=4, img_size=(128, 160), obj_size=(12, 64))


def _digest(root):
    """Hash of every file of a generated dataset, by relative path."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope='module')
def dataset_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data') / 'shapes')
    make_synthetic_coco(root, num_train=60, num_val=10, seed=3)
    return root


@pytest.fixture(scope='module', autouse=True)
def _mmdet_modules():
    from mmdet.utils import register_all_modules
    register_all_modules()


def test_layout_and_determinism(tmp_path):
    # The same parameters give the same bytes; the seed changes them.
    info = make_synthetic_coco(str(tmp_path / 'a'), **SMALL)
    make_synthetic_coco(str(tmp_path / 'b'), **SMALL)
    make_synthetic_coco(str(tmp_path / 'c'), **SMALL, seed=1)
    a, b, c = (_digest(tmp_path / n) for n in 'abc')
    assert info['created'] and info['classes'] == list(SHAPE_CLASSES)
    assert 'annotations/instances_train.json' in a and 'val/000003.jpg' in a
    assert len([k for k in a if k.startswith('train/')]) == SMALL['num_train']
    assert a == b
    assert a['annotations/instances_train.json'] != c['annotations/instances_train.json']
    assert a['train/000000.jpg'] != c['train/000000.jpg']
    # Image i depends only on (seed, split, i), not on the split size.
    make_synthetic_coco(str(tmp_path / 'd'), **dict(SMALL, num_train=3))
    assert _digest(tmp_path / 'd')['train/000002.jpg'] == a['train/000002.jpg']


def test_valid_coco(dataset_root):
    # Annotations load in pycocotools; boxes, areas and polygons agree with each other.
    for split in ('train', 'val'):
        coco = COCO(osp.join(dataset_root, 'annotations', f'instances_{split}.json'))
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
        for img in coco.loadImgs(coco.getImgIds()):
            assert osp.isfile(osp.join(dataset_root, split, img['file_name']))
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img['id']))
            assert 1 <= len(anns) <= 6
            for ann in anns:
                x, y, w, h = ann['bbox']
                assert ann['iscrowd'] == 0 and ann['area'] > 0 and w > 0 and h > 0
                assert 0 <= x and x + w <= img['width'] and 0 <= y and y + h <= img['height']
                mask = coco.annToMask(ann)
                ys, xs = np.nonzero(mask)
                mask_box = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
                # The polygon rasterizes back to exactly the pixels bbox and area describe.
                assert mask_box == ann['bbox'] and mask.sum() == ann['area']


def test_class_balance_and_sizes(dataset_root):
    # Every class is common, and objects range from small to large.
    with open(osp.join(dataset_root, 'annotations', 'instances_train.json')) as f:
        anns = json.load(f)['annotations']
    counts = np.bincount([a['category_id'] - 1 for a in anns], minlength=len(SHAPE_CLASSES))
    assert counts.min() >= 0.5 * len(anns) / len(SHAPE_CLASSES), counts
    sides = np.sqrt([a['area'] for a in anns])
    assert sides.min() < 20 and sides.max() > 50


def test_reuse(tmp_path):
    # A complete dataset with the same parameters is reused, not rewritten.
    root = str(tmp_path / 'shapes')
    make_synthetic_coco(root, **SMALL)
    ann = osp.join(root, 'annotations', 'instances_train.json')
    mtime = os.stat(ann).st_mtime_ns
    info = make_synthetic_coco(root, **SMALL)
    assert not info['created'] and info['params']['num_train'] == SMALL['num_train']
    assert os.stat(ann).st_mtime_ns == mtime
    # An empty directory counts as absent.
    os.makedirs(tmp_path / 'empty')
    assert make_synthetic_coco(str(tmp_path / 'empty'), **SMALL)['created']


def test_existing_directory_errors(tmp_path):
    root = str(tmp_path / 'shapes')
    make_synthetic_coco(root, **SMALL)
    with pytest.raises(ValueError, match=r'generated with parameters .* Delete the directory'):
        make_synthetic_coco(root, **dict(SMALL, seed=5))  # other parameters: refuse, never mix
    os.makedirs(tmp_path / 'other')
    (tmp_path / 'other' / 'x.txt').write_text('x')
    with pytest.raises(ValueError, match='not a complete synthetic shapes dataset'):
        make_synthetic_coco(str(tmp_path / 'other'), **SMALL)  # foreign directory: never touched


def test_invalid_parameters(tmp_path):
    with pytest.raises(ValueError, match=r'obj_size must be .* got \(16, 200\)'):
        make_synthetic_coco(str(tmp_path / 's'), img_size=(128, 128), obj_size=(16, 200))
    with pytest.raises(ValueError, match='num_train must be a positive integer'):
        make_synthetic_coco(str(tmp_path / 's'), num_train=0)
    assert not osp.exists(tmp_path / 's')


@pytest.mark.parametrize('options, error, match', [
    pytest.param(dict(num_train='ten'), TypeError,
                 r"synthetic option num_train must be an int, got 'ten' \(str\)",
                 id='counts are ints'),
    pytest.param(dict(num_val=True), TypeError, 'num_val must be an int, got True',
                 id='counts are ints, not bools'),
    pytest.param(dict(num_train=2.5), TypeError, 'num_train must be an int, got 2.5',
                 id='counts are ints, not floats'),
    pytest.param(dict(img_size=256), TypeError,
                 r'img_size must be a pair of ints, e.g. img_size=\(256, 256\), got 256',
                 id='img_size is a pair'),
    pytest.param(dict(obj_size=('16', '32')), TypeError, 'obj_size must be a pair of ints',
                 id='obj_size is a pair of ints'),
    pytest.param(dict(seed='0'), TypeError, "seed must be an int, got '0'", id='seed is an int'),
    pytest.param(dict(seed=-1), ValueError, 'seed must be a non-negative int',
                 id='seed is non-negative'),
])
def test_option_types(tmp_path, options, error, match):
    with pytest.raises(error, match=match):
        make_synthetic_coco(str(tmp_path / 's'), **options)
    assert not osp.exists(tmp_path / 's')


def test_synthetic_is_a_dict(tmp_path):
    with pytest.raises(TypeError, match=r"SyntheticShapesDataset: synthetic must be a dict of "
                                        r"generator options.*got 'small'"):
        SyntheticShapesDataset(data_root=str(tmp_path / 's'), synthetic='small')


def test_concurrent_first_use(tmp_path, monkeypatch):
    # Two writers racing to create the same root: one renames its copy into place, the other
    # finds it complete and identical, and no temporary directory is left behind.
    root = str(tmp_path / 'shapes')
    barrier = threading.Barrier(2, timeout=60)
    rename = os.rename

    def synchronized_rename(src, dst):
        barrier.wait()  # both copies are complete before either is renamed
        rename(src, dst)

    monkeypatch.setattr(_synthetic_data.os, 'rename', synchronized_rename)
    results, errors = [], []

    def worker():
        try:
            results.append(make_synthetic_coco(root, **SMALL))
        except Exception as err:  # noqa: BLE001 (reported by the assertion below)
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r['created'] for r in results) == [False, True]
    assert os.listdir(tmp_path) == ['shapes']
    monkeypatch.undo()
    make_synthetic_coco(str(tmp_path / 'ref'), **SMALL)
    assert _digest(root) == _digest(tmp_path / 'ref')


def test_dataset_builds_and_loads(tmp_path):
    # The registered dataset generates its data on first use and yields packed samples.
    from mmdet.registry import DATASETS
    data_root = str(tmp_path / 'shapes') + '/'
    dataset = DATASETS.build(dict(
        type='SyntheticShapesDataset', data_root=data_root, synthetic=SMALL,
        ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                  dict(type='PackDetInputs')]))
    assert isinstance(dataset, SyntheticShapesDataset)
    assert len(dataset) == SMALL['num_train']
    assert dataset.metainfo['classes'] == SHAPE_CLASSES
    item = dataset[0]
    assert tuple(item['inputs'].shape) == (3, 128, 160)
    gt = item['data_samples'].gt_instances
    assert len(gt) >= 1 and gt.bboxes.shape == (len(gt), 4) and len(gt.masks) == len(gt)
    assert gt.labels.max() < len(SHAPE_CLASSES)
    with pytest.raises(TypeError, match=r"SyntheticShapesDataset got unknown synthetic .*'size'"):
        DATASETS.build(dict(type='SyntheticShapesDataset', data_root=data_root,
                            synthetic=dict(size=3)))


def test_lazy_init_generates_nothing_until_loaded(tmp_path):
    # mmdet's init_detector builds the test dataset with lazy_init=True to read its class names:
    # that generates no data (options are still checked); loading it does
    from mmdet.registry import DATASETS
    data_root = str(tmp_path / 'lazy') + '/'
    cfg = dict(type='SyntheticShapesDataset', data_root=data_root, synthetic=SMALL,
               ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
               lazy_init=True)
    dataset = DATASETS.build(cfg)
    assert dataset.metainfo['classes'] == SHAPE_CLASSES and not os.path.exists(data_root)
    dataset.full_init()
    assert len(dataset) == SMALL['num_val'] and os.path.isdir(data_root)
    with pytest.raises(TypeError, match='unknown synthetic'):
        DATASETS.build(dict(cfg, synthetic=dict(size=3)))


def test_runner_builds_val_dataset_before_evaluator(tmp_path):
    # A plain CocoMetric on a not-yet-generated data_root works in a Runner: ValLoop builds the
    # dataloader (which generates the data) before the evaluator reads ann_file.
    import torch
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Tiny(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(1, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            return []

    data_root = str(tmp_path / 'shapes') + '/'
    runner = Runner(
        model=Tiny(), work_dir=str(tmp_path / 'work'), default_scope='mmdet',
        val_dataloader=dict(
            batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dict(type='SyntheticShapesDataset', data_root=data_root, synthetic=SMALL,
                         ann_file='annotations/instances_val.json', test_mode=True,
                         data_prefix=dict(img='val/'), pipeline=[])),
        val_cfg=dict(),
        val_evaluator=dict(type='CocoMetric',
                           ann_file=data_root + 'annotations/instances_val.json'))
    assert not osp.exists(data_root)
    metric = runner.val_loop.evaluator.metrics[0]
    assert len(metric._coco_api.get_img_ids()) == SMALL['num_val']


def test_metric_generates_and_scores_ground_truth(tmp_path):
    # SyntheticCocoMetric needs no dataset built first; ground truth as predictions scores 1.0.
    import torch
    from mmdet.registry import METRICS
    data_root = str(tmp_path / 'shapes')
    metric = METRICS.build(dict(type='SyntheticCocoMetric', data_root=data_root,
                                synthetic=SMALL, metric=['bbox', 'segm']))
    assert isinstance(metric, SyntheticCocoMetric)
    metric.dataset_meta = dict(classes=SHAPE_CLASSES)
    coco = COCO(osp.join(data_root, 'annotations', 'instances_val.json'))
    samples = []
    for img in coco.loadImgs(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img['id']))
        boxes = torch.tensor([a['bbox'] for a in anns])
        boxes[:, 2:] += boxes[:, :2]
        samples.append(dict(img_id=img['id'], ori_shape=(img['height'], img['width']),
                            pred_instances=dict(
                                bboxes=boxes, scores=torch.ones(len(anns)),
                                labels=torch.tensor([a['category_id'] - 1 for a in anns]),
                                masks=torch.from_numpy(np.stack([coco.annToMask(a) for a in anns]))
                                .bool())))
    metric.process({}, samples)
    results = metric.evaluate(len(samples))
    assert results['coco/bbox_mAP_50'] == pytest.approx(1.0)
    assert results['coco/segm_mAP_50'] == pytest.approx(1.0)
