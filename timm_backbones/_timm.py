"""Creating timm feature-extraction models: the one place where mmdet's option names become
timm's, and where timm's errors get context (model name checks, `output_stride` support,
pretrained weights).
"""
import difflib
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
from mmengine.logging import print_log
from torch import nn

__all__ = ['check_model_name', 'timm_kwargs', 'create_features', 'probe', 'Probe',
           'probe_input', 'InputRule',
           'output_format', 'supports_kwargs', 'OUTPUT_STRIDES']

OUTPUT_STRIDES = (8, 16, 32)

# create_model arguments that TimmBackbone manages itself; model_kwargs may not set them.
_MANAGED = {
    'features_only': None,
    'out_indices': 'out_indices',
    'in_chans': 'in_channels',
    'pretrained': 'pretrained',
    'pretrained_cfg_overlay': 'pretrained',
    'checkpoint_path': 'pretrained',
    'output_stride': 'output_stride',
    'drop_path_rate': 'drop_path_rate',
}


@functools.lru_cache(maxsize=1)
def _known_names() -> Tuple[frozenset, frozenset]:
    return frozenset(timm.list_models()), frozenset(timm.list_pretrained())


def check_model_name(model_name: str) -> None:
    """Raise a `ValueError` with close matches if `model_name` is not a timm architecture or tag.

    Args:
        model_name: An architecture (`'resnet50'`) or a pretrained tag (`'resnet50.a1_in1k'`).

    Example:
        >>> check_model_name('resnet50')
    """
    if not isinstance(model_name, str):
        raise TypeError(f'model_name must be a str naming a timm model, got {model_name!r}')
    archs, tags = _known_names()
    if model_name in archs or model_name in tags:
        return
    arch = model_name.split('.', 1)[0]
    if arch in archs:  # known architecture, unknown tag
        options = sorted(t for t in tags if t.split('.', 1)[0] == arch)
        raise ValueError(
            f"unknown pretrained tag in model_name={model_name!r}: timm's '{arch}' has the tags "
            f"{options or '(none)'}. Use one of them, or the bare architecture '{arch}'.")
    close = difflib.get_close_matches(model_name, sorted(archs | tags), n=5, cutoff=0.6)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    raise ValueError(
        f'unknown timm model_name={model_name!r} ({len(archs)} architectures in timm '
        f'{timm.__version__}; see timm.list_models()).{hint}')


