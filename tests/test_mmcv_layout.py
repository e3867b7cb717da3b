"""The layout contract (`TimmBackbone.memory_format`, `_mmcv_layout.py`): mmcv's compiled ops
read raw memory as NCHW-contiguous whatever the strides (mmcv issue #2203), so

1. TimmBackbone's maps are NCHW-contiguous by default, whatever layout timm computes in
   (ConvNeXt and MetaFormers: channels-last maps; Swin / MambaOut: NHWC; ViT pyramids), and
   channels-last with `channels_last=True`;
2. every mmcv op that reads feature maps computes on a channels-last map what it computes on the
   contiguous map (op by op, outputs and gradients; mmcv's own kernel, unwrapped, is shown to
   misread it, so each test can fail);
3. in Mask R-CNN (mmdet's config) with a ConvNeXt, a MetaFormer, a ViT pyramid and a CNN with
   `channels_last=True`, the RoI features, losses, backbone gradients and detections equal those
   computed from contiguous copies of the maps the RoI extractors read;
4. the ops are wrapped on mmdet's own route (`mmdet.apis.init_detector`, a fresh process).
The CUDA kernels of the same ops are checked in tests/test_gpu.py (skipped without a GPU).
"""
import importlib
import os
import subprocess
import sys

import pytest
import torch
from mmcv import ops

import timm_backbones  # noqa: F401  (registers the modules)
from helpers import ROOT, mmdet_model, timm
from test_detectors import build_detector, make_batch
from timm_backbones import TimmBackbone
from timm_backbones._mmcv_layout import MMCV_FEATURE_OPS, contiguous_mmcv_inputs, patched_mmcv_ops

CL = torch.channels_last
pytestmark = pytest.mark.usefixtures('one_thread')


# ---- 1. the backbone's outputs ----------------------------------------------------------------
@pytest.mark.parametrize('name', ['convnext_atto', 'poolformerv2_s12', 'swin_tiny_patch4_window7_224',
                                  'vit_tiny_patch16_224', 'resnet18'])
def test_outputs_are_nchw_contiguous(name):
    # rule: maps are laid out as mmdet's backbones lay theirs out (contiguous), whatever timm
    # computed in: convnext / poolformerv2 compute channels-last maps, swin NHWC, the ViT
    # pyramid's stride-4 level a transposed convolution + LayerNorm2d (channels-last)
    backbone = TimmBackbone(name).eval()
    x = torch.rand(1, 3, 224, 288)
    with torch.no_grad():
        outs = backbone(x)
        assert all(o.is_contiguous() for o in outs), [o.stride() for o in outs]
        # what the neck would get without the contract: timm's maps (permuted from NHWC), or
        # the pyramid's
        maps = backbone.model(x)
        if backbone.plan.output_format == 'NHWC':
            maps = [m.permute(0, 3, 1, 2) for m in maps]
        if backbone.pyramid is not None:
            maps = backbone.pyramid([maps[i] for i in backbone._order], tuple(x.shape[-2:]))
    if name != 'resnet18':  # the cases the contract is for
        assert not all(m.is_contiguous() for m in maps)


@pytest.mark.parametrize('name', ['convnext_atto', 'resnet18', 'vit_tiny_patch16_224'])
def test_channels_last_outputs_are_channels_last(name):
    # rule: with channels_last=True every map is channels-last contiguous (one layout per option)
    backbone = TimmBackbone(name, channels_last=True).eval()
    assert backbone.memory_format == CL
    with torch.no_grad():
        outs = backbone(torch.rand(1, 3, 224, 288))
    assert all(o.is_contiguous(memory_format=CL) for o in outs)


# ---- 2. op by op ---------------------------------------------------------------------------------
def _rois(n=6, h=20, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 8 * 0.6, h * 8 * 0.6])
    wh = 8 + torch.rand(n, 2, generator=g) * torch.tensor([w * 8 * 0.4, h * 8 * 0.4])
    return torch.cat([torch.randint(0, 2, (n, 1), generator=g).float(), xy, xy + wh], 1)


def _rotated_rois(n=6):
    rois = _rois(n)
    centre = (rois[:, 1:3] + rois[:, 3:5]) / 2
    size = rois[:, 3:5] - rois[:, 1:3]
    return torch.cat([rois[:, :1], centre, size, torch.linspace(-0.6, 0.6, n)[:, None]], 1)


