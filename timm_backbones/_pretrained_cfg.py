"""What timm's pretrained weights expect: the input normalization of a model's `pretrained_cfg`
(the tag in the model name decides, the architecture's default tag otherwise), and whether a
backbone config loads pretrained weights at all. Read without building anything.
"""
from typing import Any, Mapping, Tuple

import timm

from ._timm import check_model_name

__all__ = ['pretrained_mean_std', 'is_pretrained', 'PIXEL_SCALE']

PIXEL_SCALE = 255.0  # timm's mean/std are for 0..1 inputs; mmdet's preprocessors see 0..255


def pretrained_mean_std(model_name: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The mean and std of timm's `pretrained_cfg` for `model_name`, scaled to 0..255 pixel
    values (RGB order), as mmdet's data preprocessors take them.

    Args:
        model_name: An architecture (its default pretrained tag counts) or `arch.tag`.

    Example:
        >>> pretrained_mean_std('vit_small_patch16_224.augreg_in21k')
        ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5))
    """
    check_model_name(model_name)
    cfg = timm.get_pretrained_cfg(model_name)
    if cfg is None or not cfg.mean or not cfg.std:
        raise ValueError(
            f"timm has no pretrained normalization for {model_name!r}, so mean='auto' / "
            f"std='auto' cannot be filled: write data_preprocessor mean/std explicitly.")
    return (tuple(round(m * PIXEL_SCALE, 4) for m in cfg.mean),
            tuple(round(s * PIXEL_SCALE, 4) for s in cfg.std))


def is_pretrained(backbone_cfg: Mapping[str, Any]) -> bool:
    """Whether a timm backbone config loads timm weights: `pretrained=True` (timm's hub weights of
    the tag in `model_name`) or a weight file path. A tag alone only names the weights (and their
    normalization); with `pretrained=False` the backbone is randomly initialised.

    Example:
        >>> is_pretrained(dict(type='timm.resnet50', pretrained='/weights/resnet50.pth'))
        True
    """
    value = backbone_cfg.get('pretrained', False)
    return value is True or (isinstance(value, str) and bool(value))
