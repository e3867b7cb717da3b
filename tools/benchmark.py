"""Side-by-side performance measurements of timm_backbones on this machine.

Every comparison runs its candidates interleaved (A, B, B, A, A, B, ...: each repetition swaps
the order), so drift and other jobs on a shared machine hit both alike; it prints the median and
the range (min-max) of each candidate and the ratio of the medians with the range of the
per-repetition ratios. Nothing here is asserted: regressions show up as ratios.

Sections (all by default; pick with --only):
  adapter    TimmBackbone forward vs the raw timm `features_only` model with the same weights
             (CNNs, an NHWC model, EfficientNet, and a ViT with its simple pyramid vs its raw
             features)
  retinanet  RetinaNet training step: timm resnet50 vs mmdet's ResNet-50, same frozen params
  configs    inference images/s of every shipped config (predict mode, at --config-size)
  specs      feature_specs (meta device, cold: a fresh process) vs a real build: time, memory
  with_cp    peak training memory (and step time) with gradient checkpointing vs without,
             ViT-B and ConvNeXt-T at 512x512
  speed      channels_last and torch.compile vs eager (and torch.compile's compile time)
  onnx       end-to-end inference, onnxruntime (tools/export.py's graph) vs PyTorch eager
             (the data preprocessor + predict, what tools/test.py runs on a checkpoint): the
             demo RetinaNet, FCOS and Faster R-CNN, uint8 image in, detections out

On request only (--only gpu --device cuda; --dtype fp32|fp16|bf16, --channels-last, --compile):
  gpu        every shipped detector family on the GPU: images/s and peak CUDA memory of a
             training step (mmengine's AmpOptimWrapper for fp16/bf16) and of inference
             (batch 8 at 800x1344, RTMDet at its 640x640; --quick: batch 2 at 512x512), and
             the RetinaNet training step timm resnet50 / mmdet ResNet-50 (img/s ratio). A family
             whose mmcv ops lack a kernel for the dtype (mmcv 2.1.0: no bf16 RoIAlign, focal
             loss, deformable attention) is listed as refused, with the op. And the training
             step of `tools/train.py --fast` (fast_recipe) vs the default fp32 recipe for
             RetinaNet, Faster R-CNN and Mask R-CNN (speedup, peak memory).

Memory is measured in fresh child processes: peak resident memory (VmHWM, reset through
/proc/self/clear_refs) during the step, minus the resident memory before it.

Example:
    nice -n 10 python tools/benchmark.py --quick                      # a few minutes, 2 cores
    nice -n 10 python tools/benchmark.py --markdown docs/benchmarks.md  # the full run
    python tools/benchmark.py --device cuda --only gpu --dtype bf16 --channels-last \
        --markdown docs/benchmarks_gpu.md                              # on a GPU (--quick: ~2 min)
"""
import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE = 'cpu'  # --device: where models and inputs live (builds stay on the CPU)
SECTIONS = ('adapter', 'retinanet', 'configs', 'specs', 'with_cp', 'speed', 'onnx')
ON_REQUEST = ('gpu',)  # not in the default run: needs --device cuda
DTYPES = {'fp32': 'float32', 'fp16': 'float16', 'bf16': 'bfloat16'}
MB = 2 ** 20

# Sizes and repetitions: (--quick, full).
SETTINGS = {
    'adapter_input': ((1, 224), (2, 512)),  # (batch, side)
    'adapter_reps': (5, 5),
    'retinanet_input': ((1, 320), (1, 512)),
    'retinanet_reps': (3, 5),
    'config_size': (256, 512),
    'config_reps': (1, 2),
    'specs_models': (('resnet50', 'vit_base_patch16_224'),
                     ('resnet50', 'efficientnet_b3', 'convnext_large', 'vit_large_patch16_224')),
    'specs_reps': (2, 3),
    'with_cp_models': (('convnext_tiny', 'vit_base_patch16_224'),) * 2,
    'with_cp_input': ((1, 384), (1, 512)),
    'with_cp_reps': (1, 2),
    'speed_models': (('resnet18',), ('resnet50', 'convnext_tiny')),
    'speed_input': ((1, 224), (1, 512)),
    'speed_reps': (5, 5),
    'onnx_size': (320, 512),  # COCO configs; the demo runs at its own 256x256
    'onnx_reps': (3, 10),
    # (batch, (H, W)) of the gpu section; RTMDet (trained at 640) at (batch, (640, 640)) in full
    'gpu_input': ((2, (512, 512)), (8, (800, 1344))),
    'gpu_reps': (2, 5),
}

# (config, input side or None for 'onnx_size'): the demo detector and two shipped families
ONNX_CONFIGS = (('retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py', 256),
                ('fcos_timm-resnet50_fpn_gn-head_1x_coco.py', None),
                ('faster-rcnn_timm-regnety-032_fpn_1x_coco.py', None))

# (model, TimmBackbone options): CNNs, NHWC (Swin), EfficientNet, a ViT without and with its
# simple pyramid (its default for a plain model), each vs the raw timm extractor.
ADAPTER_MODELS = (('resnet50', {}), ('convnext_tiny', {}), ('swin_tiny_patch4_window7_224', {}),
                  ('efficientnet_b3', {}), ('vit_small_patch16_224', dict(pyramid=None)),
                  ('vit_small_patch16_224', {}))