def timm_kwargs(*, in_channels: int = 3, output_stride: Optional[int] = None,
                drop_path_rate: Optional[float] = None,
                model_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Translate mmdet-style options to `timm.create_model` keyword arguments (weights aside).

    Args:
        in_channels: Number of image channels (timm's `in_chans`).
        output_stride: 8, 16 or 32 (dilated last stages), or None for the model's own.
        drop_path_rate: Stochastic depth rate, or None for timm's default.
        model_kwargs: Any other `timm.create_model` argument.

    Example:
        >>> timm_kwargs(in_channels=1, output_stride=16)
        {'in_chans': 1, 'output_stride': 16}
    """
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ValueError(f'in_channels must be a positive int (image channels), '
                         f'got {in_channels!r}')
    if output_stride is not None and output_stride not in OUTPUT_STRIDES:
        raise ValueError(f'output_stride must be one of {OUTPUT_STRIDES} or None, '
                         f'got {output_stride!r}')
    model_kwargs = dict(model_kwargs or {})
    for key in model_kwargs:
        if key in _MANAGED:
            fix = (f"set TimmBackbone's `{_MANAGED[key]}` option instead" if _MANAGED[key]
                   else 'TimmBackbone always builds feature extractors')
            raise ValueError(f'model_kwargs may not contain {key!r}: {fix}.')
    kwargs: Dict[str, Any] = {'in_chans': in_channels}
    if output_stride is not None:
        kwargs['output_stride'] = output_stride
    if drop_path_rate is not None:
        kwargs['drop_path_rate'] = drop_path_rate
    kwargs.update(model_kwargs)
    return kwargs


def _create(model_name: str, kwargs: Dict[str, Any], out_indices: Optional[Tuple[int, ...]],
            meta: bool, pretrained: Union[bool, str] = False) -> nn.Module:
    kw = dict(kwargs, features_only=True)
    if out_indices is not None:
        kw['out_indices'] = out_indices
    if isinstance(pretrained, str):
        kw.update(pretrained=True, pretrained_cfg_overlay=dict(file=pretrained))
    else:
        kw['pretrained'] = pretrained
    if meta:
        with torch.device('meta'):
            return timm.create_model(model_name, **kw)
    return timm.create_model(model_name, **kw)


def _explain_output_stride(model_name: str, kwargs: Dict[str, Any], err: Exception) -> None:
    """If `err` came from `output_stride`, raise a clear error; else return."""
    if 'output_stride' not in kwargs:
        return
    without = {k: v for k, v in kwargs.items() if k != 'output_stride'}
    try:
        levels = _create(model_name, without, None, meta=True).feature_info.info
        native = max(d['reduction'] for d in levels)
    except Exception:  # the failure is not output_stride's: let the caller report it
        return
    raise ValueError(
        f"model {model_name!r} does not support output_stride={kwargs['output_stride']} "
        f'(timm raised {type(err).__name__}: {err}). It only runs at its native output stride '
        f'{native}: remove output_stride. Families with dilation support '
        f'include resnet, resnest, regnet, efficientnet, mobilenetv3, convnext, xception, '
        f'cspdarknet.') from err


@dataclass(frozen=True)
class Probe:
    """What a meta-device build tells about a timm feature extractor.

    Args:
        levels: Every `feature_info` entry (dicts with num_chs, reduction, module).
        output_format: 'NCHW' or 'NHWC', the layout timm returns.
    """
    levels: Tuple[Dict[str, Any], ...]
    output_format: str


@dataclass(frozen=True)
class InputRule:
    """Which input sizes a timm feature extractor runs at.

    Args:
        pad_divisor: Smallest divisor such that inputs whose sides are multiples of it run
            (1: any size).
        fixed_size: (H, W) the model only runs at (fixed position tables), else None.
    """
    pad_divisor: int
    fixed_size: Optional[Tuple[int, int]]


_PROBE_CACHE: Dict[Tuple, Probe] = {}
_INPUT_CACHE: Dict[Tuple, InputRule] = {}
_LAST_MODEL: List[Any] = [None, None]  # (key, meta model) of the latest probe
_PROBE_CACHE_SIZE = 4096  # a full sweep of timm's architectures fits
# candidate input divisors, as multiples of the deepest stride (windowed attention: 7, 14)
_DIVISOR_FACTORS = (1, 2, 4, 7, 8, 14, 16)


def probe(model_name: str, kwargs: Dict[str, Any]) -> Probe:
    """Build `model_name` as a feature extractor on the meta device (no weights; cached) and
    read its levels and output layout.

    Args:
        model_name: timm architecture or tag (checked first).
        kwargs: `timm.create_model` arguments from `timm_kwargs`.

    Example:
        >>> p = probe('resnet18', timm_kwargs())
        >>> [d['reduction'] for d in p.levels], p.output_format
        ([2, 4, 8, 16, 32], 'NCHW')
    """
    check_model_name(model_name)
    key = _key(model_name, kwargs)
    if key not in _PROBE_CACHE:
        model = _build_for_probe(model_name, kwargs)
        _LAST_MODEL[:] = [key, model]  # probe_input usually follows: spare it a build
        levels = tuple(dict(d) for d in model.feature_info.info)
        if len(_PROBE_CACHE) >= _PROBE_CACHE_SIZE:
            _PROBE_CACHE.clear()
        _PROBE_CACHE[key] = Probe(levels, output_format(model))
    return _PROBE_CACHE[key]


def _build_for_probe(model_name: str, kwargs: Dict[str, Any]) -> nn.Module:
    """A meta-device build; a real CPU build only where the meta device fails (a model that
    computes with tensors while being built) but the CPU build works."""
    try:
        return create_features(model_name, kwargs, None, meta=True)
    except ValueError as meta_err:
        try:
            model = create_features(model_name, kwargs, None, meta=False)
        except ValueError:
            raise meta_err from None
        print_log(f'{model_name!r} does not build on the meta device; its feature metadata came '
                  f'from a CPU build', logger='current', level=logging.WARNING)
        return model


def _key(model_name: str, kwargs: Dict[str, Any]) -> Tuple:
    return model_name, tuple(sorted((k, repr(v)) for k, v in kwargs.items()))


def probe_input(model_name: str, kwargs: Dict[str, Any]) -> InputRule:
    """The input sizes `model_name` runs at, from meta-device forwards at non-square trial sizes
    (cached). Call `probe` first: it checks the name and arguments.

    Example:
        >>> probe_input('maxvit_tiny_tf_224', {}).pad_divisor  # window 7 at stride 32
        224
    """
    key = _key(model_name, kwargs)
    if key not in _INPUT_CACHE:
        model = _LAST_MODEL[1] if _LAST_MODEL[0] == key else \
            _build_for_probe(model_name, kwargs)
        _LAST_MODEL[:] = [None, None]
        if len(_INPUT_CACHE) >= _PROBE_CACHE_SIZE:
            _INPUT_CACHE.clear()
        _INPUT_CACHE[key] = InputRule(*_input_rule(model_name, model, kwargs))
    return _INPUT_CACHE[key]


def _meta_shapes(model: nn.Module, hw: Tuple[int, int], in_chans: int
                 ) -> Optional[List[Tuple[int, ...]]]:
    """Output shapes of a forward at `hw` (meta device, unless the model is on the CPU), or None
    if the model fails there."""
    device = next(iter(model.parameters()), torch.empty(0, device='meta')).device
    try:
        with torch.no_grad():
            outs = model(torch.empty(1, in_chans, *hw, device=device))
    except Exception:  # any failure means: not at this size
        return None
    return [tuple(o.shape) for o in outs]


def _check_shapes(model_name: str, model: nn.Module,
                  runs: Sequence[Tuple[Tuple[int, int], Sequence[Tuple[int, ...]]]]) -> None:
    """timm's `feature_info` must describe the real outputs: channels equal, and between trial
    inputs the maps grow by input growth / reduction (+-1). Absolute sizes may fall short of
    input / reduction a little (unpadded convs: inception_v3 loses ~3 px at stride 2)."""
    nhwc = output_format(model) == 'NHWC'

    def chw(shape):
        return (shape[3], shape[1], shape[2]) if nhwc else tuple(shape[1:4])

    (hw, shapes), rest = runs[0], runs[1:]
    for i, d in enumerate(model.feature_info.get_dicts()):
        c, h, w = chw(shapes[i])
        r = d['reduction']
        bad = c != d['num_chs'] or any(abs(g - s / r) > 1 + 0.35 * s / r
                                       for g, s in zip((h, w), hw))
        for hw2, shapes2 in rest:
            _, h2, w2 = chw(shapes2[i])
            bad |= any(abs((g2 - g) - (s2 - s) / r) > 1
                       for g, g2, s, s2 in zip((h, w), (h2, w2), hw, hw2))
        if bad:
            sizes = ', '.join(f'{a[0]}x{a[1]} -> {chw(b[i])[0]}x{chw(b[i])[1]}x{chw(b[i])[2]}'
                              for a, b in runs)
            raise ValueError(
                f"timm's feature_info for {model_name!r} does not describe its outputs: level "
                f"{d['module']!r} reports {d['num_chs']} channels at stride {r}, but the model "
                f'gives {sizes}. It cannot be wired automatically (it resizes its input or '
                f'reports wrong metadata); pick another model.')


def _input_rule(model_name: str, model: nn.Module, kwargs: Dict[str, Any]
                ) -> Tuple[int, Optional[Tuple[int, int]]]:
    """(pad_divisor, fixed_size) from meta forwards at non-square trial sizes; the outputs are
    checked against `feature_info`."""
    in_chans = kwargs.get('in_chans', 3)
    model.eval()  # batch-1 trial forwards: BN in train mode rejects 1x1 maps
    deepest = max(d['reduction'] for d in model.feature_info.info)
    for factor in (0,) + _DIVISOR_FACTORS:
        d = 1 if factor == 0 else deepest * factor
        # two non-square sizes of detection-like scale, multiples of d (odd sides when d=1)
        a = -(-320 // d) * d if d > 1 else 321
        b = -(-416 // d) * d if d > 1 else 417
        second = (a + d * (1 if d > 1 else 64), b)
        shapes = _meta_shapes(model, (a, b), in_chans)
        shapes2 = _meta_shapes(model, second, in_chans) if shapes is not None else None
        if shapes2 is not None:
            _check_shapes(model_name, model, [((a, b), shapes), (second, shapes2)])
            return d, None
    native = getattr(model, 'pretrained_cfg', {}).get('input_size')
    tried = []
    # built for a size (img_size): only that size counts; else the model's native size
    for size in ([kwargs['img_size']] if 'img_size' in kwargs else [native]):
        if size is None:
            continue
        size = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        shapes = _meta_shapes(model, size, in_chans)
        if shapes is not None:
            _check_shapes(model_name, model, [(size, shapes)])
            return 1, (int(size[0]), int(size[1]))
        tried.append(f'{size[0]}x{size[1]}')
    hint = (f"; it was built with img_size={kwargs['img_size']} but does not run at that size "
            f'(some models only take square inputs): try input_size=(S, S)'
            if 'img_size' in kwargs else '')
    raise ValueError(f'{model_name!r} ran at none of the input sizes tried (multiples of '
                     f'{deepest} x {_DIVISOR_FACTORS}; {", ".join(tried) or "no fixed size"})'
                     f'{hint}. It cannot be used as a detection backbone as configured.')


def supports_kwargs(model_name: str, kwargs: Dict[str, Any]) -> bool:
    """Whether timm builds `model_name` with `kwargs` as a feature extractor (meta; cached)."""
    try:
        probe(model_name, kwargs)
    except ValueError:
        return False
    return True


def create_features(model_name: str, kwargs: Dict[str, Any],
                    out_indices: Optional[Tuple[int, ...]], meta: bool = False,
                    pretrained: Union[bool, str] = False) -> nn.Module:
    """Build timm's feature extractor, turning timm's failures into errors that say what to do.

    Args:
        model_name: timm architecture or tag.
        kwargs: `timm.create_model` arguments from `timm_kwargs`.
        out_indices: Absolute level indices to return, or None for timm's default.
        meta: Build on the meta device (no memory, no weights).
        pretrained: False, True (timm's hub weights) or a local file of timm-format weights.

    Example:
        >>> model = create_features('resnet18', timm_kwargs(), (1, 2, 3, 4))
    """
    if isinstance(pretrained, str) and not os.path.isfile(pretrained):
        raise FileNotFoundError(
            f'pretrained={pretrained!r}: no such file. Pass the path of a timm-format weight file '
            f'(.pth/.bin/.safetensors, e.g. saved with torch.save(model.state_dict(), path)), '
            f'or pretrained=False.')
    try:  # with weights to load, check the arguments on the meta device first (cheap)
        model = _create(model_name, kwargs, out_indices, meta=meta or bool(pretrained))
    except (TypeError, AssertionError, ValueError, RuntimeError, NotImplementedError,
            IndexError, KeyError) as err:
        _explain_output_stride(model_name, kwargs, err)
        raise ValueError(f'timm could not build {model_name!r} as a feature extractor with '
                         f'{kwargs}, out_indices={out_indices} ({type(err).__name__}: {err})'
                         ) from err
    _check_output_stride(model_name, kwargs, model.feature_info.info)
    if pretrained:
        model = _load_pretrained(model_name, kwargs, out_indices, pretrained)
    return model


def _load_pretrained(model_name: str, kwargs: Dict[str, Any],
                     out_indices: Optional[Tuple[int, ...]], pretrained: Union[bool, str]
                     ) -> nn.Module:
    """Build again with weights; timm loads them into the model before wrapping it."""
    try:
        return _create(model_name, kwargs, out_indices, meta=False, pretrained=pretrained)
    except Exception as err:  # hub/network/file errors of many kinds; all get the same advice
        source = (f'the file {pretrained!r}' if isinstance(pretrained, str)
                  else "timm's hub (network access needed)")
        raise RuntimeError(
            f'could not load pretrained weights for {model_name!r} from {source}: '
            f'{type(err).__name__}: {err}. Offline, download the weights elsewhere and pass '
            f"pretrained='/path/to/{model_name}.safetensors' (a timm-format state dict), or use "
            f"init_cfg=dict(type='Pretrained', checkpoint=...) for a backbone/detector "
            f'checkpoint.') from err


def _check_output_stride(model_name: str, kwargs: Dict[str, Any], levels) -> None:
    """timm must not silently ignore output_stride: the deepest level must be at that stride."""
    wanted = kwargs.get('output_stride')
    if wanted is None:
        return
    got = max(d['reduction'] for d in levels)
    if got != wanted:
        raise ValueError(f'model {model_name!r} accepted output_stride={wanted} but its deepest '
                         f'level is at stride {got}; it does not support output_stride. Remove '
                         f'the option (native stride: {got}).')


def output_format(model: nn.Module) -> str:
    """'NCHW' or 'NHWC': the layout timm's feature extractor returns (Swin, MambaOut: NHWC)."""
    fmt = getattr(model, 'output_fmt', 'NCHW')
    fmt = getattr(fmt, 'value', fmt)
    if fmt not in ('NCHW', 'NHWC'):
        raise ValueError(f'unsupported timm feature layout {fmt!r} for {type(model).__name__}')
    return fmt
