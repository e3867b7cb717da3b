"""Simple feature pyramid (ViTDet-style) for plain models whose levels share one stride.

From a map at stride s, each output at stride t is made by transposed convolutions (t < s),
identity (t = s) or max pooling (t > s), then resized to exactly ceil(input / t) when s / t is
not a power of two (patch-14 models). Two layouts:
  * one source level -> every stride (ViTDet: the last block feeds all scales);
  * n source levels -> n strides, level i to stride i (BEiT / mmseg multi-level style).
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

__all__ = ['SimplePyramid', 'pyramid_channels', 'PYRAMID_MODES', 'DEFAULT_PYRAMID_STRIDES']

PYRAMID_MODES = ('auto', 'simple', None)
DEFAULT_PYRAMID_STRIDES = (4, 8, 16, 32)


def _num_steps(in_stride: int, out_stride: int) -> int:
    """Power-of-two resampling steps: > 0 upsample, < 0 downsample, 0 keep."""
    ratio = in_stride / out_stride
    if ratio >= 1:
        return int(math.floor(math.log2(ratio) + 0.5))
    return -int(math.floor(math.log2(1 / ratio) + 0.5))


def pyramid_channels(in_channels: Sequence[int], in_strides: Sequence[int],
                     strides: Sequence[int], channels: Optional[int]) -> List[int]:
    """Output channels per pyramid level (see `SimplePyramid`)."""
    if channels is not None:
        return [channels] * len(strides)
    return [c // 2 ** max(_num_steps(s, t), 0) for c, s, t in zip(in_channels, in_strides, strides)]


class SimplePyramid(nn.Module):
    """Maps at `strides` from same-stride maps.

    Args:
        in_channels: Channels of each source map (one per output).
        in_strides: Stride of each source map.
        strides: Stride of each output.
        channels: If set, every output is projected to this many channels (1x1 conv +
            LayerNorm2d); if None, ViTDet's channels: halved at each 2x upsampling step.

    Example:
        >>> p = SimplePyramid([384] * 4, [16] * 4, (4, 8, 16, 32), None)
        >>> [o.shape[1] for o in p([torch.rand(1, 384, 8, 8)] * 4, (128, 128))]
        [96, 192, 384, 384]
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int],
                 strides: Sequence[int], channels: Optional[int] = None) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.branches = nn.ModuleList()
        self._exact: List[bool] = []  # power-of-two ratio: sizes match up to padding
        for c, s, t in zip(in_channels, in_strides, strides):
            steps = _num_steps(s, t)
            self._exact.append(s == t * 2.0 ** steps)
            layers: List[nn.Module] = []
            for i in range(max(steps, 0)):
                if i:
                    layers += [LayerNorm2d(c), nn.GELU()]
                layers.append(nn.ConvTranspose2d(c, c // 2, kernel_size=2, stride=2))
                c //= 2
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
