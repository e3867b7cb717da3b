"""What a timm feature extractor is, read without weights: meta-device builds and input-size
probing. Owns `probe` (levels, output layout), `probe_input` (which input sizes run),
`supports_kwargs` (whether timm accepts a set of arguments) and `meta_model`.

Results are memoized per (model, arguments), failures included (`_cache.Memo`), so planning the
same backbone twice never repeats a failing build. The latest meta models are kept too, so
`probe_input` right after `probe` reuses the model instead of building it again.
`clear_caches()` (`_cache.py`) empties them.
"""
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import nn

from ._cache import Memo, kwargs_key
from ._meta_ops import fast_meta, on_meta
from ._specs import round_up, size_near
from ._timm import UnsupportedOptions, check_model_name, create_features, output_format

__all__ = ['Probe', 'InputRule', 'probe', 'probe_input', 'runs_at_any_size', 'has_dynamic_size',
           'supports_kwargs', 'meta_model']


@dataclass(frozen=True)
class Probe:
    """What a meta-device build tells about a timm feature extractor.

    Args:
        feature_info: Every `feature_info` entry (dicts with num_chs, reduction, module).
        output_format: 'NCHW' or 'NHWC', the layout timm returns.
    """
    feature_info: Tuple[Dict[str, Any], ...]
    output_format: str


@dataclass(frozen=True)
class InputRule:
    """Which input sizes a timm feature extractor runs at, and what it takes for its maps to be
    exactly ceil(input / stride) in size.

    Args:
        pad_divisor: Smallest trial divisor such that inputs whose sides are multiples of it
            run (1: any size).
        fixed_size: (H, W) the model only runs at (fixed position tables), else None.
        exact_divisor: A multiple of `pad_divisor` at which the maps are exactly input /
            stride (1: ceil(input / stride) at any size), or the divisor at which maps fall
            short by `margins`; `pad_divisor` where no trial divisor gives exact maps.
        margins: (level, pixels) for levels whose maps fall short of ceil(input / stride)
            (unpadded convolutions: inception): the input needs that much more padding
            (bottom/right) for the map to cover it. For a fixed-size model: how much smaller
            than the fixed size inputs must be.

    Example:
        >>> rule = probe_input('inception_v3', {})
        >>> rule.pad_divisor, rule.exact_divisor, rule.margin((1, 2, 3, 4))  # maps 2 px short
        (1, 32, 64)
    """
    pad_divisor: int
    fixed_size: Optional[Tuple[int, int]]
    exact_divisor: int = 1
    margins: Tuple[Tuple[int, int], ...] = ()

    def margin(self, levels: Sequence[int]) -> int:
        """The margin (pixels) the given levels need: the largest of theirs; a level that was
        not measured (not among the model's default outputs) counts as the largest measured."""
        if not self.margins:
            return 0
        known = dict(self.margins)
        worst = max(known.values())
        return max((known.get(i, worst) for i in levels), default=0)


_Key = Tuple[str, Tuple[Tuple[str, str], ...]]
_SIZE = 4096  # entries per memo: a full sweep of timm's architectures fits
_PROBES = Memo('probes', _SIZE, failures=(ValueError,))
_INPUTS = Memo('input rules', _SIZE, failures=(ValueError,))
# the trial-divisor part of `_INPUTS`: (rule or None, last failing size, its error)
_ANY_SIZE = Memo('any-size rules', _SIZE, failures=(ValueError,))
_MODELS = Memo('meta models', 2)  # the latest meta builds
# candidate input divisors, as multiples of the deepest stride (windowed attention: 7, 14)
_DIVISOR_FACTORS = (1, 2, 4, 7, 8, 14, 16)
_ODD_TRIAL = (321, 417)  # the first trial size (divisor 1)


def _key(model_name: str, kwargs: Dict[str, Any]) -> _Key:
    return model_name, kwargs_key(kwargs)


