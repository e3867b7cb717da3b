"""Fast meta-device forwards, torch only: `fast_meta()` makes common aten ops on meta tensors
skip torch's Python shape functions (same outputs), and `on_meta()` is the one way this package
builds and runs models without weights (the meta device plus `fast_meta`).

Nothing here knows timm or mmdet.
"""
import contextlib
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch
from torch.utils._device import DeviceContext
from torch.utils._python_dispatch import TorchDispatchMode

from ._cache import Memo

__all__ = ['fast_meta', 'on_meta', 'MadeOnCpu']


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build and run models on the meta device (no weights, no memory), with `fast_meta`: the one
    context for meta builds (timm models, whole detectors).

    Example:
        >>> with on_meta():
        ...     model = timm.create_model('resnet18', features_only=True)
    """
    with _MetaDefault('meta'), fast_meta():
        yield


def fast_meta(watch_cpu: bool = False) -> '_FastMeta':
    """A context in which meta-device forwards skip torch's Python shape functions for the
    common shape-preserving ops (see `_FastMeta`); outputs are the same as without it.

    Args:
        watch_cpu: Stop at the first tensor made on the CPU (a factory op with no tensor in,
            or a tensor literal): `MadeOnCpu` is raised there and the mode's `made_cpu` is
            set. A forward that made none ran exactly as it would with the meta device as the
            default (`on_meta`), without the cost of torch's default-device mode.

    Example:
        >>> with torch.no_grad(), fast_meta():
        ...     out = model(torch.empty(1, 3, 224, 224, device='meta'))
    """
    return _FastMeta(watch_cpu)


class MadeOnCpu(RuntimeError):
    """A tensor was made on the CPU under `fast_meta(watch_cpu=True)`."""


def _writable_meta(t: Any) -> bool:
    """A meta float tensor that may be written in place (no grad needed, or grad mode off)."""
    return isinstance(t, torch.Tensor) and t.is_meta and t.is_floating_point() and (
        not t.requires_grad or not torch.is_grad_enabled())


def _number(v: Any) -> bool:
    return type(v) in (int, float)


def _noop_setitem(args: Sequence[Any]) -> bool:
    """Whether `tensor[index] = value` only writes values: a writable meta float tensor, int
    indices in range, a Python number (on the meta device there are no values)."""
    if len(args) != 3:
        return False
    t, index, value = args
    if not (_writable_meta(t) and _number(value)):
        return False
    index = index if type(index) is tuple else (index,)
    return len(index) <= t.dim() and all(
        type(i) is int and -n <= i < n for i, n in zip(index, t.shape))


def _arg(args: Sequence[Any], kwargs: Dict[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _noop_write(func: Any, args: Sequence[Any], kwargs: Dict[str, Any]) -> bool:
    """Whether `func(*args, **kwargs)` only writes values into its first argument (a
    writable meta float tensor) with arguments torch takes (checked at least as strictly as
    torch checks them on meta):
    `zero_`, `fill_(number)`, `uniform_(lo <= hi)`,
    `normal_(mean, std >= 0)`, `erfinv_`, `mul_/add_/sub_/div_(number)`, `clamp_` with
    number bounds."""
    if not args or not _writable_meta(args[0]):
        return False
    rest = list(args[1:]) + list(kwargs.values())
    if func in _PLAIN_WRITES:
        return all(_number(v) for v in rest) and len(rest) <= 1
    if func in _UNIFORM:
        lo, hi = _arg(args, kwargs, 1, _UNIFORM[func][0], 0.0), \
            _arg(args, kwargs, 2, _UNIFORM[func][1], 1.0)
        return len(rest) <= 2 and _number(lo) and _number(hi) and lo <= hi
    if func in _NORMAL:
        mean, std = _arg(args, kwargs, 1, 'mean', 0.0), _arg(args, kwargs, 2, 'std', 1.0)
        return len(rest) <= 2 and _number(mean) and _number(std) and std >= 0
    if func in _ARITHMETIC:
        return len(args) == 2 and _number(args[1]) and set(kwargs) <= {'alpha'} and all(
            _number(v) for v in kwargs.values())
    if func is _CLAMP:
        bounds = list(args[1:]) + [kwargs[k] for k in ('min', 'max') if k in kwargs]
        return len(bounds) <= 2 and set(kwargs) <= {'min', 'max'} and any(
            v is not None for v in bounds) and all(v is None or _number(v) for v in bounds)
    return False


class _MetaDefault(DeviceContext):
    """torch's default-device mode (`with torch.device('meta')`), where calls that only write
    values into a meta tensor return at once (no values exist; torch would run each through
    its meta kernels): assigning a number to elements (`t[i, j, k] = 1`, five aten ops, ~40 us
    through `fast_meta`: MaxViT builds its relative-position lookup tables with ~2000 of them,
    2/3 of its meta build), and the tensor methods weight initialisation calls (`zero_`,
    `fill_`, `uniform_`, `normal_`, `mul_(std)`, `clamp_(lo, hi)`, ... on a tensor that may be
    written in place, with arguments torch takes; their output is their input)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is _SETITEM:
            if not kwargs and _noop_setitem(args):
                return None
        elif func in _WRITES and _noop_write(func, args, kwargs or {}):
            return args[0]
        return super().__torch_function__(func, types, args, kwargs)


