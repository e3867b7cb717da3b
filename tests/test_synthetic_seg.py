"""The synthetic shapes with per-pixel label maps (`data/_synthetic_seg.py`) and their mmseg
dataset (`SyntheticShapesSegDataset`): layout, determinism, the same images as the COCO set and
label maps equal to its polygons rasterized, reuse, and the dataset in mmseg's registry."""
import os.path as osp

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from test_synthetic_data import _digest
from timm_backbones.data import SEG_CLASSES, make_synthetic_coco, make_synthetic_seg

SMALL = dict(num_train=6, num_val=3, img_size=(96, 128), obj_size=(12, 48))


@pytest.fixture(scope='module')
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp('seg')
    return (make_synthetic_seg(str(root / 'seg'), **SMALL),
            make_synthetic_coco(str(root / 'coco'), **SMALL))


def test_layout_and_determinism(both, tmp_path):
    seg, _ = both
    files = _digest(seg['root'])
    assert seg['created'] and seg['classes'] == list(SEG_CLASSES)
    assert seg['classes'][0] == 'background' and len(SEG_CLASSES) == 6
    for split, n in (('train', 6), ('val', 3)):
        assert sorted(k for k in files if k.startswith(f'img_dir/{split}/')) == \
            [f'img_dir/{split}/{i:06d}.jpg' for i in range(n)]
        assert sorted(k for k in files if k.startswith(f'ann_dir/{split}/')) == \
            [f'ann_dir/{split}/{i:06d}.png' for i in range(n)]
    again = make_synthetic_seg(str(tmp_path / 'again'), **SMALL)
    assert _digest(again['root']) == files  # the same bytes
    assert sum(seg['pixels']['train']) == 6 * 96 * 128


def test_same_images_and_labels_as_the_coco_set(both):
    # the images are the COCO set's, byte for byte; each label map is its visible polygons
    # rasterized (class index + 1), the rest background 0
    seg, coco_info = both
    for split in ('train', 'val'):
        coco = COCO(osp.join(coco_info['root'], 'annotations', f'instances_{split}.json'))
        for img in coco.loadImgs(coco.getImgIds()):
            name = img['file_name']
            with open(osp.join(seg['root'], 'img_dir', split, name), 'rb') as a, \
                    open(osp.join(coco_info['root'], split, name), 'rb') as b:
                assert a.read() == b.read()
            labels = cv2.imread(osp.join(seg['root'], 'ann_dir', split,
                                         name.replace('.jpg', '.png')), cv2.IMREAD_UNCHANGED)
            assert labels.dtype == np.uint8 and labels.shape == (96, 128)
            expected = np.zeros_like(labels)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img['id'])):
                expected[coco.annToMask(ann).astype(bool)] = ann['category_id']
            assert np.array_equal(labels, expected), (split, name)


def test_reuse_and_refusals(both, tmp_path):
    seg, coco_info = both
    assert make_synthetic_seg(seg['root'], **SMALL)['created'] is False
    with pytest.raises(ValueError, match='was generated with parameters'):
        make_synthetic_seg(seg['root'], **dict(SMALL, seed=1))
    # a COCO set is no segmentation set (its marker is another file)
    with pytest.raises(ValueError, match=r"no readable marker file '.synthetic_seg.json'\); "
                                         r'make_synthetic_seg only reuses directories it wrote'):
        make_synthetic_seg(coco_info['root'], **SMALL)
    with pytest.raises(ValueError, match='img_size must be'):
        make_synthetic_seg(str(tmp_path / 'x'), img_size=(16, 16))


def test_mmseg_dataset(tmp_path):
    import timm_backbones.seg  # noqa: F401  (registers the dataset in mmseg's DATASETS)
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    root = str(tmp_path / 'shapes')
    cfg = dict(type='SyntheticShapesSegDataset', data_root=root, synthetic=SMALL,
               data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
               pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                         dict(type='PackSegInputs')])
    lazy = DATASETS.build(dict(cfg, lazy_init=True))
    assert not osp.exists(root)  # lazy: nothing generated until the data is read
    assert lazy.metainfo['classes'] == SEG_CLASSES
    dataset = DATASETS.build(cfg)
    assert len(dataset) == 3 and osp.isdir(osp.join(root, 'ann_dir', 'train'))
    sample = dataset[0]
    labels = sample['data_samples'].gt_sem_seg.data
    assert tuple(labels.shape) == (1, 96, 128)
    assert set(labels.unique().tolist()) <= set(range(6)) and labels.max() > 0
    with pytest.raises(ValueError, match='background is class 0.*reduce_zero_label must be '
                                         'False'):
        DATASETS.build(dict(cfg, reduce_zero_label=True))
    with pytest.raises(ValueError, match='needs data_root'):
        DATASETS.build(dict(cfg, data_root=''))
