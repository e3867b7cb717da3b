"""Built-in data: the synthetic COCO-format shapes set the demo trains on, and the same shapes
with per-pixel label maps for segmentation (`make_synthetic_seg`; its mmseg dataset class is in
`timm_backbones.seg`). Importing it registers `SyntheticShapesDataset` (DATASETS) and
`SyntheticCocoMetric` (METRICS); it needs mmdet's datasets and pycocotools, so the plugin import
(`import timm_backbones`) leaves it out.
"""
from ._synthetic import SyntheticCocoMetric, SyntheticShapesDataset, make_synthetic_coco
from ._synthetic_seg import SEG_CLASSES, SEG_PALETTE, make_synthetic_seg

__all__ = ['SyntheticShapesDataset', 'SyntheticCocoMetric', 'make_synthetic_coco',
           'make_synthetic_seg', 'SEG_CLASSES', 'SEG_PALETTE']
