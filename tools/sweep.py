"""Sweep timm's architectures through the shipped detector families on the meta device and write
the compatibility matrix (CSV, one row per architecture, plus a Markdown report).

Each architecture is checked in a worker process (`--jobs` of them) with a time limit
(`--timeout`); rows are appended to the CSV as they finish, so an interrupted sweep resumes where
it stopped (rows already there are kept unless `--restart`). Progress goes to stderr.

Example:
    python tools/sweep.py --jobs 2 --csv docs/compatibility.csv --md docs/compatibility.md
    python tools/sweep.py --filter 'vit_*' --families retinanet dino --csv /tmp/vit.csv
"""
import argparse
import csv
import datetime
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import Counter
from multiprocessing.connection import wait
from typing import Dict, List, Optional

import timm

from timm_backbones.sweep import (FAMILIES, MATRIX_FAMILIES, STATUSES, ArchResult, FamilyResult,
                                  check_architecture, check_layer_decay, environment)

INFO = ['arch', 'levels', 'channels', 'strides', 'params_m', 'layout', 'output_stride',
        'fixed_size', 'pad_divisor', 'plain', 'seconds']


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--filter', default='', help='timm.list_models filter, e.g. "vit_*"')
    parser.add_argument('--limit', type=int, default=0,
                        help='only the first N architectures (after --filter)')
    parser.add_argument('--sample', type=int, default=0,
                        help='only N architectures evenly spread over the list (for timing)')
    parser.add_argument('--families', nargs='+', default=list(MATRIX_FAMILIES),
                        choices=list(FAMILIES), help='detector families to check')
    parser.add_argument('--jobs', type=int, default=2, help='worker processes')
    parser.add_argument('--timeout', type=float, default=600.0,
                        help='seconds per architecture (all families) before it is killed')
    parser.add_argument('--csv', default='work_dirs/compatibility.csv',
                        help='the matrix (appended as rows finish; resumed from)')
    parser.add_argument('--md', help='also write the Markdown report here')
    parser.add_argument('--restart', action='store_true',
                        help='ignore rows already in --csv and check everything again')
    parser.add_argument('--quiet', action='store_true', help='no per-architecture progress')
    parser.add_argument('--report-only', action='store_true',
                        help='check nothing: write --md from the rows already in --csv')
    parser.add_argument('--note', default='', help='a sentence added to the report (e.g. the '
                        'wall time of resumed runs)')
    parser.add_argument('--layer-decay', action='store_true',
                        help='instead of the matrix: count the architectures '
                             'TimmLayerDecayOptimWrapperConstructor gives layer-decay groups')
    parser.add_argument('--out', help='with --layer-decay: JSON report path')
    return parser.parse_args(argv)


# ---- rows ----------------------------------------------------------------------------------------
def to_row(result: ArchResult, families: List[str]) -> Dict[str, str]:
    row = dict(arch=result.arch, levels=str(result.levels),
               channels=' '.join(map(str, result.channels)),
               strides=' '.join(map(str, result.strides)), params_m=f'{result.params:g}',
               layout=result.layout, output_stride=' '.join(map(str, result.output_strides)),
               fixed_size=result.fixed_size, pad_divisor=str(result.pad_divisor),
               plain=str(result.plain).lower(), seconds=f'{result.seconds:.2f}')
    for family in families:
        found = result.families.get(family, FamilyResult('failed', 'not checked'))
        row[family] = found.status
        row[f'{family}_reason'] = found.reason
    return row


def columns(families: List[str]) -> List[str]:
    return INFO + families + [f'{f}_reason' for f in families]


def read_rows(path: str, families: List[str]) -> Dict[str, Dict[str, str]]:
    """Complete rows already in the CSV (every family checked), by architecture."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    return {r['arch']: r for r in rows if all(r.get(fam) in STATUSES for fam in families)}


def write_rows(path: str, rows: List[Dict[str, str]], families: List[str]) -> None:
    """All rows, sorted in timm's order, written atomically."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, columns(families), extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# ---- workers -------------------------------------------------------------------------------------
def _worker(conn, families: List[str]) -> None:
    import torch
    torch.set_num_threads(1)
    import warnings
    warnings.filterwarnings('ignore')
    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel('ERROR')  # timm's fallbacks are recorded, not logged
    while True:
        arch = conn.recv()
        if arch is None:
            return
        try:
            conn.send(check_architecture(arch, families))
        except Exception as err:  # noqa: BLE001 - a crash of the check itself is a result too
            reason = f'{type(err).__name__}: {err}'.splitlines()[0][:400]
            conn.send(ArchResult(arch, families={f: FamilyResult('failed', reason)
                                                 for f in families}))


_RUNNING: List['Worker'] = []  # for _terminate


