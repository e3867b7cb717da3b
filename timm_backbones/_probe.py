"""What a timm feature extractor is, read without weights: meta-device builds, their caches, and
input-size probing. Owns `probe` (levels, output layout), `probe_input` (which input sizes run)
and `supports_kwargs` (whether timm accepts a set of arguments).

Results are cached per (model, arguments), failures included, so planning the same backbone twice
never repeats a failing build. The latest meta models are kept in a small keyed cache, so
`probe_input` right after `probe` reuses the model instead of building it again.
"""
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import timm
import torch
from mmengine.logging import print_log
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ._specs import size_near
from ._timm import check_model_name, create_features, output_format

__all__ = ['Probe', 'InputRule', 'probe', 'probe_input', 'runs_at_any_size', 'has_dynamic_size',
           'supports_kwargs', 'clear_caches', 'meta_model', 'fast_meta']


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
    """Which input sizes a timm feature extractor runs at.

    Args:
        pad_divisor: Smallest divisor such that inputs whose sides are multiples of it run
            (1: any size).
        fixed_size: (H, W) the model only runs at (fixed position tables), else None.
    """
    pad_divisor: int
    fixed_size: Optional[Tuple[int, int]]


_T = TypeVar('_T')
_Key = Tuple[str, Tuple[Tuple[str, str], ...]]
_CACHE_SIZE = 4096  # a full sweep of timm's architectures fits
_PROBES: Dict[_Key, Union[Probe, ValueError]] = {}
_INPUTS: Dict[_Key, Union[InputRule, ValueError]] = {}
# the trial-divisor part of `_INPUTS`: (rule or None, last failing size, its error)
_ANY_SIZE: Dict[_Key, Union[Tuple[Optional[InputRule], str, str], ValueError]] = {}
_MODELS: 'OrderedDict[_Key, nn.Module]' = OrderedDict()  # the latest meta builds
_MODELS_KEPT = 2
# candidate input divisors, as multiples of the deepest stride (windowed attention: 7, 14)
_DIVISOR_FACTORS = (1, 2, 4, 7, 8, 14, 16)


def clear_caches() -> None:
    """Forget every cached probe, input rule and meta model (e.g. to time a cold plan)."""
    _PROBES.clear()
    _INPUTS.clear()
    _ANY_SIZE.clear()
    _MODELS.clear()


def fast_meta() -> contextlib.AbstractContextManager:
    """A context in which meta-device forwards skip torch's Python shape functions for the
    common shape-preserving ops (see `_FastMeta`); outputs are the same as without it.

    Example:
        >>> with torch.no_grad(), fast_meta():
        ...     out = meta_model('mobilenetv3_large_100', {})(torch.empty(1, 3, 224, 224,
        ...                                                             device='meta'))
    """
    return _FastMeta()


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and
                                 t.is_contiguous(memory_format=torch.channels_last))


