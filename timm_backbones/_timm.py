"""Creating timm feature-extraction models: the one place where mmdet's option names become
timm's (`timm_kwargs`), and where timm's build errors get context (model name checks,
`output_stride` support, pretrained weights). What a model is, read without weights, is
`_probe.py`'s.
"""
import difflib
import functools
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import timm
import torch
from mmengine.logging import print_log
from torch import nn

from ._checkpoint import (LoadReport, check_checkpoint_file, check_load, checkpoint_loading,
                          recording_loads, tensor_ids)

__all__ = ['check_model_name', 'timm_kwargs', 'create_features', 'output_format',
           'OUTPUT_STRIDES']

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
    if output_stride is not None and (not _is_int(output_stride)
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def create_features(model_name: str, kwargs: Dict[str, Any],
                    out_indices: Optional[Tuple[int, ...]], meta: bool = False,
                    pretrained: Union[bool, str] = False) -> nn.Module:
    """Build timm's feature extractor, turning timm's failures into errors that say what to do.

    With `pretrained`, timm loads the weights into the model before wrapping it; the load is
    verified (`check_load`): loaded/total tensors of the feature extractor are logged, and a
    `ValueError` shows expected vs found names when fewer than half matched.

    Args:
        model_name: timm architecture or tag.
        kwargs: `timm.create_model` arguments from `timm_kwargs`.
        out_indices: Absolute level indices to return, or None for timm's default.
        meta: Build on the meta device (no memory, no weights).
        pretrained: False, True (timm's hub weights) or a local file of timm-format weights.

    Example:
        >>> model = create_features('resnet18', timm_kwargs(), (1, 2, 3, 4))
    """
    if isinstance(pretrained, str):
        _check_pretrained_file(pretrained)
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


_PRETRAINED_ADVICE = (
    "pretrained= takes timm-format weights of this architecture (a timm model's state_dict, "
    '.pth/.bin/.safetensors). For a checkpoint of a TimmBackbone or of a detector use '
    "init_cfg=dict(type='Pretrained', checkpoint=path) (detector: add prefix='backbone.').")


def _check_pretrained_file(path: str) -> None:
    """The file exists, is a checkpoint, and is no detector checkpoint (whose names timm would
    silently fail to match)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'pretrained={path!r}: no such file. Pass the path of a timm-format weight file '
            f'(.pth/.bin/.safetensors, e.g. saved with torch.save(model.state_dict(), path)), '
            f'or pretrained=False.')
    kind = check_checkpoint_file(path)
    if kind == 'safetensors':
        return  # tensors only, named as saved: the load check below covers it
    try:
        with checkpoint_loading(path):
            ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=kind == 'zip')
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - a broken file of any kind: say which and why
        raise ValueError(f'pretrained={path!r}: torch could not read it ({type(err).__name__}: '
                         f'{err}). {_PRETRAINED_ADVICE}') from err
    if isinstance(ckpt, dict) and isinstance(ckpt.get('state_dict'), dict):
        names = [k for k in ckpt['state_dict'] if isinstance(k, str)]
        if names and sum(k.startswith('backbone.') for k in names) >= len(names) / 2:
            raise ValueError(
                f'pretrained={path!r} is a detector checkpoint (names like {names[0]!r}), not '
                f"timm-format weights: use init_cfg=dict(type='Pretrained', checkpoint={path!r}, "
                f"prefix='backbone.') instead of pretrained=.")


def _load_pretrained(model_name: str, kwargs: Dict[str, Any],
                     out_indices: Optional[Tuple[int, ...]], pretrained: Union[bool, str]
                     ) -> nn.Module:
    """Build again with weights (timm loads them into the model before wrapping it), and check
    how many tensors of the feature extractor they reached."""
    source = f'the file {pretrained!r}' if isinstance(pretrained, str) else "timm's hub"
    try:
        with recording_loads() as calls:
            model = _create(model_name, kwargs, out_indices, meta=False, pretrained=pretrained)
    except Exception as err:  # hub/network/file errors of many kinds
        if isinstance(pretrained, str):
            raise ValueError(f'could not load pretrained weights for {model_name!r} from '
                             f'{source}: {type(err).__name__}: {err}. {_PRETRAINED_ADVICE}'
                             ) from err
        raise RuntimeError(
            f'could not load pretrained weights for {model_name!r} from {source} (network '
            f'access needed): {type(err).__name__}: {err}. Offline, download the weights '
            f"elsewhere and pass pretrained='/path/to/{model_name}.safetensors' (a timm-format "
            f"state dict), or use init_cfg=dict(type='Pretrained', checkpoint=...) for a "
            f'backbone/detector checkpoint.') from err
    target = f'timm {model_name!r} (feature extractor)'
    if not calls:  # the model's own loader (timm's custom_load): nothing to compare
        print_log(f'{target}: weights from {source} were loaded by the model\'s own loader; '
                  f'loaded tensors not counted', logger='current', level=logging.WARNING)
        return model
    loaded_ids = set()
    found: List[str] = []
    for module, given, result in calls:
        missing = set(result.missing_keys)
        loaded_ids |= set(tensor_ids(module, [k for k in given if k not in missing]))
        found += list(given)
    ids = tensor_ids(model)
    expected = tuple(ids.values())
    loaded = tuple(name for i, name in ids.items() if i in loaded_ids)
    check_load(LoadReport(target, source, expected, loaded, tuple(found)),
               advice=_PRETRAINED_ADVICE)
    return model


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