def meta_model(model_name: str, kwargs: Dict[str, Any]) -> nn.Module:
    """The feature extractor built on the meta device (kept among the latest few builds); a
    real CPU build only where the meta device fails (a model that computes with tensors while
    being built) but the CPU works.

    Example:
        >>> sum(p.numel() for p in meta_model('resnet18', {}).parameters())
        11176512
    """
    return _MODELS.get(_key(model_name, kwargs), lambda: _build(model_name, kwargs))


def _build(model_name: str, kwargs: Dict[str, Any]) -> nn.Module:
    try:
        return create_features(model_name, kwargs, None, meta=True)
    except UnsupportedOptions:
        raise  # arguments the model does not take fail on every device: no CPU build
    except ValueError as meta_err:
        try:
            model = create_features(model_name, kwargs, None, meta=False)
        except ValueError:
            raise meta_err  # timm's error is its cause; the CPU build's is its context
    print_log(f'{model_name!r} does not build on the meta device; its feature metadata came '
              f'from a CPU build', logger='current', level=logging.WARNING)
    return model


def probe(model_name: str, kwargs: Dict[str, Any]) -> Probe:
    """Build `model_name` as a feature extractor on the meta device (no weights; cached, failures
    too) and read its levels and output layout.

    Args:
        model_name: timm architecture or tag (checked first).
        kwargs: `timm.create_model` arguments from `timm_kwargs`.

    Raises:
        ValueError: timm cannot build it with these arguments (`UnsupportedOptions` when timm
            refused an argument; the cause is chained).

    Example:
        >>> p = probe('resnet18', timm_kwargs())
        >>> [d['reduction'] for d in p.feature_info], p.output_format
        ([2, 4, 8, 16, 32], 'NCHW')
    """
    check_model_name(model_name)

    def describe() -> Probe:
        model = meta_model(model_name, kwargs)
        return Probe(tuple(dict(d) for d in model.feature_info.info), output_format(model))

    return _PROBES.get(_key(model_name, kwargs), describe)


def supports_kwargs(model_name: str, kwargs: Dict[str, Any]) -> bool:
    """Whether timm builds `model_name` with `kwargs` as a feature extractor (meta; cached).

    A build refused for its arguments (`UnsupportedOptions`: an argument the model does not
    take) is a plain False. A build failing for any other reason is False too, with a warning
    naming the cause, so a broken option set never passes for an unsupported one unnoticed.
    """
    try:
        probe(model_name, kwargs)
    except UnsupportedOptions:
        return False
    except ValueError as err:
        print_log(f'{model_name!r} failed to build with {kwargs}: {err}', logger='current',
                  level=logging.WARNING)
        return False
    return True


def probe_input(model_name: str, kwargs: Dict[str, Any]) -> InputRule:
    """The input sizes `model_name` runs at, from meta-device forwards at non-square trial sizes
    (cached, failures too); the outputs are checked against `feature_info`.

    Example:
        >>> probe_input('maxvit_tiny_tf_224', {}).pad_divisor  # window 7 at stride 32
        224
    """
    probe(model_name, kwargs)  # checks the name and the arguments
    return _INPUTS.get(_key(model_name, kwargs),
                       lambda: _input_rule(model_name, meta_model(model_name, kwargs), kwargs))


