"""Built-in data: the synthetic COCO-format shapes set the demo trains on. Importing it
registers `SyntheticShapesDataset` (DATASETS) and `SyntheticCocoMetric` (METRICS); it needs
mmdet's datasets and pycocotools, so the plugin import (`import timm_backbones`) leaves it out.
"""
from ._synthetic import SyntheticCocoMetric, SyntheticShapesDataset, make_synthetic_coco

__all__ = ['SyntheticShapesDataset', 'SyntheticCocoMetric', 'make_synthetic_coco']
