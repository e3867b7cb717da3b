"""Creating timm feature-extraction models: the one place where mmdet's option names become
timm's (`timm_kwargs`), where model names are checked (`check_model_name`), and where timm's build
errors get context and a type (`TimmBuildError`, `UnsupportedOptions`). What a model is, read
without weights, is `_probe.py`'s; loading weights into it is `_weights.py`'s.
"""
import difflib
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import timm
from timm.models import FeatureHookNet
from torch import nn

from ._cache import memoize
from ._configs import is_int
from ._meta_ops import on_meta

__all__ = ['check_model_name', 'timm_kwargs', 'create_features', 'output_format',
           'OUTPUT_STRIDES', 'TimmBuildError', 'UnsupportedOptions',
           'enable_grad_checkpointing']

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


class TimmBuildError(ValueError):
    """timm could not build the model with the given arguments (timm's error is the cause)."""


class UnsupportedOptions(TimmBuildError):
    """timm refused an argument: the model does not take it (e.g. `output_stride` on a ViT, or
    `dynamic_img_size` on a CNN). Arguments refused are refused on every device."""


@memoize(size=1)
def _known_names() -> Tuple[frozenset, frozenset]:
    return frozenset(timm.list_models()), frozenset(timm.list_pretrained())


@memoize(size=4096)
def _is_architecture(model_name: str) -> bool:
    """timm.list_models with the exact name: ~0.5 ms, instead of ~13 ms for every name and tag."""
    return model_name.replace('_', '').isalnum() and timm.list_models(model_name) == [model_name]


def check_model_name(model_name: str) -> None:
    """Raise a `ValueError` with close matches if `model_name` is not a timm architecture or tag.

    Args:
        model_name: An architecture (`'resnet50'`) or a pretrained tag (`'resnet50.a1_in1k'`).

    Example:
        >>> check_model_name('resnet50')
    """
    if not isinstance(model_name, str):
        raise TypeError(f'model_name must be a str naming a timm model, got {model_name!r}')
    if _is_architecture(model_name):
        return
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
    if output_stride is not None and (not is_int(output_stride)
                                      or output_stride not in OUTPUT_STRIDES):
        raise ValueError(f'output_stride must be one of {OUTPUT_STRIDES} or None, '
                         f'got {output_stride!r}')
    if drop_path_rate is not None:
        if not isinstance(drop_path_rate, (int, float)) or isinstance(drop_path_rate, bool):
            raise TypeError(f'drop_path_rate must be a number in [0, 1) or None, got '
                            f'{drop_path_rate!r} ({type(drop_path_rate).__name__})')
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate={drop_path_rate!r} is out of range: it is the '
                             f'probability of dropping a residual branch, in [0, 1) (typical: '
                             f'0.1 to 0.3).')
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise TypeError(f'model_kwargs must be a dict of timm.create_model arguments, e.g. '
                        f'model_kwargs=dict(drop_rate=0.1); got {model_kwargs!r}')
    model_kwargs = dict(model_kwargs or {})
    bad_keys = [k for k in model_kwargs if not isinstance(k, str)]
    if bad_keys:
        raise TypeError(f'model_kwargs keys must be argument names (str), got {bad_keys}')
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
            meta: bool, pretrained: Union[bool, Mapping[str, Any]] = False) -> nn.Module:
    kw = dict(kwargs, features_only=True)
    if out_indices is not None:
        kw['out_indices'] = out_indices
    if isinstance(pretrained, Mapping):  # weights read by _weights.py: timm adapts and loads them
        kw.update(pretrained=True,
                  pretrained_cfg_overlay=dict(state_dict=dict(pretrained), source=''))
    else:
        kw['pretrained'] = pretrained
    if meta:
        with on_meta():  # timm initialises the weights it builds: no-ops on the meta device
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
    raise UnsupportedOptions(
        f"model {model_name!r} does not support output_stride={kwargs['output_stride']} "
        f'(timm raised {type(err).__name__}: {err}). It only runs at its native output stride '
        f'{native}: remove output_stride. Families with dilation support '
        f'include resnet, resnest, regnet, efficientnet, mobilenetv3, convnext, xception, '
        f'cspdarknet.') from err


def create_features(model_name: str, kwargs: Dict[str, Any],
                    out_indices: Optional[Tuple[int, ...]], meta: bool = False,
                    pretrained: Union[bool, Mapping[str, Any]] = False) -> nn.Module:
    """Build timm's feature extractor, turning timm's failures into errors that say what to do.

    Weights: `pretrained=True` has timm fetch its hub weights; a state dict (read and checked by
    `_weights.py`, which owns loading) is handed to timm, which adapts it (classifier dropped,
    stem for other `in_chans`, position embeddings) and loads it before wrapping the model.

    Args:
        model_name: timm architecture or tag.
        kwargs: `timm.create_model` arguments from `timm_kwargs`.
        out_indices: Absolute level indices to return, or None for timm's default.
        meta: Build on the meta device (no memory, no weights).
        pretrained: False, True (timm's hub weights) or a state dict of timm-format weights.

    Raises:
        UnsupportedOptions: timm refused an argument.
        TimmBuildError: timm failed otherwise (its error is the cause).

    Example:
        >>> model = create_features('resnet18', timm_kwargs(), (1, 2, 3, 4))
    """
    try:
        model = _create(model_name, kwargs, out_indices, meta=meta, pretrained=pretrained)
    except (TypeError, AssertionError, ValueError, RuntimeError, NotImplementedError,
            IndexError, KeyError) as err:
        _explain_output_stride(model_name, kwargs, err)
        kind = UnsupportedOptions if isinstance(err, TypeError) else TimmBuildError
        raise kind(f'timm could not build {model_name!r} as a feature extractor with {kwargs}, '
                   f'out_indices={out_indices} ({type(err).__name__}: {err})') from err
    _check_output_stride(model_name, kwargs, model.feature_info.info)
    return model


def _check_output_stride(model_name: str, kwargs: Dict[str, Any], levels) -> None:
    """timm must not silently ignore output_stride: the deepest level must be at that stride."""
    wanted = kwargs.get('output_stride')
    if wanted is None:
        return
    got = max(d['reduction'] for d in levels)
    if got != wanted:
        raise UnsupportedOptions(
            f'model {model_name!r} accepted output_stride={wanted} but its deepest level is at '
            f'stride {got}; it does not support output_stride. Remove the option (native '
            f'stride: {got}).')


def output_format(model: nn.Module) -> str:
    """'NCHW' or 'NHWC': the layout timm's feature extractor returns (Swin, MambaOut: NHWC)."""
    fmt = getattr(model, 'output_fmt', 'NCHW')
    fmt = getattr(fmt, 'value', fmt)
    if fmt not in ('NCHW', 'NHWC'):
        raise ValueError(f'unsupported timm feature layout {fmt!r} for {type(model).__name__}')
    return fmt


def enable_grad_checkpointing(model: nn.Module, model_name: str) -> None:
    """timm's set_grad_checkpointing, on the wrapper or, for FeatureGetterNet, its inner model."""
    target = model if hasattr(model, 'set_grad_checkpointing') else getattr(model, 'model', None)
    if isinstance(model, FeatureHookNet) or not hasattr(target, 'set_grad_checkpointing'):
        raise ValueError(
            f'with_cp=True is not supported for {model_name!r}: its timm feature extractor '
            f'({type(model).__name__}) has no working set_grad_checkpointing. Use with_cp=False.')
    try:
        target.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError) as err:
        raise ValueError(f'with_cp=True is not supported for {model_name!r}: timm raised '
                         f'{type(err).__name__}: {err}. Use with_cp=False.') from err
