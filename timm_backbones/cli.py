"""The `timm-backbones` command (also `python -m timm_backbones`): find a backbone and wire it.

    timm-backbones list [PATTERN] [--plain | --hierarchical] [--output-stride] [--json] [--live]
    timm-backbones show ARCH [--out-indices I ...] [--output-stride N]
    timm-backbones config DETECTOR ARCH [--no-pretrained]     (or a segmentor family)
    timm-backbones check CONFIG [--cfg-options KEY=VALUE ...]
    timm-backbones swap CONFIG ARCH [-o OUT.py] [--no-pretrained]   (a path or mmdet::name)

Everything runs on the meta device (no weights are allocated or downloaded). `list` reads the
published compatibility matrix (`docs/compatibility.csv`) for the architectures it covers and
probes the others (or all, with `--live`); `show` and `config` always probe. Errors go to stderr
with a non-zero exit status: 1 for a config or model that cannot be used, 2 for bad arguments.
"""
import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, TextIO, Tuple

from ._configs import to_list

__all__ = ['main', 'build_parser', 'matrix_rows', 'describe', 'auto_changes']

_MATRIX = Path(__file__).resolve().parent.parent / 'docs' / 'compatibility.csv'
_STATUS_CHAR = {'ok': 'o', 'rejected': 'r', 'failed': 'F', 'timeout': 'T'}


class CliError(Exception):
    """An error to report as `timm-backbones: error: ...` with exit status 1."""


# ---- data ----------------------------------------------------------------------------------------
def matrix_rows(path: Path = _MATRIX) -> Dict[str, Dict[str, str]]:
    """The compatibility matrix by architecture ({} without one).

    Args:
        path: The CSV written by `tools/sweep.py`.

    Example:
        >>> matrix_rows()['resnet18']['retinanet']  # doctest: +SKIP
        'ok'
    """
    if not path.is_file():
        return {}
    with open(path, newline='') as f:
        return {row['arch']: row for row in csv.DictReader(f)}


def _families_in(row: Mapping[str, str]) -> List[str]:
    from .families import FAMILIES
    return [f for f in FAMILIES if f in row]


def describe(arch: str) -> Dict[str, str]:
    """One matrix-style row for `arch`, probed live (meta device; no family checks).

    Example:
        >>> describe('resnet18')['strides']
        '2 4 8 16 32'
    """
    from .sweep import describe_architecture
    result = describe_architecture(arch)
    return dict(arch=arch, levels=str(result.levels),
                channels=' '.join(map(str, result.channels)),
                strides=' '.join(map(str, result.strides)), params_m=f'{result.params:g}',
                layout=result.layout, output_stride=' '.join(map(str, result.output_strides)),
                fixed_size=result.fixed_size, pad_divisor=str(result.pad_divisor),
                plain=str(result.plain).lower())


def _runs(values: str) -> str:
    """'16 16 16 16' -> '16x4'; other lists as they are."""
    parts = values.split()
    if len(parts) > 2 and len(set(parts)) == 1:
        return f'{parts[0]}x{len(parts)}'
    return ' '.join(parts)


def _status(row: Mapping[str, str]) -> str:
    families = _families_in(row)
    if not families:
        return '-'
    return ''.join(_STATUS_CHAR.get(row[f], '?') for f in families)


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + '\n')


def _progress(i: int, n: int, name: str) -> None:
    if sys.stderr.isatty() or n > 20:
        sys.stderr.write(f'\rprobing {i}/{n}: {name[:40]:40s}')
        sys.stderr.flush()


# ---- commands ------------------------------------------------------------------------------------
def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    import timm
    names = timm.list_models(args.pattern) if args.pattern else timm.list_models()
    if not names:
        raise CliError(f'no timm architecture matches {args.pattern!r} (a wildcard pattern, '
                       f"e.g. 'convnext*' or '*vit*')")
    matrix = {} if args.live else matrix_rows()
    rows, missing, failed = [], [n for n in names if n not in matrix], []
    for i, name in enumerate(missing):
        _progress(i + 1, len(missing), name)
        try:
            matrix[name] = describe(name)
        except (ValueError, TypeError) as err:
            failed.append(name)
            matrix[name] = dict(arch=name, error=str(err).splitlines()[0])
    if missing and (sys.stderr.isatty() or len(missing) > 20):
        sys.stderr.write('\r' + ' ' * 60 + '\r')
    for name in names:
        row = matrix[name]
        if 'error' in row:
            if not (args.plain or args.hierarchical or args.output_stride):
                rows.append(row)
            continue
        plain = row['plain'] == 'true'
        if (args.plain and not plain) or (args.hierarchical and plain) or \
                (args.output_stride and not row['output_stride']):
            continue
        rows.append(row)
    if args.json:
        json.dump(rows, out, indent=1)
        out.write('\n')
        return 0
    head = ['arch', 'levels', 'channels', 'strides', 'params(M)', 'layout', 'output_stride',
            'fixed size', 'status']
    table = [head]
    for r in rows:
        if 'error' in r:
            table.append([r['arch'], '-', '-', '-', '-', '-', '-', '-', 'unusable'])
            continue
        table.append([r['arch'], r['levels'], _runs(r['channels']), _runs(r['strides']),
                      r['params_m'], r['layout'], r['output_stride'].replace(' ', ',') or '-',
                      r['fixed_size'] or '-', _status(r)])
    _table(table, out)
    families = next((_families_in(r) for r in rows if _families_in(r)), [])
    legend = ', '.join(f'{i + 1}: {f}' for i, f in enumerate(families))
    out.write(f'\n{len(rows)} architectures.'
              + (f' status, one letter per detector family ({legend}): o ok, r rejected '
                 f'(clear error), F failed, T timeout (docs/compatibility.md).' if legend else '')
              + (f' {len(failed)} cannot be used as backbones (`show ARCH` says why).'
                 if failed else '') + '\n')
    return 0


