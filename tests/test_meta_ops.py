"""`_meta_ops.py`: under `fast_meta` every op gives what torch's own meta kernels give (shapes,
strides, dtypes; errors too), and models build and run alike."""
import pytest
import timm
import torch

from timm_backbones._meta_ops import fast_meta, on_meta

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
        yield 'layer_norm', aten.native_layer_norm.default, (x, [last], _meta(last), None, 1e-6), {}
        yield 'layer_norm 2d', aten.native_layer_norm.default, (x, list(x.shape[-2:]), None,
                                                                None, 1e-6), {}
        yield 'softmax', aten._softmax.default, (x, -1, False), {}
        yield 'safe_softmax', aten._safe_softmax.default, (x, -1), {}
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


@pytest.mark.parametrize('op', [aten.hardswish_.default, aten.clamp_.default, aten.normal_.default,
                                aten.uniform_.default, aten.zero_.default, aten.mul_.Scalar])
def test_fast_meta_inplace_ops_return_their_input(op):
    # rule: in-place ops return the tensor they were given (as torch's meta kernels do)
    x = _meta(2, 8, 5, 7)
    args = {aten.clamp_.default: (0.0, 6.0), aten.mul_.Scalar: (2.0,)}.get(op, ())
    with fast_meta():
        assert op(x, *args) is x


@pytest.mark.parametrize('name', ['mobilenetv3_large_100', 'convnext_atto', 'vit_tiny_patch16_224',
                                  'swin_tiny_patch4_window7_224', 'levit_128'])
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