def _case(name):
    """(function of the map, the map) for each op with a CPU kernel in mmcv 2.1.0."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 20, 24, generator=g)
    if name == 'roi_align':
        return lambda t: ops.roi_align(t, _rois(), (7, 7), 1 / 8, 2, 'avg', True), x
    if name == 'roi_align_rotated':
        return lambda t: ops.roi_align_rotated(t, _rotated_rois(), (7, 7), 1 / 8, 2, True), x
    if name == 'deform_conv':
        offset = torch.randn(2, 18, 20, 24, generator=g)
        weight = torch.randn(8, 16, 3, 3, generator=g)
        return lambda t: ops.deform_conv2d(t, offset, weight, 1, 1), x
    if name == 'modulated_deform_conv':
        offset = torch.randn(2, 18, 20, 24, generator=g)
        mask = torch.rand(2, 9, 20, 24, generator=g)
        weight = torch.randn(8, 16, 3, 3, generator=g)
        return lambda t: ops.modulated_deform_conv2d(t, offset, mask, weight, None, 1, 1), x
    if name == 'psa_mask':
        y = torch.randn(2, 9 * 9, 12, 14, generator=g)
        return lambda t: ops.PSAMask('collect', (9, 9))(t), y
    raise KeyError(name)


CPU_OPS = ['roi_align', 'roi_align_rotated', 'deform_conv', 'modulated_deform_conv', 'psa_mask']


def _function(module, cls):
    """mmcv's autograd Function `cls` of `mmcv.ops.<module>` (`mmcv.ops.roi_align` is the
    function: the module is read by its full name)."""
    return getattr(importlib.import_module(f'mmcv.ops.{module}'), cls)


def _run(fn, x, memory_format):
    t = x.clone().contiguous(memory_format=memory_format).requires_grad_()
    out = fn(t)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return out.detach(), t.grad


@pytest.mark.parametrize('name', CPU_OPS)
def test_op_reads_channels_last_maps_right(name):
    # rule: an mmcv op computes on a channels-last map what it computes on the contiguous map
    contiguous_mmcv_inputs()
    fn, x = _case(name)
    ref_out, ref_grad = _run(fn, x, torch.contiguous_format)
    out, grad = _run(fn, x, CL)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize('name', CPU_OPS)
def test_mmcv_kernel_alone_misreads_channels_last(name):
    # why the wrapper exists: mmcv's own forward (unwrapped) reads the channels-last map's memory
    # as NCHW and returns other numbers (or refuses it), so the test above can fail
    contiguous_mmcv_inputs()
    module, cls = next((m, c) for m, c in MMCV_FEATURE_OPS if m == name)
    function = _function(module, cls)
    wrapped = function.__dict__['forward']
    function.forward = staticmethod(wrapped.__func__.__wrapped__)
    try:
        fn, x = _case(name)
        ref_out, _ = _run(fn, x, torch.contiguous_format)
        try:
            out, _ = _run(fn, x, CL)
        except RuntimeError:  # 'input must be contiguous': loud, at least
            return
        assert (out - ref_out).abs().max() > 1e-2
    finally:
        function.forward = wrapped


@pytest.mark.parametrize('name', ['roi_align', 'deform_conv'])
def test_op_takes_bfloat16(name):
    # rule: ops without bfloat16 kernels (mmcv 2.1.0 dispatches float/double/half) compute
    # bfloat16 inputs in float32 and hand back bfloat16, forward and backward
    contiguous_mmcv_inputs()
    fn, x = _case(name)
    x = x.bfloat16().float()  # values a bfloat16 tensor holds exactly
    ref_out, ref_grad = _run(fn, x, torch.contiguous_format)
    t = x.bfloat16().contiguous(memory_format=CL).requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = fn(t)
    assert out.dtype == torch.bfloat16
    out.float().backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    assert t.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref_out, rtol=1e-2, atol=5e-2)
    torch.testing.assert_close(t.grad.float(), ref_grad, rtol=1e-2, atol=5e-2)


def test_every_listed_op_is_wrapped():
    # rule: the wrapper is installed when a TimmBackbone is built, for every listed op, once
    TimmBackbone('resnet18')
    assert all(patched_mmcv_ops().values()), patched_mmcv_ops()
    before = {c: _function(m, c).__dict__['forward'] for m, c in MMCV_FEATURE_OPS}
    assert len(contiguous_mmcv_inputs()) == len(MMCV_FEATURE_OPS)  # idempotent: not wrapped twice
    assert before == {c: _function(m, c).__dict__['forward'] for m, c in MMCV_FEATURE_OPS}


# ---- 3. RoI features in Mask R-CNN -----------------------------------------------------------
MASK_RCNN = 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
SIZE = (128, 160)
DETECTORS = {
    'convnext': (timm('convnext_atto'), torch.contiguous_format),
    'metaformer': (timm('poolformerv2_s12'), torch.contiguous_format),
    'vit-pyramid': (timm('vit_tiny_patch16_224', out_indices=(3, 5, 7, 11)),
                    torch.contiguous_format),
    'cnn-channels-last': (timm('resnet18', channels_last=True), CL),
}


def _mask_rcnn(backbone):
    """mmdet's Mask R-CNN config with `backbone` (5 classes, the rest as mmdet writes it)."""
    return mmdet_model(MASK_RCNN, backbone, neck=dict(in_channels='auto'), roi_head=dict(
        bbox_head=dict(num_classes=5), mask_head=dict(num_classes=5)))