def _terminate(*_) -> None:
    """SIGTERM: kill the workers and leave at once (every finished row is already written)."""
    for w in _RUNNING:
        if w.process.is_alive():
            w.process.kill()
    print('sweep: terminated; rerun to resume', file=sys.stderr, flush=True)
    os._exit(143)


class Worker:
    """One worker process and the architecture it is checking."""

    def __init__(self, ctx, families: List[str]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, families), daemon=True)
        self.process.start()
        _RUNNING.append(self)
        child.close()
        self.arch: Optional[str] = None
        self.started = 0.0

    def submit(self, arch: str) -> None:
        self.arch, self.started = arch, time.monotonic()
        self.conn.send(arch)

    def kill(self) -> None:
        self.process.kill()
        self.process.join()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.kill()


def sweep(names: List[str], families: List[str], jobs: int, timeout: float, out: str,
          quiet: bool) -> List[ArchResult]:
    """Check `names` in worker processes, appending each finished row to `out`."""
    ctx = mp.get_context('fork' if sys.platform.startswith('linux') else 'spawn')
    pending = list(names)
    workers = [Worker(ctx, families) for _ in range(max(1, min(jobs, len(pending))))]
    done: List[ArchResult] = []
    start = time.monotonic()
    new_file = not os.path.isfile(out) or os.path.getsize(out) == 0
    with open(out, 'a', newline='') as f:
        writer = csv.DictWriter(f, columns(families), extrasaction='ignore')
        if new_file:
            writer.writeheader()

        def record(result: ArchResult) -> None:
            done.append(result)
            writer.writerow(to_row(result, families))
            f.flush()
            if not quiet:
                elapsed = time.monotonic() - start
                eta = elapsed / len(done) * (len(names) - len(done))
                states = ' '.join(r.status for r in result.families.values())
                bad = [f'{k}: {r.reason[:120]}' for k, r in result.families.items()
                       if r.status != 'ok']
                print(f'[{len(done)}/{len(names)}] {result.arch}: {states} '
                      f'({result.seconds:.1f} s; eta {eta / 60:.0f} min)'
                      + (f" -- {bad[0]}" if bad else ''), file=sys.stderr, flush=True)

        for w in workers:
            if pending:
                w.submit(pending.pop(0))
        try:
            _loop(workers, pending, record, ctx, families, timeout)
        finally:  # interrupted too: no worker outlives the sweep
            for w in workers:
                w.kill() if w.arch else w.stop()
    return done


def _loop(workers: List[Worker], pending: List[str], record, ctx, families: List[str],
          timeout: float) -> None:
    """Hand out architectures until all are recorded; kill workers past the time limit."""
    while any(w.arch for w in workers):
        busy = [w for w in workers if w.arch]
        for conn in wait([w.conn for w in busy], timeout=min(1.0, timeout / 2)):
            w = next(w for w in busy if w.conn is conn)
            try:
                result = w.conn.recv()
            except (EOFError, OSError):  # the worker died (out of memory, a crash in C)
                result = ArchResult(w.arch, families={
                    fam: FamilyResult('failed', 'the worker process died')
                    for fam in families})
                w.kill()
                workers[workers.index(w)] = w = Worker(ctx, families)
            record(result)
            w.arch = None
            if pending:
                w.submit(pending.pop(0))
        now = time.monotonic()
        for i, w in enumerate(workers):
            if w.arch and now - w.started > timeout:
                w.kill()
                record(ArchResult(w.arch, seconds=round(now - w.started, 2), families={
                    fam: FamilyResult('timeout', f'no result within {timeout:g} s')
                    for fam in families}))
                workers[i] = Worker(ctx, families)
                if pending:
                    workers[i].submit(pending.pop(0))


