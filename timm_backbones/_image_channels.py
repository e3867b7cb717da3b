"""Images whose channel count the data preprocessor does not expect: a stated meaning or an error.

mmengine's `ImgDataPreprocessor` (the base of mmdet's `DetDataPreprocessor`) reorders channels
with `inputs[[2, 1, 0]]` when `bgr_to_rgb` / `rgb_to_bgr` is set, whatever the images hold: a
4-channel (BGRA) image loses its alpha channel without a word, and a 1-channel (grayscale) image
stops with `IndexError: index 2 is out of bounds for dimension 0 with size 1`. mmseg's
`SegDataPreProcessor` broadcasts a grayscale image against a 3-value mean and stops on a 4-channel
one with a broadcasting error. `check_image_channels()` puts a check in front of both (installed
once, when the first `TimmBackbone` is built, so it holds on every route: this project's tools,
mmdet's `tools/train.py` / `test.py`, `init_detector`, `DetInferencer`):

- the preprocessor expects 3 channels when it reorders channels or normalizes with 3 values
  (mmengine's preprocessors take 1 or 3 mean/std values); otherwise it expects nothing (the
  backbone's own `in_channels` check then speaks);
- a **1-channel image where 3 are expected is replicated to 3 channels** (a grayscale image as
  the gray colour image mmcv's `imread(..., 'color')` makes of a grayscale file);
- any other mismatch (a 4-channel RGBA/BGRA image where 3 are expected, 3 where 4 are, ...) is
  refused with a `ValueError` naming the shape, what the preprocessor expects and why, and the
  fixes: load the images with the expected channels (`LoadImageFromFile(color_type='color')`
  drops alpha, on purpose), or build the backbone with `in_channels` to match and give the
  preprocessor `bgr_to_rgb=False` and one mean/std value each.
"""
import functools
import importlib
from typing import Any, Callable, List, Optional

from torch import Tensor

__all__ = ['check_image_channels', 'expected_channels']

_MARK = '_timm_backbones_channels'
# (module, class) of the data preprocessors whose `forward` is checked
_PREPROCESSORS = (('mmengine.model', 'ImgDataPreprocessor'),
                  ('mmseg.models.data_preprocessor', 'SegDataPreProcessor'))


def expected_channels(preprocessor: Any) -> Optional[int]:
    """The number of image channels `preprocessor` can take, or None where it does not care.

    Args:
        preprocessor: An mmengine `ImgDataPreprocessor` (or subclass) or mmseg
            `SegDataPreProcessor`.

    Example:
        >>> from mmdet.models import DetDataPreprocessor
        >>> expected_channels(DetDataPreprocessor(mean=[0.] * 3, std=[1.] * 3, bgr_to_rgb=True))
        3
    """
    if getattr(preprocessor, '_channel_conversion', False) or \
            getattr(preprocessor, 'channel_conversion', False):
        return 3
    mean = getattr(preprocessor, 'mean', None)
    if getattr(preprocessor, '_enable_normalize', False) and isinstance(mean, Tensor) and \
            mean.shape[0] > 1:
        return int(mean.shape[0])
    return None


def _why(preprocessor: Any) -> str:
    if getattr(preprocessor, '_channel_conversion', False) or \
            getattr(preprocessor, 'channel_conversion', False):
        return 'it reorders BGR/RGB channels (bgr_to_rgb or rgb_to_bgr is set)'
    return f'its mean/std have {expected_channels(preprocessor)} values'


def _fit(image: Tensor, dim: int, preprocessor: Any) -> Tensor:
    """`image` (channels on `dim`) with the channels `preprocessor` expects, or a ValueError."""
    expected = expected_channels(preprocessor)
    channels = image.shape[dim] if image.dim() > dim else None
    if expected is None or channels == expected:
        return image
    if channels == 1 and expected == 3:  # grayscale as a gray colour image
        return image.expand(*image.shape[:dim], 3, *image.shape[dim + 1:])
    what = {4: ' (RGBA/BGRA: colour and alpha?)', 1: ' (grayscale?)'}.get(channels, '')
    raise ValueError(
        f'{type(preprocessor).__name__} got an image with {channels} channel(s){what} (shape '
        f'{tuple(image.shape)}) but expects {expected}: {_why(preprocessor)}. mmengine would '
        f'{"drop the extra channels silently" if (channels or 0) > expected else "fail on it"}. '
        f'Fix: load the images with {expected} channels (LoadImageFromFile(color_type='
        f"'color') drops alpha and makes grayscale files gray colour images), or build the "
        f'backbone with in_channels={channels} and give the data_preprocessor bgr_to_rgb=False '
        f"and one mean/std value each (mmengine's preprocessors take 1 or 3).")


def _checked(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def checked_forward(self: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
        inputs = data.get('inputs') if isinstance(data, dict) else None
        if isinstance(inputs, Tensor) and inputs.dim() == 4:
            data = dict(data, inputs=_fit(inputs, 1, self))
        elif isinstance(inputs, (list, tuple)) and all(isinstance(i, Tensor) for i in inputs):
            data = dict(data, inputs=[_fit(i, 0, self) for i in inputs])
        return forward(self, data, *args, **kwargs)
    setattr(checked_forward, _MARK, True)
    return checked_forward


def check_image_channels() -> List[str]:
    """Check the images' channels in front of every data preprocessor of `_PREPROCESSORS` that is
    installed (see the module's docstring). Idempotent.

    Returns:
        The preprocessors now checked ('module.Class').

    Example:
        >>> check_image_channels()[:1]
        ['mmengine.model.ImgDataPreprocessor']
    """
    done = []
    for module_name, cls_name in _PREPROCESSORS:
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError):  # mmseg not installed
            continue
        if not getattr(cls.forward, _MARK, False):
            cls.forward = _checked(cls.forward)
        done.append(f'{module_name}.{cls_name}')
    return done

