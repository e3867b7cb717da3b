"""On a CUDA GPU (marker `gpu`, skipped without one; `make test-gpu`): every shipped detector
family trains a step under fp16 and bf16 autocast (mmengine's `AmpOptimWrapper`), `predict` on
CUDA equals `predict` on the CPU, SyncBN in a one-process NCCL group, `channels_last` and
`compile` backbones equal the default, the FSDP ViT-L config's peak memory with and without
activation checkpointing, and the AMP demo's mAP.

Every measured number is printed (run with `-s`) and, when `GPU_RESULTS_DIR` is set, collected in
`$GPU_RESULTS_DIR/gpu_results.jsonl`.

bf16 and mmcv: mmcv 2.1.0's CUDA kernels of RoIAlign, sigmoid_focal_loss and multi-scale
deformable attention dispatch on float/double/half only (AT_DISPATCH_FLOATING_TYPES_AND_HALF);
`timm_backbones._mmcv_layout` computes their bfloat16 inputs in float32, so every family must
train under bf16.
"""
import copy
import functools
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CUDA, reason='needs a CUDA GPU: torch.cuda.is_available() is False '
                       '(run `make test-gpu` on a GPU machine)'),
]

DETECTION_FAMILIES = ('retinanet', 'fcos', 'atss', 'faster-rcnn', 'mask-rcnn', 'cascade-rcnn',
                      'yolof', 'dino', 'rtmdet')
SIZE = (256, 320)  # H, W of the training and predict images
BOX_RTOL = 1e-3  # CUDA vs CPU boxes (fp32, TF32 off): relative, at least 1 pixel; to be
SCORE_ATOL = 1e-3  # confirmed by the measured maxima this file prints
_RESULTS = {}


def record(name, **values):
    """Print a measurement and append it to $GPU_RESULTS_DIR/gpu_results.jsonl (when set; one
    line per measurement, so parallel workers can share the file)."""
    _RESULTS[name] = values
    print(f'\nGPU-RESULT {name}: {json.dumps(values, default=str)}', flush=True)
    folder = os.environ.get('GPU_RESULTS_DIR')
    if folder:
        os.makedirs(folder, exist_ok=True)
        line = json.dumps(dict(name=name, device=torch.cuda.get_device_name(0),
                               torch=torch.__version__, cuda=torch.version.cuda, **values),
                          default=str)
        with open(os.path.join(folder, 'gpu_results.jsonl'), 'a') as f:
            f.write(line + '\n')


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 comparisons in fp32: no TF32 in cuDNN convolutions and matmuls; and the GPU
    machine's cores for the CPU references (conftest's two threads are for the 2-core one)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.get_num_threads())
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[:2]
    torch.set_num_threads(saved[2])


@functools.lru_cache(maxsize=None)
def cpu_detector(family):
    """The family's shipped config, randomly initialised on the CPU (built once: copy it)."""
    from timm_backbones import init_detector
    from timm_backbones.families import get_family
    torch.manual_seed(0)
    return init_detector(str(get_family(family).path))


