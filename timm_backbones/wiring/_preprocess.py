"""The data preprocessor's normalization against the timm backbone: `mean='auto'` / `std='auto'`
are filled from the backbone's timm `pretrained_cfg` (0..255, RGB), explicit values that disagree
with a pretrained backbone's are rejected (typically ImageNet values inherited from an mmdet base
for a ViT trained with 0.5/0.5), and the number of values must suit the backbone's `in_channels`.
"""
from typing import Any, Mapping, Optional, Sequence

from .._configs import is_auto, set_logged, timm_model_name, to_list, type_name
from .._pretrained_cfg import is_pretrained, pretrained_mean_std

__all__ = ['resolve_normalization']

_KEYS = ('mean', 'std')
_TOLERANCE = 0.01  # on the 0..255 scale: configs round timm's values to a few decimals


def _values(value: Any) -> Optional[list]:
    """A list of numbers as a list, anything else (None, 'auto', one number) as None."""
    listed = to_list(value)
    return listed if isinstance(listed, list) else None


def resolve_normalization(det: Mapping, path: str) -> None:
    """Fill or check `data_preprocessor.mean` / `std` of the detector config `det` in place.

    Args:
        det: A detector config (with `backbone` and maybe `data_preprocessor`).
        path: Its path in the config, for messages (e.g. 'model').

    Raises:
        ValueError: 'auto' without a timm backbone or with in_channels != 3; a number of
            values that does not suit in_channels; explicit values that disagree with a
            pretrained timm backbone's (the message names field, given and correct values, and
            the fix).

    Example:
        >>> det = dict(backbone=dict(type='timm.vit_small_patch16_224.augreg_in21k'),
        ...            data_preprocessor=dict(type='DetDataPreprocessor', mean='auto', std='auto'))
        >>> resolve_normalization(det, 'model'); det['data_preprocessor']['mean']
        [127.5, 127.5, 127.5]
    """
    pre = det.get('data_preprocessor')
    if not isinstance(pre, Mapping) or not any(k in pre for k in _KEYS):
        return
    where = f'{path}.data_preprocessor'
    backbone = det.get('backbone')
    name = timm_model_name(backbone) if isinstance(backbone, Mapping) else None
    autos = [k for k in _KEYS if is_auto(pre.get(k))]
    if name is None:
        if autos:
            raise ValueError(
                f"{where}.{autos[0]}='auto' is filled from a timm backbone's pretrained_cfg, but "
                f'{path}.backbone (type={type_name(backbone)!r}) is not a timm backbone. Write '
                f'mean and std explicitly.')
        return
    in_channels = backbone.get('in_channels', 3)
    if autos and in_channels != 3:
        raise ValueError(
            f"{where}.{autos[0]}='auto': timm's pretrained normalization of {name!r} has 3 "
            f'values (RGB), but the backbone takes in_channels={in_channels}. Write mean/std '
            f'for your {in_channels}-channel images explicitly (one value each: mmengine\'s '
            f'preprocessor takes 1 or 3).')
    expected = dict(zip(_KEYS, pretrained_mean_std(name)))
    for key in autos:
        set_logged(pre, key, list(expected[key]), where, f'timm pretrained_cfg of {name!r}')
    for key in _KEYS:
        _check_length(pre.get(key), key, in_channels, where, path)
    if not is_pretrained(backbone) or in_channels != 3:
        return  # randomly initialised backbones take any normalization
    for key in _KEYS:
        given = _values(pre.get(key))
        if given is not None and len(given) == 3 and not all(
                abs(g - e) <= _TOLERANCE for g, e in zip(given, expected[key])):
            raise ValueError(
                f'{where}.{key}={given} does not match the normalization the pretrained timm '
                f'backbone {name!r} was trained with: it must be {list(expected[key])} (timm '
                f"pretrained_cfg, 0..255, RGB). Fix: set mean='auto', std='auto' to fill them "
                f'from the backbone (with config inheritance, override the base config\'s '
                f'values with them), or write those values.')


def _check_length(value: Any, key: str, in_channels: int, where: str, path: str) -> None:
    """mmengine's preprocessor takes 1 or 3 values; 3 only fit 3-channel images."""
    given = _values(value)
    if given is None:
        return
    allowed: Sequence[int] = (1, 3) if in_channels == 3 else (1,)
    if len(given) not in allowed:
        raise ValueError(
            f'{where}.{key} has {len(given)} values ({given}) but {path}.backbone takes '
            f'in_channels={in_channels} image channels: use '
            f"{' or '.join(str(n) for n in allowed)} value(s) (mmengine's preprocessor "
            f'normalizes 1 or 3 channels; one value applies to every channel), or make '
            f'in_channels match your images.')
