"""Per-sample augmentation seeding (engine/_seeding.py): seed keys from (seed, epoch, index,
occurrence), generators seeded per sample and restored, the same samples whatever the number of
workers (persistent or not), and the dataloader config wrapping the runner applies.
The end-to-end check (the demo config, SIGKILL, --resume) is tests/test_resume.py."""
import pickle
import random

import numpy as np
import pytest
import torch
from mmengine.dataset import DefaultSampler, InfiniteSampler
from mmengine.dataset import pseudo_collate
from torch.utils.data import DataLoader

from timm_backbones.engine import (PerSampleSeedDataset, PerSampleSeedSampler, SampleIndex,
                                   per_sample_seed_dataloader, seeded)


class Draws:
    """A dataset whose 'augmentation' is a draw from each global generator, like mmcv's."""
    metainfo = dict(classes=('a',))

    def __len__(self):
        return 6

    def get_data_info(self, idx):
        return dict(width=10, height=20, idx=idx)

    def __getitem__(self, idx):
        return (idx, float(np.random.rand()), random.random(), float(torch.rand(())))


def test_sample_index_is_an_int_carrying_its_key():
    i = SampleIndex(3, (0, 1, 3, 0))
    assert i == 3 and [10, 11, 12, 13][i] == 13
    j = pickle.loads(pickle.dumps(i))  # as sent to dataloader workers
    assert j == 3 and j.key == (0, 1, 3, 0) and isinstance(j, SampleIndex)


def test_seeded_is_reproducible_and_restores_the_outer_streams():
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    outer = (np.random.rand(), random.random(), torch.rand(()))
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    with seeded((0, 1, 2, 0)):
        a = (np.random.rand(), random.random(), float(torch.rand(())))
    with seeded((0, 1, 2, 0)):
        b = (np.random.rand(), random.random(), float(torch.rand(())))
    with seeded((0, 2, 2, 0)):  # another epoch: other draws
        c = (np.random.rand(), random.random(), float(torch.rand(())))
    assert a == b and all(x != y for x, y in zip(a, c))
    # the streams outside continue as if nothing had been drawn
    assert (np.random.rand(), random.random(), torch.rand(())) == outer
    with pytest.raises(ValueError, match='non-negative ints'):
        with seeded((0, -1)):
            pass


def test_sampler_keys_follow_seed_epoch_and_index():
    dataset = Draws()
    sampler = PerSampleSeedSampler(dataset, dict(type='DefaultSampler', shuffle=True), seed=7)
    assert isinstance(sampler.sampler, DefaultSampler) and len(sampler) == 6
    first = list(sampler)
    assert sorted(first) == list(range(6))
    assert all(i.key == (7, 0, int(i), 0) for i in first)
    sampler.set_epoch(3)
    second = list(sampler)
    assert all(i.key == (7, 3, int(i), 0) for i in second)
    assert [int(i) for i in first] != [int(i) for i in second]  # the epoch reached the sampler


def test_infinite_sampler_counts_passes():
    sampler = PerSampleSeedSampler(Draws(), dict(type='InfiniteSampler', shuffle=True), seed=1)
    assert isinstance(sampler.sampler, InfiniteSampler)
    stream = iter(sampler)
    keys = [next(stream).key for _ in range(18)]
    for i in range(6):  # every index once per pass: occurrences 0, 1, 2
        assert sorted(k[3] for k in keys if k[2] == i) == [0, 1, 2]


def test_sampler_rejects_bad_options():
    with pytest.raises(TypeError, match='sampler must be a sampler config dict'):
        PerSampleSeedSampler(Draws(), 'DefaultSampler', seed=0)
    with pytest.raises(ValueError, match='seed must be a non-negative int'):
        PerSampleSeedSampler(Draws(), seed=-3)


def test_dataset_draws_depend_on_the_key_only():
    dataset = PerSampleSeedDataset(Draws())
    a = dataset[SampleIndex(2, (0, 1, 2, 0))]
    np.random.rand(5)  # whatever happened before
    b = dataset[SampleIndex(2, (0, 1, 2, 0))]
    assert a == b and dataset[SampleIndex(2, (0, 2, 2, 0))] != a
    assert dataset[2] == dataset[SampleIndex(2, (0, 0, 2, 0))]  # plain index: epoch 0
    assert len(dataset) == 6 and dataset.metainfo == Draws.metainfo
    assert dataset.get_data_info(SampleIndex(4, (0, 0, 4, 0)))['idx'] == 4