def _float_meta(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_meta and t.is_floating_point()


def _unary(func, args, kwargs):
    """Elementwise op of one tensor (activations, x * scalar): output laid out as the input."""
    x = args[0]
    if _float_meta(x) and _dense(x) and not any(
            isinstance(a, torch.Tensor) for a in list(args[1:]) + list(kwargs.values())):
        return torch.empty_like(x)
    return NotImplemented


def _inplace(func, args, kwargs):
    """In-place elementwise op of one tensor: returns its input."""
    x = args[0]
    if _float_meta(x) and _dense(x) and not any(
            isinstance(a, torch.Tensor) for a in list(args[1:]) + list(kwargs.values())):
        return x
    return NotImplemented


def _binary(func, args, kwargs):
    """add/sub/mul/div of two tensors of one dtype: of one shape and layout (output laid out
    alike), or both contiguous (broadcast, contiguous output)."""
    a, b = args[0], args[1]
    if not (_float_meta(a) and _float_meta(b) and a.dtype == b.dtype) or any(
            isinstance(v, torch.Tensor) for v in kwargs.values()):
        return NotImplemented
    if a.shape == b.shape and a.stride() == b.stride() and _dense(a):
        return torch.empty_like(a)
    if a.is_contiguous() and b.is_contiguous():
        try:
            shape = torch.broadcast_shapes(a.shape, b.shape)
        except RuntimeError:
            return NotImplemented  # torch raises its own error
        return a.new_empty(shape)
    return NotImplemented


def _mean(func, args, kwargs):
    """mean over dims of a contiguous tensor -> contiguous."""
    x, dims = args[0], args[1]
    keep = args[2] if len(args) > 2 else kwargs.get('keepdim', False)
    if not (_float_meta(x) and x.is_contiguous() and kwargs.get('dtype') is None and
            len(args) <= 3 and isinstance(dims, (list, tuple)) and dims):
        return NotImplemented
    n = x.dim()
    if not all(isinstance(d, int) and -n <= d < n for d in dims):
        return NotImplemented
    picked = {d % n for d in dims}
    if len(picked) != len(dims):
        return NotImplemented
    shape = [1 if i in picked else s for i, s in enumerate(x.shape) if keep or i not in picked]
    return x.new_empty(shape)


def _channel_vectors(x: torch.Tensor, vectors: Sequence[Any]) -> bool:
    return all(v is None or (_float_meta(v) and v.shape == (x.shape[1],)) for v in vectors)


def _batch_norm(func, args, kwargs):
    """native_batch_norm(x, w, b, mean, var, training, ...) -> (out, save_mean, save_invstd)."""
    x = args[0]
    if _float_meta(x) and x.dim() >= 2 and _dense(x) and not kwargs and \
            _channel_vectors(x, args[1:5]):
        c = x.shape[1]
        return (torch.empty_like(x), x.new_empty((c,), dtype=x.dtype),
                x.new_empty((c,), dtype=x.dtype))
    return NotImplemented


def _layer_norm(func, args, kwargs):
    """native_layer_norm(x, shape, w, b, eps) -> (out (contiguous), mean, rstd)."""
    x, shape = args[0], tuple(args[1])
    k = len(shape)
    if _float_meta(x) and not kwargs and 0 < k <= x.dim() and tuple(x.shape[-k:]) == shape and \
            all(v is None or (_float_meta(v) and tuple(v.shape) == shape) for v in args[2:4]):
        stats = tuple(x.shape[:-k]) + (1,) * k
        return (x.new_empty(x.shape), x.new_empty(stats), x.new_empty(stats))
    return NotImplemented


def _softmax(func, args, kwargs):
    """softmax of a contiguous tensor (its output is contiguous)."""
    x = args[0]
    if _float_meta(x) and x.is_contiguous() and not kwargs and \
            (len(args) < 3 or args[2] is False):
        return torch.empty_like(x)
    return NotImplemented


def _addmm(func, args, kwargs):
    """addmm(bias, m1, m2) -> contiguous (n, p)."""
    bias, m1, m2 = args[:3]
    if all(_float_meta(t) for t in (bias, m1, m2)) and m1.dim() == 2 and m2.dim() == 2 and \
            m1.shape[1] == m2.shape[0] and bias.shape in ((m2.shape[1],),
                                                          (m1.shape[0], m2.shape[1])) and \
            len({t.dtype for t in (bias, m1, m2)}) == 1 and \
            not any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return m1.new_empty((m1.shape[0], m2.shape[1]))
    return NotImplemented


def _fast_ops() -> Dict[Any, Callable]:
    aten = torch.ops.aten
    table: Dict[Any, Callable] = {}
    for name in ('gelu', 'hardswish', 'hardsigmoid', 'relu', 'leaky_relu', 'silu', 'sigmoid',
                 'tanh', 'hardtanh', 'clamp', 'clamp_min', 'elu', 'mish', 'rsqrt', 'sqrt',
                 'exp', 'neg', 'abs', 'erf'):
        table[getattr(aten, name).default] = _unary
        if hasattr(aten, name + '_'):
            table[getattr(aten, name + '_').default] = _inplace
    for name in ('add', 'sub', 'mul', 'div'):
        table[getattr(aten, name).Scalar] = _unary
        table[getattr(aten, name).Tensor] = _binary
        table[getattr(aten, name + '_').Scalar] = _inplace
    # weight initialisation while a model is built (trunc_normal_, kaiming_uniform_, zeros_, ...)
    for op in (aten.normal_.default, aten.uniform_.default, aten.erfinv_.default,
               aten.fill_.Scalar, aten.zero_.default, aten.exponential_.default,
               aten.log_normal_.default, aten.bernoulli_.float):
        table[op] = _inplace
    table.update({aten.native_batch_norm.default: _batch_norm,
                  aten._native_batch_norm_legit_no_training.default: _batch_norm,
                  aten.native_layer_norm.default: _layer_norm,
                  aten._softmax.default: _softmax, aten._safe_softmax.default: _softmax,
                  aten.addmm.default: _addmm, aten.mean.dim: _mean,
                  aten.pow.Tensor_Scalar: _unary})
    return table


class _FastMeta(TorchDispatchMode):
    """Meta-device forwards without torch's Python shape functions for common ops.

    torch computes the outputs of many ops on the meta device with Python reference
    implementations (batch_norm ~1 ms, hardswish ~1.5 ms, layer_norm ~1 ms, clamp_ ~5 ms per
    call), so meta forwards, and the weight initialisation of meta builds (trunc_normal_:
    uniform_, erfinv_, mul_, add_, clamp_), cost more than the model's structure. For a few such
    ops, on inputs where the result is plain (dense layouts, float tensors, matching shapes), this
    mode makes the output directly: the same shape, dtype and strides as torch's own meta kernel
    (in-place ops return their input, as torch's do; `tests/test_probe.py` compares them); every
    other call, including every call that would raise, goes to torch.
    """
    _ops: Dict[Any, Callable] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _FastMeta._ops:
            _FastMeta._ops = _fast_ops()
        handler = _FastMeta._ops.get(func)
        if handler is not None:
            out = handler(func, args, kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)


def _key(model_name: str, kwargs: Dict[str, Any]) -> _Key:
    return model_name, tuple(sorted((k, repr(v)) for k, v in kwargs.items()))


def _cached(cache: Dict[_Key, Any], key: _Key, compute: Callable[[], _T]) -> _T:
    """`compute()` once per key; a ValueError is cached too and raised again on every call."""
    if key not in cache:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        try:
            cache[key] = compute()
        except ValueError as err:
            cache[key] = err
    found = cache[key]
    if isinstance(found, ValueError):
        raise found.with_traceback(None)
    return found


def meta_model(model_name: str, kwargs: Dict[str, Any]) -> nn.Module:
    """The feature extractor built on the meta device (kept among the latest few builds); a
    real CPU build only where the meta device fails (a model that computes with tensors while
    being built) but the CPU works.

    Example:
        >>> sum(p.numel() for p in meta_model('resnet18', {}).parameters())
        11176512
    """
    key = _key(model_name, kwargs)
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    try:
        with fast_meta():  # timm initialises the weights it builds: no-ops on the meta device
            model = create_features(model_name, kwargs, None, meta=True)
    except ValueError as meta_err:
        # arguments the model does not take fail on every device: no CPU build for those
        cpu = None if isinstance(meta_err.__cause__, TypeError) else _cpu_build(model_name, kwargs)
        if cpu is None:
            raise  # the meta build's error, with timm's error as its cause
        model = cpu
        print_log(f'{model_name!r} does not build on the meta device; its feature metadata came '
                  f'from a CPU build', logger='current', level=logging.WARNING)
    _MODELS[key] = model
    while len(_MODELS) > _MODELS_KEPT:
        _MODELS.popitem(last=False)
    return model


def _cpu_build(model_name: str, kwargs: Dict[str, Any]) -> Optional[nn.Module]:
    """A real CPU build, or None where it fails too."""
    try:
        return create_features(model_name, kwargs, None, meta=False)
    except ValueError:
        return None


_NAMES_SEEN: set = set()  # names that passed the check


def _check_name(model_name: str) -> None:
    """`check_model_name`, without listing every timm name and tag for a plain architecture
    name (timm.list_models with the exact name: ~0.5 ms instead of ~13 ms)."""
    if model_name in _NAMES_SEEN:
        return
    if not (isinstance(model_name, str) and model_name.replace('_', '').isalnum() and
            timm.list_models(model_name) == [model_name]):
        check_model_name(model_name)  # tags, unknown names (close matches), non-strings
    _NAMES_SEEN.add(model_name)


def probe(model_name: str, kwargs: Dict[str, Any]) -> Probe:
    """Build `model_name` as a feature extractor on the meta device (no weights; cached, failures
    too) and read its levels and output layout.

    Args:
        model_name: timm architecture or tag (checked first).
        kwargs: `timm.create_model` arguments from `timm_kwargs`.

    Raises:
        ValueError: timm cannot build it with these arguments (the cause is chained).

    Example:
        >>> p = probe('resnet18', timm_kwargs())
        >>> [d['reduction'] for d in p.feature_info], p.output_format
        ([2, 4, 8, 16, 32], 'NCHW')
    """
    _check_name(model_name)

    def describe() -> Probe:
        model = meta_model(model_name, kwargs)
        return Probe(tuple(dict(d) for d in model.feature_info.info), output_format(model))

    return _cached(_PROBES, _key(model_name, kwargs), describe)


def supports_kwargs(model_name: str, kwargs: Dict[str, Any]) -> bool:
    """Whether timm builds `model_name` with `kwargs` as a feature extractor (meta; cached).

    A build refused for its arguments (timm's `TypeError`: an argument the model does not take)
    is a plain False. A build failing for any other reason is False too, with a warning naming
    the cause, so a broken option set never passes for an unsupported one unnoticed.
    """
    try:
        probe(model_name, kwargs)
    except ValueError as err:
        if not isinstance(err.__cause__, TypeError):
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
    return _cached(_INPUTS, _key(model_name, kwargs),
                   lambda: _input_rule(model_name, meta_model(model_name, kwargs), kwargs))


def _meta_shapes(model: nn.Module, hw: Tuple[int, int], in_chans: int
                 ) -> Union[List[Tuple[int, ...]], Exception]:
    """Output shapes of a forward at `hw` (meta device, unless the model is on the CPU), or the
    exception the model raised there (kept for the error message if no size works)."""
    device = next(iter(model.parameters()), torch.empty(0, device='meta')).device
    fast = fast_meta() if device.type == 'meta' else contextlib.nullcontext()
    try:
        with torch.no_grad(), fast:
            outs = model(torch.empty(1, in_chans, *hw, device=device))
    except Exception as err:  # noqa: BLE001 - any failure means "not at this size"; kept
        return err
    return [tuple(o.shape) for o in outs]


def _check_shapes(model_name: str, model: nn.Module,
                  runs: Sequence[Tuple[Tuple[int, int], Sequence[Tuple[int, ...]]]]) -> None:
    """timm's `feature_info` must describe the real outputs: channels equal, sizes near
    input / reduction (`size_near`), and between trial inputs the maps grow by input growth /
    reduction (+-1)."""
    nhwc = output_format(model) == 'NHWC'

    def chw(shape):
        return (shape[3], shape[1], shape[2]) if nhwc else tuple(shape[1:4])

    (hw, shapes), rest = runs[0], runs[1:]
    for i, d in enumerate(model.feature_info.get_dicts()):
        c, h, w = chw(shapes[i])
        r = d['reduction']
        bad = c != d['num_chs'] or not all(size_near(g, s, r) for g, s in zip((h, w), hw))
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


def _any_size_rule(model_name: str, model: nn.Module, kwargs: Dict[str, Any]
                   ) -> Tuple[Optional[InputRule], str, str]:
    """The smallest trial divisor at which the model runs at two non-square sizes:
    (InputRule(divisor, None), '', '') or (None, size of the last failure, its error)."""
    in_chans = kwargs.get('in_chans', 3)
    model.eval()  # batch-1 trial forwards: BN in train mode rejects 1x1 maps
    deepest = max(d['reduction'] for d in model.feature_info.info)
    last = ('', '')
    for factor in (0,) + _DIVISOR_FACTORS:
        d = 1 if factor == 0 else deepest * factor
        # two non-square sizes of detection-like scale, multiples of d (odd sides when d=1)
        a = -(-320 // d) * d if d > 1 else 321
        b = -(-416 // d) * d if d > 1 else 417
        second = (a + d * (1 if d > 1 else 64), b)
        shapes = _meta_shapes(model, (a, b), in_chans)
        shapes2 = _meta_shapes(model, second, in_chans) if isinstance(shapes, list) else shapes
        if isinstance(shapes2, list):
            _check_shapes(model_name, model, [((a, b), shapes), (second, shapes2)])
            return InputRule(d, None), '', ''
        failed = (a, b) if isinstance(shapes, Exception) else second
        last = (f'{failed[0]}x{failed[1]}', f'{type(shapes2).__name__}: {shapes2}')
    return None, last[0], last[1]


def runs_at_any_size(model_name: str, kwargs: Dict[str, Any]) -> bool:
    """Whether `model_name` runs at non-square detection-sized inputs (multiples of some trial
    divisor) as it is built with `kwargs` (meta forwards; cached, failures too).

    Example:
        >>> runs_at_any_size('resnet18', {}), runs_at_any_size('vit_tiny_patch16_224', {})
        (True, False)
    """
    probe(model_name, kwargs)  # checks the name and the arguments
    return _cached(_ANY_SIZE, _key(model_name, kwargs), lambda: _any_size_rule(
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
    rule, *last = _cached(_ANY_SIZE, _key(model_name, kwargs),
                          lambda: _any_size_rule(model_name, model, kwargs))
    if rule is not None:
        return rule
    in_chans = kwargs.get('in_chans', 3)
    deepest = max(d['reduction'] for d in model.feature_info.info)
    native = getattr(model, 'pretrained_cfg', {}).get('input_size')
    tried = []
    # built for a size (img_size): only that size counts; else the model's native size
    for size in ([kwargs['img_size']] if 'img_size' in kwargs else [native]):
        if size is None:
            continue
        size = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        shapes = _meta_shapes(model, size, in_chans)
        if isinstance(shapes, list):
            _check_shapes(model_name, model, [(size, shapes)])
            return InputRule(1, (int(size[0]), int(size[1])))
        tried.append(f'{size[0]}x{size[1]}')
        last = [tried[-1], f'{type(shapes).__name__}: {shapes}']
    hint = (f"; it was built with img_size={kwargs['img_size']} but does not run at that size "
            f'(some models only take square inputs): try input_size=(S, S)'
            if 'img_size' in kwargs else '')
    cause = f' The last failure, at {last[0]}: {last[1]}' if last[1] else ''
    raise ValueError(f'{model_name!r} ran at none of the input sizes tried (multiples of '
                     f'{deepest} x {_DIVISOR_FACTORS}; {", ".join(tried) or "no fixed size"})'
                     f'{hint}. It cannot be used as a detection backbone as configured.{cause}')
