"""`timm_backbones.seg`: the plugin in mmseg's registries (what segmentation configs name builds
in mmseg's scope), the plugin import that never imports mmseg, every shipped segmentation config
(configs/seg/: conventions, resolution, one training step each at a small size, built through
mmseg's registry as the runner builds it), backbone options in a segmentor behaving exactly as in
a detector, and layer decay found by mmseg's optimizer builder."""
import glob
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData

import timm_backbones.seg  # noqa: F401  (what the configs' custom_imports import)
from helpers import ROOT
from test_layer_decay import LR, RATE, WD, _by_param, _timm_reference
from timm_backbones import TimmBackbone, build_detector, resolve_config
from timm_backbones._norms import revert_sync_batchnorm

SEG_CONFIGS = os.path.join(ROOT, 'configs', 'seg')
SHIPPED = sorted(os.path.basename(p) for p in glob.glob(os.path.join(SEG_CONFIGS, '*.py')))
ADE = [name for name in SHIPPED if '_ade20k-' in name]
DEMO = 'upernet_timm-resnet18_1xb8-400it_synthetic-shapes-256x256.py'
DET_DEMO = os.path.join(ROOT, 'configs', 'retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py')
ALGOS = ('upernet', 'segformer', 'fpn', 'mask2former')


def load(name, **changes):
    """The config as a user gets it, with pretrained=False (tests never download)."""
    cfg = Config.fromfile(os.path.join(SEG_CONFIGS, name))
    cfg.model.backbone.pretrained = False
    cfg.merge_from_dict(changes)
    return cfg


def test_plugin_import_never_imports_mmseg():
    # rule: mmseg is imported only by timm_backbones.seg (segmentation configs' custom_imports):
    # the plugin, its data, wiring, engine, CLI and sweep modules, and resolving a detector
    # config, leave it out
    code = textwrap.dedent(f"""
        import sys
        import timm_backbones, timm_backbones.data, timm_backbones.cli, timm_backbones.sweep
        from mmengine.config import Config
        timm_backbones.resolve_config(Config.fromfile({DET_DEMO!r}))
        assert 'mmseg' not in sys.modules, sorted(m for m in sys.modules if 'mmseg' in m)
        import timm_backbones.seg
        assert 'mmseg' in sys.modules
        print('ok')
        """)
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
    assert proc.returncode == 0 and 'ok' in proc.stdout, proc.stderr[-3000:]


def test_registered_where_mmseg_looks():
    # rule: a config with default_scope='mmseg' builds from mmseg's registries (and their
    # parents), never from mmdet's: everything a segmentation config names is there
    from mmseg.registry import (DATA_SAMPLERS, DATASETS, HOOKS, MODELS,
                                OPTIM_WRAPPER_CONSTRUCTORS, RUNNERS)
    init_default_scope('mmseg')
    for cfg in (dict(type='TimmBackbone', model_name='resnet18'), dict(type='timm.resnet18')):
        assert isinstance(MODELS.build(cfg), TimmBackbone)
    assert RUNNERS.get('TimmBackboneRunner') is timm_backbones.TimmBackboneRunner
    assert HOOKS.get('LossCurveHook') is timm_backbones.LossCurveHook
    assert OPTIM_WRAPPER_CONSTRUCTORS.get('TimmLayerDecayOptimWrapperConstructor') is \
        timm_backbones.TimmLayerDecayOptimWrapperConstructor
    assert DATASETS.get('PerSampleSeedDataset') is not None
    assert DATASETS.get('SyntheticShapesSegDataset') is not None
    assert DATA_SAMPLERS.get('PerSampleSeedSampler') is not None
    # mmseg's MODELS resolves what it builds ('auto' fields), as mmdet's does, whichever was
    # imported first (mmseg's tools import mmseg before the configs' custom_imports); both
    # spellings of the backbone
    assert getattr(MODELS.build_func, 'resolves_timm_backbones', False)
    cfg = load(DEMO)
    for backbone in (cfg.model.backbone, dict(type='timm.convnext_atto', pretrained=False)):
        cfg.model.backbone = backbone
        segmentor = MODELS.build(cfg.model)
        assert isinstance(segmentor.backbone, TimmBackbone)
        assert segmentor.decode_head.in_channels == segmentor.backbone.out_channels
    assert segmentor.decode_head.in_channels == [40, 80, 160, 320]
    assert segmentor.auxiliary_head.in_channels == 160


def test_every_segmentation_family_has_a_shipped_config():
    assert {name.split('_')[0] for name in ADE} == set(ALGOS)


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_config(name):
    # mmseg's naming: {algo}_{backbone}_{gpus}xb{batch}-{schedule}_{dataset}-{crop}.py; inherits
    # mmseg's own config; the plugin's runtime settings; no hand-typed channels
    algo, backbone, schedule, data = name[:-len('.py')].split('_')
    assert algo in ALGOS and backbone.startswith('timm-') and 'xb' in schedule
    text = open(os.path.join(SEG_CONFIGS, name)).read()
    assert "_base_ = ['mmseg::" in text
    cfg = Config.fromfile(os.path.join(SEG_CONFIGS, name))
    assert cfg.default_scope == 'mmseg' and cfg.runner_type == 'mmseg.TimmBackboneRunner'
    assert 'timm_backbones.seg' in cfg.custom_imports.imports and cfg.sample_seeding is True
    assert cfg.model.backbone.type == 'TimmBackbone' and cfg.model.get('pretrained') is None
    assert cfg.model.backbone.pretrained is (name in ADE)  # COCO-style: timm's weights
    assert cfg.model.decode_head.in_channels == 'auto'
    assert cfg.model.data_preprocessor.mean == 'auto'
    resolved = resolve_config(load(name))
    assert "'auto'" not in str(resolved.model)