_SETITEM = torch.Tensor.__setitem__
# calls that write values into their first argument and return it (see `_noop_write`)
# (`nn.init` functions reach the mode with their arguments as keywords and call these)
_PLAIN_WRITES = frozenset([torch.Tensor.zero_, torch.Tensor.fill_, torch.Tensor.erfinv_])
_UNIFORM = {torch.Tensor.uniform_: ('from', 'to')}
_NORMAL = frozenset([torch.Tensor.normal_])
_ARITHMETIC = frozenset(getattr(torch.Tensor, n) for n in ('mul_', 'add_', 'sub_', 'div_'))
_CLAMP = torch.Tensor.clamp_
_WRITES = _PLAIN_WRITES | set(_UNIFORM) | _NORMAL | _ARITHMETIC | {_CLAMP}


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


# in-place random fills whose argument torch checks on meta: (position, name, default, test)
_RANDOM_CHECKS = {
    torch.ops.aten.normal_.default: (2, 'std', 1.0, lambda v: v >= 0),
    torch.ops.aten.log_normal_.default: (2, 'std', 2.0, lambda v: v > 0),
    torch.ops.aten.exponential_.default: (1, 'lambd', 1.0, lambda v: v > 0),
}


def _random_inplace(func, args, kwargs):
    """normal_, log_normal_, exponential_: their input, where the argument torch checks
    (std, lambd) passes torch's test; else torch's kernel (and its error)."""
    i, name, default, test = _RANDOM_CHECKS[func]
    value = _arg(args, kwargs, i, name, default)
    if _number(value) and test(value):
        return _inplace(func, args, kwargs)
    return NotImplemented


def _int_meta(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_meta and not t.is_floating_point() and \
        not t.is_complex() and t.dtype is not torch.bool


def _binary(func, args, kwargs):
    """add/sub/mul/div of two tensors of one dtype: of one shape and layout (output laid out
    alike), or both contiguous (broadcast, contiguous output); integer tensors for add/sub/mul
    (an int alpha); a float tensor and a number (output laid out as the tensor)."""
    a, b = args[0], args[1]
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()) or len(args) > 2:
        return NotImplemented
    if type(b) in (int, float):
        same = _float_meta(a) or (_int_meta(a) and type(b) is int and func not in _DIVISIONS
                                  and type(kwargs.get('alpha', 1)) is int)
        return _like(a) if same and _dense(a) else NotImplemented
    if _int_meta(a) and _int_meta(b) and a.dtype == b.dtype:
        if func in _DIVISIONS or type(kwargs.get('alpha', 1)) is not int:
            return NotImplemented  # true division makes floats; torch refuses a float alpha
    elif not (_float_meta(a) and _float_meta(b) and a.dtype == b.dtype):
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


def _int_unary(func, args, kwargs):
    """abs/neg of an integer tensor: laid out as the input."""
    x = args[0]
    if _int_meta(x) and _dense(x) and len(args) == 1 and not kwargs:
        return _like(x)
    return NotImplemented


