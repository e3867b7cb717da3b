"""Simple feature pyramid (ViTDet-style) for plain models whose levels share one stride: the
module (`SimplePyramid`), its channel rule (`pyramid_channels`), which levels feed which strides
(`plan_pyramid`) and which strides a neck leaves unread (`skip_unread`).

From a map at stride s, each output at stride t is made by transposed convolutions (t < s),
identity (t = s) or max pooling (t > s), then resized to exactly ceil(input / t) when s / t is
not a power of two (patch-14 models). Two layouts:
  * one source level -> every stride (ViTDet: the last block feeds all scales);
  * n source levels -> n strides, level i to stride i (BEiT / mmseg multi-level style).
A stride of None is a level the neck does not read: its source map is passed through as it is
(no parameters, no compute), so no branch trains without gradients.
"""
import math
from typing import Collection, List, Optional, Sequence, Tuple

import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from ._specs import FeatureSpec

__all__ = ['SimplePyramid', 'pyramid_channels', 'plan_pyramid', 'skip_unread',
           'PYRAMID_MODES', 'DEFAULT_PYRAMID_STRIDES']

PYRAMID_MODES = ('auto', 'simple', None)
DEFAULT_PYRAMID_STRIDES = (4, 8, 16, 32)


def _num_steps(in_stride: int, out_stride: int) -> int:
    """Power-of-two resampling steps: > 0 upsample, < 0 downsample, 0 keep."""
    ratio = in_stride / out_stride
    if ratio >= 1:
        return int(math.floor(math.log2(ratio) + 0.5))
    return -int(math.floor(math.log2(1 / ratio) + 0.5))


