"""What a TimmBackbone will be, computed without weights: `BackbonePlan` (timm arguments, every
feature level, the chosen outputs and their specs, and the input sizes it takes). `TimmBackbone`
builds from a plan, `resolve_config` wires a detector from one, and `feature_specs(cfg)` reads
one, so they always agree.
"""
import math
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from ._cache import clear_caches
from ._configs import is_auto, timm_model_name, to_plain
from ._options import OPTIONS, SHAPE_OPTIONS, unknown_options_message
from ._probe import has_dynamic_size, probe, probe_input, runs_at_any_size, supports_kwargs
from ._pyramid import plan_pyramid, pyramid_channels
from ._specs import FeatureSpec, SpecTuple, format_specs, round_up
from ._timm import timm_kwargs

__all__ = ['BackbonePlan', 'plan_backbone', 'plan_from_config', 'feature_specs',
           'resolve_out_indices', 'level_specs', 'INPUT_SIZES']

INPUT_SIZES = ('any', 'fixed')

# timm arguments that let fixed-size models (ViT, Swin, ...) take any input size, tried in order:
# the first set the model accepts is used. dynamic_img_pad pads to a patch multiple (EVA02's 14).
_DYNAMIC_SIZE_KWARGS = (
    dict(dynamic_img_size=True, dynamic_img_pad=True),
    dict(dynamic_img_size=True),
)
_SIZE_KEYS = ('img_size', 'dynamic_img_size', 'dynamic_img_pad', 'strict_img_size')


