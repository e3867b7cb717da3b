"""Fast meta-device forwards, torch only: `fast_meta()` makes common aten ops on meta tensors
skip torch's Python shape functions (same outputs), and `on_meta()` is the one way this package
builds and runs models without weights (the meta device plus `fast_meta`).

Nothing here knows timm or mmdet.
"""
import contextlib
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ._cache import Memo

__all__ = ['fast_meta', 'on_meta']


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build and run models on the meta device (no weights, no memory), with `fast_meta`: the one
    context for meta builds (timm models, whole detectors).

    Example:
        >>> with on_meta():
        ...     model = timm.create_model('resnet18', features_only=True)
    """
    with torch.device('meta'), fast_meta():
        yield


def fast_meta() -> contextlib.AbstractContextManager:
    """A context in which meta-device forwards skip torch's Python shape functions for the
    common shape-preserving ops (see `_FastMeta`); outputs are the same as without it.

    Example:
        >>> with torch.no_grad(), fast_meta():
        ...     out = model(torch.empty(1, 3, 224, 224, device='meta'))
    """
    return _FastMeta()


def _like(x: torch.Tensor) -> torch.Tensor:
    """A meta tensor laid out as the dense tensor `x` (what `torch.empty_like` gives it, without
    its ~50 us of Python checks on the meta device)."""
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device='meta')


def _new(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A contiguous meta tensor of `x`'s dtype (`x.new_empty(shape)`, without its Python ref)."""
    return torch.empty(shape, dtype=x.dtype, device='meta')


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
        return _like(x)
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
        return _like(a)
    if a.is_contiguous() and b.is_contiguous():
        try:
            shape = torch.broadcast_shapes(a.shape, b.shape)
        except RuntimeError:
            return NotImplemented  # torch raises its own error
        return _new(a, shape)
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
    return _new(x, shape)


def _channel_vectors(x: torch.Tensor, vectors: Sequence[Any]) -> bool:
    return all(v is None or (_float_meta(v) and v.shape == (x.shape[1],)) for v in vectors)


def _batch_norm(func, args, kwargs):
    """native_batch_norm(x, w, b, mean, var, training, ...) -> (out, save_mean, save_invstd)."""
    x = args[0]
    if _float_meta(x) and x.dim() >= 2 and _dense(x) and not kwargs and \
            _channel_vectors(x, args[1:5]):
        c = x.shape[1]
        return _like(x), _new(x, (c,)), _new(x, (c,))
    return NotImplemented


def _layer_norm(func, args, kwargs):
    """native_layer_norm(x, shape, w, b, eps) -> (out (contiguous), mean, rstd)."""
    x, shape = args[0], tuple(args[1])
    k = len(shape)
    if _float_meta(x) and not kwargs and 0 < k <= x.dim() and tuple(x.shape[-k:]) == shape and \
            all(v is None or (_float_meta(v) and tuple(v.shape) == shape) for v in args[2:4]):
        stats = tuple(x.shape[:-k]) + (1,) * k
        return _new(x, x.shape), _new(x, stats), _new(x, stats)
    return NotImplemented


def _softmax(func, args, kwargs):
    """softmax of a contiguous tensor (its output is contiguous)."""
    x = args[0]
    if _float_meta(x) and x.is_contiguous() and not kwargs and \
            (len(args) < 3 or args[2] is False):
        return _like(x)
    return NotImplemented


def _addmm(func, args, kwargs):
    """addmm(bias, m1, m2) -> contiguous (n, p)."""
    bias, m1, m2 = args[:3]
    if all(_float_meta(t) for t in (bias, m1, m2)) and m1.dim() == 2 and m2.dim() == 2 and \
            m1.shape[1] == m2.shape[0] and bias.shape in ((m2.shape[1],),
                                                          (m1.shape[0], m2.shape[1])) and \
            len({t.dtype for t in (bias, m1, m2)}) == 1 and \
            not any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return _new(m1, (m1.shape[0], m2.shape[1]))
    return NotImplemented


