"""The one feature-map spec type, `FeatureSpec`, used on both sides of the wiring: backbones
describe their outputs with it and necks describe theirs (like detectron2's `ShapeSpec`), and
the one formatter for error messages and tables.

A spec is plain data, immutable, one per level, kept in output order (a tuple, never a set).
"""
from dataclasses import dataclass
import math
from typing import Any, Optional, Sequence, Tuple

__all__ = ['FeatureSpec', 'SpecTuple', 'format_specs', 'size_near', 'SIZE_SLACK', 'round_up',
           'check_layout',
           'check_maps']


@dataclass(frozen=True)
class FeatureSpec:
    """One feature map flowing from a backbone or neck to what follows it.

    Args:
        channels: Number of channels of the map.
        stride: Reduction of the map relative to the input image (input size / map size); None
            where it depends on the input size (e.g. SSD's extra levels of unpadded convs).
        index: For backbone outputs, the timm feature level the output comes from (index into
            the model's full `feature_info`; for pyramid levels, the level the pyramid was built
            from). None for neck outputs.
        module: Name of the timm module producing the level (or of the pyramid branch); '' for
            neck outputs.
        pad_divisor: Input sizes must be a multiple of this for the backbone to run (1: any).
        extra: True for levels a neck adds on top of its inputs (pooled or strided-conv levels
            such as FPN's P6/P7); RoI extractors use the levels before these.

    Example:
        >>> FeatureSpec(channels=256, stride=8, index=2, module='layer2')
        FeatureSpec(channels=256, stride=8, index=2, module='layer2', pad_divisor=1, extra=False)
    """
    channels: int
    stride: Optional[int]
    index: Optional[int] = None
    module: str = ''
    pad_divisor: int = 1
    extra: bool = False


SpecTuple = Tuple[FeatureSpec, ...]

# Real maps may fall short of input / stride by a few pixels (unpadded convs: inception_v3 loses
# ~3 px at stride 2); timm's own tests allow a margin too. One tolerance for every shape check.
SIZE_SLACK = 0.35


def size_near(got: int, input_size: int, stride: int) -> bool:
    """Whether a map side of `got` pixels is what `stride` makes of `input_size` (within
    1 + `SIZE_SLACK` x the expected size).

    Example:
        >>> size_near(109, 224, 2), size_near(56, 224, 2)
        (True, False)
    """
    expected = input_size / stride
    return abs(got - expected) <= 1 + SIZE_SLACK * expected


def check_maps(shapes: Sequence[Sequence[int]], specs: Sequence[FeatureSpec],
               size: Tuple[int, int], what: str, exact: bool = False) -> None:
    """Each map (an NCHW shape) has its level's channels and about input / stride pixels per
    side (`size_near`; with `exact`, ceil(input / stride), which TimmBackbone's outputs are);
    levels of unknown stride are checked for channels only.

    Raises:
        ValueError: Naming `what`, the map, and what was expected.

    Example:
        >>> check_maps([(1, 64, 56, 56)], [FeatureSpec(64, 4)], (224, 224), 'backbone')
    """
    if len(shapes) != len(specs):
        raise ValueError(f'{what}: {len(shapes)} maps for {len(specs)} predicted levels')
    for i, (shape, spec) in enumerate(zip(shapes, specs)):
        expected = [math.ceil(s / spec.stride) for s in size] if spec.stride else None
        sides = tuple(shape[2:4])
        fits = expected is None or (list(sides) == expected if exact else all(
            size_near(g, s, spec.stride) for g, s in zip(sides, size)))
        if shape[1] != spec.channels or not fits:
            raise ValueError(f'{what}: map {i} is {tuple(shape)}, expected {spec.channels} '
                             f'channels and {"" if exact else "about "}{expected or "any size"} '
                             f'at stride {spec.stride} for an input of {size[0]}x{size[1]}')


def check_layout(maps: Sequence[Any], what: str,
                 memory_format: Any = None) -> None:
    """Each map is laid out in memory as `memory_format` says (default NCHW-contiguous, as
    mmdet's own backbones lay theirs out: mmcv's compiled ops read raw memory). Reads strides
    only, so it checks meta-device maps too.

    Raises:
        ValueError: Naming `what`, the map, its strides and the layout expected.

    Example:
        >>> check_layout([torch.empty(1, 8, 4, 4)], 'backbone')
    """
    import torch
    memory_format = memory_format or torch.contiguous_format
    for i, m in enumerate(maps):
        if not m.is_contiguous(memory_format=memory_format):
            raise ValueError(f'{what}: map {i} {tuple(m.shape)} has strides {m.stride()}, not '
                             f'{str(memory_format).replace("torch.", "")} (the layout '
                             f'contract: mmcv\'s ops read raw memory as that)')


def round_up(value: int, divisor: int) -> int:
    """The smallest multiple of `divisor` that is at least `value` (padding to a divisor).

    Example:
        >>> round_up(320, 32), round_up(321, 32)
        (320, 352)
    """
    return -(-value // divisor) * divisor


def format_specs(specs: Sequence[FeatureSpec], indices: Optional[Sequence[int]] = None) -> str:
    """One line per level, for error messages: `i: channels=..., stride=...[, module=...]`.

    Args:
        specs: The levels.
        indices: Labels of the lines (default 0, 1, ...).

    Example:
        >>> print(format_specs([FeatureSpec(256, 8), FeatureSpec(256, 16, extra=True)]))
          0: channels=256, stride=8
          1: channels=256, stride=16 (extra level)
    """
    indices = range(len(specs)) if indices is None else indices
    return '\n'.join(f'  {i}: channels={s.channels}, stride={s.stride}'
                     + (f', module={s.module!r}' if s.module else '')
                     + (' (extra level)' if s.extra else '')
                     for i, s in zip(indices, specs))