def _cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    from ._plan import plan_backbone
    from ._probe import meta_model
    try:
        plan = plan_backbone(args.arch, out_indices=args.out_indices,
                             output_stride=args.output_stride)
    except (ValueError, TypeError) as err:
        raise CliError(str(err)) from err
    chosen = set(plan.out_indices)
    table = [['', 'index', 'channels', 'stride', 'module']]
    for level in plan.levels:
        table.append(['*' if level.index in chosen else '', str(level.index),
                      str(level.channels), str(level.stride), level.module])
    params = sum(p.numel() for p in meta_model(args.arch, plan.kwargs).parameters()) / 1e6
    out.write(f'{args.arch}: {len(plan.levels)} levels, {params:.2f} M parameters, timm returns '
              f'{plan.output_format}'
              + (', inputs padded' + (f' by {plan.margin} px (short maps)' if plan.margin
                                        else '')
                 + (' then' if plan.margin and plan.exact_divisor > 1 else '')
                 + (f' to multiples of {plan.exact_divisor}' if plan.exact_divisor > 1 else '')
                 if plan.margin or plan.exact_divisor > 1 else '')
              + (f', only runs at {plan.fixed_size[0]}x{plan.fixed_size[1]}' if plan.fixed_size
                 else '') + '\n')
    _table(table, out)
    specs = plan.specs
    out.write('\noutputs (* above' + (', through a simple pyramid' if plan.pyramid_strides
                                       else '') + '):\n')
    _table([['', 'channels', 'stride', 'from']] +
           [[str(i), str(s.channels), str(s.stride), s.module] for i, s in enumerate(specs)], out)
    options = [f'model_name={args.arch!r}']
    if args.out_indices is not None:
        options.append(f'out_indices={tuple(args.out_indices)!r}')
    if args.output_stride is not None:
        options.append(f'output_stride={args.output_stride}')
    out.write('\nbackbone=dict(type=\'TimmBackbone\', ' + ', '.join(options)
              + ', pretrained=True),\nneck=dict(in_channels=\'auto\'),  # channels '
              + str([s.channels for s in specs]) + ', strides '
              + str([s.stride for s in specs]) + '\n')
    row = matrix_rows().get(args.arch)
    if row is not None and args.out_indices is None and args.output_stride is None:
        out.write('\ncompatibility (docs/compatibility.md): ' + ', '.join(
            f"{f} {row[f]}" + (f" ({row[f + '_reason'][:100]})" if row[f] != 'ok' else '')
            for f in _families_in(row)) + '\n')
    return 0


def _cmd_config(args: argparse.Namespace, out: TextIO) -> int:
    from .families import family_config_text
    try:
        out.write(family_config_text(args.detector, args.arch, pretrained=not args.no_pretrained))
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise CliError(str(err)) from err
    return 0


def auto_changes(before: Any, after: Any, path: str = '') -> List[Tuple[str, Any, Any]]:
    """(path, given, resolved) for every value `resolve_config` filled or changed ('auto'
    fields and fields it adds, such as a default it checked); `given` is None where unset.

    Example:
        >>> auto_changes({'neck': {'in_channels': 'auto'}}, {'neck': {'in_channels': [64]}})
        [('neck.in_channels', 'auto', [64])]
    """
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        found = []
        for key in after:
            where = f'{path}.{key}' if path else str(key)
            found += auto_changes(before.get(key), after[key], where)
        return found
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)) and \
            len(before) == len(after) and any(isinstance(b, Mapping) for b in before):
        return [c for i, (b, a) in enumerate(zip(before, after))
                for c in auto_changes(b, a, f'{path}[{i}]')]
    if to_list(before) != to_list(after):
        return [(path, before, to_list(after))]
    return []