@pytest.mark.parametrize('name', SHIPPED)
def test_one_training_step(name):
    # rule: each shipped config trains: built through mmseg's registry from the config (as the
    # runner builds it; SyncBN reverted as in a single process), its own optimizer, one step of
    # two images at 64x80 (the preprocessor pads to that size instead of the 512x512 crop)
    torch.manual_seed(0)
    cfg = load(name, **{'model.data_preprocessor.size': (64, 80)})
    model = revert_sync_batchnorm(build_detector(cfg)).train()
    init_default_scope('mmseg')
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    from mmseg.structures import SegDataSample
    classes = model.decode_head.num_classes
    inputs, samples = [], []
    for i in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(64, 80), ori_shape=(64, 80),
                                             pad_shape=(64, 80)))
        label = torch.zeros(1, 64, 80, dtype=torch.long)
        label[:, 10:40, 20 + 10 * i:60] = 1 + i % (classes - 1)
        sample.gt_sem_seg = PixelData(data=label)
        inputs.append(torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8))
        samples.append(sample)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    log = model.train_step(dict(inputs=inputs, data_samples=samples), wrapper)
    assert torch.isfinite(log['loss'])
    changed = [n for n, p in model.backbone.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2  # the backbone trained


def _detection_backbone(backbone_cfg):
    """The backbone a detector builds from this config (mmdet's registry), in training mode."""
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    torch.manual_seed(0)
    return MODELS.build(dict(backbone_cfg)).train()


def _state(backbone):
    return ([(n, p.requires_grad, p.stride()) for n, p in backbone.named_parameters()],
            [(n, type(m).__name__, m.training) for n, m in backbone.named_modules()],
            [(n, getattr(m, 'grad_checkpointing', None)) for n, m in backbone.named_modules()])


@pytest.mark.parametrize('arch, options', [
    ('resnet18', dict(frozen_stages=1, norm_eval=True)),
    ('efficientnet_b0', dict(sync_bn=True)),  # timm's BatchNormAct2d: fused activations
    ('resnet18', dict(with_cp=True)),
    ('resnet18', dict(channels_last=True)),
], ids=lambda o: ','.join(o) if isinstance(o, dict) else o)
def test_backbone_options_behave_as_in_detection(arch, options):
    # rule: frozen_stages, norm_eval, SyncBN, with_cp, channels_last: a segmentor's backbone,
    # after the segmentor's own train(), is the backbone a detector gets from the same config,
    # with equal outputs; the runner's single-process SyncBN revert keeps timm's activations
    cfg = load(DEMO, **{'model.backbone.model_name': arch})
    cfg.model.backbone.update(options)
    torch.manual_seed(0)
    seg = build_detector(cfg).train().backbone
    det = _detection_backbone(cfg.model.backbone)
    assert _state(seg) == _state(det)
    plain = dict(cfg.model.backbone)
    for key in options:
        plain.pop(key)
    assert _state(seg) != _state(_detection_backbone(plain))  # the option did something
    if options.get('sync_bn'):
        names = {type(m).__name__ for m in revert_sync_batchnorm(seg).modules()}
        assert 'BatchNormAct2d' in names and not any('Sync' in n for n in names)
        return
    seg.load_state_dict(det.state_dict())
    image = torch.rand(2, 3, 64, 64)
    for a, b in zip(det(image), seg(image)):
        assert torch.equal(a, b)
    if options.get('channels_last'):
        assert seg(image)[0].is_contiguous(memory_format=torch.channels_last)


def test_layer_decay_found_by_mmseg_optimizer_builder(tmp_path):
    # rule: the layer-decay constructor is registered where mmseg's builder finds it; every
    # backbone parameter gets the lr and weight decay timm's param_groups_layer_decay gives it
    path, expected = _timm_reference('convnext_atto', tmp_path)
    cfg = load(DEMO, **{'model.backbone.model_name': 'convnext_atto',
                        'model.backbone.pretrained': path})
    cfg.optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=LR,
                                                                 weight_decay=WD),
                             constructor='TimmLayerDecayOptimWrapperConstructor',
                             paramwise_cfg=dict(layer_decay_rate=RATE))
    model = build_detector(cfg)
    init_default_scope('mmseg')
    groups = _by_param(build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups)
    for n, p in model.backbone.model.named_parameters():
        lr, wd = expected[int(p.flatten()[0].item())]
        assert groups[id(p)]['lr'] == pytest.approx(lr) and \
            groups[id(p)].get('weight_decay', WD) == wd, n
    assert all(groups[id(p)]['lr'] == LR for p in model.decode_head.parameters())
