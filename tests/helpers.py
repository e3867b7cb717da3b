"""Shared test helpers (one module): paths, mmdet's (and mmseg's) own configs with a timm backbone
swapped in, the representative model lists the fast tests parametrize over, and a free local port.

`Config.fromfile('mmdet::...')` only resolves inside `_base_`, so mmdet's configs load by path.
"""
import copy
import functools
import importlib.util
import os
import re
import socket
import subprocess
import sys

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


def swish_as_silu(module):
    """mmcv's Swish modules (x * sigmoid(x), two ops) replaced by torch's SiLU (the same function
    in one op, what timm's EfficientNet runs); no parameter changes. Returns how many."""
    import torch
    from mmcv.cnn.bricks.swish import Swish
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, Swish):
            setattr(module, name, torch.nn.SiLU())
            count += 1
        else:
            count += swish_as_silu(child)
    return count


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


def built_deterministic(build, *args, **kwargs):
    """`build(*args, **kwargs)` under `torch.use_deterministic_algorithms(True)`, where torch
    fills uninitialized memory with NaN: a tensor left as `torch.Tensor(...)` memory shows in
    `nonfinite`, whatever the allocator hands out."""
    torch.use_deterministic_algorithms(True)
    try:
        return build(*args, **kwargs)
    finally:
        torch.use_deterministic_algorithms(False)


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

# ---- deployment (end-to-end export) -------------------------------------------------------------
# The shipped detector families: config, and the test_cfg changes that make a randomly
# initialised model detect something (the configs' score_thr would leave nothing above it).
FAMILIES = {
    'retinanet-demo': ('retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py', {}),
    'retinanet': ('retinanet_timm-pvt-v2-b2_fpn_1x_coco.py', {'model.test_cfg.score_thr': 0.02}),
    'fcos': ('fcos_timm-resnet50_fpn_gn-head_1x_coco.py', {'model.test_cfg.score_thr': 0.02}),
    'atss': ('atss_timm-efficientnet-b3_fpn_1x_coco.py', {'model.test_cfg.score_thr': 0.02}),
    'yolof': ('yolof_timm-resnet50-c5_8xb8-1x_coco.py', {'model.test_cfg.score_thr': 0.02}),
    'rtmdet': ('rtmdet_timm-convnext-tiny_4xb32-100e_coco.py', {}),
    'faster-rcnn': ('faster-rcnn_timm-regnety-032_fpn_1x_coco.py',
                    {'model.test_cfg.rcnn.score_thr': 0.01}),
    'mask-rcnn': ('mask-rcnn_timm-convnext-tiny_fpn_1x_coco.py',
                  {'model.test_cfg.rcnn.score_thr': 0.01}),
    'cascade-rcnn': ('cascade-rcnn_timm-resnext50-32x4d_fpn_1x_coco.py',
                     {'model.test_cfg.rcnn.score_thr': 0.01}),
    'dino': ('dino-4scale_timm-swin-tiny_8xb2-12e_coco.py', {}),
}


DEMO_CONFIG = os.path.join(ROOT, 'configs', FAMILIES['retinanet-demo'][0])


def run_tool(*args, timeout=900, env=None):
    """`python *args` in the repository (PYTHONPATH=ROOT, one thread), output captured."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def demo_export(folder):
    """The demo detector (`family_detector`), saved as a checkpoint in `folder` and exported by
    tools/export.py --check: (model, checkpoint, onnx file, the tool's stdout)."""
    model = family_detector('retinanet-demo')
    ckpt = folder / 'demo.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': dict(classes=list(model.dataset_meta['classes']))}},
               ckpt)
    onnx = folder / 'demo.onnx'
    proc = run_tool(os.path.join(ROOT, 'tools', 'export.py'), DEMO_CONFIG, str(ckpt), '--out',
                    str(onnx), '--check')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return model, ckpt, onnx, proc.stdout


def family_detector(family, **options):
    """The shipped config of `family` as a randomly initialised detector in eval mode, its class
    scores spread as a trained model's are (`spread_class_scores`). `options`: more
    `--cfg-options`."""
    from timm_backbones import init_detector
    config, changes = FAMILIES[family]
    torch.manual_seed(0)
    model = init_detector(os.path.join(ROOT, 'configs', config),
                          cfg_options={**changes, **options} or None)
    model.init_weights()
    return spread_class_scores(model.eval())


