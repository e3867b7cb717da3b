"""The detector configs in configs/: each inherits mmdet's own config, builds through resolve_config
with a timm backbone and no hand-typed channels, and a few run a loss on one small image."""
import glob
import os

import numpy as np
import pytest
import torch
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.config import Config
from mmengine.structures import InstanceData

from helpers import BUILT_ON_META, built_deterministic, nonfinite
from timm_backbones import TimmBackbone, build_detector, resolve_config
from timm_backbones._meta_ops import on_meta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))
COCO = [name for name in CONFIGS if name.endswith('_coco.py')]
ALGOS = ('retinanet', 'fcos', 'atss', 'faster-rcnn', 'mask-rcnn', 'cascade-rcnn', 'yolof',
         'dino', 'rtmdet')
# a loss on one image (a forward of every head output for RTMDet) for the less usual wirings:
# single level (YOLOF), DETR-style attention levels (DINO), masks (Mask R-CNN), CSPNeXtPAFPN
FORWARD = {
    'retinanet_timm-pvt-v2-b2_fpn_1x_coco.py': 'loss',
    'mask-rcnn_timm-convnext-tiny_fpn_1x_coco.py': 'loss',
    'yolof_timm-resnet50-c5_8xb8-1x_coco.py': 'loss',
    'dino-4scale_timm-swin-tiny_8xb2-12e_coco.py': 'loss',
    'rtmdet_timm-convnext-tiny_4xb32-100e_coco.py': 'tensor',
}


def load(name):
    """The config as a user gets it, with pretrained=False (tests never download)."""
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', name))
    if name in COCO:
        assert cfg.model.backbone.pretrained is True  # COCO configs start from timm's weights
    cfg.model.backbone.pretrained = False
    return cfg


def family(name):
    """The detector of a config name: its first part, less mmdet's variant suffix
    ('dino-4scale' is DINO)."""
    algo = name.split('_')[0]
    found = [a for a in ALGOS if algo == a or algo.startswith(a + '-')]
    return found[0] if found else None


def test_every_detector_family_has_a_coco_config():
    assert {family(name) for name in COCO} == set(ALGOS)


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds(name):
    # mmdet's naming: {algo}_{backbone}_{neck / setup}_{schedule}_{dataset}.py
    assert family(name) and name.split('_')[1].startswith('timm-')
    cfg = load(name)
    assert "_base_ = ['mmdet::" in _root_config_text(name)  # inherits mmdet's own config
    assert cfg.runner_type in ('mmdet.TimmBackboneRunner',  # FSDP: its FlexibleRunner twin
                               'mmdet.TimmBackboneFlexibleRunner')
    assert 'timm_backbones' in cfg.custom_imports.imports
    assert cfg.model.backbone.type == 'TimmBackbone'
    assert cfg.model.neck.in_channels == 'auto'  # no hand-typed channels

    resolved = resolve_config(cfg)
    assert "'auto'" not in str(resolved.model)
    if name in BUILT_ON_META:
        with on_meta():
            model = build_detector(resolved, init_weights=False)
        assert model.backbone.out_channels == resolved.model.neck.in_channels
        return
    model = built_deterministic(build_detector, resolved)  # uninitialized memory is NaN
    assert isinstance(model.backbone, TimmBackbone)
    assert not nonfinite(model)  # build_detector initializes every parameter and buffer
    neck_in = resolved.model.neck.in_channels
    assert list(neck_in if isinstance(neck_in, (list, tuple)) else [neck_in]) == \
        model.backbone.out_channels


def _root_config_text(name):
    """The text of the config `name`, or of the shipped config it is a variant of
    (`_base_ = './other.py'`, e.g. the FSDP ViT-L config of the ViT-B one)."""
    text = open(os.path.join(ROOT, 'configs', name)).read()
    for line in text.splitlines():
        if line.startswith("_base_ = './") and line.endswith(".py'"):
            return _root_config_text(line[len("_base_ = './"):-1])
    return text


def one_image_batch(model, with_mask):
    size = 128
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                         pad_shape=(size, size), scale_factor=(1.0, 1.0)))
    gt = InstanceData(bboxes=torch.tensor([[20., 30., 90., 100.]]), labels=torch.tensor([1]))
    if with_mask:
        mask = np.zeros((1, size, size), np.uint8)
        mask[:, 30:100, 20:90] = 1
        gt.masks = BitmapMasks(mask, size, size)
    sample.gt_instances = gt
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    return model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), training=True)


@pytest.mark.parametrize('name', sorted(FORWARD))
def test_forward_on_one_image(name):
    torch.manual_seed(0)
    cfg = load(name)
    if family(name) == 'dino':  # 900 queries need more encoder tokens than 128x128 gives (340)
        cfg.model.num_queries = 100
    model = build_detector(cfg)
    data = one_image_batch(model, with_mask=family(name) == 'mask-rcnn')
    if FORWARD[name] == 'tensor':
        model.eval()
        with torch.no_grad():
            outs = model(**data, mode='tensor')
        flat = [t for level in outs
                for t in (level if isinstance(level, (list, tuple)) else [level])]
        assert flat and all(torch.isfinite(t).all() for t in flat)
        return
    model.train()
    losses = model(**data, mode='loss')
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None for p in model.backbone.parameters())


# timm's efficientnet_b3 levels (channels, stride), written out: the expectation must not come
# from the code under test
EFFICIENTNET_B3 = ((24, 2), (32, 4), (48, 8), (136, 16), (384, 32))
# how each shipped neck type takes its in_channels: one per level, or the last level's only
LAST_LEVEL_ONLY = ('DilatedEncoder',)


@pytest.mark.parametrize('name', CONFIGS)
def test_swapping_the_backbone_from_the_command_line(name):
    # `--cfg-options model.backbone.model_name=efficientnet_b3` on any config just works:
    # channels and strides follow the new backbone, nothing else is edited
    cfg = load(name)
    cfg.merge_from_dict({'model.backbone.model_name': 'efficientnet_b3'})
    resolved = resolve_config(cfg)
    indices = resolved.model.backbone.get('out_indices') or (1, 2, 3, 4)  # default: last four
    levels = [EFFICIENTNET_B3[i] for i in indices]
    neck = resolved.model.neck
    expected = levels[-1][0] if neck.type in LAST_LEVEL_ONLY else [c for c, _ in levels]
    assert neck.in_channels == expected
    if neck.type in ('FPN', 'CSPNeXtPAFPN', 'ChannelMapper'):  # one output per input level
        start = neck.get('start_level', 0)
        head = resolved.model.get('bbox_head') or resolved.model.get('rpn_head')
        strides = (head.get('anchor_generator') or head.get('prior_generator') or head).get(
            'strides')
        if strides is not None:  # the first head strides are the levels the neck reads
            first = [t if isinstance(t, int) else t[0] for t in strides[:len(levels) - start]]
            assert first == [t for _, t in levels[start:]]