def _conv(func, args, kwargs):
    """convolution(x, w, b, stride, padding, dilation, transposed=False, ...): torch's meta
    kernel returns `x.new_empty` of the output shape (contiguous) for every layout."""
    x, w, b, stride, padding, dilation, transposed = args[:7]
    groups = args[8] if len(args) > 8 else None
    spatial = x.dim() - 2 if isinstance(x, torch.Tensor) else 0
    if kwargs or transposed or not isinstance(groups, int) or groups < 1 or spatial < 1 or \
            not (_float_meta(x) and _float_meta(w) and x.dtype == w.dtype) or \
            w.dim() != x.dim() or x.shape[1] == 0 or x.shape[1] != w.shape[1] * groups or \
            w.shape[0] % groups or not (b is None or (_float_meta(b) and b.shape == w.shape[:1])) \
            or not all(isinstance(v, (list, tuple)) and len(v) == spatial and
                       all(isinstance(i, int) for i in v) for v in (stride, padding, dilation)):
        return NotImplemented
    sides = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
             zip(x.shape[2:], w.shape[2:], stride, padding, dilation)]
    if min(sides) < 1 or min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        return NotImplemented  # torch raises its own error
    return _new(x, (x.shape[0], w.shape[0], *sides))


def _channels_last_like(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """torch's `are_strides_like_channels_last` (what `suggest_memory_format` reads), for 4-d
    tensors of plain int sizes."""
    if len(shape) != 4 or strides[1] == 0:
        return False
    least = 0
    for d in (1, 3, 2, 0):
        if shape[d] == 0 or strides[d] < least or (d == 0 and least == strides[1]):
            return False
        least = strides[d] * shape[d]
    return True


def _cat(func, args, kwargs):
    """cat of same-dtype tensors, equal but in `dim`, one of them not laid out channels-last:
    torch's reference makes the output contiguous."""
    tensors = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get('dim', 0)
    if len(args) > 2 or set(kwargs) - {'dim'} or not isinstance(tensors, (list, tuple)) or \
            not tensors or not isinstance(dim, int) or \
            not all(_float_meta(t) and t.dtype == tensors[0].dtype for t in tensors):
        return NotImplemented
    first = tensors[0]
    n = first.dim()
    if n < 1 or not -n <= dim < n or any(t.dim() != n for t in tensors) or \
            all(_channels_last_like(t.shape, t.stride()) for t in tensors):
        return NotImplemented
    dim %= n
    if any(t.shape[:dim] != first.shape[:dim] or t.shape[dim + 1:] != first.shape[dim + 1:]
           for t in tensors):
        return NotImplemented  # torch raises its own error
    shape = list(first.shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return _new(first, shape)


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
                  aten.convolution.default: _conv, aten.cat.default: _cat,
                  aten.pow.Tensor_Scalar: _unary})
    return table


class _Unkeyable(Exception):
    """An op argument the layout memo cannot key on."""


_SCALARS = (bool, int, float, complex, str, type(None), torch.dtype, torch.device,
            torch.memory_format, torch.layout)


def _signature(value: Any) -> Any:
    """What an op's output layout can depend on, for a meta tensor: device, dtype, shape,
    strides (no values exist); other arguments by type and value."""
    if isinstance(value, torch.Tensor):
        if not value.is_meta:
            raise _Unkeyable  # a real tensor: its values may matter
        return value.dtype, tuple(value.shape), value.stride()
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    if isinstance(value, _SCALARS):
        return type(value), value
    raise _Unkeyable


_KINDS: Dict[Any, Optional[str]] = {}


def _kind(func: Any) -> Optional[str]:
    """'fresh' for an op whose one Tensor result is a new tensor (no argument or result is an
    alias), 'self' for an in-place op returning its first argument, None otherwise (views, out=
    variants, several results)."""
    if func not in _KINDS:
        schema = func._schema
        rets, args = schema.returns, schema.arguments
        kind = None
        if len(rets) == 1 and str(rets[0].type) == 'Tensor':
            aliased = [a for a in args if a.alias_info is not None]
            if not aliased and rets[0].alias_info is None:
                kind = 'fresh'
            elif aliased == args[:1] and aliased[0].alias_info.is_write and \
                    rets[0].alias_info is not None:
                kind = 'self'
        _KINDS[func] = kind
    return _KINDS[func]