# ---- measuring ---------------------------------------------------------------------------------
def sync() -> None:
    """Wait for the device (CUDA runs asynchronously)."""
    if DEVICE.startswith('cuda'):
        import torch
        torch.cuda.synchronize()


def interleaved(candidates: Dict[str, Callable[[], Any]], reps: int,
                warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each candidate, `reps` times, the order swapped every repetition."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    sync()
    times: Dict[str, List[float]] = {n: [] for n in names}
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            candidates[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def summary(values: Sequence[float]) -> Dict[str, float]:
    return dict(median=statistics.median(values), min=min(values), max=max(values))


def ratio(times: Dict[str, List[float]], num: str, den: str) -> Dict[str, float]:
    """median(num) / median(den), and the range of the per-repetition ratios."""
    pairs = [a / b for a, b in zip(times[num], times[den])]
    return dict(ratio=statistics.median(times[num]) / statistics.median(times[den]),
                min=min(pairs), max=max(pairs))


def fmt_time(s: Dict[str, float], unit: float = 1e3) -> str:
    return f"{s['median'] * unit:.0f} ({s['min'] * unit:.0f}-{s['max'] * unit:.0f})"


def fmt_ratio(r: Dict[str, float]) -> str:
    return f"{r['ratio']:.3f} ({r['min']:.3f}-{r['max']:.3f})"


def table(header: Sequence[str], rows: List[Sequence[Any]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def child(task: str, *args: str, threads: int) -> Dict[str, Any]:
    """Run `task` of this file in a fresh process (memory measurements); returns its JSON."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
        OMP_NUM_THREADS=str(threads),
        # glibc: allocations over 128 KiB get their own mapping, returned to the system when
        # freed, so resident memory follows the tensors alive (no heap kept from earlier steps)
        MALLOC_MMAP_THRESHOLD_='131072', MALLOC_TRIM_THRESHOLD_='131072')
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', task, *args,
                           '--threads', str(threads), '--device', DEVICE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f'child {task} {args} failed:\n{proc.stderr[-4000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status_kb(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{key} not in /proc/self/status')


def peak_memory(fn: Callable[[], Any]) -> Tuple[float, Any]:
    """Peak resident memory (MB) while `fn` runs, above the resident memory before it (on a
    CUDA device: peak allocated device memory above the allocated memory before it)."""
    if DEVICE.startswith('cuda'):
        import torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / MB, result
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current VmRSS
    before = _status_kb('VmRSS')
    result = fn()
    return (_status_kb('VmHWM') - before) / 1024, result


# ---- shared model helpers ----------------------------------------------------------------------
def image(batch: int, side: int, seed: int = 0):
    import torch
    return torch.randn(batch, 3, side, side,
                       generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def padded_side(backbone, side: int) -> int:
    """`side` rounded up to the backbone's input divisor (no padding inside the comparison)."""
    d = backbone.plan.pad_divisor
    return -(-side // d) * d


def raw_timm(backbone):
    """The raw timm feature extractor that `backbone` wraps, with its weights."""
    import timm
    raw = timm.create_model(backbone.model_name, features_only=True,
                            out_indices=backbone.plan.timm_indices, **backbone.plan.kwargs)
    raw.load_state_dict(backbone.model.state_dict())
    return raw.to(DEVICE).eval()


def data_samples(batch: int, side: int, with_boxes: bool = False):
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    samples = []
    g = torch.Generator().manual_seed(1)
    for _ in range(batch):
        s = DetDataSample(metainfo=dict(img_shape=(side, side), ori_shape=(side, side),
                                        pad_shape=(side, side), batch_input_shape=(side, side),
                                        scale_factor=(1.0, 1.0)))
        if with_boxes:
            xy = torch.rand(4, 2, generator=g) * side * 0.6
            wh = 16 + torch.rand(4, 2, generator=g) * side * 0.3
            s.gt_instances = InstanceData(bboxes=torch.cat([xy, (xy + wh).clamp(max=side)], 1),
                                          labels=torch.randint(0, 80, (4,), generator=g))
        samples.append(s.to(DEVICE))
    return samples


# ---- sections ----------------------------------------------------------------------------------
def bench_adapter(q: int) -> Dict[str, Any]:
    import torch
    from timm_backbones import TimmBackbone
    batch, side = SETTINGS['adapter_input'][q]
    reps = SETTINGS['adapter_reps'][q]
    rows, results = [], {}
    for name, options in ADAPTER_MODELS:
        torch.manual_seed(0)
        adapter = TimmBackbone(name, **options).eval()
        raw = raw_timm(adapter)
        adapter.to(DEVICE)
        s = padded_side(adapter, side)
        x = image(batch, s)
        with torch.no_grad():
            ours, theirs = adapter(x), raw(x)
            if adapter.pyramid is None:
                if adapter.plan.output_format == 'NHWC':
                    theirs = [t.permute(0, 3, 1, 2) for t in theirs]
                same = all(torch.equal(a, b) for a, b in zip(ours, theirs))
            else:
                same = None  # the pyramid adds layers: outputs differ by design
            times = interleaved({'raw': lambda: raw(x), 'adapter': lambda: adapter(x)}, reps)
        r = ratio(times, 'adapter', 'raw')
        kind = ('NCHW + simple pyramid (4 maps from the last block) vs raw last block'
                if adapter.pyramid is not None else adapter.plan.output_format)
        results[f'{name} {options}' if options else name] = dict(input=[batch, 3, s, s], kind=kind, identical=same,
                             raw=summary(times['raw']), adapter=summary(times['adapter']),
                             ratio=r)
        rows.append([name + ''.join(f' {k}={v}' for k, v in options.items()), kind,
                     f'{batch}x3x{s}x{s}', fmt_time(summary(times['raw'])),
                     fmt_time(summary(times['adapter'])), fmt_ratio(r),
                     {True: 'yes', False: 'NO', None: 'n/a'}[same]])
        print(rows[-1], flush=True)
    text = table(['model', 'layout', 'input', 'raw timm ms', 'TimmBackbone ms',
                  'ratio (adapter/raw)', 'identical outputs'], rows)
    return dict(results=results, table=text)


def retinanet_pair():
    """mmdet's RetinaNet R-50 config and the same model with timm's resnet50 (same frozen
    parameters: mmdet frozen_stages=1 = stem + layer1 = timm levels 0-1 = frozen_stages=2)."""
    import copy
    import torch
    from mmengine.config import Config
    from timm_backbones.engine import build_detector
    mmdet_root = importlib.util.find_spec('mmdet').submodule_search_locations[0]
    cfg = Config.fromfile(os.path.join(mmdet_root, '.mim', 'configs', 'retinanet',
                                       'retinanet_r50_fpn_1x_coco.py'))
    model_cfg = cfg.model.to_dict()
    model_cfg['backbone'].pop('init_cfg', None)
    timm_cfg = copy.deepcopy(model_cfg)
    timm_cfg['backbone'] = dict(type='TimmBackbone', model_name='resnet50', out_indices=(1, 2, 3, 4),
                                frozen_stages=2, norm_eval=True)
    timm_cfg['neck']['in_channels'] = 'auto'
    torch.manual_seed(0)
    mmdet_model = build_detector(model_cfg)
    torch.manual_seed(0)
    timm_model = build_detector(timm_cfg)
    return mmdet_model.to(DEVICE), timm_model.to(DEVICE)


def bench_retinanet(q: int) -> Dict[str, Any]:
    import torch
    batch, side = SETTINGS['retinanet_input'][q]
    reps = SETTINGS['retinanet_reps'][q]
    mmdet_model, timm_model = retinanet_pair()
    frozen = {k: sum(p.numel() for p in m.backbone.parameters() if not p.requires_grad)
              for k, m in (('mmdet', mmdet_model), ('timm', timm_model))}
    x = image(batch, side)
    samples = data_samples(batch, side, with_boxes=True)

    def step(model, optim):
        def run():
            model.train()
            losses = model.loss(x, samples)
            loss = sum(v if isinstance(v, torch.Tensor) else sum(v) for v in losses.values())
            optim.zero_grad()
            loss.backward()
            optim.step()
        return run

    optims = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4,
                                 momentum=0.9)
              for k, m in (('mmdet', mmdet_model), ('timm', timm_model))}
    times = interleaved({'mmdet': step(mmdet_model, optims['mmdet']),
                         'timm': step(timm_model, optims['timm'])}, reps)
    r = ratio(times, 'timm', 'mmdet')
    text = table(['backbone', 'frozen params', f'train step ms ({batch}x3x{side}x{side})'],
                 [["mmdet ResNet(depth=50, frozen_stages=1)", f"{frozen['mmdet']:,}",
                   fmt_time(summary(times['mmdet']))],
                  ["TimmBackbone('resnet50', frozen_stages=2)", f"{frozen['timm']:,}",
                   fmt_time(summary(times['timm']))]])
    text += f'\n\nratio (timm / mmdet): {fmt_ratio(r)}'
    print(text, flush=True)
    return dict(results=dict(input=[batch, 3, side, side], frozen=frozen,
                             mmdet=summary(times['mmdet']), timm=summary(times['timm']),
                             ratio=r), table=text)


def bench_configs(q: int) -> Dict[str, Any]:
    import torch
    from mmengine.config import Config
    from timm_backbones.engine import build_detector
    side = SETTINGS['config_size'][q]
    reps = SETTINGS['config_reps'][q]
    rows, results = [], {}
    for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))):
        name = os.path.basename(path)[:-3]
        cfg = Config.fromfile(path)
        cfg.model.backbone.pretrained = False
        torch.manual_seed(0)
        model = build_detector(cfg).to(DEVICE).eval()
        x = image(1, side)
        samples = data_samples(1, side)
        with torch.no_grad():
            times = interleaved({'predict': lambda: model.predict(x, samples)}, reps)['predict']
        s = summary(times)
        results[name] = dict(size=side, seconds=s, images_per_s=1 / s['median'])
        rows.append([name, cfg.model.backbone.model_name, f'{1 / s["median"]:.2f}',
                     fmt_time(s)])
        print(rows[-1], flush=True)
        del model
    text = table(['config', 'timm backbone', f'images/s at {side}x{side}',
                  'ms per image (range)'], rows)
    return dict(results=results, table=text)


