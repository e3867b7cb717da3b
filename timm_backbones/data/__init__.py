"""Built-in data: the synthetic COCO-format shapes set the demo trains on. Importing it
registers `SyntheticShapesDataset` (DATASETS) and `SyntheticCocoMetric` (METRICS).
"""
from ._synthetic import SyntheticCocoMetric, SyntheticShapesDataset, make_synthetic_coco

__all__ = ['SyntheticShapesDataset', 'SyntheticCocoMetric', 'make_synthetic_coco']
