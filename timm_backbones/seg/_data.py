"""`SyntheticShapesSegDataset`: the synthetic shapes with per-pixel label maps
(`timm_backbones.data.make_synthetic_seg`) as an mmseg dataset, generated on first use."""
from typing import Optional

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from ..data._synthetic import synthetic_options
from ..data._synthetic_seg import SEG_CLASSES, SEG_PALETTE, make_synthetic_seg

__all__ = ['SyntheticShapesSegDataset']


@DATASETS.register_module()
class SyntheticShapesSegDataset(BaseSegDataset):
    """mmseg's `BaseSegDataset` over the synthetic shapes, generated into `data_root` on first
    use: images `img_dir/{split}/*.jpg`, label maps `ann_dir/{split}/*.png` with the background
    as class 0 (`reduce_zero_label=False`) and the five shapes as classes 1..5.

    Args:
        data_root: Dataset directory (generated if absent); `data_prefix` is relative to it.
        synthetic: Generator options passed to `make_synthetic_seg` (`num_train`, `num_val`,
            `img_size`, `obj_size`, `max_objects`, `seed`); defaults if None. Use the same dict
            for every dataloader sharing a `data_root`.
        **kwargs: `BaseSegDataset` arguments (`data_prefix`, `pipeline`, `indices`, ...).

    Example:
        >>> train_dataset = dict(
        ...     type='SyntheticShapesSegDataset', data_root='data/synthetic_shapes_seg/',
        ...     data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        ...     pipeline=train_pipeline)
    """
    METAINFO = dict(classes=SEG_CLASSES, palette=SEG_PALETTE)

    def __init__(self, data_root: str = '', synthetic: Optional[dict] = None, **kwargs) -> None:
        self._synthetic = synthetic_options(type(self).__name__, data_root, synthetic)
        if kwargs.get('reduce_zero_label'):
            raise ValueError(f'{type(self).__name__}: the background is class 0 of '
                             f'{SEG_CLASSES}, so reduce_zero_label must be False.')
        super().__init__(data_root=data_root, img_suffix='.jpg', seg_map_suffix='.png',
                         **kwargs)

    def full_init(self) -> None:
        """Generate the data if needed, then load it (`lazy_init=True` generates nothing)."""
        if not self._fully_initialized:
            make_synthetic_seg(self.data_root, **self._synthetic)
        super().full_init()
