"""Per-sample augmentation randomness: each training sample's pipeline runs with its random
number generators seeded from (seed, epoch, sample index), so augmentation depends neither on the
number of dataloader workers nor on where a run was interrupted and resumed.

Why: mmcv/mmdet transforms (`RandomFlip`, `RandomResize`, ...) draw from numpy's (and Python's,
torch's) global generators. In a dataloader worker these are seeded once when the worker starts;
a persistent worker then continues its stream across epochs, while a resumed run's new worker
starts the stream afresh, so a resumed run sees other flips than an uninterrupted one. The stream
also depends on which worker gets which sample. Seeding per sample removes both dependencies.

How: the epoch must reach the workers, even persistent ones (their copy of the dataset is made
once). So the sampler, which runs in the main process, tags each index it yields with its seed
key: `PerSampleSeedSampler` wraps any sampler (mmengine's `DefaultSampler`, `InfiniteSampler`,
...) and yields `SampleIndex` values (ints equal to the sample index, so batch samplers such as
mmdet's `AspectRatioBatchSampler` work unchanged) carrying (seed, epoch, index, occurrence);
`PerSampleSeedDataset` wraps the dataset and runs each sample's pipeline inside `seeded(key)`,
which seeds numpy's, Python's and torch's global generators and restores them afterwards (so
with `num_workers=0` the main process's own random streams are not disturbed). `occurrence`
counts how often the sampler yielded that index since its iteration began: for epoch-based
samplers it is 0; for an infinite sampler it is the pass over the data.

The main process draws too while training (stochastic depth, RoI samplers, batch
augmentations): `IterationSeedHook` seeds its generators before each training iteration from
(seed, iteration), so a resumed run draws what the uninterrupted one drew (mmengine reseeds a
resumed run as at the start of training).

`per_sample_seed_dataloader(cfg)` wraps a dataloader config's dataset and sampler (idempotent);
`TimmBackboneRunner` applies it to `train_dataloader`, and adds `IterationSeedHook`, when the
config sets `sample_seeding=True`, as `configs/_base_/timm_runtime.py` does.
"""
import contextlib
import copy
import random
from typing import Any, Dict, Iterator, Mapping, Optional, Sized, Tuple

import numpy as np
import torch
from mmdet.registry import DATA_SAMPLERS, DATASETS, HOOKS
from mmengine.dist import sync_random_seed
from mmengine.hooks import Hook
from torch.utils.data import Dataset, Sampler

from .._configs import type_name

__all__ = ['SampleIndex', 'seeded', 'seed_generators', 'IterationSeedHook', 'PerSampleSeedSampler', 'PerSampleSeedDataset',
           'per_sample_seed_dataloader']

SeedKey = Tuple[int, int, int, int]


class SampleIndex(int):
    """A dataset index carrying the seed key of this draw of the sample.

    Args:
        index: The sample index (the int value).
        key: (seed, epoch, index, occurrence).

    Example:
        >>> i = SampleIndex(7, (0, 2, 7, 0))
        >>> i + 0, i.key
        (7, (0, 2, 7, 0))
    """
    key: SeedKey

    def __new__(cls, index: int, key: SeedKey) -> 'SampleIndex':
        obj = super().__new__(cls, index)
        obj.key = key
        return obj

    def __reduce__(self) -> Tuple[Any, ...]:  # pickled to dataloader workers
        return SampleIndex, (int(self), self.key)


def seed_generators(key: Tuple[int, ...]) -> None:
    """Seed numpy's, Python's and torch's global generators (torch: every device) from `key`.

    Args:
        key: Non-negative ints, e.g. (seed, iteration).
    """
    if not all(isinstance(k, (int, np.integer)) and k >= 0 for k in key):
        raise ValueError(f'a seed key must be non-negative ints, got {key!r}')
    words = np.random.SeedSequence([int(k) for k in key]).generate_state(4, np.uint32)
    np.random.seed(int(words[0]))
    random.seed(int(words[1]) << 32 | int(words[2]))
    torch.manual_seed(int(words[3]))


@HOOKS.register_module()
class IterationSeedHook(Hook):
    """Seeds the main process's global generators before each training iteration from (the
    run's seed, the iteration), so what the model draws while training (stochastic depth, RoI
    samplers, batch augmentations in the data preprocessor) depends on the iteration only, not
    on what ran before it in this process.

    Why: mmengine reseeds a resumed run with the run's seed, as at the start of training, so a
    run resumed from epoch_1.pth repeated epoch 1's draws in epoch 2, and dataloader iterators
    and validation draw from the same generators at other moments in a resumed run. Added by
    `with_sample_seeding` (`sample_seeding=True`).

    Example:
        >>> custom_hooks = [dict(type='IterationSeedHook')]
    """
    priority = 'VERY_HIGH'

    def before_train_iter(self, runner: Any, batch_idx: int,
                          data_batch: Optional[Any] = None) -> None:
        seed_generators((runner.seed, runner.iter))  # mmengine always sets a seed


@contextlib.contextmanager
def seeded(key: Tuple[int, ...]) -> Iterator[None]:
    """Run a block with numpy's, Python's and torch's (CPU) global generators seeded from `key`,
    restoring their previous states afterwards.

    Args:
        key: Non-negative ints, e.g. (seed, epoch, index, occurrence).

    Example:
        >>> with seeded((0, 1, 5, 0)):
        ...     a = np.random.rand()
        >>> with seeded((0, 1, 5, 0)):
        ...     a == np.random.rand()
        True
    """
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), \
        torch.get_rng_state()
    seed_generators(key)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        torch.set_rng_state(torch_state)