# ---- report --------------------------------------------------------------------------------------
def markdown(rows: List[Dict[str, str]], families: List[str], env: Dict[str, str],
             note: str) -> str:
    """The report: versions, totals per family, every failure with its reason, and the table."""
    lines = ['# Compatibility of timm architectures with the shipped detector and segmentor '
             'families', '',
             f'Generated by `tools/sweep.py` (`make compatibility`): {note}. Stack: '
             + ', '.join(f'{k} {v}' for k, v in env.items() if k != 'cpus') + '.', '',
             'Each architecture is put, with its default levels and `pretrained=False`, into the '
             'config `timm-backbones config FAMILY ARCH` prints for each family; the config is '
             'resolved, the whole detector is built on the meta device, and backbone, neck and '
             'dense heads run at 608x800 (RTMDet: 480x640) with every map checked against the '
             'wiring; segmentors (mmseg: UPerNet, SegFormer head, semantic FPN, Mask2Former) '
             'run backbone, neck and every decode and auxiliary head at 384x512 (Mask2Former\'s '
             'pixel decoder on the CPU at 128x160); every backbone map also meets the layout '
             'contract (NCHW-contiguous, as mmdet\'s backbones return theirs: read from the meta '
             'tensors\' strides). '
             '**ok**: works; **rejected**: refused up front with a clear error (reason '
             'below); '
             '**failed** / **timeout**: anything else. Machine-readable: '
             '[compatibility.csv](compatibility.csv).', '',
             '| family | ' + ' | '.join(STATUSES) + ' |',
             '|---|' + '---|' * len(STATUSES)]
    for fam in families:
        counts = Counter(r[fam] for r in rows)
        lines.append(f'| {FAMILIES[fam].title} (`{fam}`) | '
                     + ' | '.join(str(counts.get(s, 0)) for s in STATUSES) + ' |')
    lines += ['', f'{len(rows)} architectures.', '', '## Why architectures do not work', '']
    for fam in families:
        reasons = Counter(r[f'{fam}_reason'] for r in rows if r[fam] != 'ok')
        if not reasons:
            continue
        lines.append(f'### {FAMILIES[fam].title}')
        lines.append('')
        for reason, n in reasons.most_common():
            archs = [r['arch'] for r in rows if r[fam] != 'ok' and r[f'{fam}_reason'] == reason]
            shown = ', '.join(archs[:12]) + (f', ... ({n})' if n > 12 else '')
            lines.append(f'- {shown}: {reason.replace("|", "/")}')
        lines.append('')
    short = {'ok': 'ok', 'rejected': 'rej', 'failed': 'FAIL', 'timeout': 'TIME'}

    def runs(values: str) -> str:  # '16 16 16' -> '16x3'
        parts = values.split()
        return f'{parts[0]}x{len(parts)}' if len(parts) > 2 and len(set(parts)) == 1 else values

    lines += ['## All architectures', '',
              '| arch | levels | channels | strides | params (M) | layout | output_stride | '
              'fixed size | ' + ' | '.join(families) + ' |',
              '|---|' + '---|' * (7 + len(families))]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['levels']} | {runs(r['channels'])} | "
                     f"{runs(r['strides'])} | "
                     f"{r['params_m']} | {r['layout']} | {r['output_stride'] or '-'} | "
                     f"{r['fixed_size'] or '-'} | "
                     + ' | '.join(short.get(r[f], r[f]) for f in families) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    names = timm.list_models(args.filter) if args.filter else timm.list_models()
    if args.sample and args.sample < len(names):
        names = [names[i * len(names) // args.sample] for i in range(args.sample)]
    if args.limit:
        names = names[:args.limit]
    if args.layer_decay:
        layer_decay(names, args.out)
        return
    if not names:
        sys.exit(f'no timm architecture matches --filter {args.filter!r}')
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    kept = {} if args.restart else read_rows(args.csv, args.families)
    kept = {k: v for k, v in kept.items() if k in set(names)}
    if args.report_only:
        if not args.md:
            sys.exit('--report-only needs --md')
        rows = [kept[n] for n in names if n in kept]
        write_rows(args.csv, rows, args.families)  # in timm's order
        with open(args.md, 'w') as f:
            f.write(markdown(rows, args.families, environment(),
                             f'{len(rows)} of {len(names)} architectures in '
                             f'{os.path.basename(args.csv)}' + (f'; {args.note}' if args.note
                                                                else '')))
        return
    todo = [n for n in names if n not in kept]
    # start the file afresh from the complete rows (drops partial rows and other columns)
    write_rows(args.csv, [kept[n] for n in names if n in kept], args.families)
    print(f'sweep: {len(names)} architectures x {len(args.families)} families; '
          f'{len(kept)} already in {args.csv}, {len(todo)} to check with {args.jobs} '
          f'process(es)', file=sys.stderr, flush=True)
    start = time.monotonic()
    results = sweep(todo, args.families, args.jobs, args.timeout, args.csv, args.quiet)
    wall = time.monotonic() - start
    rows = read_rows(args.csv, args.families)
    ordered = [rows[n] for n in names if n in rows]
    write_rows(args.csv, ordered, args.families)
    totals = {f: dict(Counter(r[f] for r in ordered)) for f in args.families}
    print(f'sweep: {len(results)} checked in {wall / 60:.1f} min; {len(ordered)} rows in '
          f'{args.csv}; totals: {totals}', file=sys.stderr, flush=True)
    if args.md:
        date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
        note = (f'on {date}, {len(results)} architectures checked in {wall / 60:.1f} min with '
                f'{args.jobs} processes on {environment()["cpus"]} CPUs'
                + (f' ({len(kept)} rows kept from an earlier run)' if kept else '')
                + (f'. {args.note}' if args.note else ''))
        with open(args.md, 'w') as f:
            f.write(markdown(ordered, args.families, environment(), note))


def layer_decay(names: List[str], out: Optional[str]) -> None:
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