def child_specs(name: str, what: str) -> Dict[str, Any]:
    global DEVICE
    DEVICE = 'cpu'  # builds happen on the CPU: measure resident memory whatever --device says
    from timm_backbones import TimmBackbone, feature_specs
    feature_specs(dict(type='TimmBackbone', model_name='resnet18'))  # warm imports (no weights)
    start = time.perf_counter()
    if what == 'specs':
        mem, _ = peak_memory(lambda: feature_specs(dict(type='TimmBackbone', model_name=name)))
    else:
        mem, model = peak_memory(lambda: TimmBackbone(name))
    return dict(seconds=time.perf_counter() - start, peak_mb=mem)


def bench_specs(q: int, threads: int) -> Dict[str, Any]:
    """Each measurement in a fresh process: a cold `feature_specs` or a real build."""
    reps = SETTINGS['specs_reps'][q]
    rows, results = [], {}
    for name in SETTINGS['specs_models'][q]:
        runs: Dict[str, List[Dict[str, float]]] = {'specs': [], 'build': []}
        for rep in range(reps):
            for what in (('specs', 'build') if rep % 2 == 0 else ('build', 'specs')):
                runs[what].append(child('specs', name, what, threads=threads))
        times = {w: [r['seconds'] for r in runs[w]] for w in runs}
        mem = {w: statistics.median(r['peak_mb'] for r in runs[w]) for w in runs}
        r = ratio(times, 'build', 'specs')
        results[name] = dict(specs=summary(times['specs']), build=summary(times['build']),
                             ratio=r, peak_mb=mem)
        rows.append([name, fmt_time(summary(times['specs'])), fmt_time(summary(times['build'])),
                     fmt_ratio(r), f"{mem['specs']:.0f}", f"{mem['build']:.0f}"])
        print(rows[-1], flush=True)
    text = table(['model', 'feature_specs ms (cold)', 'real build ms', 'build / specs',
                  'feature_specs peak MB', 'build peak MB'], rows)
    return dict(results=results, table=text)


