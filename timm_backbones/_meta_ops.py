"""Fast meta-device forwards, torch only: `fast_meta()` makes common aten ops on meta tensors
skip torch's Python shape functions (same outputs), and `on_meta()` is the one way this package
builds and runs models without weights (the meta device plus `fast_meta`).

Nothing here knows timm or mmdet.
"""
import contextlib
from typing import Any, Callable, Dict, Iterator, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
    (in-place ops return their input, as torch's do; `tests/test_meta_ops.py` compares them);
    every other call, including every call that would raise, goes to torch.
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