@DATA_SAMPLERS.register_module()
class PerSampleSeedSampler(Sampler):
    """Wraps a sampler: yields its indices as `SampleIndex`es keyed (seed, epoch, index,
    occurrence), for `PerSampleSeedDataset`.

    Args:
        dataset: The dataset (passed by mmengine's `build_dataloader`).
        sampler: Config of the wrapped sampler (default: `DefaultSampler` with shuffling).
        seed: Seed of the run (passed by `build_dataloader`: the `randomness` seed); None: a
            random seed shared by all ranks, as mmengine's samplers do.

    Example:
        >>> sampler = dict(type='PerSampleSeedSampler',
        ...                sampler=dict(type='DefaultSampler', shuffle=True))
    """

    def __init__(self, dataset: Sized, sampler: Optional[Mapping] = None,
                 seed: Optional[int] = None) -> None:
        if sampler is None:
            sampler = dict(type='DefaultSampler', shuffle=True)
        if not isinstance(sampler, Mapping) or 'type' not in sampler:
            raise TypeError(f'PerSampleSeedSampler: sampler must be a sampler config dict with a '
                            f"'type', e.g. dict(type='DefaultSampler', shuffle=True); got "
                            f'{sampler!r}')
        if seed is None:
            seed = sync_random_seed()
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f'PerSampleSeedSampler: seed must be a non-negative int, got '
                             f'{seed!r}')
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0
        self.sampler = DATA_SAMPLERS.build(dict(sampler),
                                           default_args=dict(dataset=dataset, seed=seed))

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (part of every seed key) and pass it on to the wrapped sampler."""
        self.epoch = epoch
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[SampleIndex]:
        seen: Dict[int, int] = {}
        epoch = self.epoch
        for index in self.sampler:
            index = int(index)
            occurrence = seen.get(index, 0)
            seen[index] = occurrence + 1
            yield SampleIndex(index, (self.seed, epoch, index, occurrence))

    def __len__(self) -> int:
        return len(self.sampler)


@DATASETS.register_module()
class PerSampleSeedDataset(Dataset):
    """Wraps a dataset: each sample's pipeline runs with the global generators seeded from the
    `SampleIndex` key that `PerSampleSeedSampler` attached (see `seeded`).

    A plain int index (direct indexing, e.g. `dataset[3]` in a notebook) gets the key
    (seed, 0, index, 0): the augmentation of epoch 0.

    Args:
        dataset: The wrapped dataset, or its config.
        seed: Seed for plain int indices.

    Example:
        >>> dataset = dict(type='PerSampleSeedDataset', dataset=dict(
        ...     type='SyntheticShapesDataset', data_root='data/synthetic_shapes/', ...))
    """

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        if isinstance(dataset, Mapping):
            dataset = DATASETS.build(dict(dataset))
        if not hasattr(dataset, '__getitem__') or not hasattr(dataset, '__len__'):
            raise TypeError(f'PerSampleSeedDataset: dataset must be a dataset or a dataset '
                            f'config dict, got {dataset!r}')
        self.dataset = dataset
        self.seed = seed

    @property
    def metainfo(self) -> dict:
        """The wrapped dataset's `metainfo`."""
        return copy.deepcopy(self.dataset.metainfo)

    @property
    def pipeline(self) -> Any:
        """The wrapped dataset's pipeline; setting it sets theirs (mmdet's PipelineSwitchHook
        replaces `train_dataloader.dataset.pipeline` mid-training)."""
        return self.dataset.pipeline

    @pipeline.setter
    def pipeline(self, value: Any) -> None:
        self.dataset.pipeline = value

    def full_init(self) -> None:
        """Fully initialise the wrapped dataset (mmengine's lazy init)."""
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()

    def get_data_info(self, idx: int) -> dict:
        """The wrapped dataset's annotation of sample `idx` (no pipeline)."""
        return self.dataset.get_data_info(int(idx))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> Any:
        key = getattr(idx, 'key', None)
        if key is None:
            key = (self.seed, 0, int(idx), 0)
        with seeded(key):
            return self.dataset[int(idx)]

    def __getattr__(self, name: str) -> Any:
        # other attributes of the wrapped dataset (cat_ids, coco, ...); not during unpickling
        if name == 'dataset' or name.startswith('__'):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def per_sample_seed_dataloader(cfg: Mapping) -> Dict[str, Any]:
    """A dataloader config whose dataset and sampler are wrapped for per-sample seeding
    (already wrapped parts are kept: applying it twice changes nothing).

    Args:
        cfg: A dataloader config (`dataset`, `sampler`, `num_workers`, ...); not modified.

    Returns:
        A copy with `dataset=dict(type='PerSampleSeedDataset', dataset=...)` and
        `sampler=dict(type='PerSampleSeedSampler', sampler=...)`.

    Example:
        >>> cfg = per_sample_seed_dataloader(dict(
        ...     batch_size=2, sampler=dict(type='DefaultSampler', shuffle=True), dataset=ds))
        >>> cfg['sampler']['type'], cfg['dataset']['type']
        ('PerSampleSeedSampler', 'PerSampleSeedDataset')
    """
    if not isinstance(cfg, Mapping):
        raise TypeError(f'sample_seeding=True needs train_dataloader to be a config dict (it '
                        f'wraps its dataset and sampler), got {type(cfg).__name__}. Pass a config, '
                        f'or set sample_seeding=False.')
    out = copy.deepcopy(dict(cfg))
    for key, kind in (('dataset', 'PerSampleSeedDataset'), ('sampler', 'PerSampleSeedSampler')):
        part = out.get(key)
        if not isinstance(part, Mapping):
            raise TypeError(f'sample_seeding=True needs train_dataloader.{key} to be a config '
                            f'dict, got {part!r}. Use a config dict, or set '
                            f'sample_seeding=False.')
        if type_name(part) != kind:
            out[key] = dict(type=kind, **{key: part})
    return out