def child_with_cp(name: str, with_cp: str, batch: str, side: str) -> Dict[str, Any]:
    import torch
    from timm_backbones import TimmBackbone
    torch.manual_seed(0)
    model = TimmBackbone(name, with_cp=with_cp == '1', drop_path_rate=0.0).to(DEVICE).train()
    x = image(int(batch), int(side))

    def step():
        loss = sum(o.float().square().mean() for o in model(x))
        loss.backward()
        model.zero_grad(set_to_none=False)

    step()  # gradients allocated, lazy init done: the next step measures activations
    start = time.perf_counter()
    mem, _ = peak_memory(step)
    return dict(peak_mb=mem, seconds=time.perf_counter() - start)


def bench_with_cp(q: int, threads: int) -> Dict[str, Any]:
    batch, side = SETTINGS['with_cp_input'][q]
    reps = SETTINGS['with_cp_reps'][q]
    rows, results = [], {}
    for name in SETTINGS['with_cp_models'][q]:
        runs: Dict[str, List[Dict[str, float]]] = {'0': [], '1': []}
        for rep in range(reps):
            for flag in (('0', '1') if rep % 2 == 0 else ('1', '0')):
                runs[flag].append(child('with_cp', name, flag, str(batch), str(side),
                                        threads=threads))
        mem = {f: statistics.median(r['peak_mb'] for r in runs[f]) for f in runs}
        sec = {f: statistics.median(r['seconds'] for r in runs[f]) for f in runs}
        results[name] = dict(input=[batch, 3, side, side], peak_mb=mem, seconds=sec)
        rows.append([name, f'{batch}x3x{side}x{side}', f"{mem['0']:.0f}", f"{mem['1']:.0f}",
                     f"{mem['1'] / mem['0']:.2f}", f"{sec['0'] * 1e3:.0f}",
                     f"{sec['1'] * 1e3:.0f}", f"{sec['1'] / sec['0']:.2f}"])
        print(rows[-1], flush=True)
    text = table(['model', 'input', 'peak MB off', 'peak MB with_cp', 'memory ratio',
                  'step ms off', 'step ms with_cp', 'time ratio'], rows)
    return dict(results=results, table=text)