def _roi_features(detector):
    """Records what the box and mask RoI extractors return."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
             for m in (detector.roi_head.bbox_roi_extractor, detector.roi_head.mask_roi_extractor)]
    return seen, hooks


def _contiguous_roi_inputs(detector):
    """The reference: the RoI extractors read contiguous copies of the maps they are given (the
    same values; the RPN and everything else run as they are, so the RoIs are the same)."""
    return [m.register_forward_pre_hook(
        lambda m, args: (tuple(f.contiguous() for f in args[0]),) + tuple(args[1:]))
        for m in (detector.roi_head.bbox_roi_extractor, detector.roi_head.mask_roi_extractor)]


def _loss_and_grads(detector, data):
    detector.zero_grad()
    torch.manual_seed(0)  # the RoI sampler draws
    losses = detector(**data, mode='loss')
    total, log_vars = detector.parse_losses(losses)
    total.backward()
    grads = {n: p.grad.clone() for n, p in detector.backbone.named_parameters()
             if p.grad is not None}
    return log_vars, grads


@pytest.mark.parametrize('kind', list(DETECTORS))
def test_mask_rcnn_roi_features_as_from_contiguous_maps(kind):
    # rule: RoI features, losses, backbone gradients and detections are those computed from
    # contiguous copies of the maps the RoI extractors read (the reference mmcv's kernels read
    # right); the maps reach them in the layout under test
    backbone, layout = DETECTORS[kind]
    detector, _ = build_detector(_mask_rcnn(backbone))
    detector.train()
    data = make_batch(detector, SIZE, masks=True)
    with torch.no_grad():  # the path under test: the neck's maps in this layout
        maps = detector.neck(detector.backbone(data['inputs']))
    assert all(m.is_contiguous(memory_format=layout) for m in maps)

    seen, hooks = _roi_features(detector)
    log_vars, grads = _loss_and_grads(detector, data)
    ref_hooks = _contiguous_roi_inputs(detector)
    ref_log_vars, ref_grads = _loss_and_grads(detector, data)
    for hook in ref_hooks:
        hook.remove()
    for got, ref in zip(seen[:2], seen[2:]):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    for key, value in ref_log_vars.items():
        assert float(log_vars[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-6), key
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    detector.eval()
    data = make_batch(detector, SIZE, masks=False, training=False)
    seen.clear()
    with torch.no_grad():
        pred = detector(**data, mode='predict')
        ref_hooks = _contiguous_roi_inputs(detector)
        ref = detector(**data, mode='predict')
        for hook in ref_hooks:
            hook.remove()
    for hook in hooks:
        hook.remove()
    for got, want in zip(seen[:len(seen) // 2], seen[len(seen) // 2:]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for p, r in zip(pred, ref):
        torch.testing.assert_close(p.pred_instances.bboxes, r.pred_instances.bboxes)
        torch.testing.assert_close(p.pred_instances.scores, r.pred_instances.scores)
        assert torch.equal(p.pred_instances.labels, r.pred_instances.labels)


# ---- 4. mmdet's own route -------------------------------------------------------------------
def test_mmdet_init_detector_route_wraps_the_ops(tmp_path):
    # rule: the ops read contiguous maps on mmdet's own APIs too (nothing but custom_imports)
    config = tmp_path / 'cfg.py'
    config.write_text(
        f"_base_ = [{os.path.join(ROOT, 'configs', 'mask-rcnn_timm-convnext-tiny_fpn_1x_coco.py')!r}]\n"
        "model = dict(backbone=dict(model_name='convnext_atto', pretrained=False, "
        "channels_last=True))\n")
    code = ("import torch; from mmdet.apis import init_detector\n"
            f"m = init_detector({str(config)!r}, device='cpu')\n"
            "from timm_backbones._mmcv_layout import patched_mmcv_ops\n"
            "print(sorted(k for k, v in patched_mmcv_ops().items() if not v))\n")
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1'), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == '[]'


# ---- the CUDA kernels (skipped without a GPU) ------------------------------------------------
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (mmcv built '
                          'with its CUDA ops: make install on a GPU machine)')


def _cuda_case(name):
    """(function of the input, the input) for each op, on CUDA; ops whose inputs are not NCHW
    maps get a transposed (non-contiguous) view instead of a channels-last copy."""
    g = torch.Generator().manual_seed(2)
    dev = 'cuda'
    x = torch.randn(2, 16, 20, 24, generator=g).to(dev)
    rois = _rois().to(dev)
    if name in CPU_OPS:  # as in `_case`, on CUDA
        if name == 'roi_align':
            return lambda t: ops.roi_align(t, rois, (7, 7), 1 / 8, 2, 'avg', True), x
        if name == 'roi_align_rotated':
            r = _rotated_rois().to(dev)
            return lambda t: ops.roi_align_rotated(t, r, (7, 7), 1 / 8, 2, True), x
        if name == 'deform_conv':
            offset = torch.randn(2, 18, 20, 24, generator=g).to(dev)
            weight = torch.randn(8, 16, 3, 3, generator=g).to(dev)
            return lambda t: ops.deform_conv2d(t, offset, weight, 1, 1), x
        if name == 'modulated_deform_conv':
            offset = torch.randn(2, 18, 20, 24, generator=g).to(dev)
            mask = torch.rand(2, 9, 20, 24, generator=g).to(dev)
            weight = torch.randn(8, 16, 3, 3, generator=g).to(dev)
            return lambda t: ops.modulated_deform_conv2d(t, offset, mask, weight, None, 1, 1), x
        if name == 'psa_mask':
            y = torch.randn(2, 9 * 9, 12, 14, generator=g).to(dev)
            return lambda t: ops.PSAMask('collect', (9, 9))(t), y
    if name == 'roi_pool':
        return lambda t: ops.roi_pool(t, rois, (7, 7), 1 / 8), x
    if name == 'deform_roi_pool':
        return lambda t: ops.deform_roi_pool(t, rois, None, (7, 7), 1 / 8, 2, 0.1), x
    if name == 'carafe':
        masks = torch.randn(2, 25, 40, 48, generator=g).softmax(1).to(dev)
        return lambda t: ops.carafe(t, masks, 5, 1, 2), x
    if name == 'carafe_naive':
        masks = torch.randn(2, 25, 40, 48, generator=g).softmax(1).to(dev)
        return lambda t: ops.carafe_naive(t, masks, 5, 1, 2), x
    if name == 'masked_conv':
        mask = (torch.rand(1, 20, 24, generator=g) > 0.5).float().to(dev)
        weight = torch.randn(8, 16, 3, 3, generator=g).to(dev)
        bias = torch.randn(8, generator=g).to(dev)
        return lambda t: ops.masked_conv2d(t, mask, weight, bias, 1), x[:1]
    if name == 'multi_scale_deform_attn':
        shapes = torch.tensor([[20, 24], [10, 12]], device=dev)
        start = torch.tensor([0, 480], device=dev)
        loc = torch.rand(2, 50, 4, 2, 4, 2, generator=g).to(dev)
        weights = torch.rand(2, 50, 4, 2, 4, generator=g).softmax(-1).to(dev)
        fn = _function('multi_scale_deform_attn', 'MultiScaleDeformableAttnFunction').apply
        value = torch.randn(2, 600, 4, 8, generator=g).to(dev)
        return lambda t: fn(t, shapes, start, loc, weights, 64), value
    if name == 'sigmoid_focal_loss':
        target = torch.randint(0, 5, (64,), generator=g).to(dev)
        return (lambda t: ops.sigmoid_focal_loss(t, target, 2.0, 0.25, None, 'none'),
                torch.randn(64, 5, generator=g).to(dev))
    raise KeyError(name)


CUDA_OPS = CPU_OPS + ['roi_pool', 'deform_roi_pool', 'carafe', 'carafe_naive', 'masked_conv',
                      'multi_scale_deform_attn', 'sigmoid_focal_loss']


def _other_layout(x):
    """The same values in another memory layout: channels-last for 4-d maps, else transposed."""
    if x.dim() == 4 and x.shape[1] > 1:
        return x.contiguous(memory_format=CL)
    return x.transpose(0, 1).contiguous().transpose(0, 1)


def _run_layout(fn, x, other):
    t = (_other_layout(x) if other else x.clone()).requires_grad_()
    assert t.is_contiguous() != other
    out = fn(t)
    out.backward(torch.linspace(-1, 1, out.numel(), device=out.device).reshape(out.shape))
    return out.detach(), t.grad


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize('name', CUDA_OPS)
def test_cuda_op_reads_channels_last_maps_right(name):
    # rule: on CUDA too, an op computes on another layout what it computes on the contiguous map
    contiguous_mmcv_inputs()
    fn, x = _cuda_case(name)
    ref_out, ref_grad = _run_layout(fn, x, False)
    out, grad = _run_layout(fn, x, True)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@CUDA
def test_cuda_roi_align_alone_misreads_channels_last():
    # why: mmcv's CUDA RoIAlign, unwrapped, reads a channels-last map as NCHW (issue 27: 3.72)
    contiguous_mmcv_inputs()
    function = _function('roi_align', 'RoIAlignFunction')
    wrapped = function.__dict__['forward']
    function.forward = staticmethod(wrapped.__func__.__wrapped__)
    try:
        fn, x = _cuda_case('roi_align')
        with torch.no_grad():
            diff = (fn(x.contiguous(memory_format=CL)) - fn(x)).abs().max().item()
    finally:
        function.forward = wrapped
    print(f'\nmmcv CUDA roi_align, channels-last vs contiguous, unwrapped: max diff {diff:.3f}')
    assert diff > 1e-2


@pytest.mark.gpu
@CUDA
def test_cuda_mask_rcnn_channels_last_as_from_contiguous_maps():
    # rule: the detector-level check of section 3 on CUDA: channels_last=True on a CNN
    backbone, layout = DETECTORS['cnn-channels-last']
    detector, _ = build_detector(_mask_rcnn(backbone))
    detector = detector.cuda().train()
    data = make_batch(detector, SIZE, masks=True)
    seen, hooks = _roi_features(detector)
    log_vars, grads = _loss_and_grads(detector, data)
    ref_hooks = _contiguous_roi_inputs(detector)
    ref_log_vars, ref_grads = _loss_and_grads(detector, data)
    for hook in ref_hooks:
        hook.remove()
    for hook in hooks:
        hook.remove()
    for got, ref in zip(seen[:2], seen[2:]):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    for key, value in ref_log_vars.items():
        assert float(log_vars[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-5), key


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize('name', ['roi_align', 'roi_pool', 'deform_conv',
                                  'multi_scale_deform_attn', 'sigmoid_focal_loss'])
def test_cuda_op_takes_bfloat16(name):
    # rule: on CUDA, ops without bfloat16 kernels compute bfloat16 inputs in float32
    contiguous_mmcv_inputs()
    fn, x = _cuda_case(name)
    x = x.bfloat16().float()
    ref_out, ref_grad = _run_layout(fn, x, False)
    t = x.bfloat16().requires_grad_()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = fn(t)
    assert out.dtype == (torch.float32 if name == 'sigmoid_focal_loss' else torch.bfloat16)
    out.float().backward(torch.linspace(-1, 1, out.numel(), device='cuda').reshape(out.shape))
    assert t.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref_out, rtol=1e-2, atol=5e-2)
    torch.testing.assert_close(t.grad.float(), ref_grad, rtol=1e-2, atol=5e-2)