class _Trials:
    """Trial forwards of one model: output shapes by input size, or the exception the model
    raised there (kept for the error message if no size works); each size runs once.

    Meta forwards run with the fast meta kernels, and with the meta device as the default
    (`on_meta`) for a model that makes tensors while it runs (ConViT's index tables, rotary
    embeddings: no memory and no time). Forwards start without torch's default-device mode
    (a third of a meta forward's time), watching for a tensor made on the CPU; the first one
    stops the forward, which runs again under `on_meta`, as do all later ones of the model. A
    forward that made none ran exactly as it would under `on_meta`.
    """

    def __init__(self, model: nn.Module, in_chans: int) -> None:
        self.model = model
        self.in_chans = in_chans
        self.device = next(iter(model.parameters()), torch.empty(0, device='meta')).device
        self.found: Dict[Tuple[int, int], Union[List[Tuple[int, ...]], Exception]] = {}
        self.makes_tensors = False  # seen making a tensor in a forward: on_meta from then on

    def _input(self, hw: Tuple[int, int]) -> torch.Tensor:
        return torch.empty(1, self.in_chans, *hw, device=self.device)

    def _run(self, hw: Tuple[int, int]) -> Union[List[Tuple[int, ...]], Exception]:
        if self.device.type != 'meta':
            return _shapes_or_error(self.model, self._input(hw), contextlib.nullcontext())
        if not self.makes_tensors:
            watch = fast_meta(watch_cpu=True)
            found = _shapes_or_error(self.model, self._input(hw), watch)
            if not watch.made_cpu:
                return found
            self.makes_tensors = True
        return _shapes_or_error(self.model, self._input(hw), on_meta())

    def shapes(self, hw: Tuple[int, int]) -> Union[List[Tuple[int, ...]], Exception]:
        """Output shapes at `hw`, or the exception raised there."""
        if hw not in self.found:
            self.found[hw] = self._run(hw)
        return self.found[hw]

    def check_kernels(self, hw: Tuple[int, int]) -> None:
        """For a model that ran at no size: the forward at `hw` again, without the fast meta
        kernels. If that one runs, the fast kernels are wrong (a bug of this package), which is
        raised rather than read as "does not run at any size". (A kernel wrong only at some
        sizes is left to the kernels' own tests: a model that runs at some size under them is
        not run twice.)"""
        found = self.shapes(hw)
        if self.device.type != 'meta' or not isinstance(found, Exception):
            return
        if isinstance(_shapes_or_error(self.model, self._input(hw), torch.device('meta')), list):
            raise RuntimeError(
                f'{type(self.model).__name__} runs at {hw[0]}x{hw[1]} on the meta device but '
                f'not under fast_meta ({type(found).__name__}: {found}): a bug in '
                f"timm_backbones' fast meta kernels (_meta_ops.py); please report it with the "
                f'model name.') from found


def _shapes_or_error(model: nn.Module, x: torch.Tensor, mode: Any
                     ) -> Union[List[Tuple[int, ...]], Exception]:
    try:
        with torch.no_grad(), mode:
            outs = model(x)
    except Exception as err:  # noqa: BLE001 - any failure means "not at this size"; kept
        return err
    return [tuple(o.shape) for o in outs]


_Runs = Sequence[Tuple[Tuple[int, int], Sequence[Tuple[int, ...]]]]


def _sides(model: nn.Module, shape: Tuple[int, ...]) -> Tuple[int, int, int]:
    """(channels, height, width) of an output shape in the model's layout."""
    if output_format(model) == 'NHWC':
        return shape[3], shape[1], shape[2]
    return shape[1], shape[2], shape[3]


def _check_shapes(model_name: str, model: nn.Module, runs: _Runs) -> None:
    """timm's `feature_info` must describe the real outputs: channels equal, sizes near
    input / reduction (`size_near`), and between trial inputs the maps grow by input growth /
    reduction (+-1)."""
    (hw, shapes), rest = runs[0], runs[1:]
    for i, d in enumerate(model.feature_info.get_dicts()):
        c, h, w = _sides(model, shapes[i])
        r = d['reduction']
        bad = c != d['num_chs'] or not all(size_near(g, s, r) for g, s in zip((h, w), hw))
        for hw2, shapes2 in rest:
            _, h2, w2 = _sides(model, shapes2[i])
            bad |= any(abs((g2 - g) - (s2 - s) / r) > 1
                       for g, g2, s, s2 in zip((h, w), (h2, w2), hw, hw2))
        if bad:
            sizes = ', '.join(f'{a[0]}x{a[1]} -> {_sides(model, b[i])[0]}x'
                              f'{_sides(model, b[i])[1]}x{_sides(model, b[i])[2]}'
                              for a, b in runs)
            raise ValueError(
                f"timm's feature_info for {model_name!r} does not describe its outputs: level "
                f"{d['module']!r} reports {d['num_chs']} channels at stride {r}, but the model "
                f'gives {sizes}. It cannot be wired automatically (it resizes its input or '
                f'reports wrong metadata); pick another model.')