def _epochs(workers, persistent, batch_sampler=False, epochs=3):
    dataset = PerSampleSeedDataset(Draws())
    sampler = PerSampleSeedSampler(dataset, seed=5)
    kwargs = dict(num_workers=workers, persistent_workers=persistent, collate_fn=pseudo_collate)
    if batch_sampler:
        from mmdet.datasets.samplers import AspectRatioBatchSampler
        loader = DataLoader(dataset, batch_sampler=AspectRatioBatchSampler(sampler, 2), **kwargs)
    else:
        loader = DataLoader(dataset, sampler=sampler, batch_size=2, **kwargs)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)  # mmengine's DistSamplerSeedHook does this each epoch
        out.append(sorted(s for batch in loader for s in batch))
    return out


def test_same_samples_whatever_the_workers():
    reference = _epochs(0, False)
    assert reference[0] != reference[1]  # epochs differ
    assert _epochs(1, True) == reference  # a persistent worker gets each epoch's keys
    assert _epochs(2, True) == reference
    assert _epochs(2, False, batch_sampler=True) == reference  # through mmdet's batch sampler


def test_dataloader_config_wrapping_is_idempotent():
    cfg = dict(batch_size=2, num_workers=1, persistent_workers=True,
               sampler=dict(type='DefaultSampler', shuffle=True),
               batch_sampler=dict(type='AspectRatioBatchSampler'),
               dataset=dict(type='SyntheticShapesDataset', data_root='x/'))
    once = per_sample_seed_dataloader(cfg)
    assert once['sampler'] == dict(type='PerSampleSeedSampler', sampler=cfg['sampler'])
    assert once['dataset'] == dict(type='PerSampleSeedDataset', dataset=cfg['dataset'])
    assert {k: v for k, v in once.items() if k not in ('sampler', 'dataset')} == \
        {k: v for k, v in cfg.items() if k not in ('sampler', 'dataset')}
    assert per_sample_seed_dataloader(once) == once
    assert cfg['sampler'] == dict(type='DefaultSampler', shuffle=True)  # input not modified
    with pytest.raises(TypeError, match='needs train_dataloader.sampler to be a config dict'):
        per_sample_seed_dataloader(dict(cfg, sampler=DefaultSampler(Draws())))


def test_runner_applies_it_when_the_config_asks():
    from mmengine.config import Config

    from timm_backbones.engine._runner_common import with_sample_seeding
    loader = dict(sampler=dict(type='DefaultSampler'), dataset=dict(type='X'))
    cfg = with_sample_seeding(Config(dict(sample_seeding=True, train_dataloader=loader,
                                          custom_hooks=[dict(type='LossCurveHook')])))
    assert cfg.train_dataloader.sampler.type == 'PerSampleSeedSampler'
    assert [h['type'] for h in cfg.custom_hooks] == ['LossCurveHook', 'IterationSeedHook']
    assert with_sample_seeding(cfg).custom_hooks == cfg.custom_hooks  # added once
    cfg = with_sample_seeding(Config(dict(sample_seeding=False, train_dataloader=loader)))
    assert cfg.train_dataloader.sampler.type == 'DefaultSampler'
    assert not cfg.get('custom_hooks')
    with pytest.raises(TypeError, match="sample_seeding must be True or False, got 'yes'"):
        with_sample_seeding(Config(dict(sample_seeding='yes', train_dataloader=loader)))
    # the shipped base config turns it on for every config that inherits it
    from helpers import ROOT
    assert Config.fromfile(f'{ROOT}/configs/_base_/timm_runtime.py').sample_seeding is True


def test_pipeline_switch_reaches_the_wrapped_dataset():
    # mmdet's PipelineSwitchHook (RTMDet configs) sets train_dataloader.dataset.pipeline
    inner = Draws()
    inner.pipeline = 'old'
    dataset = PerSampleSeedDataset(inner)
    assert dataset.pipeline == 'old'
    dataset.pipeline = 'new'
    assert inner.pipeline == 'new' and 'pipeline' not in vars(dataset)


def test_iteration_seed_hook_draws_depend_on_the_iteration_only():
    # what the model draws in iteration i (torch, numpy, random) does not depend on what the
    # process drew before: a resumed run draws what the uninterrupted one drew
    from types import SimpleNamespace

    from timm_backbones.engine import IterationSeedHook

    def draws(runner, before):
        torch.rand(before), np.random.rand(before), [random.random() for _ in range(before)]
        IterationSeedHook().before_train_iter(runner, batch_idx=0)
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    run = SimpleNamespace(seed=7, iter=12)
    assert draws(run, 1) == draws(run, 5)  # other draws before it: the same
    assert draws(run, 1) != draws(SimpleNamespace(seed=7, iter=13), 1)  # next iteration
    assert draws(run, 1) != draws(SimpleNamespace(seed=8, iter=12), 1)  # another seed