@dataclass(frozen=True)
class BackbonePlan:
    """A backbone described without weights.

    Args:
        model_name: timm architecture or tag.
        kwargs: `timm.create_model` arguments (features_only and out_indices aside).
        levels: One spec per timm feature level (all of `feature_info`).
        output_format: Layout timm returns ('NCHW' or 'NHWC').
        out_indices: Absolute levels requested, in output order (pyramid: its sources).
        pyramid_strides: Output strides of the simple pyramid (None: a level passed through,
            see `SimplePyramid`), or () without one.
        pyramid_channels: The pyramid's channel option (see `SimplePyramid`).
        pad_divisor: Input sides must be multiples of this (1: any size).
        fixed_size: (H, W) of a model that only runs at one size (inputs are padded to it).
        exact_divisor: Inputs are padded to multiples of this (a multiple of `pad_divisor`),
            where the model's maps are exactly input / stride (convnext's patch stem gives
            floor(input / 4) at other sizes; mobilevitv2 resizes odd maps inside).
        margin: Pixels of extra padding (bottom/right) the chosen levels need for their maps
            to cover the input (unpadded convolutions, e.g. inception: maps fall short of
            input / stride); a fixed-size model takes inputs up to `fixed_size - margin`.

    `pad_divisor`, `fixed_size`, `exact_divisor` and `margin` are the backbone's input-size
    contract: `run_size` says what an input is padded to, `pad_size_divisor` what a data
    preprocessor should pad batches to; with them every output map is exactly ceil(input /
    stride) in size (the maps of the padding are cropped). Output specs carry `pad_divisor`
    too (`FeatureSpec.pad_divisor`, the same value).
    """
    model_name: str
    kwargs: Dict[str, Any]
    levels: SpecTuple
    output_format: str
    out_indices: Tuple[int, ...]
    pyramid_strides: Tuple[Optional[int], ...] = ()
    pyramid_channels: Optional[int] = None
    pad_divisor: int = 1
    fixed_size: Optional[Tuple[int, int]] = None
    exact_divisor: int = 1
    margin: int = 0

    @property
    def timm_indices(self) -> Tuple[int, ...]:
        """The levels timm must return, in level order."""
        return tuple(sorted(set(self.out_indices)))

    @property
    def pad_size_divisor(self) -> int:
        """What batches should be padded to a multiple of: the input divisor and the deepest
        output stride (for a fixed-size model, also a divisor of its size, so padding never
        pushes an input past it)."""
        auto = math.lcm(self.pad_divisor, max(s.stride for s in self.specs))
        if self.fixed_size is None:
            return auto
        return math.gcd(auto, *(side - self.margin for side in self.fixed_size))

    @property
    def max_input(self) -> Optional[Tuple[int, int]]:
        """The largest input (H, W) a fixed-size model takes (None: any size)."""
        if self.fixed_size is None:
            return None
        return self.fixed_size[0] - self.margin, self.fixed_size[1] - self.margin

    def run_size(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        """The input size the timm model runs at for an input of size `hw` (padded up by
        `margin`, then to a multiple of `exact_divisor`; or to `fixed_size`).

        Raises:
            ValueError: The input is larger than a fixed-size model takes.
        """
        if self.fixed_size is None:
            return (round_up(hw[0] + self.margin, self.exact_divisor),
                    round_up(hw[1] + self.margin, self.exact_divisor))
        fixed, top = self.fixed_size, self.max_input
        if hw[0] > top[0] or hw[1] > top[1]:
            cover = (f' (its maps cover {top[0]}x{top[1]} of it: unpadded convolutions)'
                     if self.margin else '')
            raise ValueError(
                f'{self.model_name!r} only runs at {fixed[0]}x{fixed[1]} (fixed position '
                f'tables){cover}, and the input is {hw[0]}x{hw[1]}. Build it for your largest '
                f'input with input_size=(H, W) (smaller inputs are zero-padded to it), resize '
                f'images to fit, or pick a model that takes any size.')
        return fixed

    @property
    def specs(self) -> SpecTuple:
        """Specs of the outputs, in output order."""
        sources = [self.levels[i] for i in self.out_indices]
        if not self.pyramid_strides:
            return tuple(replace(s, pad_divisor=self.pad_divisor) for s in sources)
        channels = pyramid_channels([s.channels for s in sources], [s.stride for s in sources],
                                    self.pyramid_strides, self.pyramid_channels)
        return tuple(FeatureSpec(channels=c, stride=s.stride if t is None else t, index=s.index,
                                 module=f'pyramid.branches.{i}', pad_divisor=self.pad_divisor)
                     for i, (c, t, s) in enumerate(zip(channels, self.pyramid_strides, sources)))


def level_specs(levels: Sequence[Dict[str, Any]]) -> SpecTuple:
    """One `FeatureSpec` per timm feature level (`feature_info` dicts), index = level number."""
    return tuple(FeatureSpec(channels=int(d['num_chs']), stride=int(d['reduction']), index=i,
                             module=str(d['module'])) for i, d in enumerate(levels))


def resolve_out_indices(out_indices: Optional[Sequence[int]], levels: Sequence[FeatureSpec],
                        model_name: str) -> Tuple[int, ...]:
    """Absolute level indices, in the requested order.

    Args:
        out_indices: Level indices (negative count from the end), or None for the last four
            levels (all, if fewer).
        levels: Specs of every level of the model (`level_specs`).
        model_name: For error messages.

    Example:
        >>> resolve_out_indices((-2, -1), plan_backbone('resnet18').levels, 'resnet18')
        (3, 4)
    """
    n = len(levels)
    if out_indices is None:
        return tuple(range(max(0, n - 4), n))
    table = f'Levels of {model_name!r}:\n{format_specs(levels)}'
    if not isinstance(out_indices, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in out_indices):
        raise TypeError(f'out_indices must be a list/tuple of ints, got {out_indices!r}. '
                        f'Valid indices: {-n}..{n - 1}.\n{table}')
    if not out_indices:
        raise ValueError(f'out_indices must not be empty; valid indices: {-n}..{n - 1}.\n{table}')
    bad = [i for i in out_indices if not -n <= i < n]
    if bad:
        raise ValueError(f'out_indices {tuple(out_indices)}: {bad} out of range; {model_name!r} '
                         f'has {n} levels, valid indices {-n}..{n - 1}.\n{table}')
    resolved = tuple(i % n for i in out_indices)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f'out_indices {tuple(out_indices)} name a level twice (resolved: '
                         f'{resolved}); list each level once.\n{table}')
    return resolved


def _size_kwargs(model_name: str, kwargs: Dict[str, Any],
                 input_size: Union[str, Sequence[int]]) -> Dict[str, Any]:
    """timm arguments for the requested input-size policy (see TimmBackbone's `input_size`)."""
    chosen = [k for k in _SIZE_KEYS if k in kwargs]
    if chosen:  # the user chose explicitly in model_kwargs
        if input_size != 'any':
            raise ValueError(
                f'input_size={input_size!r} and model_kwargs {chosen} both set the input size '
                f"of {model_name!r}: keep one (input_size=(H, W) builds for that size; or leave "
                f"input_size='any' and pass timm's own arguments in model_kwargs).")
        return {}
    if isinstance(input_size, (list, tuple)):
        if len(input_size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                           and v > 0 for v in input_size):
            raise ValueError(f'input_size must be (height, width) in pixels, got {input_size!r}')
        size = {'img_size': tuple(input_size)}
        try:
            probe(model_name, dict(kwargs, **size))
        except ValueError as err:
            raise ValueError(
                f'input_size={tuple(input_size)}: {model_name!r} cannot be built for that size '
                f"(a model that takes any size needs input_size='any'; some fixed-size models "
                f'only take square sizes). {err}') from err
        return size
    if is_auto(input_size):  # filled by wiring/_pipeline.py
        raise ValueError("input_size='auto' is filled by resolve_config from the config's data "
                         'pipelines (TimmBackboneRunner does it before building); building a '
                         "backbone directly, pass input_size=(height, width) or 'any'.")
    if input_size not in INPUT_SIZES:
        raise ValueError(f"input_size must be 'any', 'fixed' or (height, width), got "
                         f'{input_size!r}')
    if input_size == 'any':
        try:  # a model running at any size without the option (CNNs): timm would refuse it
            if runs_at_any_size(model_name, kwargs) and not has_dynamic_size(model_name, kwargs):
                return {}
        except ValueError:
            pass  # its outputs disagree with feature_info: the dynamic-size build may not
        for extra in _DYNAMIC_SIZE_KWARGS:
            if supports_kwargs(model_name, dict(kwargs, **extra)):
                return dict(extra)
    return {}