def _stack(func, args, kwargs):
    """stack of tensors of one shape and dtype, up to 3-d out: contiguous (torch's reference
    cats them, which makes a contiguous output unless all are channels-last: 4-d)."""
    tensors = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get('dim', 0)
    if len(args) > 2 or set(kwargs) - {'dim'} or not isinstance(tensors, (list, tuple)) or \
            not tensors or not isinstance(dim, int):
        return NotImplemented
    first = tensors[0]
    if not all(isinstance(t, torch.Tensor) and t.is_meta and t.dtype == first.dtype and
               t.shape == first.shape for t in tensors):
        return NotImplemented
    n = first.dim() + 1
    if n > 3 or not -n <= dim < n:
        return NotImplemented
    shape = list(first.shape)
    shape.insert(dim % n, len(tensors))
    return _new(first, shape)


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


_DIVISIONS = (torch.ops.aten.div.Tensor,)


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
    # float ops first: abs and neg of integer tensors (relative-position tables) are extra
    for op in (aten.abs.default, aten.neg.default):
        table[op] = lambda func, args, kwargs: (
            _unary(func, args, kwargs) if _float_meta(args[0]) else
            _int_unary(func, args, kwargs))
    table[aten.stack.default] = _stack
    # weight initialisation while a model is built (trunc_normal_, kaiming_uniform_, zeros_, ...)
    for op in (aten.uniform_.default, aten.erfinv_.default, aten.fill_.Scalar,
               aten.zero_.default, aten.bernoulli_.float):
        table[op] = _inplace
    for op in _RANDOM_CHECKS:
        table[op] = _random_inplace
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
        return value.dtype, value.shape, value.stride()  # torch.Size hashes as its tuple
    if isinstance(value, (list, tuple)):
        return tuple([_signature(v) for v in value])
    if isinstance(value, _SCALARS):
        return type(value), value
    raise _Unkeyable


def _takes_tensors(args: Sequence[Any]) -> bool:
    """Whether an op's positional arguments hold a tensor (or a list starting with one)."""
    for a in args:
        if isinstance(a, torch.Tensor) or (
                isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)):
            return True
    return False


_KINDS: Dict[Any, Optional[str]] = {}


def _kind(func: Any) -> Optional[str]:
    """'fresh' for an op whose one Tensor result is a new tensor (no argument or result is an
    alias), 'self' for an in-place op returning its first argument, None otherwise (views, out=
    variants, several results)."""
    kind = _KINDS.get(func, False)
    if kind is False:
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
    return kind


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
    is memoized only where it left its input's shape, strides and offset as they were. The
    first call of a signature runs torch's kernel (and a failing call always does); later ones
    make its output directly."""
    kind = _kind(func)
    if kind is None or not _takes_tensors(args):
        return NotImplemented  # views, factories (no tensor in): nothing to gain
    try:
        # the default dtype: integer division and a few others make tensors of it
        key = (func, torch.get_default_dtype(), _signature(args),
               _signature(tuple(sorted(kwargs.items()))) if kwargs else ())
    except _Unkeyable:
        return NotImplemented
    layout = _LAYOUTS.find(key)
    if layout is not _LAYOUTS.MISSING:  # the common case: made without a closure
        return _from_layout(layout, args)
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
    return _from_layout(layout, args)


def _from_layout(layout: Any, args: Sequence[Any]) -> Any:
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

    def __init__(self, watch_cpu: bool = False) -> None:
        super().__init__()
        self.watch_cpu = watch_cpu
        self.made_cpu = False

    def _check_cpu(self, func, args, kwargs) -> None:
        device = kwargs.get('device')
        if (isinstance(device, torch.device) and device.type == 'cpu' and
                not _takes_tensors(args)) or (
                func in _LIFTS and args and args[0].device.type == 'cpu'):
            self.made_cpu = True
            raise MadeOnCpu(f'{func} made a tensor on the CPU')

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.watch_cpu and ('device' in kwargs or func in _LIFTS):
            self._check_cpu(func, args, kwargs)
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


_LIFTS = (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)