def bench_speed(q: int) -> Dict[str, Any]:
    import torch
    from timm_backbones import TimmBackbone
    batch, side = SETTINGS['speed_input'][q]
    reps = SETTINGS['speed_reps'][q]
    rows, results = [], {}
    for name in SETTINGS['speed_models'][q]:
        torch.manual_seed(0)
        eager = TimmBackbone(name).to(DEVICE).eval()
        cl = TimmBackbone(name, channels_last=True).to(DEVICE).eval()
        cl.load_state_dict(eager.state_dict())
        torch._dynamo.reset()
        compiled = TimmBackbone(name, compile=True).to(DEVICE).eval()
        compiled.load_state_dict(eager.state_dict())
        x = image(batch, padded_side(eager, side))
        with torch.no_grad():
            start = time.perf_counter()
            compiled(x)  # the first call compiles
            sync()
            compile_s = time.perf_counter() - start
            ref = eager(x)
            diffs = {k: max((a - b).abs().max().item() for a, b in zip(m(x), ref))
                     for k, m in (('channels_last', cl), ('compile', compiled))}
            times = interleaved({'eager': lambda: eager(x), 'channels_last': lambda: cl(x),
                                 'compile': lambda: compiled(x)}, reps)
        r = {k: ratio(times, k, 'eager') for k in ('channels_last', 'compile')}
        results[name] = dict(input=list(x.shape), compile_seconds=compile_s, max_abs_diff=diffs,
                             **{k: summary(v) for k, v in times.items()}, ratio=r)
        rows.append([name, 'x'.join(map(str, x.shape)), fmt_time(summary(times['eager'])),
                     fmt_time(summary(times['channels_last'])), fmt_ratio(r['channels_last']),
                     fmt_time(summary(times['compile'])), fmt_ratio(r['compile']),
                     f'{compile_s:.0f}', f"{diffs['channels_last']:.1e} / {diffs['compile']:.1e}"])
        print(rows[-1], flush=True)
    text = table(['model', 'input', 'eager ms', 'channels_last ms', 'ratio', 'compiled ms',
                  'ratio', 'compile s', 'max abs diff (CL / compiled)'], rows)
    return dict(results=results, table=text)


def bench_onnx(q: int, threads: int) -> Dict[str, Any]:
    import tempfile
    if DEVICE != 'cpu':
        raise SystemExit('the onnx section compares on the CPU (onnxruntime CPU provider); run '
                         'it with --device cpu')
    reps = SETTINGS['onnx_reps'][q]
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix='bench_onnx_') as folder:
        for config, side in ONNX_CONFIGS:
            rows.append(_bench_onnx_config(config, side or SETTINGS['onnx_size'][q], reps,
                                           threads, folder, results))
            print(rows[-1], flush=True)
    text = table(['config', 'input (uint8)', 'PyTorch eager ms', 'onnxruntime ms',
                  'ratio (onnxruntime / PyTorch)', 'detections (PyTorch / ONNX)',
                  'export s'], rows)
    return dict(results=results, table=text)


def _bench_onnx_config(config: str, side: int, reps: int, threads: int, folder: str,
                       results: Dict[str, Any]) -> List[str]:
    import onnxruntime
    import torch
    from mmdet.structures import DetDataSample
    from timm_backbones import init_detector
    from timm_backbones.deploy import export_end2end
    torch.manual_seed(0)
    model = init_detector(os.path.join(ROOT, 'configs', config))
    model.init_weights()
    model.eval()
    path = os.path.join(folder, config.replace('.py', '.onnx'))
    start = time.perf_counter()
    export_end2end(model, path, (side, side))
    export_s = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    img = torch.randint(0, 256, (3, side, side), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(0))
    sample = DetDataSample(metainfo=dict(img_shape=(side, side), ori_shape=(side, side),
                                         scale_factor=(1.0, 1.0)))
    data = dict(inputs=[img], data_samples=[sample])
    feed = {'images': img[None].numpy()}
    with torch.no_grad():
        times = interleaved({'pytorch': lambda: model.test_step(data),
                             'onnxruntime': lambda: session.run(None, feed)}, reps)
        found = (len(model.test_step(data)[0].pred_instances),
                 int(session.run(None, feed)[3][0]))
    r = ratio(times, 'onnxruntime', 'pytorch')
    results[config] = dict(side=side, export_seconds=export_s, detections=found,
                           **{k: summary(v) for k, v in times.items()}, ratio=r)
    return [config[:-3], f'1x3x{side}x{side}', fmt_time(summary(times['pytorch'])),
            fmt_time(summary(times['onnxruntime'])), fmt_ratio(r), f'{found[0]} / {found[1]}',
            f'{export_s:.0f}']


# ---- gpu ---------------------------------------------------------------------------------------
GPU_OPTIONS = dict(dtype='fp32', channels_last=False, compile=False)  # set by main()


def det_batch(batch: int, size: Tuple[int, int], with_masks: bool = False,
              with_boxes: bool = True) -> Dict[str, Any]:
    """`batch` uint8 images of `size` (H, W) with 4 boxes each (and box masks), as a dataloader
    gives them to `train_step` / `test_step`."""
    import numpy as np
    import torch
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(0)
    h, w = size
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
        sample = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size,
                                             scale_factor=(1.0, 1.0), flip=False))
        if with_boxes:
            xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
            wh = 24 + torch.rand(4, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
            boxes = torch.cat([xy, xy + wh], 1)
            gt = InstanceData(bboxes=boxes, labels=torch.randint(0, 5, (4,), generator=g))
            if with_masks:
                masks = np.zeros((4, h, w), np.uint8)
                for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
                    m[y1:y2, x1:x2] = 1
                gt.masks = BitmapMasks(masks, h, w)
            sample.gt_instances = gt
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def optim_wrapper(model):
    """SGD in mmengine's OptimWrapper (fp32) or AmpOptimWrapper (fp16, bf16: autocast)."""
    import torch
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                          momentum=0.9)
    if GPU_OPTIONS['dtype'] == 'fp32':
        return OptimWrapper(optimizer=sgd)
    return AmpOptimWrapper(optimizer=sgd, dtype=DTYPES[GPU_OPTIONS['dtype']])


