"""Normalization (`wiring/_preprocess.py`, `_pretrained_cfg.py`): `mean='auto'` / `std='auto'` come
from the backbone's timm pretrained_cfg (the tag decides), explicit values that disagree with a
pretrained backbone fail at resolve time, and mean/std must suit `in_channels`."""
import glob
import os

import pytest
import timm
import torch
from mmengine.config import Config

import timm_backbones  # noqa: F401  (registers the modules)
from timm_backbones import build_detector, resolve_config
from timm_backbones._pretrained_cfg import is_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# timm's pretrained normalization x 255, written out (not computed by the code under test)
IMAGENET = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
HALF = ([127.5, 127.5, 127.5], [127.5, 127.5, 127.5])
CLIP = ([122.7709, 116.7460, 104.0937], [68.5005, 66.6322, 70.3232])


def model(name, mean='auto', std='auto', **backbone):
    return dict(model=dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor', mean=mean, std=std, bgr_to_rgb=True),
        backbone=dict(type='TimmBackbone', model_name=name, **backbone)))


def resolved(cfg):
    pre = resolve_config(cfg)['model']['data_preprocessor']
    return list(pre['mean']), list(pre['std'])


@pytest.mark.parametrize('name, expected', [
    ('vit_small_patch16_224.augreg_in21k', HALF),  # the tag decides
    ('inception_v3', HALF),  # the architecture's default tag
    ('vit_base_patch16_clip_224.openai', CLIP),
    ('resnet50.a1_in1k', IMAGENET),
    ('convnext_tiny', IMAGENET),
])
def test_auto_fills_timm_pretrained_normalization(name, expected):
    mean, std = resolved(model(name))
    assert mean == pytest.approx(expected[0], abs=1e-3)
    assert std == pytest.approx(expected[1], abs=1e-3)


def test_pretrained_backbone_rejects_other_normalization():
    # mmdet's ImageNet values (inherited from a base config) for a ViT trained with 0.5/0.5
    cfg = model('vit_small_patch16_224.augreg_in21k', mean=IMAGENET[0], std=IMAGENET[1],
                pretrained=True)
    with pytest.raises(ValueError, match=r"(?s)model\.data_preprocessor\.mean=\[123\.675.*"
                                         r"must be \[127\.5, 127\.5, 127\.5\].*mean='auto', "
                                         r"std='auto'"):
        resolve_config(cfg)
    # the right values written out pass (rounded as configs write them)
    resolve_config(model('vit_small_patch16_224.augreg_in21k', mean=HALF[0], std=HALF[1],
                         pretrained=True))
    resolve_config(model('vit_base_patch16_clip_224.openai', mean=[122.771, 116.746, 104.094],
                         std=[68.501, 66.632, 70.323], pretrained=True))


def test_random_init_accepts_any_normalization():
    assert not is_pretrained(dict(type='timm.resnet50.a1_in1k'))  # a tag alone loads nothing
    resolve_config(model('vit_small_patch16_224.augreg_in21k', mean=IMAGENET[0], std=IMAGENET[1]))


def test_weight_file_is_pretrained(tmp_path):
    # a timm-format weight file of a tagged model: its tag's normalization is required and
    # 'auto' gives it; the detector builds with those weights loaded
    name = 'vit_tiny_patch16_224.augreg_in21k'
    weights = timm.create_model('vit_tiny_patch16_224').state_dict()
    path = str(tmp_path / 'vit_tiny.pth')
    torch.save(weights, path)
    cfg = model(name, pretrained=path)
    cfg['model'].update(
        neck=dict(type='FPN', in_channels='auto', out_channels=32, num_outs=4),
        bbox_head=dict(type='RetinaHead', num_classes=2, in_channels=32, feat_channels=32,
                       anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                             scales_per_octave=1, ratios=[1.0],
                                             strides='auto'),
                       bbox_coder=dict(type='DeltaXYWHBBoxCoder')))
    with pytest.raises(ValueError, match='does not match the normalization'):
        resolve_config(model(name, mean=IMAGENET[0], std=IMAGENET[1], pretrained=path))
    detector = build_detector(resolve_config(cfg))
    assert detector.data_preprocessor.mean.flatten().tolist() == HALF[0]
    assert torch.equal(detector.backbone.model.model.cls_token, weights['cls_token'])


@pytest.mark.parametrize('name', sorted(os.path.basename(p) for p in
                                        glob.glob(os.path.join(ROOT, 'configs', '*.py'))))
def test_shipped_configs_use_auto(name):
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', name))
    assert cfg.model.data_preprocessor.mean == 'auto' and cfg.model.data_preprocessor.std == 'auto'
    pre = resolve_config(cfg).model.data_preprocessor
    assert pre.bgr_to_rgb is True  # timm's weights are RGB; mmdet loads BGR
    # swapping the backbone from the command line brings the new backbone's normalization
    cfg.merge_from_dict({'model.backbone.model_name': 'convnext_base.clip_laion2b'})
    assert list(resolve_config(cfg).model.data_preprocessor.mean) == CLIP[0]


def test_in_channels_against_the_preprocessor():
    # a 4-channel backbone with 3-value mean/std failed deep in torch; now at resolve time
    with pytest.raises(ValueError, match=r'mean has 3 values .* in_channels=4 .*use 1 value'):
        resolve_config(model('resnet18', mean=IMAGENET[0], std=IMAGENET[1], in_channels=4))
    resolve_config(model('resnet18', mean=[100.0], std=[50.0], in_channels=4))  # one value
    with pytest.raises(ValueError, match=r"mean='auto'.*in_channels=4.*explicitly"):
        resolve_config(model('resnet18', in_channels=4))  # 'auto' needs 3 channels
    with pytest.raises(ValueError, match=r"std has 3 values .* in_channels=1"):
        resolve_config(model('resnet18', mean=[100.0], std=IMAGENET[1], in_channels=1))


def test_auto_needs_a_timm_backbone():
    cfg = model('resnet18')
    cfg['model']['backbone'] = dict(type='ResNet', depth=18)
    with pytest.raises(ValueError, match="mean='auto'.*type='ResNet'.*not a timm backbone"):
        resolve_config(cfg)