def spread_class_scores(model, std=1.5):
    """Scale the heads' last classification layers so that their logits vary with std `std`
    on a test image: at initialisation every class score sits within ~1e-4 of the prior, where
    float ties reorder detections (and larger random features saturate the sigmoid at 1.0)."""
    layers = [(n, m) for n, m in model.named_modules()
              if CLASSIFIERS.search(n) and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    spread = {}
    hooks = [m.register_forward_hook(
        lambda m, args, out, n=n: spread.__setitem__(n, max(spread.get(n, 0), out.std().item())))
        for n, m in layers]
    try:
        reference_detections(model, uint8_images(1, (224, 256), seed=99))
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        for name, module in layers:
            if spread.get(name):
                module.weight.mul_(std / spread[name])
    return model


# the heads' last classification layers (not the convs before them)
CLASSIFIERS = re.compile(r'(^|\.)(retina_cls|conv_cls|atss_cls|cls_score|rtm_cls|rpn_cls|fc_cls|'
                         r'cls_branches)(\.\d+)?$')


def uint8_images(batch, size, seed=0):
    """`(batch, 3, H, W)` uint8 images: smooth random shapes on noise, so that features vary."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (batch, 3, size[0] // 8 + 1, size[1] // 8 + 1), generator=g)
    images = torch.nn.functional.interpolate(low.float(), size=size, mode='bilinear')
    images = images + torch.randint(-20, 21, images.shape, generator=g)
    return images.clamp(0, 255).to(torch.uint8)


def reference_detections(model, images):
    """mmdet's own `test_step` (data preprocessor + `predict`) on each uint8 image, one at a
    time: a list of `pred_instances` (scale factor 1: input coordinates)."""
    from mmdet.structures import DetDataSample
    out = []
    with torch.no_grad():
        for image in images:
            shape = tuple(image.shape[-2:])
            sample = DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape,
                                                 scale_factor=(1.0, 1.0)))
            out.append(model.test_step(dict(inputs=[image], data_samples=[sample]))[0]
                       .pred_instances)
    return out


def assert_same_detections(outputs, reference, rtol=1e-3, score_atol=1e-4):
    """End-to-end outputs (boxes, scores, labels, num_dets[, masks]) equal `predict`'s: per image
    the same number of detections, each matched one to one with a `predict` detection of the
    same label, its box within `rtol` (relative, at least 1 pixel) and its score within
    `score_atol` (detections whose scores differ by float rounding may come in either order);
    masks, pasted like mmdet's heads paste them, agree on >= 99.9% of the pixels. Slots after
    `num_dets` are empty. Returns the number of detections compared."""
    boxes, scores, labels, num_dets = [torch.as_tensor(o) for o in outputs[:4]]
    compared = 0
    for b, ref in enumerate(reference):
        n = int(num_dets[b])
        assert n == len(ref), f'image {b}: {n} detections, predict has {len(ref)}'
        assert (labels[b, n:] == -1).all() and (scores[b, n:] == 0).all()
        scale = ref.bboxes.abs().clamp(min=1)
        close = ((boxes[b, :n, None] - ref.bboxes[None]).abs() <= rtol * scale[None]).all(-1) & \
            ((scores[b, :n, None] - ref.scores[None]).abs() <= score_atol) & \
            (labels[b, :n, None] == ref.labels[None])
        match = []
        for i in range(n):  # ordered by score: the first free close one
            free = close[i].clone()
            free[match] = False
            assert free.any(), (f'image {b}: detection {i} (label {int(labels[b, i])}, score '
                                f'{float(scores[b, i]):.6f}, box {boxes[b, i].tolist()}) is '
                                f'not among predict\'s')
            match.append(int(free.nonzero()[0]))
        if len(outputs) > 4:
            from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
            masks = torch.as_tensor(outputs[4])[b, :n, None]
            pasted = _do_paste_mask(masks, ref.bboxes[match], *ref.masks.shape[-2:],
                                    skip_empty=False)[0] >= 0.5
            agree = (pasted == ref.masks[match]).float().mean().item() if n else 1.0
            assert agree >= 0.999, f'image {b}: masks agree on {agree:.4%} of the pixels'
        compared += n
    return compared
