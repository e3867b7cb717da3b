"""Built-in data: the synthetic COCO-format shapes set the demo trains on, and per-sample
augmentation seeding (exact resume, results independent of the number of workers). Importing it
registers `SyntheticShapesDataset` and `PerSampleSeedDataset` (DATASETS), `SyntheticCocoMetric`
(METRICS) and `PerSampleSeedSampler` (DATA_SAMPLERS).
"""
from ._seeding import (PerSampleSeedDataset, PerSampleSeedSampler, SampleIndex,
                       per_sample_seed_dataloader, seeded)
from ._synthetic import SyntheticCocoMetric, SyntheticShapesDataset, make_synthetic_coco

__all__ = ['SyntheticShapesDataset', 'SyntheticCocoMetric', 'make_synthetic_coco',
           'PerSampleSeedDataset', 'PerSampleSeedSampler', 'SampleIndex', 'seeded',
           'per_sample_seed_dataloader']