def _cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    from ._configs import timm_model_name
    from ._plan import feature_specs
    from .engine import load_config
    from .wiring import resolve_config
    try:
        cfg = load_config(args.config)  # a path or mmdet::name
    except Exception as err:  # noqa: BLE001 - mmengine raises many kinds for unreadable files
        raise CliError(f'cannot read config {args.config!r}: {type(err).__name__}: {err}') \
            from err
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    try:  # exactly what TimmBackboneRunner.from_cfg does first
        resolved = resolve_config(cfg)
    except (ValueError, TypeError) as err:
        raise CliError(f'{type(err).__name__}: {err}') from err
    before, after = cfg.to_dict(), resolved.to_dict()
    model = after.get('model', {})
    backbone = model.get('backbone', {}) if isinstance(model, Mapping) else {}
    if timm_model_name(backbone) is not None:
        specs = feature_specs(backbone)
        out.write(f'backbone {timm_model_name(backbone)!r}: ' + ', '.join(
            f'{s.channels} channels @ stride {s.stride}' for s in specs) + '\n')
    changes = auto_changes(before, after)
    if not changes:
        out.write("nothing to fill: no 'auto' field and no timm backbone default to check\n")
    for where, given, value in changes:
        out.write(f"{where} = {value!r}   ({'unset' if given is None else repr(given)})\n")
    out.write(f'{args.config}: resolves (no weights allocated)\n')
    return 0


def _cmd_swap(args: argparse.Namespace, out: TextIO) -> int:
    from .wiring import resolve_config, swap_config_text
    out_dir = Path(args.output).resolve().parent if args.output else None
    try:
        text, swapped = swap_config_text(args.config, args.arch,
                                         pretrained=False if args.no_pretrained else None,
                                         out_dir=out_dir)
        resolve_config(swapped.config)  # the written config resolves (meta device only)
    except FileNotFoundError as err:
        raise CliError(f'cannot read config {args.config!r}: {err}') from err
    except (ValueError, TypeError) as err:
        raise CliError(f'{type(err).__name__}: {err}') from err
    if args.output:
        Path(args.output).write_text(text)
        for line in swapped.notes:
            out.write(f'{line}\n')
        out.write(f'wrote {args.output}\n')
    else:
        out.write(text)
    return 0


# ---- entry point ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `timm-backbones`."""
    from mmengine.config import DictAction

    from .families import FAMILIES
    parser = argparse.ArgumentParser(
        prog='timm-backbones', description='Find a timm backbone for mmdet and wire it '
        '(meta device: no weights are allocated or downloaded).')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('list', help='one row per timm architecture')
    p.add_argument('pattern', nargs='?', default='', help="wildcard, e.g. 'convnext*'")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument('--plain', action='store_true', help='only same-stride (ViT-like) models')
    kind.add_argument('--hierarchical', action='store_true',
                      help='only models whose levels form a pyramid')
    p.add_argument('--output-stride', action='store_true',
                   help='only models that accept output_stride (dilation)')
    p.add_argument('--json', action='store_true', help='JSON instead of a table')
    p.add_argument('--live', action='store_true',
                   help='probe every architecture instead of reading docs/compatibility.csv')
    p = sub.add_parser('show', help="one architecture's levels and a backbone dict")
    p.add_argument('arch', help="timm architecture or tag, e.g. 'convnext_tiny'")
    p.add_argument('--out-indices', type=int, nargs='+', help='levels to return (e.g. -3 -2 -1)')
    p.add_argument('--output-stride', type=int, choices=(8, 16, 32))
    p = sub.add_parser('config', help='a complete config for a shipped detector (or '
                       'segmentor) family')
    p.add_argument('detector', choices=list(FAMILIES), help='detector or segmentor family')
    p.add_argument('arch', help='timm architecture or tag')
    p.add_argument('--no-pretrained', action='store_true',
                   help='pretrained=False (random init; no download)')
    p = sub.add_parser('check', help="resolve a config and print what each 'auto' became")
    p.add_argument('config', help='config file')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='overrides, as for tools/train.py (key=value)')
    p = sub.add_parser('swap', help="a config with its backbone replaced by a timm model "
                       '(levels by stride; derived fields auto)')
    p.add_argument('config', help='config file or mmdet:: name, e.g. '
                   'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
    p.add_argument('arch', help='timm architecture or tag')
    p.add_argument('-o', '--output', help='write the config here (default: stdout)')
    p.add_argument('--no-pretrained', action='store_true',
                   help='pretrained=False (random init; no download)')
    return parser


def main(argv: Optional[Iterable[str]] = None, out: Optional[TextIO] = None) -> int:
    """Run the command; returns the exit status (the console script exits with it).

    Example:
        >>> main(['config', 'retinanet', 'resnet18'])  # doctest: +SKIP
    """
    import logging

    from mmengine.logging import MMLogger
    out = out or sys.stdout
    args = build_parser().parse_args(None if argv is None else list(argv))
    import timm_backbones  # noqa: F401  (registers the modules for `check`)
    commands = dict(list=_cmd_list, show=_cmd_show, config=_cmd_config, check=_cmd_check,
                    swap=_cmd_swap)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)  # probe warnings are not results; restored after the command
    try:
        return commands[args.command](args, out)
    except CliError as err:
        sys.stderr.write(f'timm-backbones {args.command}: error: {err}\n')
        return 1
    except BrokenPipeError:  # `timm-backbones list | head`
        return 0
    finally:
        logger.setLevel(level)


def console() -> None:
    """Entry point of the `timm-backbones` console script."""
    sys.exit(main())
