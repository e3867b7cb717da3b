"""Time a cold `feature_specs` against a raw timm meta-device `features_only` build of the same
model, side by side, each in a fresh process (imports excluded from the timing, both processes
import the same modules), and print the per-model and median ratios.

Times are the CPU time of the timed call (`time.process_time`, one thread): on a shared machine
wall-clock times of sub-second calls swing with the other processes' load; CPU time does not
(much). `--wall` times wall-clock instead.

A fresh process's times swing from run to run (resnet18's per-round ratios over 7 rounds:
0.73-1.92), so a ratio from 3 rounds can be off by 0.3 for a small model: each model's ratio is the median of its rounds'
times, and the range of the per-round ratios (each round's specs time over its raw time, taken
side by side) is printed with it.

Example:
    python tools/specs_speed.py                       # the default varied set, 5 rounds
    python tools/specs_speed.py --models resnet18 vit_small_patch16_224 --rounds 5
    python tools/specs_speed.py --source /tmp/old     # another checkout's timm_backbones
    python tools/specs_speed.py --baseline /tmp/old   # and before/after, side by side
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

# CNNs, stride-4-first, NHWC, hook-based, windowed, plain ViTs, hybrids and mobile models
MODELS = ['resnet18', 'resnet50', 'mobilenetv3_large_100', 'efficientnet_b0', 'convnext_tiny',
          'regnety_032', 'densenet121', 'dla34', 'hrnet_w18_small', 'cspdarknet53',
          'xception41', 'maxvit_tiny_tf_224', 'swin_tiny_patch4_window7_224',
          'vit_small_patch16_224', 'deit_tiny_patch16_224', 'eva02_tiny_patch14_224',
          'pvt_v2_b2', 'coat_lite_tiny', 'levit_128', 'efficientvit_b0', 'mambaout_femto',
          'edgenext_xx_small', 'hgnetv2_b0', 'fastvit_t8', 'caformer_s18']

_CHILD = r'''
import sys, time, json, warnings
warnings.filterwarnings('ignore')
import torch
torch.set_num_threads(1)
import timm
import timm_backbones
from timm_backbones import feature_specs
from mmengine.logging import MMLogger
MMLogger.get_current_instance().setLevel('ERROR')
name, mode, clock = sys.argv[1], sys.argv[2], getattr(time, sys.argv[3])
sys.stderr.write(f'timm_backbones from {timm_backbones.__file__}\n')
start = clock()
if mode == 'specs':
    feature_specs(dict(type='TimmBackbone', model_name=name))
else:
    with torch.device('meta'):
        timm.create_model(name, features_only=True)
print(json.dumps(clock() - start))
'''


_CLOCK = 'process_time'


def _run(name: str, mode: str, source: Optional[str]) -> float:
    env = dict(os.environ)
    if source:
        env['PYTHONPATH'] = os.pathsep.join([source, env.get('PYTHONPATH', '')])
    # run outside any checkout, so that `import timm_backbones` finds the installed package or
    # the --source/--baseline tree, never the current directory's
    out = subprocess.run([sys.executable, '-c', _CHILD, name, mode, _CLOCK], env=env, check=True,
                         capture_output=True, text=True, cwd=tempfile.gettempdir()).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=MODELS)
    parser.add_argument('--rounds', type=int, default=5,
                        help='fresh-process pairs per model (the median is used)')
    parser.add_argument('--source', help='a source tree whose timm_backbones is timed instead')
    parser.add_argument('--baseline', help='another source tree (e.g. the code before a change), '
                        'timed in the same rounds: a before/after ratio per model')
    parser.add_argument('--json', help='write the numbers here')
    parser.add_argument('--wall', action='store_true', help='wall-clock instead of CPU time')
    args = parser.parse_args(argv)
    global _CLOCK
    _CLOCK = 'perf_counter' if args.wall else 'process_time'
    rows: Dict[str, Dict[str, float]] = {}
    print(f"{'model':32s} {'raw timm (s)':>12s} {'feature_specs (s)':>18s} {'ratio':>6s} "
          f"{'per round':>11s}"
          + (f" {'baseline (s)':>13s} {'ratio':>6s}" if args.baseline else ''))
    for name in args.models:
        raw, specs, base = [], [], []
        for _ in range(args.rounds):  # alternate, so load changes hit all alike
            raw.append(_run(name, 'raw', args.source))
            specs.append(_run(name, 'specs', args.source))
            if args.baseline:
                base.append(_run(name, 'specs', args.baseline))
        r, s = statistics.median(raw), statistics.median(specs)
        per_round = sorted(b / a for a, b in zip(raw, specs))
        rows[name] = dict(raw_s=round(r, 4), specs_s=round(s, 4), ratio=round(s / r, 2),
                          round_ratios=[round(per_round[0], 2), round(per_round[-1], 2)])
        line = (f'{name:32s} {r:12.3f} {s:18.3f} {s / r:6.2f} '
                f'{per_round[0]:5.2f}-{per_round[-1]:<5.2f}')
        if base:
            b = statistics.median(base)
            rows[name].update(baseline_s=round(b, 4), baseline_ratio=round(b / r, 2))
            line += f' {b:13.3f} {b / r:6.2f}'
        print(line, flush=True)
    ratios = sorted(v['ratio'] for v in rows.values())
    summary = dict(models=len(rows), rounds=args.rounds, clock=_CLOCK,
                   median_ratio=statistics.median(ratios),
                   min_ratio=ratios[0], max_ratio=ratios[-1])
    if args.baseline:
        summary['baseline_median_ratio'] = statistics.median(
            v['baseline_ratio'] for v in rows.values())
    print(json.dumps(summary))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(summary=summary, models=rows), f, indent=1)


if __name__ == '__main__':
    main()