def _upsampled_channels(channels: int, steps: int) -> List[int]:
    """Channels after each 2x transposed-conv step: ViTDet halves them every step."""
    return [channels // 2 ** (i + 1) for i in range(max(steps, 0))]


def pyramid_channels(in_channels: Sequence[int], in_strides: Sequence[int],
                     strides: Sequence[Optional[int]], channels: Optional[int]) -> List[int]:
    """Output channels per pyramid level (see `SimplePyramid`); a skipped level (stride None)
    keeps its source's channels.

    Example:
        >>> pyramid_channels([384] * 4, [16] * 4, (4, 8, 16, 32), None)
        [96, 192, 384, 384]
    """
    out = []
    for c, s, t in zip(in_channels, in_strides, strides):
        if t is None:
            out.append(c)
        elif channels is not None:
            out.append(channels)
        else:
            out.append(([c] + _upsampled_channels(c, _num_steps(s, t)))[-1])
    return out


class SimplePyramid(nn.Module):
    """Maps at `strides` from same-stride maps.

    Args:
        in_channels: Channels of each source map (one per output).
        in_strides: Stride of each source map.
        strides: Stride of each output; None passes the source through (a level the neck
            does not read).
        channels: If set, every output is projected to this many channels (1x1 conv +
            LayerNorm2d); if None, ViTDet's channels: halved at each 2x upsampling step.

    Example:
        >>> p = SimplePyramid([384] * 4, [16] * 4, (4, 8, 16, 32), None)
        >>> [o.shape[1] for o in p([torch.rand(1, 384, 8, 8)] * 4, (128, 128))]
        [96, 192, 384, 384]
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int],
                 strides: Sequence[Optional[int]], channels: Optional[int] = None) -> None:
        super().__init__()
        # a skipped level keeps its source's stride (and is cropped like the backbone's maps)
        self.strides = tuple(s if t is None else t for s, t in zip(in_strides, strides))
        self.branches = nn.ModuleList()
        self._exact: List[bool] = []  # power-of-two ratio: sizes match up to padding
        for c, s, t in zip(in_channels, in_strides, strides):
            if t is None:
                self.branches.append(nn.Identity())
                self._exact.append(True)
                continue
            steps = _num_steps(s, t)
            self._exact.append(s == t * 2.0 ** steps)
            layers: List[nn.Module] = []
            for i, out_c in enumerate(_upsampled_channels(c, steps)):
                if i:
                    layers += [LayerNorm2d(c), nn.GELU()]
                layers.append(nn.ConvTranspose2d(c, out_c, kernel_size=2, stride=2))
                c = out_c
            layers += [nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
                       for _ in range(max(-steps, 0))]
            if channels is not None:
                layers += [nn.Conv2d(c, channels, kernel_size=1, bias=False),
                           LayerNorm2d(channels)]
            self.branches.append(nn.Sequential(*layers))

    def forward(self, feats: Sequence[Tensor], input_hw: Tuple[int, int]) -> Tuple[Tensor, ...]:
        """One map per stride, each exactly ceil(input / stride) in size."""
        outs = []
        for x, branch, t, exact in zip(feats, self.branches, self.strides, self._exact):
            y = branch(x)
            h, w = math.ceil(input_hw[0] / t), math.ceil(input_hw[1] / t)
            if exact and y.shape[-2] >= h and y.shape[-1] >= w:
                y = y[..., :h, :w]  # the source was padded bottom/right to a patch multiple
            elif tuple(y.shape[-2:]) != (h, w):
                y = F.interpolate(y, size=(h, w), mode='bilinear', align_corners=False)
            outs.append(y)
        return tuple(outs)


def plan_pyramid(model_name: str, levels: Sequence[FeatureSpec], indices: Tuple[int, ...],
                 explicit_indices: bool, pyramid: Optional[str],
                 strides: Optional[Sequence[Optional[int]]], channels: Optional[int]
                 ) -> Tuple[Tuple[int, ...], Tuple[Optional[int], ...]]:
    """(source levels in output order, pyramid strides or ()) for the pyramid options.

    Args:
        model_name: For error messages.
        levels: Every level of the model.
        indices: The resolved `out_indices`.
        explicit_indices: Whether `out_indices` was given (None: the default levels).
        pyramid: 'auto', 'simple' or None (see `TimmBackbone`).
        strides: `pyramid_strides` (None: `DEFAULT_PYRAMID_STRIDES`). Given for a model that
            gets no pyramid, it is an error, as is `channels`.
        channels: `pyramid_channels`.

    Example:
        >>> plan_pyramid('vit', [FeatureSpec(192, 16)] * 12, (8, 9, 10, 11), False, 'auto',
        ...              (4, 8, 16, 32), None)
        ((11, 11, 11, 11), (4, 8, 16, 32))
    """
    if pyramid is False:
        pyramid = None
    if pyramid not in PYRAMID_MODES:
        raise ValueError(f"pyramid must be 'auto', 'simple' or None, got {pyramid!r}")
    if strides is not None and not isinstance(strides, (list, tuple)):
        raise TypeError(f'pyramid_strides must be a list/tuple of strides, e.g. (8, 16, 32), '
                        f'got {strides!r}')
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool)
                                 or channels < 1):
        raise ValueError(f'pyramid_channels must be None or a positive int, got {channels!r}')
    same_stride = len({s.stride for s in levels}) == 1
    wanted = pyramid == 'simple' or (
        pyramid == 'auto' and same_stride and (not explicit_indices or len(indices) > 1))
    if not wanted:
        given = [k for k, v in (('pyramid_strides', strides), ('pyramid_channels', channels))
                 if v is not None]
        if given:
            why = (f'{model_name!r} is hierarchical (strides '
                   f'{sorted({s.stride for s in levels})}): its levels already form a pyramid'
                   if not same_stride else
                   f'pyramid={pyramid!r} with out_indices={indices} builds none')
            raise ValueError(f'{" and ".join(given)} only apply to the simple pyramid, and '
                             f'{why}. Remove {" and ".join(given)}.')
        return indices, ()
    if not same_stride:
        raise ValueError(
            f"pyramid='simple' needs a plain model whose levels share one stride; "
            f"{model_name!r} is hierarchical (strides {sorted({s.stride for s in levels})}). "
            f"Use pyramid=None: its levels already form a pyramid.")
    strides = DEFAULT_PYRAMID_STRIDES if strides is None else tuple(strides)
    built = [t for t in strides if t is not None]
    if not built or not all(isinstance(t, int) and not isinstance(t, bool) and t > 0
                            for t in built) or built != sorted(set(built)):
        raise ValueError(f'pyramid_strides must be increasing positive ints (None: a level the '
                         f'neck does not read), got {strides!r}')
    if not explicit_indices or len(indices) == 1:  # ViTDet: the last level feeds every stride
        return (indices[-1],) * len(strides), strides
    if len(indices) > len(strides):
        raise ValueError(
            f'pyramid: {len(indices)} source levels (out_indices={indices}) for '
            f'{len(strides)} pyramid_strides {strides}; give one level (it feeds every stride) '
            f'or at most one level per stride.')
    return indices, strides[len(strides) - len(indices):]  # n levels: the n deepest strides


def skip_unread(strides: Sequence[Optional[int]], read: Collection[int]
                ) -> Tuple[Optional[int], ...]:
    """The pyramid strides with the levels a neck does not read set to None (passed through).

    Example:
        >>> skip_unread((4, 8, 16, 32), read=(1, 2, 3))
        (None, 8, 16, 32)
    """
    return tuple(t if i in read else None for i, t in enumerate(strides))
