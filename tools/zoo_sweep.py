"""mmdet's model zoo x timm backbones: one representative config per config folder of the
installed mmdet, its backbone swapped (`timm_backbones.wiring.swap_backbone`), resolved, built,
one training step and `predict` on CPU on a synthetic batch, beside the same run with mmdet's own
backbone (`timm_backbones.zoo`). Writes docs/zoo.csv (rows appended as they finish: an
interrupted sweep resumes, unless --restart) and docs/zoo.md (the family x backbone table).

Example:
    nice -n 19 python tools/zoo_sweep.py --md docs/zoo.md --csv docs/zoo.csv
    python tools/zoo_sweep.py --families retinanet yolact --backbones resnet18 --csv /tmp/z.csv
    python tools/zoo_sweep.py --report-only --csv docs/zoo.csv --md docs/zoo.md
"""
import argparse
import os
import sys
import time
from typing import List, Optional

os.environ.setdefault('OMP_NUM_THREADS', '1')

import torch  # noqa: E402

from timm_backbones.zoo import (NATIVE, TIMEOUT, ZOO_BACKBONES, ZooResult, read_zoo_csv,  # noqa: E402
                                write_zoo_csv, write_zoo_markdown, zoo_families, zoo_sweep)

COMMAND = 'python tools/zoo_sweep.py --md docs/zoo.md --csv docs/zoo.csv'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--families', nargs='+', help='only these config folders')
    parser.add_argument('--backbones', nargs='+', default=list(ZOO_BACKBONES),
                        help='timm models (default: %(default)s)')
    parser.add_argument('--csv', help='results, one row per (family, backbone); resumed')
    parser.add_argument('--md', help='the Markdown table')
    parser.add_argument('--restart', action='store_true', help='ignore rows already in --csv')
    parser.add_argument('--timeout', type=int, default=TIMEOUT, help='seconds per check')
    parser.add_argument('--report-only', action='store_true',
                        help='write --md from the rows in --csv, run nothing (e.g. while a '
                        'sweep is still running)')
    parser.add_argument('--list', action='store_true',
                        help='print the families and their configs, run nothing')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    import timm_backbones  # noqa: F401  (registers the backbone; resolving builds)
    import logging

    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    families = zoo_families()
    if args.families:
        unknown = sorted(set(args.families) - {f.name for f in families})
        if unknown:
            sys.stderr.write(f'unknown families {unknown}; choose from '
                             f'{[f.name for f in families]}\n')
            return 2
        families = [f for f in families if f.name in args.families]
    if args.list:
        for f in families:
            print(f'{f.name:24s} {f.config or "(left out: " + f.excluded + ")"}')
        return 0
    done = {}
    if args.csv and not args.restart:
        done = {(r.family, r.backbone): r for r in read_zoo_csv(args.csv)}
    elif args.csv:
        write_zoo_csv([], args.csv)
    start = time.perf_counter()

    def report(result: ZooResult) -> None:
        if args.csv:
            write_zoo_csv([result], args.csv, append=True)
        sys.stderr.write(f'[{time.perf_counter() - start:7.0f}s] {result.family:22s} '
                         f'{result.backbone:22s} {result.status:12s} {result.seconds:6.1f}s '
                         f'{result.reason[:150]}\n')

    if args.report_only:
        names = {f.name for f in families}
        results = [r for r in done.values() if r.family in names]
    else:
        results = zoo_sweep(families, args.backbones, done=done, on_result=report,
                            timeout=args.timeout)
    if args.md:
        import mmdet
        import timm
        env = (f'mmdet {mmdet.__version__}, timm {timm.__version__}, torch {torch.__version__}, '
               f'CPU, one thread.')
        write_zoo_markdown(results, families, args.md, args.backbones, COMMAND, env)
    failed = [r for r in results if r.backbone != NATIVE and r.status == 'fail']
    sys.stderr.write(f'{len(results)} results in {time.perf_counter() - start:.0f} s; '
                     f'{len(failed)} failures of ours\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
