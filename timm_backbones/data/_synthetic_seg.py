"""Built-in synthetic data for semantic segmentation: the shapes of `_synthetic.py` with per-pixel
label maps, in mmseg's folder layout, generated on first use.

`make_synthetic_seg` writes::

    root/img_dir/train/000000.jpg ...    root/ann_dir/train/000000.png ...
    root/img_dir/val/...                 root/ann_dir/val/...
    root/.synthetic_seg.json             (marker: generator version + parameters)

The images are byte for byte those `make_synthetic_coco` writes with the same parameters (the
same drawing, image `i` of a split depends only on (seed, split, i)). Each label map is a
single-channel PNG of class indices: 0 is the background (a class of its own, evaluated like the
others: mmseg's `reduce_zero_label=False`), 1..5 the shapes (`SEG_CLASSES`), painted from the
visible part of each object, so it equals the COCO set's polygons rasterized. Reuse and atomic
first use work as for the COCO set. Needs no mmseg: its dataset class lives in
`timm_backbones.seg`.
"""
import os
import os.path as osp
from typing import Any, Dict, Sequence, Tuple

import cv2
import numpy as np

from ._synthetic import (SHAPE_CLASSES, SHAPE_PALETTE, DatasetLayout, checked_params, draw_image,
                         generate_once, write_jpeg)

__all__ = ['SEG_CLASSES', 'SEG_PALETTE', 'make_synthetic_seg', 'label_map']

SEG_CLASSES = ('background',) + SHAPE_CLASSES
SEG_PALETTE = [(0, 0, 0)] + list(SHAPE_PALETTE)
_SPLITS = ('train', 'val')
_SEG = DatasetLayout('.synthetic_seg.json', 'make_synthetic_seg',
               tuple(f'{kind}/{split}' for kind in ('img_dir', 'ann_dir') for split in _SPLITS))


def label_map(shape: Tuple[int, int], objects: Sequence[Tuple[int, np.ndarray]]) -> np.ndarray:
    """The uint8 label map of an image's objects ((class index, visible mask) pairs): 0 where
    no object is visible, class index + 1 where one is (visible masks do not overlap)."""
    labels = np.zeros(shape, np.uint8)
    for label, mask in objects:
        labels[mask.astype(bool)] = label + 1
    return labels


def _write_seg_split(root: str, split: str, params: Dict[str, Any]) -> list:
    """Writes one split's images and label maps; returns the pixel count of each class."""
    img_size = tuple(params['img_size'])
    for kind in ('img_dir', 'ann_dir'):
        os.makedirs(osp.join(root, kind, split))
    pixels = np.zeros(len(SEG_CLASSES), np.int64)
    for idx in range(params[f'num_{split}']):
        img, objects = draw_image(params['seed'], split, idx, img_size,
                                  tuple(params['obj_size']), params['max_objects'])
        write_jpeg(osp.join(root, 'img_dir', split, f'{idx:06d}.jpg'), img)
        labels = label_map(img_size, objects)
        assert cv2.imwrite(osp.join(root, 'ann_dir', split, f'{idx:06d}.png'), labels)
        pixels += np.bincount(labels.ravel(), minlength=len(SEG_CLASSES))
    return [int(n) for n in pixels]


def make_synthetic_seg(root: str, num_train: int = 400, num_val: int = 100,
                       img_size: Sequence[int] = (256, 256), obj_size: Sequence[int] = (16, 96),
                       max_objects: int = 6, seed: int = 0) -> Dict[str, Any]:
    """Writes (or reuses) the synthetic shapes segmentation set in `root`.

    Args:
        root: Dataset directory; created with its parents if absent. An existing one is reused
            when it was made with the same parameters and generator version.
        num_train: Number of training images.
        num_val: Number of validation images.
        img_size: Image size as (height, width).
        obj_size: Smallest and largest object size in pixels, as for `make_synthetic_coco`.
        max_objects: Each image gets 1..max_objects shapes.
        seed: Seed of the whole dataset.

    Returns:
        The marker (`params` with the generator `version`, `classes`, `num_images` and `pixels`
        per split: the pixel count of each class), plus `root` and `created`.

    Example:
        >>> info = make_synthetic_seg('data/synthetic_shapes_seg', num_train=40, num_val=10)
        >>> info['classes'][:2]
        ['background', 'circle']
    """
    params = checked_params(num_train, num_val, img_size, obj_size, max_objects, seed)

    def write(tmp: str) -> Tuple[Dict[str, Any], str]:
        pixels = {split: _write_seg_split(tmp, split, params) for split in _SPLITS}
        share = [round(n / sum(pixels['train']), 3) for n in pixels['train']]
        return dict(classes=list(SEG_CLASSES),
                    num_images={split: params[f'num_{split}'] for split in _SPLITS},
                    pixels=pixels), f'class shares of the training pixels {share}'
    return generate_once(root, params, _SEG, write)