def autocast():
    import contextlib
    import torch
    if GPU_OPTIONS['dtype'] == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast('cuda', dtype=getattr(torch, DTYPES[GPU_OPTIONS['dtype']]))


def _gpu_family(config: str, batch: int, size: Tuple[int, int], reps: int) -> Dict[str, Any]:
    """Training step and inference of one shipped config on the GPU: img/s and peak MB."""
    import torch
    from timm_backbones import init_detector
    options = {'model.backbone.channels_last': GPU_OPTIONS['channels_last'],
               'model.backbone.compile': GPU_OPTIONS['compile']}
    torch.manual_seed(0)
    model = init_detector(os.path.join(ROOT, 'configs', config), cfg_options=options,
                          device=DEVICE)
    train = det_batch(batch, size, with_masks='mask-rcnn' in config)
    test = det_batch(batch, size, with_boxes=False)
    optim = optim_wrapper(model)
    out: Dict[str, Any] = dict(input=[batch, 3, *size])

    def train_step():
        model.train()
        model.train_step(train, optim)

    def infer():
        model.eval()
        with torch.no_grad(), autocast():
            model.test_step(test)

    for name, fn in (('train', train_step), ('inference', infer)):
        try:
            times = interleaved({name: fn}, reps)[name]
            mem, _ = peak_memory(fn)
        except RuntimeError as err:  # e.g. an mmcv op without a kernel for this dtype
            out[name] = dict(error=str(err).splitlines()[0][:200])
            continue
        s = summary(times)
        out[name] = dict(seconds=s, images_per_s=batch / s['median'], peak_mb=mem)
    del model, optim
    torch.cuda.empty_cache()
    return out


def _fast_vs_default(config: str, batch: int, size: Tuple[int, int], reps: int
                     ) -> Dict[str, Any]:
    """Training step of a shipped config: mmdet's default recipe (fp32, OptimWrapper,
    contiguous maps) vs `tools/train.py --fast` (`fast_recipe`: bf16 autocast, channels-last,
    cuDNN autotuning), same weights and batch, interleaved; the speedup is default / fast."""
    import torch
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    from timm_backbones import init_detector
    from timm_backbones.engine import fast_recipe, load_config
    path = os.path.join(ROOT, 'configs', config)
    torch.manual_seed(0)
    models = {'default': init_detector(path, device=DEVICE)}
    cfg = load_config(path)
    fast_recipe(cfg, 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16')
    models['fast'] = init_detector(cfg, device=DEVICE)
    models['fast'].load_state_dict(models['default'].state_dict())

    def sgd(model):
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                               momentum=0.9)
    optims = {'default': OptimWrapper(optimizer=sgd(models['default'])),
              'fast': AmpOptimWrapper(optimizer=sgd(models['fast']),
                                      dtype=cfg.optim_wrapper.dtype)}
    data = det_batch(batch, size, with_masks='mask-rcnn' in config)
    benchmark = torch.backends.cudnn.benchmark

    def step(key):
        def run():
            torch.backends.cudnn.benchmark = key == 'fast'
            models[key].train()
            models[key].train_step(data, optims[key])
        return run
    try:
        times = interleaved({k: step(k) for k in models}, reps)
        mem = {k: peak_memory(step(k))[0] for k in models}
    finally:
        torch.backends.cudnn.benchmark = benchmark
    del models, optims
    torch.cuda.empty_cache()
    return dict(input=[batch, 3, *size], speedup=ratio(times, 'default', 'fast'), peak_mb=mem,
                dtype=cfg.optim_wrapper.dtype,
                **{k: dict(seconds=summary(v), images_per_s=batch / statistics.median(v))
                   for k, v in times.items()})


