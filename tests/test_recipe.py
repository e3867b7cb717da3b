"""The fast GPU training recipe (`engine/_recipe.py`, `tools/train.py --fast`): what it changes in
a shipped config, what it refuses, and the tool's refusal without a GPU. Its training step on a
GPU (losses against fp32, channels-last maps) is in tests/test_gpu.py; its speed in
`tools/benchmark.py --device cuda --only gpu` (the recipe vs mmdet's default fp32 step)."""
import os

import pytest
import torch

from helpers import DEMO_CONFIG, FSDP_CONFIG, ROOT, run_tool
from timm_backbones.engine import fast_recipe, load_config
from timm_backbones.wiring import resolve_config

MASK_RCNN = os.path.join(ROOT, 'configs', 'mask-rcnn_timm-convnext-tiny_fpn_1x_coco.py')


def test_recipe_changes_of_a_shipped_config():
    cfg = load_config(MASK_RCNN)
    optimizer = dict(cfg.optim_wrapper.optimizer)
    notes = fast_recipe(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.dtype == 'bfloat16'
    assert dict(cfg.optim_wrapper.optimizer) == optimizer  # the config's own optimizer, kept
    assert cfg.model.backbone.channels_last is True
    assert cfg.env_cfg.cudnn_benchmark is True
    assert any('model.backbone.channels_last=True' in n for n in notes)
    resolve_config(cfg)  # still a valid config


def test_recipe_builds_a_channels_last_detector():
    # rule: what --fast builds returns channels-last maps from the backbone (the layout
    # contract's channels_last=True), so the neck and heads run channels-last
    from timm_backbones import init_detector
    cfg = load_config(DEMO_CONFIG)
    fast_recipe(cfg, 'float16')
    assert cfg.optim_wrapper.dtype == 'float16' and cfg.optim_wrapper.loss_scale == 'dynamic'
    model = init_detector(cfg).eval()
    with torch.no_grad():
        maps = model.backbone(torch.rand(1, 3, 128, 160))
        fpn = model.neck(maps)
    assert all(m.is_contiguous(memory_format=torch.channels_last) for m in (*maps, *fpn))
    assert not all(m.is_contiguous() for m in maps)


def test_recipe_refusals():
    with pytest.raises(ValueError, match=r"dtype='fp8'.*bfloat16"):
        fast_recipe(load_config(DEMO_CONFIG), 'fp8')
    with pytest.raises(ValueError, match='FSDP configs.*strategy.mixed_precision'):
        fast_recipe(load_config(FSDP_CONFIG))
    cfg = load_config(DEMO_CONFIG)
    cfg.optim_wrapper = None
    with pytest.raises(ValueError, match='needs a training config with an optim_wrapper'):
        fast_recipe(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the refusal is for machines without CUDA')
def test_train_py_fast_needs_cuda():
    proc = run_tool(os.path.join(ROOT, 'tools', 'train.py'), DEMO_CONFIG, '--fast', timeout=300)
    assert proc.returncode == 2
    assert '--fast is a GPU recipe' in proc.stderr and 'run without --fast' in proc.stderr
    proc = run_tool(os.path.join(ROOT, 'tools', 'train.py'), DEMO_CONFIG, '--fast', '--amp',
                    timeout=300)
    assert proc.returncode == 2 and 'not allowed with argument' in proc.stderr


def test_nms_takes_bfloat16():
    # rule: mmcv's NMS kernel takes float only (`expected scalar type Float but found
    # BFloat16`); under bfloat16 autocast the RPN's proposals reach it in bfloat16: computed in
    # float32, the same boxes kept
    from mmcv.ops import batched_nms, nms

    from timm_backbones._mmcv_layout import contiguous_mmcv_inputs
    contiguous_mmcv_inputs()  # what building a TimmBackbone installs
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 10 + torch.rand(200, 2, generator=g) * 40], 1)
    boxes = boxes.bfloat16().float()  # values bfloat16 holds exactly
    scores = torch.rand(200, generator=g).bfloat16().float()
    ref = nms(boxes, scores, 0.5)[1]
    assert torch.equal(nms(boxes.bfloat16(), scores.bfloat16(), 0.5)[1], ref)
    idxs = torch.randint(0, 3, (200,), generator=g)
    dets, keep = batched_nms(boxes.bfloat16(), scores.bfloat16(), idxs, dict(iou_threshold=0.5))
    assert torch.equal(keep, batched_nms(boxes, scores, idxs, dict(iou_threshold=0.5))[1])


@pytest.mark.parametrize('family', ['retinanet', 'faster-rcnn'])
def test_recipe_losses_under_cpu_bfloat16(family):
    # the GPU test's rehearsal on the CPU (torch.autocast('cpu', bfloat16)): the recipe's
    # channels-last detector computes fp32's losses on contiguous maps within bfloat16's
    # precision, same weights (dense terms 2 %, total 5 %; the RoI terms alone move with the
    # sampled RoIs: tests/test_gpu.py says more)
    from timm_backbones import init_detector
    from timm_backbones.families import get_family
    from test_gpu import recipe_losses, train_batch
    cfg = load_config(str(get_family(family).path))
    torch.manual_seed(0)
    reference = init_detector(cfg).train()
    fast_recipe(cfg)
    model = init_detector(cfg).train()
    model.load_state_dict(reference.state_dict())
    batch = train_batch(with_masks=False)
    ref, _ = recipe_losses(reference, batch, 'cpu', torch.float32)
    fast, _ = recipe_losses(model, batch, 'cpu', torch.bfloat16)
    dense = [k for k in ref if family == 'retinanet' or k.startswith('loss_rpn')]
    assert all(abs(fast[k] - ref[k]) <= 0.02 * abs(ref[k]) for k in dense), (ref, fast)
    assert abs(sum(fast.values()) - sum(ref.values())) <= 0.05 * sum(ref.values()), (ref, fast)