def _metadata(t: Any) -> Any:
    if not isinstance(t, torch.Tensor):
        return None
    return t.dtype, tuple(t.shape), t.stride(), t.storage_offset()


# output layouts of ops on meta tensors, by op and argument signature (see `_memoized`)
_LAYOUTS = Memo('meta op layouts', 50000)


def _memoized(func, args, kwargs):
    """A functional or in-place op on meta tensors, from the output layout torch's own meta
    kernel gave for the same op and argument signature (shapes, strides, dtypes and other
    arguments, and the default dtype): on meta, outputs depend on nothing else. An in-place op
    is memoized only where it left its input's shape, strides and offset as they were. The first call of a signature runs
    torch's kernel (and a failing call always does); later ones make its output directly."""
    kind = _kind(func)
    if kind is None or not any(isinstance(a, torch.Tensor) or (
            isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)) for a in args):
        return NotImplemented  # factories (no tensor in): nothing to gain
    try:
        # the default dtype: integer division and a few others make tensors of it
        key = (func, torch.get_default_dtype(), _signature(args),
               _signature(tuple(sorted(kwargs.items()))))
    except _Unkeyable:
        return NotImplemented
    ran = []

    def run():
        before = _metadata(args[0]) if kind == 'self' else None
        out = func(*args, **kwargs)
        ran.append(out)
        if kind == 'self':
            # squeeze_, resize_, set_, as_strided_...: an op that changes its input's metadata
            # is always run
            return 'self' if out is args[0] and _metadata(out) == before else None
        if isinstance(out, torch.Tensor) and out.is_meta and out.storage_offset() == 0:
            return tuple(out.shape), out.stride(), out.dtype
        return None  # not a plain new meta tensor: always run torch's kernel

    layout = _LAYOUTS.get(key, run)
    if ran:
        return ran[0]
    if layout is None:
        return NotImplemented
    if layout == 'self':
        return args[0]
    shape, stride, dtype = layout
    return torch.empty_strided(shape, stride, dtype=dtype, device='meta')


class _FastMeta(TorchDispatchMode):
    """Meta-device forwards without torch's Python shape functions for common ops.

    torch computes the outputs of many ops on the meta device with Python reference
    implementations (batch_norm ~1 ms, hardswish ~1.5 ms, layer_norm ~1 ms, clamp_ ~5 ms per
    call; elementwise ops on strided tensors, cat and stack 0.2-1 ms), so meta forwards, and
    the weight initialisation of meta builds (trunc_normal_: uniform_, erfinv_, mul_, add_,
    clamp_), cost more than the model's structure. For a few such ops, on inputs where the
    result is plain (dense layouts, float tensors, matching shapes), this mode makes the output
    directly: the same shape, dtype and strides as torch's own meta kernel (in-place ops return
    their input, as torch's do; `tests/test_meta_ops.py` compares them). Every other functional
    or in-place op on meta tensors is memoized by its argument signature (`_memoized`): the
    output torch's kernel gave is made again for the same signature. Views and every call that
    raises go to torch.
    """
    _ops: Dict[Any, Callable] = {}

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in torch._disable_dynamo (for modes used under
        # torch.compile): a few microseconds on every op of a meta build or forward, which is
        # most of what this mode costs; nothing under this mode is compiled
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _FastMeta._ops:
            _FastMeta._ops = _fast_ops()
        handler = _FastMeta._ops.get(func)
        if handler is not None:
            out = handler(func, args, kwargs)
            if out is not NotImplemented:
                return out
        out = _memoized(func, args, kwargs)
        if out is not NotImplemented:
            return out
        return func(*args, **kwargs)