def train_batch(with_masks):
    """Two uint8 images of SIZE with three boxes each (and their box masks)."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(0)
    h, w = SIZE
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 24 + torch.rand(3, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], 1)
        gt = InstanceData(bboxes=boxes, labels=torch.randint(0, 5, (3,), generator=g))
        if with_masks:
            masks = np.zeros((3, h, w), np.uint8)
            for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
                m[y1:y2, x1:x2] = 1
            gt.masks = BitmapMasks(masks, h, w)
        sample = DetDataSample(metainfo=dict(img_shape=SIZE, ori_shape=SIZE,
                                             scale_factor=(1.0, 1.0), flip=False))
        sample.gt_instances = gt
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def amp_train_step(family, dtype):
    """One `train_step` of the family on CUDA with AmpOptimWrapper(dtype); its log vars."""
    from mmengine.optim import AmpOptimWrapper
    model = copy.deepcopy(cpu_detector(family)).cuda().train()
    optim = AmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9),
                            dtype=dtype)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    log_vars = model.train_step(train_batch(family == 'mask-rcnn'), optim)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    losses = {k: float(v) for k, v in log_vars.items()}
    return losses, seconds, torch.cuda.max_memory_allocated() / 2 ** 20


# ---- training under autocast -----------------------------------------------------------------
@pytest.mark.parametrize('family', DETECTION_FAMILIES)
def test_fp16_amp_train_step(family):
    # every shipped family trains under fp16 autocast + GradScaler with finite losses
    losses, seconds, peak = amp_train_step(family, 'float16')
    record(f'train_fp16/{family}', loss=losses['loss'], seconds=seconds, peak_mb=peak)
    assert all(np.isfinite(v) for v in losses.values()), losses


@pytest.mark.parametrize('family', DETECTION_FAMILIES)
def test_bf16_amp_train_step(family):
    # bf16 autocast trains every family: mmcv's ops without bf16 kernels (RoIAlign, the focal
    # loss, deformable attention) compute in fp32 (timm_backbones._mmcv_layout)
    losses, seconds, peak = amp_train_step(family, 'bfloat16')
    record(f'train_bf16/{family}', loss=losses['loss'], seconds=seconds, peak_mb=peak)
    assert all(np.isfinite(v) for v in losses.values()), losses


# ---- predict: CUDA equals CPU ------------------------------------------------------------------
def detections(model, image):
    """mmdet's `test_step` (preprocessor + predict) on one uint8 image: pred_instances on CPU."""
    from mmdet.structures import DetDataSample
    sample = DetDataSample(metainfo=dict(img_shape=SIZE, ori_shape=SIZE, scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        return model.test_step(dict(inputs=[image], data_samples=[sample]))[0] \
            .pred_instances.cpu()


@pytest.mark.parametrize('family', DETECTION_FAMILIES)
def test_predict_cuda_equals_cpu(family):
    # the same weights give the same detections on CUDA as on the CPU (fp32, TF32 off): each of
    # the CPU's 20 best detections has a CUDA one of its label, box and score within tolerance
    from helpers import spread_class_scores, uint8_images
    model = cpu_detector(family)
    model = spread_class_scores(copy.deepcopy(model).eval())  # detections above score_thr
    on_gpu = copy.deepcopy(model).cuda().eval()
    image = uint8_images(1, SIZE, seed=3)[0]
    ref, got = detections(model, image), detections(on_gpu, image)
    top = ref.scores.argsort(descending=True)[:20]
    box_diff = score_diff = 0.0
    for i in top.tolist():
        box, label, score = ref.bboxes[i], ref.labels[i], ref.scores[i]
        same = (got.labels == label) & ((got.scores - score).abs() <= SCORE_ATOL) & \
            ((got.bboxes - box).abs() <= BOX_RTOL * box.abs().clamp(min=1)).all(1)
        assert same.any(), (f'{family}: CPU detection {i} (label {int(label)}, score '
                            f'{float(score):.5f}, box {box.tolist()}) has no CUDA match')
        j = int(same.nonzero()[0])
        box_diff = max(box_diff, float((got.bboxes[j] - box).abs().max()))
        score_diff = max(score_diff, float((got.scores[j] - score).abs()))
    record(f'predict_cuda_vs_cpu/{family}', compared=len(top), cpu=len(ref), cuda=len(got),
           max_box_abs_diff=box_diff, max_score_abs_diff=score_diff)
    assert len(top) > 0, f'{family}: no detections to compare'


# ---- SyncBN, channels_last, compile ----------------------------------------------------------
@pytest.fixture(scope='module')
def nccl_group():
    """A one-process NCCL group on a free port (SyncBN and FSDP need one)."""
    import torch.distributed as dist
    from helpers import free_port
    if dist.is_initialized():
        yield
        return
    torch.cuda.set_device(0)
    dist.init_process_group('nccl', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def image(batch=2, side=224, seed=0):
    return torch.randn(batch, 3, side, side,
                       generator=torch.Generator().manual_seed(seed)).cuda()


def test_sync_bn_in_one_process_nccl_group(nccl_group):
    # sync_bn=True: SyncBatchNorm layers, and with one process they train like BatchNorm
    from timm_backbones import TimmBackbone
    torch.manual_seed(0)
    plain = TimmBackbone('resnet18').cuda().train()
    synced = TimmBackbone('resnet18', sync_bn=True).cuda().train()
    synced.load_state_dict(plain.state_dict())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    x = image()
    outs = [sum(o.float().square().mean() for o in m(x)) for m in (plain, synced)]
    for out in outs:
        out.backward()
    diff = abs(float(outs[0]) - float(outs[1]))
    grad = max(float((a.grad - b.grad).abs().max()) for a, b in
               zip(plain.parameters(), synced.parameters()) if a.grad is not None)
    stats = max(float((a - b).abs().max()) for (n, a), (_, b) in
                zip(plain.state_dict().items(), synced.state_dict().items())
                if 'running' in n)
    record('sync_bn', loss_abs_diff=diff, max_grad_abs_diff=grad, max_running_stat_diff=stats)
    assert diff <= 1e-4 * max(1.0, abs(float(outs[0]))) and grad <= 1e-3 and stats <= 1e-4


@pytest.mark.parametrize('option', ['channels_last', 'compile'])
def test_speed_option_equals_default(option):
    # channels_last=True / compile=True give the default backbone's maps on CUDA (eval forward)
    from timm_backbones import TimmBackbone
    torch.manual_seed(0)
    ref = TimmBackbone('resnet18').cuda().eval()
    other = TimmBackbone('resnet18', **{option: True}).cuda().eval()
    other.load_state_dict(ref.state_dict())
    x = image()
    with torch.no_grad():
        start = time.perf_counter()
        got = other(x)  # compile: the first call compiles
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        want = ref(x)
    diff = max(float((a - b).abs().max()) for a, b in zip(got, want))
    scale = max(float(b.abs().max()) for b in want)
    record(f'speed_option/{option}', max_abs_diff=diff, max_abs=scale, first_call_s=first)
    assert all(a.shape == b.shape and a.is_contiguous() for a, b in zip(got, want))
    assert diff <= 1e-3 * max(1.0, scale), diff


# ---- FSDP ViT-L: activation checkpointing ------------------------------------------------------
def test_fsdp_vit_large_activation_checkpointing_saves_memory(nccl_group):
    # the shipped FSDP ViT-L config in one process: a training step's peak CUDA memory is lower
    # with the config's activation checkpointing (timm_block_check_fn) than without
    from mmengine.model.wrappers import MMFullyShardedDataParallel
    from mmengine.registry import FUNCTIONS
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import \
        apply_activation_checkpointing
    from helpers import FSDP_CONFIG
    from timm_backbones import init_detector
    from timm_backbones.engine._fsdp import resolve_wrap_policy
    torch.manual_seed(0)
    base = init_detector(FSDP_CONFIG, cfg_options={'model.backbone.drop_path_rate': 0.0})
    wrapper = copy.deepcopy(base.cfg.strategy.model_wrapper.auto_wrap_policy.to_dict())
    check_fn = base.cfg.strategy.activation_checkpointing.check_fn
    peaks = {}
    for checkpointing in (False, True):
        model = copy.deepcopy(base).train()
        # as TimmBackboneFlexibleRunner builds it: blocks in bf16 (the config's mixed_precision)
        fsdp = MMFullyShardedDataParallel(model, auto_wrap_policy=resolve_wrap_policy(wrapper),
                                          device_id=torch.cuda.current_device())
        if checkpointing:
            with FUNCTIONS.switch_scope_and_registry(None):
                apply_activation_checkpointing(fsdp, check_fn=FUNCTIONS.get(check_fn))
        data = model.data_preprocessor(train_batch(with_masks=True), True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        losses = fsdp(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        loss.backward()
        torch.cuda.synchronize()
        peaks[checkpointing] = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
        assert torch.isfinite(loss)
        del fsdp, model, data, losses, loss
        torch.cuda.empty_cache()
    record('fsdp_vit_large_peak_mb', without_checkpointing=peaks[False],
           with_checkpointing=peaks[True], ratio=peaks[True] / peaks[False])
    assert peaks[True] < peaks[False], peaks


# ---- the AMP demo ------------------------------------------------------------------------------
def train_demo(flag, tmp_path):
    """tools/train.py FLAG on the shipped demo config (8 epochs on synthetic shapes): (the
    tool's output, its last bbox mAP, seconds)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'train.py'),
         os.path.join(ROOT, 'configs', 'retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py'),
         flag, '--work-dir', str(tmp_path / 'work')],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    found = re.findall(r'coco/bbox_mAP: ([0-9.]+)', proc.stdout + proc.stderr)
    assert found, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout, float(found[-1]), seconds


def test_amp_demo_reaches_map(tmp_path):
    # tools/train.py --amp on the demo config: bbox mAP >= 0.6 (measured on an H200: 0.733 in
    # 56 s)
    _, bbox_map, seconds = train_demo('--amp', tmp_path)
    record('amp_demo', bbox_mAP=bbox_map, seconds=seconds)
    assert bbox_map >= 0.6


# ---- the fast recipe (tools/train.py --fast) ---------------------------------------------------
FAST_DENSE_RTOL = 0.02  # bf16 autocast vs fp32: the dense losses (RPN, RetinaNet's), per term;
FAST_TOTAL_RTOL = 0.05  # the total loss. The RoI heads' terms alone are not compared: bf16 moves
# the proposals a little and the RoI sampler then draws other positives (at random init, loss_bbox
# of Faster R-CNN moved from 0.004 to 0.08 in the CPU rehearsal while the total moved 1.5 %).
# Both tolerances: to be confirmed by the measured maxima this file prints.


def recipe_losses(model, batch, device, dtype):
    """`model`'s loss terms (summed over levels) on `batch` under `dtype` autocast on `device`
    (float32: none), the sampler seeded alike; and the backbone's maps."""
    torch.manual_seed(0)
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        out = model(**data, mode='loss')
    return {k: float(sum(v) if isinstance(v, list) else v) for k, v in out.items()
            if 'loss' in k}, model.backbone(data['inputs'])


@pytest.mark.parametrize('family', ['retinanet', 'faster-rcnn', 'mask-rcnn'])
def test_fast_recipe_losses_match_fp32(family):
    # the recipe (bf16 autocast, channels-last detector, cuDNN autotuning) computes the losses
    # fp32 computes on contiguous maps, within bf16's precision, with the same weights
    from timm_backbones import init_detector
    from timm_backbones.engine import fast_recipe, load_config
    from timm_backbones.families import get_family
    reference = copy.deepcopy(cpu_detector(family)).cuda().train()
    cfg = load_config(str(get_family(family).path))
    fast_recipe(cfg, 'bfloat16')
    model = init_detector(cfg, device='cuda').train()
    model.load_state_dict(reference.state_dict())
    batch = train_batch(family == 'mask-rcnn')
    ref, _ = recipe_losses(reference, batch, 'cuda', torch.float32)
    fast, maps = recipe_losses(model, batch, 'cuda', torch.bfloat16)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in maps)
    dense = [k for k in ref if family == 'retinanet' or k.startswith('loss_rpn')]
    worst = max(abs(fast[k] - ref[k]) / max(abs(ref[k]), 1e-3) for k in dense)
    total = abs(sum(fast.values()) - sum(ref.values())) / sum(ref.values())
    record(f'fast_recipe/{family}', worst_dense_rel=worst, total_rel=total,
           **{k: (ref[k], fast[k]) for k in ref})
    assert worst <= FAST_DENSE_RTOL and total <= FAST_TOTAL_RTOL, (ref, fast)


def test_fast_demo_reaches_map(tmp_path):
    # tools/train.py --fast on the demo config: bbox mAP >= 0.6, as with --amp
    out, bbox_map, seconds = train_demo('--fast', tmp_path)
    assert "fast: optim_wrapper: AmpOptimWrapper(dtype='bfloat16')" in out
    record('fast_demo', bbox_mAP=bbox_map, seconds=seconds)
    assert bbox_map >= 0.6
