"""Per-level feature metadata: the immutable `FeatureSpec` and helpers to read it from timm.

A spec is plain data (channels, stride, timm level index, module name), one per output level, in
output order. Backbones expose a tuple of them; `feature_specs(cfg)` computes the same tuple from a
config without allocating weights.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

__all__ = ['FeatureSpec', 'format_specs']


@dataclass(frozen=True)
class FeatureSpec:
    """One output level of a backbone.

    Args:
        channels: Number of channels of the output map.
        stride: Reduction of the map relative to the input image (input size / map size).
        index: The timm feature level the output comes from (index into the model's full
            `feature_info`); for pyramid levels, the level the pyramid was built from.
        module: Name of the timm module producing the level (or of the pyramid branch).
        pad_divisor: Input sizes must be a multiple of this for the model to run (1: any size).

    Example:
        >>> FeatureSpec(channels=256, stride=8, index=2, module='layer2')
        FeatureSpec(channels=256, stride=8, index=2, module='layer2', pad_divisor=1)
    """
    channels: int
    stride: int
    index: int
    module: str
    pad_divisor: int = 1


def format_specs(specs: Sequence[FeatureSpec], indices: Optional[Sequence[int]] = None) -> str:
    """One line per level, for error messages: `index: channels=..., stride=..., module=...`."""
    indices = range(len(specs)) if indices is None else indices
    return '\n'.join(f'  {i}: channels={s.channels}, stride={s.stride}, module={s.module!r}'
                     for i, s in zip(indices, specs))


SpecTuple = Tuple[FeatureSpec, ...]
