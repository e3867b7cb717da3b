"""Sweep timm's architectures through TimmBackbone + resolve_config + a meta-device
RetinaNet/FPN build with a shape-checked forward; writes a JSON report and prints a summary.

Example:
    python tools/sweep.py --out work_dirs/sweep.json            # all 1371 architectures
    python tools/sweep.py --filter 'vit_*' --plain-only         # same-stride models only
"""
import argparse
import json
import statistics
from collections import Counter
from dataclasses import asdict

import timm

import timm_backbones  # noqa: F401  (registers the modules)
from timm_backbones.sweep import check_architecture, check_layer_decay, is_plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--filter', default='', help='timm.list_models filter, e.g. "vit_*"')
    parser.add_argument('--plain-only', action='store_true',
                        help='only models whose default levels share one stride')
    parser.add_argument('--limit', type=int, default=0, help='first N architectures only')
    parser.add_argument('--no-frozen', action='store_true', help='skip the frozen_stages check')
    parser.add_argument('--layer-decay', action='store_true',
                        help='count the architectures TimmLayerDecayOptimWrapperConstructor '
                             'gives layer-decay groups (instead of the wiring sweep)')
    parser.add_argument('--out', help='JSON report path')
    args = parser.parse_args()

    names = timm.list_models(args.filter) if args.filter else timm.list_models()
    if args.plain_only:
        names = [n for n in names if is_plain(n)]
    if args.limit:
        names = names[:args.limit]
    if args.layer_decay:
        layer_decay(names, args.out)
        return
    results = []
    for i, name in enumerate(names):
        r = check_architecture(name, frozen=not args.no_frozen)
        results.append(r)
        if r.status != 'ok':
            print(f'[{i + 1}/{len(names)}] {name}: {r.status}: {r.reason[:300]}', flush=True)
    counts = Counter(r.status for r in results)
    times = sorted(r.specs_seconds for r in results if r.status == 'ok')
    summary = dict(total=len(results), **counts)
    if times:
        summary.update(specs_median_s=round(statistics.median(times), 3),
                       specs_p95_s=round(times[int(0.95 * (len(times) - 1))], 3))
    frozen = [r.frozen_stages for r in results if r.frozen_stages is not None]
    if frozen:
        summary['frozen_stages_supported'] = f'{sum(frozen)}/{len(frozen)}'
    print(json.dumps(summary))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(summary=summary, results=[asdict(r) for r in results]), f, indent=1)


def layer_decay(names, out) -> None:
    """The layer-decay count: groups / clear error (no group_matcher) / rejected / failed."""
    results = {}
    for i, name in enumerate(names):
        status, reason = check_layer_decay(name)
        results[name] = dict(status=status, reason=reason)
        if status == 'failed':
            print(f'[{i + 1}/{len(names)}] {name}: {status}: {reason[:300]}', flush=True)
    summary = dict(total=len(names), **Counter(r['status'] for r in results.values()))
    print(json.dumps(summary))
    if out:
        with open(out, 'w') as f:
            json.dump(dict(summary=summary, results=results), f, indent=1)


if __name__ == '__main__':
    main()