def bench_gpu(q: int) -> Dict[str, Any]:
    import torch
    from timm_backbones.families import DETECTION, FAMILIES
    batch, size = SETTINGS['gpu_input'][q]
    reps = SETTINGS['gpu_reps'][q]
    rows, results = [], {}
    for name, family in FAMILIES.items():
        if family.task != DETECTION:
            continue
        fam_size = (640, 640) if name == 'rtmdet' and q else size
        r = _gpu_family(family.config, batch, fam_size, reps)
        results[name] = r
        cells = []
        for what in ('train', 'inference'):
            if 'error' in r[what]:
                cells += [f"refused: {r[what]['error'][:80]}", '']
            else:
                cells += [f"{r[what]['images_per_s']:.1f}", f"{r[what]['peak_mb']:.0f}"]
        rows.append([name, f'{batch}x3x{fam_size[0]}x{fam_size[1]}', *cells])
        print(rows[-1], flush=True)
    # timm resnet50 vs mmdet ResNet-50 in RetinaNet: the same training step, interleaved
    mmdet_model, timm_model = retinanet_pair()
    data = det_batch(batch, size)
    optims = {'mmdet': optim_wrapper(mmdet_model), 'timm': optim_wrapper(timm_model)}
    models = {'mmdet': mmdet_model, 'timm': timm_model}

    def step(key):
        def run():
            models[key].train()
            models[key].train_step(data, optims[key])
        return run

    times = interleaved({k: step(k) for k in models}, reps)
    mem = {k: peak_memory(step(k))[0] for k in models}
    rt = ratio(times, 'timm', 'mmdet')
    results['retinanet_timm_vs_native'] = dict(
        input=[batch, 3, *size], ratio=rt, peak_mb=mem,
        **{k: dict(seconds=summary(v), images_per_s=batch / statistics.median(v))
           for k, v in times.items()})
    setting = (f"dtype {GPU_OPTIONS['dtype']}" + (', channels_last' if GPU_OPTIONS['channels_last']
                                                   else '') +
               (', compile' if GPU_OPTIONS['compile'] else ''))
    text = table(['family', 'input', 'train img/s', 'train peak MB', 'inference img/s',
                  'inference peak MB'], rows)
    text += (f"\n\n{setting}. RetinaNet training step, timm resnet50 / mmdet ResNet-50 "
             f"(time ratio, {batch}x3x{size[0]}x{size[1]}): {fmt_ratio(rt)}; img/s "
             f"{batch / statistics.median(times['timm']):.1f} vs "
             f"{batch / statistics.median(times['mmdet']):.1f}; peak MB "
             f"{mem['timm']:.0f} vs {mem['mmdet']:.0f}")
    del mmdet_model, timm_model
    torch.cuda.empty_cache()
    # the fast recipe (tools/train.py --fast) vs mmdet's default fp32 step, two-stage and dense
    fast_rows = []
    for name in ('retinanet', 'faster-rcnn', 'mask-rcnn'):
        family = FAMILIES[name]
        r = _fast_vs_default(family.config, batch, size, reps)
        results[f'fast_recipe/{name}'] = r
        fast_rows.append([name, f'{batch}x3x{size[0]}x{size[1]}', r['dtype'],
                          f"{r['default']['images_per_s']:.1f}", f"{r['fast']['images_per_s']:.1f}",
                          fmt_ratio(r['speedup']), f"{r['peak_mb']['default']:.0f}",
                          f"{r['peak_mb']['fast']:.0f}"])
        print(fast_rows[-1], flush=True)
    text += ('\n\nTraining step, `tools/train.py --fast` (fast_recipe) vs the default fp32 '
             'recipe, same weights and batch (speedup = default time / fast time):\n\n')
    text += table(['family', 'input', 'fast dtype', 'default img/s', 'fast img/s', 'speedup',
                   'default peak MB', 'fast peak MB'], fast_rows)
    return dict(results=results, table=text)