def _offsets(model: nn.Module, runs: _Runs) -> Dict[int, Tuple[int, int]]:
    """Per returned level (by level index): the smallest and the largest difference, over the
    trial inputs and both sides, between the map side and ceil(input side / stride)."""
    found = {}
    for i, (level, d) in enumerate(zip(model.feature_info.out_indices,
                                       model.feature_info.get_dicts())):
        diffs = [got - math.ceil(side / d['reduction'])
                 for hw, shapes in runs
                 for got, side in zip(_sides(model, shapes[i])[1:], hw)]
        found[int(level)] = (min(diffs), max(diffs))
    return found


def _margins(model: nn.Module, offsets: Dict[int, Tuple[int, int]]
             ) -> Tuple[Tuple[int, int], ...]:
    """(level, pixels of input padding that cover its shortfall) for every measured level; ()
    when no level falls short."""
    reductions = dict(zip(model.feature_info.out_indices,
                          (d['reduction'] for d in model.feature_info.get_dicts())))
    margins = tuple((level, max(0, -low) * reductions[level])
                    for level, (low, _) in offsets.items())
    return margins if any(m for _, m in margins) else ()


def _uncovered(model: nn.Module, hw: Tuple[int, int], shapes: Sequence[Tuple[int, ...]]
               ) -> Tuple[Tuple[int, int], ...]:
    """(level, pixels of the input its map does not cover: input side - map side x stride) for
    every returned level of a forward at `hw`; () when every map covers the input."""
    margins = tuple((int(level), max(0, *(side - got * d['reduction'] for got, side in
                                          zip(_sides(model, shape)[1:], hw))))
                    for level, d, shape in zip(model.feature_info.out_indices,
                                               model.feature_info.get_dicts(), shapes))
    return margins if any(m for _, m in margins) else ()


def _any_size_rule(model_name: str, model: nn.Module, kwargs: Dict[str, Any]
                   ) -> Tuple[Optional[InputRule], str, str]:
    """Trial divisors, smallest first: two non-square sizes each (multiples of the divisor;
    odd sides for divisor 1). The first divisor the model runs at is its `pad_divisor`. Its
    `exact_divisor` is the first (a multiple of that) at which the maps are exactly ceil(input
    / stride), or a divisor > 1 at which some maps fall short of input / stride (unpadded
    convolutions, which no larger divisor mends), with those levels' margins. Maps off the
    nominal size otherwise (floor sizes at odd inputs: convnext's patch stem; maps resized
    inside the model: mobilevitv2) keep the search going; where no divisor mends them, the
    first the model runs at is taken (its maps are cropped).

    Returns:
        (InputRule, '', '') or (None, size of the last failure, its error) when it runs at no
        trial divisor.
    """
    model.eval()  # batch-1 trial forwards: BN in train mode rejects 1x1 maps
    trials = _Trials(model, kwargs.get('in_chans', 3))
    deepest = max(d['reduction'] for d in model.feature_info.info)
    last = ('', '')
    runs_at: Optional[InputRule] = None  # the first divisor it runs at, maps off nominal
    for factor in (0,) + _DIVISOR_FACTORS:
        d = 1 if factor == 0 else deepest * factor
        if runs_at is not None and d % runs_at.pad_divisor:
            continue  # inputs padded to d must run too
        # two non-square sizes of detection-like scale, multiples of d (odd sides when d=1;
        # the second an odd multiple of d, where a divisor too small for exact maps shows)
        a = round_up(320, d) if d > 1 else _ODD_TRIAL[0]
        b = round_up(416, d) if d > 1 else _ODD_TRIAL[1]
        second = (a + d * (1 if d > 1 else 64), b)
        # where the model ran at a smaller divisor (its sizes and growth checked there), the
        # second size alone says whether maps are exact at this one
        sizes = [second] if runs_at is not None else [(a, b), second]
        found = [trials.shapes(size) for size in sizes[:1]]
        if isinstance(found[0], list) and len(sizes) > 1:
            found.append(trials.shapes(sizes[1]))
        if not isinstance(found[-1], list):
            failed = sizes[len(found) - 1]
            last = (f'{failed[0]}x{failed[1]}', f'{type(found[-1]).__name__}: {found[-1]}')
            continue
        runs = list(zip(sizes, found))
        _check_shapes(model_name, model, runs)
        offsets = _offsets(model, runs)
        rule = InputRule(runs_at.pad_divisor if runs_at else d, None, d,
                         _margins(model, offsets))
        short = any(low < 0 for low, _ in offsets.values())
        if not any(low or high for low, high in offsets.values()) or (short and d > 1):
            return rule, '', ''
        runs_at = runs_at or rule
    if runs_at is not None:
        return runs_at, '', ''
    return None, last[0], last[1]


