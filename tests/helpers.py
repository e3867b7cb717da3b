"""Shared test helpers (one module): paths, mmdet's (and mmseg's) own configs with a timm backbone
swapped in, the representative model lists the fast tests parametrize over, and a free local port.

`Config.fromfile('mmdet::...')` only resolves inside `_base_`, so mmdet's configs load by path.
"""
import copy
import functools
import importlib.util
import os
import socket

import torch
from mmengine.config import Config

from timm_backbones import feature_specs
from timm_backbones._specs import check_maps
from timm_backbones.wiring import neck_levels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMDET_CONFIGS = os.path.join(importlib.util.find_spec('mmdet').submodule_search_locations[0],
                             '.mim', 'configs')
MMSEG = importlib.util.find_spec('mmseg').submodule_search_locations[0]  # found, not imported
MMSEG_CONFIGS = os.path.join(MMSEG, '.mim', 'configs')

# ---- representative timm models ----------------------------------------------------------------
CNNS = ['resnet18', 'efficientnet_b0', 'mobilenetv3_large_100', 'regnety_002', 'densenet121',
        'hrnet_w18_small', 'dla34']
STRIDE4_FIRST = ['convnext_atto']
NHWC = ['swin_tiny_patch4_window7_224', 'mambaout_femto']
HOOK_BASED = ['xception41']
PLAIN = ['vit_tiny_patch16_224', 'deit_tiny_patch16_224', 'eva02_tiny_patch14_224',
         'vit_pwee_patch16_reg1_gap_256']
WINDOWED = ['swin_tiny_patch4_window7_224']
REPRESENTATIVE = CNNS + STRIDE4_FIRST + NHWC + HOOK_BASED
NON_SQUARE = (256, 320)  # H, W used in tests: non-square, small, valid for every model above


# ---- mmdet configs -----------------------------------------------------------------------------
def mmdet_config(path):
    """mmdet's config `path` (under mmdet/.mim/configs), as a fresh `Config`."""
    return Config.fromfile(os.path.join(MMDET_CONFIGS, path))


def mmseg_config(path):
    """mmseg's config `path` (under mmseg/.mim/configs), as a fresh `Config`."""
    return Config.fromfile(os.path.join(MMSEG_CONFIGS, path))


@functools.lru_cache(maxsize=None)
def model_config(path):
    """mmdet's model config `path` as a dict (cached: do not modify it)."""
    return mmdet_config(path).model.to_dict()


def mmdet_model(path, backbone, **changes):
    """mmdet's model config `path` with a timm backbone and `changes` merged in (dicts merge key
    by key, like mmengine's config inheritance)."""
    model = copy.deepcopy(model_config(path))
    model['backbone'] = backbone
    merge(model, changes)
    return model


def merge(base, changes):
    """Merge `changes` into `base` in place, dicts key by key."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def timm(name, out_indices=None, **kwargs):
    """A TimmBackbone config."""
    cfg = dict(type='TimmBackbone', model_name=name, **kwargs)
    if out_indices is not None:
        cfg['out_indices'] = out_indices
    return cfg


def free_port():
    """A free TCP port on 127.0.0.1 (for process groups)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ---- shapes ------------------------------------------------------------------------------------
def predicted_levels(model):
    """The levels the neck table says `model['neck']` (a dict or a chain) returns."""
    return neck_levels(model, feature_specs(model['backbone']))


def check_shapes(shapes, levels, size):
    """Each map (NCHW shape) has its level's channels and exactly ceil(input / stride) pixels
    per side, TimmBackbone's guarantee (levels of unknown stride: channels only)."""
    check_maps([tuple(s) for s in shapes], levels, size, 'maps', exact=True)


def nonfinite(model):
    """Names of the floating-point parameters and buffers of `model` holding NaN or infinity
    (under `torch.use_deterministic_algorithms(True)` uninitialized memory is NaN)."""
    return [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_floating_point() and not torch.isfinite(t).all()]


def unsafe_globals(path):
    """The globals a checkpoint needs beyond what torch's weights-only loader allows by itself
    (the process-wide allow-list the plugin adds is set aside for the question)."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    finally:
        torch.serialization.add_safe_globals(saved)


# ---- the shipped FSDP config, shrunk for the CPU ---------------------------------------------
FSDP_CONFIG = os.path.join(ROOT, 'configs',
                           'mask-rcnn_timm-vit-large-p16-mae_fpn_fsdp-layer-decay-1x_coco.py')
# shipped configs whose models are too large to build with weights in the fast suite (ViT-L:
# 308 M parameters, 1.2 GB): test_configs.py builds them on the meta device, and the tests that
# build every shipped config with weights (init_detector, mmdet's tools) take the others
BUILT_ON_META = (os.path.basename(FSDP_CONFIG),)
SMALL_FSDP = """
_base_ = ['{config}']
data_root = '{data_root}'
synthetic = dict(num_train=8, num_val=2, img_size=(64, 64), obj_size=(16, 40), max_objects=2,
                 seed=0)
model = dict(
    backbone=dict(model_name='vit_tiny_patch16_224', pretrained=False, drop_path_rate=0.0,
                  frozen_stages=1),
    neck=dict(out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=5),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32, num_classes=5)),
    # samplers larger than the candidates take all of them: no random draws in the loss, so runs
    # on different numbers of processes can be compared
    train_cfg=dict(rpn=dict(sampler=dict(num=100000)),
                   rpn_proposal=dict(nms_pre=200, max_per_img=50),
                   rcnn=dict(sampler=dict(num=100000))))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')]
train_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='SyntheticShapesDataset', data_root=data_root,
                 synthetic=synthetic, ann_file='annotations/instances_train.json',
                 metainfo=dict(classes=('circle', 'square', 'triangle', 'star', 'cross')),
                 data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=True),
                 pipeline=train_pipeline))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4, val_interval=1000)
val_cfg = val_dataloader = val_evaluator = None
test_cfg = test_dataloader = test_evaluator = None
param_scheduler = []
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=1),
                     visualization=dict(draw=False))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
# float32 on the CPU (the shipped config computes the blocks in bfloat16 on GPUs)
strategy = dict(model_wrapper=dict(auto_wrap_policy=dict(_delete_=True,
                                                         type='timm_block_wrap_policy')))
"""


def small_fsdp_config(root):
    """The shipped FSDP config (ViTDet-style Mask R-CNN: simple pyramid, FPN, layer decay, FSDP
    with the timm block policies, activation checkpointing) shrunk for CPU tests: vit_tiny
    (frozen_stages=1), 32-channel heads, 8 synthetic 64x64 images (generated here), batch 1,
    4 iterations with a checkpoint each, float32. Written to `root/small_fsdp.py`.

    Returns:
        The config's path.
    """
    from timm_backbones.data import make_synthetic_coco
    data_root = os.path.join(str(root), 'data') + os.sep
    make_synthetic_coco(data_root, num_train=8, num_val=2, img_size=(64, 64), obj_size=(16, 40),
                        max_objects=2, seed=0)
    path = os.path.join(str(root), 'small_fsdp.py')
    with open(path, 'w') as f:
        f.write(SMALL_FSDP.format(config=FSDP_CONFIG, data_root=data_root))
    return path