# ---- report ------------------------------------------------------------------------------------
def machine(threads: int) -> Dict[str, str]:
    import mmcv
    import mmdet
    import mmengine
    import timm
    import torch
    cpu = platform.processor()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if 'model name' in line)
    except (OSError, StopIteration):
        pass
    try:
        load = ' '.join(f'{v:.1f}' for v in os.getloadavg())
    except OSError:
        load = '?'
    return dict(device=DEVICE, date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                cpu=f'{cpu}, {os.cpu_count()} cores', threads=str(threads),
                load_at_start=load, python=platform.python_version(), torch=torch.__version__,
                timm=timm.__version__, mmdet=mmdet.__version__, mmcv=mmcv.__version__,
                mmengine=mmengine.__version__, cuda=str(torch.version.cuda),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')


TITLES = {
    'adapter': 'TimmBackbone vs the raw timm features_only model (eval forward)',
    'retinanet': 'RetinaNet training step: timm resnet50 vs mmdet ResNet-50',
    'configs': 'Inference of the shipped configs (predict mode, batch 1, random weights)',
    'specs': 'feature_specs (meta device) vs a real build',
    'with_cp': 'Gradient checkpointing (with_cp): peak training memory',
    'speed': 'channels_last and torch.compile vs eager (eval forward)',
    'onnx': 'End-to-end inference: onnxruntime vs PyTorch eager (uint8 image to detections)',
    'gpu': 'Shipped detector families on the GPU: training step and inference (random weights)',
}


PREAMBLE = """# Benchmarks

Written by `tools/benchmark.py` (run: `{command}`).
Candidates of each comparison run interleaved (the order swapped every repetition), so drift
and other jobs hit both alike. Times are medians with the range (min-max) in brackets; ratios
are ratios of the medians, with the range of the per-repetition ratios in brackets. Memory: peak resident memory of a fresh process
during the measured step, above the resident memory before it (glibc returning freed memory at
once). Random weights throughout (no hub access): post-processing of two-stage and DETR heads
depends on the weights, so their images/s are indicative only.
"""


def markdown(info: Dict[str, str], sections: Dict[str, Dict[str, Any]], quick: bool,
             command: str = '') -> str:
    command = command or 'nice -n 10 python tools/benchmark.py' + (' --quick' if quick else '')
    preamble = PREAMBLE.format(command=command)
    if DEVICE.startswith('cuda'):
        preamble += ('\nOn CUDA: times are CUDA-synchronized wall time; memory is the peak '
                     'allocated CUDA memory during the step, above the memory allocated before '
                     'it (model, optimizer state and inputs excluded).\n')
    lines = [preamble, '## Machine and versions', '',
             '| | |', '|---|---|'] + [f'| {k} | {v} |' for k, v in info.items()]
    for name, result in sections.items():
        lines += ['', f'## {TITLES[name]}', '', result['table'],
                  '', f"({result['seconds']:.0f} s)"]
    return '\n'.join(lines) + '\n'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line, checked: bad combinations exit with a message naming the value, what
    is allowed and the fix."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='small sizes, few repetitions')
    parser.add_argument('--only', nargs='+', choices=SECTIONS + ON_REQUEST,
                        default=list(SECTIONS),
                        help='sections (default: all but gpu, which needs --device cuda)')
    parser.add_argument('--dtype', choices=list(DTYPES), default='fp32',
                        help='gpu section: fp32, or fp16 / bf16 autocast (AmpOptimWrapper)')
    parser.add_argument('--channels-last', action='store_true',
                        help='gpu section: backbones with channels_last=True')
    parser.add_argument('--compile', action='store_true',
                        help='gpu section: backbones with compile=True (torch.compile)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    parser.add_argument('--device', default='cpu',
                        help="'cpu' (default) or 'cuda': where models run (builds and "
                        'feature_specs stay on the CPU); on CUDA, memory is peak allocated '
                        'device memory')
    parser.add_argument('--json', help='write all results to this JSON file')
    parser.add_argument('--markdown', help='write the tables (with machine and versions) here')
    parser.add_argument('--child', nargs='+', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a device; use 'cpu' or 'cuda' ('cuda:N')")
    if device.type not in ('cpu', 'cuda'):
        parser.error(f"--device {args.device!r}: use 'cpu' or 'cuda' ('cuda:N')")
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: torch {torch.__version__} sees no CUDA GPU '
                     '(torch.cuda.is_available() is False); run on a GPU machine, or use '
                     '--device cpu')
    gpu_only = [f'--{k.replace("_", "-")}' + (f' {v}' if k == 'dtype' else '')
                for k, v in vars(args).items()
                if k in GPU_OPTIONS and v != GPU_OPTIONS[k]]
    if gpu_only and 'gpu' not in args.only:
        parser.error(f"{' '.join(gpu_only)} set the gpu section's models; add --only gpu "
                     '(with --device cuda)')
    if 'gpu' in args.only and device.type != 'cuda':
        parser.error(f'--only gpu measures on a CUDA device, but --device is {args.device!r}; '
                     'add --device cuda')
    if 'onnx' in args.only and device.type != 'cpu' and not args.child:
        parser.error('the onnx section compares on the CPU (onnxruntime CPU provider); drop it '
                     'from --only or use --device cpu')
    return args


def main() -> None:
    args = parse_args()
    GPU_OPTIONS.update(dtype=args.dtype, channels_last=args.channels_last, compile=args.compile)
    global DEVICE
    DEVICE = args.device
    import torch
    torch.set_num_threads(args.threads)
    import warnings
    warnings.filterwarnings('ignore')
    from mmengine.logging import MMLogger
    import timm_backbones  # noqa: F401  (registers TimmBackbone)
    # the probes' expected failures (e.g. dynamic_img_size on CNNs) are logged as warnings
    MMLogger.get_current_instance().setLevel('ERROR')
    if args.child:
        task, *rest = args.child
        result = {'specs': child_specs, 'with_cp': child_with_cp}[task](*rest)
        print(json.dumps(result))
        return
    q = 0 if args.quick else 1
    info = machine(args.threads)
    print(json.dumps(info, indent=1), flush=True)
    runners = {'adapter': lambda: bench_adapter(q), 'retinanet': lambda: bench_retinanet(q),
               'configs': lambda: bench_configs(q), 'specs': lambda: bench_specs(q, args.threads),
               'with_cp': lambda: bench_with_cp(q, args.threads), 'speed': lambda: bench_speed(q),
               'onnx': lambda: bench_onnx(q, args.threads), 'gpu': lambda: bench_gpu(q)}
    sections = {}
    for name in args.only:
        start = time.perf_counter()
        print(f'\n## {TITLES[name]}', flush=True)
        sections[name] = runners[name]()
        sections[name]['seconds'] = time.perf_counter() - start
        print(sections[name]['table'], f"\n({sections[name]['seconds']:.0f} s)", flush=True)
    info['load_at_end'] = ' '.join(f'{v:.1f}' for v in os.getloadavg())
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=info, quick=args.quick, sections=sections), f, indent=1)
    if args.markdown is None and args.only == ['gpu']:
        args.markdown = os.path.join(ROOT, 'docs', 'benchmarks_gpu.md')
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(markdown(info, sections, args.quick,
                             'python tools/benchmark.py ' + ' '.join(sys.argv[1:])))


if __name__ == '__main__':
    main()