def plan_backbone(model_name: str,
                  out_indices: Optional[Sequence[int]] = None,
                  output_stride: Optional[int] = None,
                  in_channels: int = 3,
                  drop_path_rate: Optional[float] = None,
                  model_kwargs: Optional[Dict[str, Any]] = None,
                  input_size: Union[str, Sequence[int]] = 'any',
                  pyramid: Optional[str] = 'auto',
                  pyramid_strides: Optional[Sequence[Optional[int]]] = None,
                  pyramid_channels: Optional[int] = None) -> BackbonePlan:
    """Plan a backbone from TimmBackbone's shape-related options (meta-device builds, cached).

    Args:
        model_name: timm architecture or tag.
        out_indices: See `TimmBackbone`.
        output_stride: See `TimmBackbone`.
        in_channels: See `TimmBackbone`.
        drop_path_rate: See `TimmBackbone`.
        model_kwargs: See `TimmBackbone`.
        input_size: See `TimmBackbone`.
        pyramid: See `TimmBackbone`.
        pyramid_strides: See `TimmBackbone`.
        pyramid_channels: See `TimmBackbone`.

    Example:
        >>> plan_backbone('convnext_atto', out_indices=(1, 2, 3)).specs[0].stride
        8
    """
    kwargs = timm_kwargs(in_channels=in_channels, output_stride=output_stride,
                         drop_path_rate=drop_path_rate, model_kwargs=model_kwargs)
    found = probe(model_name, kwargs)  # checks the name and the arguments first
    size_kwargs = _size_kwargs(model_name, kwargs, input_size)
    if size_kwargs:
        kwargs.update(size_kwargs)
        found = probe(model_name, kwargs)
    levels = level_specs(found.feature_info)
    sizes = probe_input(model_name, kwargs)
    indices, strides = plan_pyramid(model_name, levels,
                                    resolve_out_indices(out_indices, levels, model_name),
                                    out_indices is not None, pyramid, pyramid_strides,
                                    pyramid_channels)
    return BackbonePlan(model_name=model_name, kwargs=kwargs, levels=levels,
                        output_format=found.output_format, out_indices=indices,
                        pyramid_strides=strides, pyramid_channels=pyramid_channels,
                        pad_divisor=sizes.pad_divisor, fixed_size=sizes.fixed_size,
                        exact_divisor=sizes.exact_divisor,
                        margin=sizes.margin(sorted(set(indices))))


def plan_from_config(cfg: Any) -> BackbonePlan:
    """The plan of a TimmBackbone config (see `timm_model_name` for the accepted forms)."""
    model_name = timm_model_name(cfg)
    if model_name is None:
        raise ValueError(f"not a timm backbone config (type must be 'TimmBackbone' or "
                         f"'timm.<arch>'): {cfg!r}")
    options = {k: v for k, v in cfg.items() if k not in ('type', 'model_name')}
    unknown = [k for k in options if k not in OPTIONS]
    if unknown:
        raise TypeError(unknown_options_message(unknown))
    shape = {k: to_plain(v) for k, v in options.items() if k in SHAPE_OPTIONS}
    return plan_backbone(model_name, **shape)


def feature_specs(cfg: Any) -> SpecTuple:
    """Per-output specs (channels, stride, level index, module) of a timm backbone config,
    computed without allocating weights (meta-device builds, cached). Equal to the built
    backbone's `feature_specs`.

    Args:
        cfg: `dict(type='TimmBackbone', model_name=..., ...)` or `dict(type='timm.<arch>', ...)`.

    Results are cached (failures too); `feature_specs.cache_clear()` forgets them, as for a
    `functools.lru_cache` function (e.g. to time a cold call).

    Example:
        >>> [s.channels for s in feature_specs(dict(type='timm.resnet18'))]
        [64, 128, 256, 512]
    """
    return plan_from_config(cfg).specs


feature_specs.cache_clear = clear_caches  # type: ignore[attr-defined]