def runs_at_any_size(model_name: str, kwargs: Dict[str, Any]) -> bool:
    """Whether `model_name` runs at non-square detection-sized inputs (multiples of some trial
    divisor) as it is built with `kwargs` (meta forwards; cached, failures too).

    Example:
        >>> runs_at_any_size('resnet18', {}), runs_at_any_size('vit_tiny_patch16_224', {})
        (True, False)
    """
    probe(model_name, kwargs)  # checks the name and the arguments
    return _ANY_SIZE.get(_key(model_name, kwargs), lambda: _any_size_rule(
        model_name, meta_model(model_name, kwargs), kwargs))[0] is not None


def has_dynamic_size(model_name: str, kwargs: Dict[str, Any]) -> bool:
    """Whether a module of the model keeps timm's `dynamic_img_size` option (ViT-style models,
    which take timm's dynamic-size arguments; some run at any size without them).

    Example:
        >>> has_dynamic_size('vit_tiny_patch16_224', {}), has_dynamic_size('resnet18', {})
        (True, False)
    """
    probe(model_name, kwargs)
    return any(hasattr(m, 'dynamic_img_size') for m in meta_model(model_name, kwargs).modules())


def _input_rule(model_name: str, model: nn.Module, kwargs: Dict[str, Any]) -> InputRule:
    """(pad_divisor, fixed_size) from meta forwards at non-square trial sizes, else at the one
    size the model is built for."""
    rule, *last = _ANY_SIZE.get(_key(model_name, kwargs),
                                lambda: _any_size_rule(model_name, model, kwargs))
    if rule is not None:
        return rule
    trials = _Trials(model, kwargs.get('in_chans', 3))
    deepest = max(d['reduction'] for d in model.feature_info.info)
    native = getattr(model, 'pretrained_cfg', {}).get('input_size')
    tried = []
    # built for a size (img_size): only that size counts; else the model's native size
    for size in ([kwargs['img_size']] if 'img_size' in kwargs else [native]):
        if size is None:
            continue
        size = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        shapes = trials.shapes(size)
        if isinstance(shapes, list):
            _check_shapes(model_name, model, [(size, shapes)])
            return InputRule(1, (int(size[0]), int(size[1])),
                             margins=_uncovered(model, size, shapes))
        tried.append(f'{size[0]}x{size[1]}')
        last = [tried[-1], f'{type(shapes).__name__}: {shapes}']
    for size in [*trials.found, _ODD_TRIAL][:1]:
        trials.check_kernels(size)
    hint = (f"; it was built with img_size={kwargs['img_size']} but does not run at that size "
            f'(some models only take square inputs): try input_size=(S, S)'
            if 'img_size' in kwargs else '')
    cause = f' The last failure, at {last[0]}: {last[1]}' if last[1] else ''
    raise ValueError(f'{model_name!r} ran at none of the input sizes tried (multiples of '
                     f'{deepest} x {_DIVISOR_FACTORS}; {", ".join(tried) or "no fixed size"})'
                     f'{hint}. It cannot be used as a detection backbone as configured.{cause}')
