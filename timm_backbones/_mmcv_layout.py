"""mmcv's compiled ops and their inputs: made NCHW-contiguous (and float32 for bfloat16).

mmcv's CPU and CUDA kernels (RoIAlign, deformable convolution, CARAFE, ...) index their inputs'
raw memory as if the tensors were contiguous, whatever their strides (mmcv issue #2203, still open
in mmcv 2.1.0): a channels-last map, such as a detector's FPN maps with `channels_last=True`, is
read scrambled, silently (RoIAlign, RoIPool) or refused with `input must be contiguous`
(deformable convolution on CUDA). `TimmBackbone` returns NCHW-contiguous maps by default (the
layout contract); for the channels-last route, `contiguous_mmcv_inputs()` wraps the `forward` of
each op's autograd `Function` so every tensor it receives is made contiguous first (a no-op for
contiguous tensors; gradients flow back in the caller's layout). It is installed once, when the
first `TimmBackbone` is built, so it holds on every route that builds one (this project's tools,
mmdet's and mmseg's own tools and APIs, the sweep).

The same wrapper gives the ops what they can take under bfloat16 autocast: mmcv 2.1.0's kernels
dispatch on float, double and half only (`NotImplementedError: "ROIAlign_forward" not
implemented for 'BFloat16'`), so bfloat16 inputs are computed in float32 and the outputs handed
back in bfloat16 (the focal losses keep float32, as autocast keeps losses); the backward pass
gets float32 gradients and autograd casts them to the inputs' dtype.
"""
import functools
import importlib
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import Tensor

__all__ = ['MMCV_FEATURE_OPS', 'contiguous_mmcv_inputs', 'patched_mmcv_ops']

# (module of mmcv.ops, autograd Function) of every mmcv op that reads feature maps (or, for the
# focal losses, logits; for NMS, boxes and scores) through a compiled kernel
MMCV_FEATURE_OPS: Tuple[Tuple[str, str], ...] = (
    ('roi_align', 'RoIAlignFunction'),
    ('roi_pool', 'RoIPoolFunction'),
    ('roi_align_rotated', 'RoIAlignRotatedFunction'),
    ('riroi_align_rotated', 'RiRoIAlignRotatedFunction'),
    ('deform_roi_pool', 'DeformRoIPoolFunction'),  # also ModulatedDeformRoIPool
    ('prroi_pool', 'PrRoIPoolFunction'),
    ('bezier_align', 'BezierAlignFunction'),
    ('deform_conv', 'DeformConv2dFunction'),
    ('modulated_deform_conv', 'ModulatedDeformConv2dFunction'),
    ('carafe', 'CARAFEFunction'),
    ('carafe', 'CARAFENaiveFunction'),
    ('masked_conv', 'MaskedConv2dFunction'),
    ('multi_scale_deform_attn', 'MultiScaleDeformableAttnFunction'),
    ('psa_mask', 'PSAMaskFunction'),
    ('border_align', 'BorderAlignFunction'),
    ('rotated_feature_align', 'RotatedFeatureAlignFunction'),
    ('correlation', 'CorrelationFunction'),
    ('focal_loss', 'SigmoidFocalLossFunction'),
    ('focal_loss', 'SoftmaxFocalLossFunction'),
    # boxes and scores: under bfloat16 autocast the RPN's proposals reach NMS in bfloat16
    # (`expected scalar type Float but found BFloat16`)
    ('nms', 'NMSop'),
    ('nms', 'SoftNMSop'),
)

# ops whose outputs are losses: computed from bfloat16 inputs, they stay float32
_FLOAT32_OUTPUTS = ('SigmoidFocalLossFunction', 'SoftmaxFocalLossFunction')
_MARK = '_timm_backbones_contiguous'


def _readable(value: Any) -> Any:
    """A tensor as mmcv's kernels read it: contiguous, bfloat16 as float32."""
    if not isinstance(value, Tensor):
        return value
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.contiguous()


def _to(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor) and value.dtype == torch.float32:
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_to(v, dtype) for v in value)
    return value


def _wrap(method: Callable[..., Any], cast_back: bool) -> Callable[..., Any]:
    """`method` (an autograd Function's forward or backward) on readable inputs; with
    `cast_back`, float32 outputs of bfloat16 inputs are handed back in bfloat16."""
    @functools.wraps(method)
    def readable(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        bf16 = any(isinstance(a, Tensor) and a.dtype == torch.bfloat16
                   for a in (*args, *kwargs.values()))
        out = method(ctx, *map(_readable, args),
                     **{k: _readable(v) for k, v in kwargs.items()})
        return _to(out, torch.bfloat16) if bf16 and cast_back else out
    setattr(readable, _MARK, True)
    return readable


def contiguous_mmcv_inputs() -> List[str]:
    """Make every op of `MMCV_FEATURE_OPS` read contiguous copies of its tensor inputs (bfloat16
    ones in float32, forward and backward). Idempotent; does nothing where mmcv's compiled ops
    are not installed (no op to misread).

    Returns:
        The ops now wrapped ('module.Function').

    Raises:
        RuntimeError: mmcv's ops are installed but one of the listed ops is missing (another
            mmcv than the pinned 2.1.0 whose ops this list was made from).

    Example:
        >>> contiguous_mmcv_inputs()[:1]
        ['roi_align.RoIAlignFunction']
    """
    try:
        importlib.import_module('mmcv.ops')
    except ImportError:  # mmcv-lite: no compiled op reads any map
        return []
    done = []
    for module_name, cls_name in MMCV_FEATURE_OPS:
        module = importlib.import_module(f'mmcv.ops.{module_name}')
        cls = getattr(module, cls_name, None)
        if cls is None:
            raise RuntimeError(
                f'mmcv.ops.{module_name} has no {cls_name}: this mmcv '
                f'({importlib.import_module("mmcv").__version__}) differs from the 2.1.0 whose '
                f"ops timm_backbones makes read contiguous maps. Install the pinned mmcv "
                f'(make install), or report the mmcv version.')
        forward = cls.__dict__['forward'].__func__  # the staticmethod's function
        if not getattr(forward, _MARK, False):
            cls.forward = staticmethod(_wrap(forward, cls_name not in _FLOAT32_OUTPUTS))
            # gradients of bfloat16 outputs arrive in bfloat16: read as float32 too
            if 'backward' in cls.__dict__:
                cls.backward = staticmethod(_wrap(cls.__dict__['backward'].__func__, False))
        done.append(f'{module_name}.{cls_name}')
    return done


def patched_mmcv_ops() -> Dict[str, bool]:
    """Which ops of `MMCV_FEATURE_OPS` are wrapped now ('module.Function' -> bool)."""
    out = {}
    for module_name, cls_name in MMCV_FEATURE_OPS:
        cls = getattr(importlib.import_module(f'mmcv.ops.{module_name}'), cls_name)
        out[f'{module_name}.{cls_name}'] = getattr(cls.__dict__['forward'].__func__, _MARK,
                                                   False)
    return out
