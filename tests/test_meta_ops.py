"""`_meta_ops.py`: under `fast_meta` every op gives what torch's own meta kernels give (shapes,
strides, dtypes; errors too), and models build and run alike."""
import pytest
import timm
import torch

from timm_backbones._meta_ops import MadeOnCpu, fast_meta, on_meta

aten = torch.ops.aten


def _meta(*shape, layout=None):
    t = torch.empty(*shape, device='meta')
    if layout == 'cl':
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == 'perm':  # dense but neither contiguous nor channels-last: torch decides
        t = torch.empty(shape[0], shape[3], shape[1], shape[2], device='meta').permute(0, 2, 3, 1)
    return t


def _meta_of(out):
    if isinstance(out, (tuple, list)):
        return [_meta_of(o) for o in out]
    return (tuple(out.shape), out.stride(), out.dtype)


X = [(2, 8, 5, 7, None), (2, 8, 5, 7, 'cl'), (2, 5, 7, 8, 'perm')]


def _cases():
    w, e = _meta(8), _meta(8)
    for *shape, layout in X:
        x = _meta(*shape, layout=layout)
        c = x.shape[1]
        v = _meta(c)
        yield 'gelu', aten.gelu.default, (x,), {}
        yield 'hardswish', aten.hardswish.default, (x,), {}
        yield 'leaky_relu', aten.leaky_relu.default, (x, 0.1), {}
        yield 'clamp', aten.clamp.default, (x, 0.0, 6.0), {}
        yield 'mul.Scalar', aten.mul.Scalar, (x, 2.0), {}
        yield 'add.Tensor', aten.add.Tensor, (x, torch.empty_like(x)), {'alpha': 2}
        yield 'mul.Tensor bcast', aten.mul.Tensor, (x, _meta(1, c, 1, 1)), {}
        yield 'add.Tensor bcast both', aten.add.Tensor, (_meta(1, c, 1, 1), x), {}
        yield 'pow', aten.pow.Tensor_Scalar, (x, 2), {}
        yield 'rsqrt', aten.rsqrt.default, (x,), {}
        yield 'mean keepdim', aten.mean.dim, (x, [-1], True), {}
        yield 'mean 2 dims', aten.mean.dim, (x, [2, 3]), {}
        yield 'batch_norm', aten.native_batch_norm.default, (x, v, v, v, v, False, 0.1, 1e-5), {}
        yield 'batch_norm train', aten.native_batch_norm.default, \
            (x, v, v, v, v, True, 0.1, 1e-5), {}
        yield 'batch_norm legit', aten._native_batch_norm_legit_no_training.default, \
            (x, None, None, v, v, 0.1, 1e-5), {}
        last = x.shape[-1]
        yield 'layer_norm', aten.native_layer_norm.default, \
            (x, [last], _meta(last), None, 1e-6), {}
        yield 'layer_norm 2d', aten.native_layer_norm.default, (x, list(x.shape[-2:]), None,
                                                                None, 1e-6), {}
        yield 'softmax', aten._softmax.default, (x, -1, False), {}
        yield 'safe_softmax', aten._safe_softmax.default, (x, -1), {}
        conv = aten.convolution.default
        yield 'conv', conv, (x, _meta(4, c, 3, 3), _meta(4), [1, 1], [1, 1], [1, 1], False,
                             [0, 0], 1), {}
        yield 'conv strided dilated grouped', conv, (x, _meta(6, c // 2, 3, 2), None, [2, 1],
                                                     [0, 2], [2, 1], False, [0, 0], 2), {}
        yield 'conv cl weight', conv, (x, _meta(6, c, 1, 1, layout='cl'), None, [1, 1],
                                       [0, 0], [1, 1], False, [0, 0], 1), {}
        yield 'conv too small', conv, (x, _meta(4, c, 9, 9), None, [1, 1], [0, 0], [1, 1],
                                       False, [0, 0], 1), {}
        yield 'conv wrong channels', conv, (x, _meta(4, c + 1, 3, 3), None, [1, 1], [1, 1],
                                            [1, 1], False, [0, 0], 1), {}
        yield 'conv transposed', conv, (x, _meta(c, 4, 2, 2), None, [2, 2], [0, 0], [1, 1],
                                        True, [0, 0], 1), {}
        yield 'cat', aten.cat.default, ([x, x], 1), {}
        yield 'cat negative dim', aten.cat.default, ([x, _meta(*x.shape[:3], 2)], -1), {}
        yield 'cat with a contiguous one', aten.cat.default, ([x, _meta(2, 3, 5, 7)], 1), {}
        yield 'cat mismatch', aten.cat.default, ([x, _meta(2, 3, 5, 8)], 1), {}
        yield 'mul strided', aten.mul.Tensor, (x.transpose(1, 2), x.transpose(1, 2)), {}
        yield 'add strided bcast', aten.add.Tensor, (x.transpose(2, 3), _meta(7, 1)), {}
        yield 'roll', aten.roll.default, (x, [1, -2], [2, 3]), {}
    yield 'addmm', aten.addmm.default, (w, _meta(6, 4), _meta(4, 8)), {}
    yield 'addmm 2d bias', aten.addmm.default, (_meta(6, 8), _meta(6, 4), _meta(8, 4).t()), {}
    yield 'batch_norm wrong C', aten.native_batch_norm.default, \
        (_meta(2, 5, 3, 3), w, e, w, e, False, 0.1, 1e-5), {}  # raises in torch: must raise here
    yield 'layer_norm wrong shape', aten.native_layer_norm.default, \
        (_meta(2, 3, 5), [8], w, None, 1e-6), {}
    yield 'add shape mismatch', aten.add.Tensor, (_meta(2, 3), _meta(2, 4)), {}
    yield 'mul outer bcast', aten.mul.Tensor, (_meta(2, 1, 3), _meta(1, 4, 1)), {}
    yield 'mul 0-dim', aten.mul.Tensor, (_meta(2, 4, 3), torch.empty((), device='meta')), {}
    yield 'mean repeated dim', aten.mean.dim, (_meta(2, 3), [1, -1]), {}
    yield 'conv 1d', aten.convolution.default, (_meta(2, 4, 9), _meta(3, 4, 3), None, [2], [1],
                                                [1], False, [0], 1), {}
    yield 'cat 1d', aten.cat.default, ([_meta(3), _meta(4)],), {}
    yield 'cat legacy empty 1d', aten.cat.default, ([_meta(2, 3), _meta(0)], 0), {}
    yield 'cat dtypes', aten.cat.default, ([_meta(2, 3), torch.empty(2, 3, device='meta',
                                                                     dtype=torch.half)],), {}
    i = torch.empty(3, 4, dtype=torch.int64, device='meta')
    col = torch.empty(3, 1, dtype=torch.int64, device='meta')
    flags = torch.empty(3, 4, dtype=torch.bool, device='meta')
    yield 'int add', aten.add.Tensor, (i, i), {}
    yield 'int sub bcast', aten.sub.Tensor, (i, col), {}
    yield 'int mul strided', aten.mul.Tensor, (i.t(), i.t()), {}
    yield 'int add float alpha', aten.add.Tensor, (i, i), {'alpha': 0.5}  # torch refuses
    yield 'int add int alpha', aten.add.Tensor, (i, i), {'alpha': 2}
    yield 'int div', aten.div.Tensor, (i, i), {}  # true division: floats
    yield 'int and int32', aten.add.Tensor, (i, i.to(torch.int32)), {}
    yield 'bool sub', aten.sub.Tensor, (flags, flags), {}  # torch refuses
    yield 'bool mul', aten.mul.Tensor, (flags, flags), {}
    yield 'int abs', aten.abs.default, (i,), {}
    yield 'int neg strided', aten.neg.default, (i.t(),), {}
    yield 'bool neg', aten.neg.default, (flags,), {}  # torch refuses
    yield 'float abs', aten.abs.default, (_meta(2, 3),), {}
    yield 'mul number', aten.mul.Tensor, (_meta(2, 3, 4).transpose(1, 2), 0.25), {}
    yield 'add int number', aten.add.Tensor, (_meta(2, 3), 2), {'alpha': 3}
    yield 'int mul float number', aten.mul.Tensor, (i, 0.5), {}  # promotes: torch's kernel
    yield 'int mul int number', aten.mul.Tensor, (i.t(), 3), {}
    yield 'int div int number', aten.div.Tensor, (i, 3), {}
    yield 'bool mul int number', aten.mul.Tensor, (flags, 3), {}
    yield 'int add number float alpha', aten.add.Tensor, (i, 3), {'alpha': 0.5}
    yield 'stack expanded', aten.stack.default, \
        ([_meta(3, 1).expand(3, 4), _meta(1, 4).expand(3, 4)],), {}
    yield 'half mul number', aten.mul.Tensor, (_meta(2, 3).half(), 1e6), {}
    yield 'stack', aten.stack.default, ([i, i, i],), {}
    yield 'stack dim -1', aten.stack.default, ([_meta(3, 4), _meta(3, 4)], -1), {}
    yield 'stack 1d', aten.stack.default, ([_meta(5), _meta(5)], 1), {}
    yield 'stack mismatch', aten.stack.default, ([_meta(3, 4), _meta(3, 5)],), {}
    yield 'stack dtypes', aten.stack.default, ([i, i.to(torch.int32)],), {}
    yield 'stack strided', aten.stack.default, ([i.t(), i.t()],), {}
    yield 'stack 4d', aten.stack.default, ([_meta(2, 3, 4), _meta(2, 3, 4)], 1), {}


@pytest.mark.parametrize('name,op,args,kwargs', list(_cases()),
                         ids=[f'{c[0]}-{i}' for i, c in enumerate(_cases())])
def test_fast_meta_gives_what_torch_gives(name, op, args, kwargs):
    # rule: under fast_meta every op returns the shape, strides and dtype of torch's own meta
    # kernel, and raises where torch raises
    try:
        expected = _meta_of(op(*args, **kwargs))
    except Exception as err:  # noqa: BLE001
        with pytest.raises(type(err)), fast_meta():
            op(*args, **kwargs)
        return
    with fast_meta():
        got = _meta_of(op(*args, **kwargs))
    assert got == expected


def test_memoized_ops_give_what_torch_gives_every_time():
    # rule: ops without a fast kernel are memoized by their argument signature (shapes,
    # strides, dtypes, other arguments): the first call runs torch's kernel, later ones make
    # the same output; in-place ops return their input; failures are never memoized
    from timm_backbones._meta_ops import _LAYOUTS
    x = _meta(2, 8, 5, 7).transpose(1, 3)  # dense, permuted: the output keeps its strides
    expected = _meta_of(aten.mul.Tensor(x, x))
    assert not torch.empty(expected[0]).stride() == expected[1]
    _LAYOUTS.clear()
    with fast_meta():
        first = aten.mul.Tensor(x, x)
        assert len(_LAYOUTS) == 1
        again = aten.mul.Tensor(x, x)
        assert _meta_of(first) == _meta_of(again) == expected and again is not first
        y = _meta(2, 8, 5, 7)[:, :4]
        assert aten.sigmoid_.default(y) is y and aten.sigmoid_.default(y) is y
        for _ in range(2):
            with pytest.raises(RuntimeError):
                aten.roll.default(x, [1, 2], [2])  # shifts and dims of different lengths


@pytest.mark.parametrize('call', [lambda t: t.squeeze_(1), lambda t: t.unsqueeze_(0),
                                  lambda t: t.resize_(5, 5), lambda t: t.transpose_(0, 2),
                                  lambda t: t.as_strided_((3,), (2,), 1)],
                         ids=['squeeze_', 'unsqueeze_', 'resize_', 'transpose_', 'as_strided_'])
def test_memoized_inplace_ops_that_change_metadata_run_every_time(call):
    # rule: an in-place op changing its input's shape, strides or offset is not memoized: the
    # second call on a tensor like the first changes it the same way
    from timm_backbones._meta_ops import _LAYOUTS
    expected = call(_meta(2, 1, 3))
    _LAYOUTS.clear()
    with fast_meta():
        for _ in range(2):
            t = _meta(2, 1, 3)
            assert call(t) is t
            assert (t.shape, t.stride(), t.storage_offset()) == \
                (expected.shape, expected.stride(), expected.storage_offset())


def test_memoized_ops_follow_the_default_dtype():
    # rule: the default dtype is part of the signature (integer true division makes it)
    i = torch.ones(2, 3, dtype=torch.int64, device='meta')
    with fast_meta():
        try:
            torch.set_default_dtype(torch.float64)
            assert aten.div.Tensor(i, i).dtype == torch.float64
        finally:
            torch.set_default_dtype(torch.float32)
        assert aten.div.Tensor(i, i).dtype == torch.float32


@pytest.mark.parametrize('call', [lambda w: aten.normal_.default(w, 0.0, -1.0),
                                  lambda w: aten.normal_.default(w, 0.0, float('nan')),
                                  lambda w: aten.normal_.default(w, 0.0, 0.0),
                                  lambda w: aten.normal_.default(w),
                                  lambda w: aten.log_normal_.default(w, 1.0, 0.0),
                                  lambda w: aten.log_normal_.default(w, 1.0, 0.5),
                                  lambda w: aten.exponential_.default(w, 0.0),
                                  lambda w: aten.exponential_.default(w),
                                  lambda w: aten.bernoulli_.float(w, 2.0),
                                  lambda w: aten.uniform_.default(w, 1.0, 0.0)])
def test_fast_meta_random_fills_check_what_torch_checks(call):
    # rule: in-place random fills return their input under fast_meta where torch's meta kernel
    # accepts the arguments, and raise what torch raises where it does not
    def outcome():
        w = _meta(4, 3)
        try:
            return call(w) is w
        except Exception as err:  # noqa: BLE001
            return type(err)

    expected = outcome()
    with fast_meta():
        assert outcome() == expected


@pytest.mark.parametrize('op', [aten.hardswish_.default, aten.clamp_.default, aten.normal_.default,
                                aten.uniform_.default, aten.zero_.default, aten.mul_.Scalar])
def test_fast_meta_inplace_ops_return_their_input(op):
    # rule: in-place ops return the tensor they were given (as torch's meta kernels do)
    x = _meta(2, 8, 5, 7)
    args = {aten.clamp_.default: (0.0, 6.0), aten.mul_.Scalar: (2.0,)}.get(op, ())
    with fast_meta():
        assert op(x, *args) is x


@pytest.mark.parametrize('name', ['mobilenetv3_large_100', 'convnext_atto', 'vit_tiny_patch16_224',
                                  'swin_tiny_patch4_window7_224', 'levit_128',
                                  'maxvit_tiny_tf_224', 'regnety_002'])
def test_fast_meta_builds_and_forwards_like_torch(name):
    # rule: a model built and run under fast_meta has the parameters and outputs of one without
    kw = dict(features_only=True)
    with torch.device('meta'):
        plain = timm.create_model(name, **kw)
    with on_meta():
        fast = timm.create_model(name, **kw)
    assert [_meta_of(p) for p in plain.parameters()] == [_meta_of(p) for p in fast.parameters()]
    assert plain.feature_info.info == fast.feature_info.info
    size = timm.get_pretrained_cfg(name).input_size[1:]
    x = torch.empty(1, 3, *size, device='meta')
    with torch.no_grad():
        expected = _meta_of(plain.eval()(x))
        with fast_meta():
            assert _meta_of(fast.eval()(x)) == expected


def test_on_meta_skips_value_writes_but_not_their_errors():
    # rule: under on_meta, writing values into a meta tensor (t[i, j] = 1, weight init) returns
    # at once, but what torch refuses is still refused: an index out of range, an in-place
    # write into a leaf that needs grad (with grad mode on), a write into an integer tensor
    with on_meta():
        t = torch.zeros(3, 4)
        t[1, 2] = 1
        t[-1] = 0.5
        assert t.is_meta and t.shape == (3, 4)
        with pytest.raises(IndexError):
            t[3, 0] = 1
        w = torch.nn.Parameter(torch.empty(4, 3))
        assert torch.nn.init.kaiming_uniform_(w) is w  # nn.init writes under no_grad
        with pytest.raises(RuntimeError, match='leaf Variable'):
            w[0, 0] = 1.0
        with torch.no_grad():
            w[0, 0] = 1.0
        for write in (lambda: w.fill_(1.0), w.zero_, w.normal_, lambda: w.clamp_(0, 1)):
            with pytest.raises(RuntimeError, match='leaf Variable'):
                write()
            with torch.no_grad():
                assert write() is w and w.is_meta
    # the arguments torch checks on meta are checked alike (same outcome as torch's own)
    def outcome(call):
        w = torch.empty(4, 3, device='meta')
        try:
            with torch.no_grad():
                return call(w) is w
        except Exception as err:  # noqa: BLE001
            return type(err)

    calls = [lambda w: w.uniform_(1.0, 0.0), lambda w: w.uniform_(0.0, 1.0),
             lambda w: w.normal_(0.0, -1.0), lambda w: w.normal_(std=2.0),
             lambda w: w.clamp_(), lambda w: w.clamp_(max=1), lambda w: w.clamp_(None, None),
             lambda w: w.fill_(torch.zeros(2, device='meta')), lambda w: w.fill_(3),
             lambda w: w.mul_(2), lambda w: w.add_(1.0, alpha=2), lambda w: w.div_(0),
             lambda w: w.mul_(torch.zeros(5, device='meta')), lambda w: w.erfinv_()]
    expected = [outcome(c) for c in calls]
    assert RuntimeError in expected and ValueError in expected and True in expected
    with on_meta():
        assert [outcome(c) for c in calls] == expected
    with on_meta():
        i = torch.zeros(2, dtype=torch.long)
        i[0] = 1  # not a float tensor: torch's own path
        assert i.is_meta


def test_fast_meta_watching_for_cpu_tensors_stops_at_the_first():
    # rule: fast_meta(watch_cpu=True) raises at the first tensor made on the CPU (a factory
    # op, a tensor literal) and says so; ops on meta tensors pass
    x = _meta(2, 3)
    for make in (lambda: torch.zeros(3), lambda: torch.arange(4), lambda: torch.tensor([1.0]),
                 lambda: torch.empty(2, device='cpu')):
        watch = fast_meta(watch_cpu=True)
        with pytest.raises(MadeOnCpu), watch:
            (x * 2).sum()
            make()
        assert watch.made_cpu
    watch = fast_meta(watch_cpu=True)
    with watch:
        assert (x.new_zeros(3) + torch.zeros(3, device='meta')).is_meta
    assert not watch.made_cpu
