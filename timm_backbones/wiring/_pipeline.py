"""`input_size='auto'` for timm models that only run at one size (fixed position tables: hiera,
efficientformerv2, cait, ...): the largest image a config's data pipelines can produce
(`largest_image`), and the backbone built for it (`resolve_input_size`).

Pipelines are read, not run: Resize / RandomResize / RandomChoiceResize scales (with
`keep_ratio`, either orientation), FixShapeResize, crops, Pad, Mosaic / RandomAffine borders,
Expand, branches (RandomChoice, RandomApply, TestTimeAug, AutoAugment), then the data
preprocessor's `pad_size_divisor` and `BatchFixedSizePad`. A transform that may change the size
in a way not known here, or a pipeline whose size depends on the original images, is an error
asking for `input_size=(H, W)`.

Segmentors (mmseg) are read in mmseg's terms: `RandomCrop(crop_size=(h, w))`,
`ResizeShortestEdge` / `RandomChoiceResize(resize_type='ResizeShortestEdge', max_size=...)`,
`ResizeToMultiple`; `SegDataPreProcessor` pads training batches to `size` / `size_divisor` and
test batches to its `test_cfg`'s; with `test_cfg=dict(mode='slide', crop_size=(h, w))` the model
only sees crops of that size at test time.
"""
import logging
import math
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

from .._configs import AUTO, is_auto, is_int, set_logged, timm_model_name, to_plain, type_name
from .._plan import BackbonePlan, plan_from_config
from .._specs import round_up
from ._heads import PAD_DIVISORS
from ._seg_heads import SEG_PAD_DIVISORS, SEG_PAD_SIZES, SEGMENTOR_KEY

__all__ = ['largest_image', 'resolve_input_size', 'SIZE_PRESERVING']

Size = Tuple[int, int]  # (height, width) upper bounds

# transforms that never change the image size (loading, annotations, color, flips, packing)
SIZE_PRESERVING = frozenset((
    'LoadImageFromFile', 'LoadImageFromNDArray', 'LoadMultiChannelImageFromFiles',
    'LoadAnnotations', 'LoadPanopticAnnotations', 'LoadProposals', 'LoadEmptyAnnotations',
    'LoadTrackAnnotations', 'InferencerLoader', 'FilterAnnotations', 'RandomFlip', 'PackDetInputs',
    'PackTrackInputs', 'PhotoMetricDistortion', 'YOLOXHSVRandomAug', 'ColorTransform',
    'Brightness', 'Contrast', 'Equalize', 'AutoContrast', 'Sharpness', 'Solarize', 'SolarizeAdd',
    'Posterize', 'Invert', 'Color', 'Rotate', 'TranslateX', 'TranslateY', 'ShearX', 'ShearY',
    'GeomTransform', 'RandAugment', 'CutOut', 'RandomErasing', 'RandomShift', 'MixUp',
    'CachedMixUp', 'CopyPaste', 'Corrupt', 'InstaBoost', 'SegRescale', 'ImageToTensor',
    'ToTensor', 'Transpose', 'Normalize', 'RemoveDiffcultInstances', 'ProposalBroadcaster',
    # mmseg's
    'PackSegInputs', 'Rerange', 'CLAHE', 'RGB2Gray', 'AdjustGamma', 'RandomCutOut', 'GenerateEdge',
    'LoadDepthAnnotation',
))
_LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


class _Unreadable(ValueError):
    """The pipeline's output size cannot be read from the config."""


def _pairs(value: Any) -> List[Tuple[int, int]]:
    """A scale written as an int, a (w, h) pair or a list of pairs, as (w, h) pairs."""
    value = to_plain(value)
    if isinstance(value, (int, float)):
        return [(int(value), int(value))]
    if isinstance(value, tuple) and len(value) == 2 and all(
            isinstance(v, (int, float)) for v in value):
        return [(int(value[0]), int(value[1]))]
    if isinstance(value, tuple) and value:
        return [p for v in value for p in _pairs(v)]
    raise _Unreadable(f'scale {value!r} is not an int, a (w, h) pair or a list of them')


def _resized(scales: Sequence[Tuple[int, int]], keep_ratio: bool, ratio: float = 1.0) -> Size:
    """The largest output of resizing to any of `scales` ((w, h) pairs): with keep_ratio the long
    side fits the larger value in either orientation, else the exact (h, w)."""
    if keep_ratio:
        side = math.ceil(max(max(s) for s in scales) * ratio)
        return side, side
    return (math.ceil(max(h for _, h in scales) * ratio),
            math.ceil(max(w for w, _ in scales) * ratio))


def _need(bound: Optional[Size], what: str) -> Size:
    if bound is None:
        raise _Unreadable(f'{what} depends on the original image size (no Resize before it)')
    return bound


def _bigger(a: Optional[Size], b: Optional[Size]) -> Optional[Size]:
    if a is None or b is None:
        return None
    return max(a[0], b[0]), max(a[1], b[1])


def _branches(bound: Optional[Size], branches: Any, where: str, seg: bool) -> Optional[Size]:
    """The largest output over alternative transform lists."""
    outs = [_walk(bound, list(b) if isinstance(b, (list, tuple)) else [b], where, seg)
            for b in branches]
    if not outs:
        return bound
    result = outs[0]
    for out in outs[1:]:
        result = _bigger(result, out)
    return result


def _shortest_edge(t: Mapping, kind: str) -> Size:
    """mmseg's ResizeShortestEdge: the long side is capped by `max_size` (else unknown)."""
    side = t.get('max_size')
    if not is_int(side):
        raise _Unreadable(f'{kind} without max_size keeps the aspect ratio of the original '
                          f'image, so its long side is not known')
    return side, side


def _step(bound: Optional[Size], t: Mapping, where: str, seg: bool) -> Optional[Size]:
    """The bound after one transform (None: the original image size, unknown); `seg`: read
    mmseg's transforms (RandomCrop's crop_size is (h, w) there, (w, h) in mmdet)."""
    kind = type_name(t)
    if kind in SIZE_PRESERVING:
        return bound
    if kind == 'ResizeShortestEdge':
        return _shortest_edge(t, kind)
    if kind == 'RandomChoiceResize' and t.get('resize_type') == 'ResizeShortestEdge':
        return _shortest_edge(t, f"{kind}(resize_type='ResizeShortestEdge')")
    if kind == 'ResizeToMultiple':
        d = int(t.get('size_divisor', 32))
        h, w = _need(bound, kind)
        return round_up(h, d), round_up(w, d)
    if kind == 'RandomCrop' and seg:
        size = to_plain(t['crop_size'])
        cap = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return cap if bound is None else (min(bound[0], cap[0]), min(bound[1], cap[1]))
    if kind == 'Resize':
        if t.get('scale') is not None:
            return _resized(_pairs(t['scale']), t.get('keep_ratio', False))
        factor = to_plain(t.get('scale_factor'))
        factors = factor if isinstance(factor, tuple) else (factor, factor)
        if not all(isinstance(f, (int, float)) for f in factors):
            raise _Unreadable(f'{kind} has neither scale nor a numeric scale_factor')
        h, w = _need(bound, f'{kind}(scale_factor=...)')
        return math.ceil(h * factors[1]), math.ceil(w * factors[0])
    if kind == 'RandomResize':
        ratio = to_plain(t.get('ratio_range'))
        return _resized(_pairs(t['scale']), t.get('keep_ratio', False),
                        max(ratio) if isinstance(ratio, tuple) else 1.0)
    if kind == 'RandomChoiceResize':
        return _resized(_pairs(t['scales']), t.get('keep_ratio', False))
    if kind in ('FixShapeResize', 'FixScaleResize'):
        return int(t['height']), int(t['width'])
    if kind == 'RandomCrop':
        size, crop = to_plain(t['crop_size']), t.get('crop_type', 'absolute')
        if crop == 'absolute':
            cap = (int(size[1]), int(size[0]))
        elif crop == 'absolute_range':
            cap = (int(size[1]), int(size[1]))
        else:  # relative crops never grow the image
            return bound
        return cap if bound is None else (min(bound[0], cap[0]), min(bound[1], cap[1]))
    if kind in ('RandomCenterCropPad', 'MinIoURandomCrop'):
        if kind == 'RandomCenterCropPad' and t.get('crop_size') is not None:
            size = to_plain(t['crop_size'])
            return int(size[0]), int(size[1])
        return bound if kind == 'MinIoURandomCrop' else _need(None, kind)
    if kind == 'Pad':
        if t.get('size') is not None:
            w, h = _pairs(t['size'])[0]
            bound = (h, w) if bound is None else (max(bound[0], h), max(bound[1], w))
        if t.get('pad_to_square'):
            side = max(_need(bound, 'Pad(pad_to_square=True)'))
            bound = (side, side)
        if t.get('size_divisor'):
            d = int(t['size_divisor'])
            h, w = _need(bound, 'Pad(size_divisor=...)')
            bound = (round_up(h, d), round_up(w, d))
        return bound
    if kind in ('Mosaic', 'CachedMosaic'):
        w, h = _pairs(t.get('img_scale', (640, 640)))[0]
        return 2 * h, 2 * w
    if kind == 'RandomAffine':
        border = to_plain(t.get('border', (0, 0)))
        h, w = _need(bound, kind)
        return h + 2 * int(border[1]), w + 2 * int(border[0])
    if kind == 'Expand':
        ratio = max(to_plain(t.get('ratio_range', (1, 4))))
        h, w = _need(bound, kind)
        return math.ceil(h * ratio), math.ceil(w * ratio)
    if kind in ('RandomChoice', 'AutoAugment'):
        return _branches(bound, t.get('transforms') or t.get('policies') or [], where, seg)
    if kind == 'RandomApply':
        inner = _walk(bound, list(t.get('transforms', [])), where, seg)
        return _bigger(bound, inner) if bound is not None else inner
    if kind == 'TestTimeAug':
        for stage in t.get('transforms', []):
            bound = _branches(bound, [[s] for s in stage], where, seg)
        return bound
    if kind == 'MultiBranch':
        branches = [v for k, v in t.items() if k not in ('type', 'branch_field')]
        return _branches(bound, branches, where, seg)
    raise _Unreadable(f'transform {kind!r} may change the image size in a way not known here')


def _walk(bound: Optional[Size], transforms: Sequence[Any], where: str,
          seg: bool = False) -> Optional[Size]:
    for i, t in enumerate(transforms):
        if isinstance(t, Mapping):
            bound = _step(bound, t, f'{where}[{i}]', seg)
    return bound


def _dataset_pipelines(ds: Any, where: str) -> Iterator[Tuple[str, list]]:
    """(path, transforms) of every pipeline a dataset config runs, wrapped datasets included
    (a wrapper's own pipeline runs after its dataset's, as in MultiImageMixDataset)."""
    if not isinstance(ds, Mapping):
        return
    inner = ds.get('dataset')
    datasets = ds.get('datasets')
    own = list(ds.get('pipeline') or [])
    if isinstance(inner, Mapping):
        for path, steps in _dataset_pipelines(inner, f'{where}.dataset'):
            yield path, steps + own
    elif isinstance(datasets, (list, tuple)):
        for i, one in enumerate(datasets):
            yield from _dataset_pipelines(one, f'{where}.datasets[{i}]')
    elif own:
        yield f'{where}.pipeline', own


def _pipelines(cfg: Mapping) -> Iterator[Tuple[str, list]]:
    for loader in _LOADERS:
        dl = cfg.get(loader)
        if isinstance(dl, Mapping):
            yield from _dataset_pipelines(dl.get('dataset'), f'{loader}.dataset')
    for i, hook in enumerate(cfg.get('custom_hooks') or []):  # RTMDet's second-stage pipeline
        if isinstance(hook, Mapping) and hook.get('switch_pipeline'):
            yield f'custom_hooks[{i}].switch_pipeline', list(hook['switch_pipeline'])


def _read(where: str, steps: list, seg: bool) -> Size:
    try:
        return _need(_walk(None, steps, where, seg), f'the output of {where}')
    except _Unreadable as err:
        raise _Unreadable(f'{where}: {err}') from None


def _get_path(cfg: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        if not isinstance(cfg, Mapping):
            return None
        cfg = cfg.get(key)
    return cfg


def _hw(value: Any, what: str) -> Size:
    value = to_plain(value)
    if is_int(value):
        return value, value
    if isinstance(value, tuple) and len(value) == 2 and all(is_int(v) for v in value):
        return value[0], value[1]
    raise _Unreadable(f'{what}={value!r} is not an int or an (h, w) pair')


def _padded(bound: Size, pre: Mapping, keys: Sequence[Sequence[str]], what: str) -> Size:
    """`bound` after padding to the fixed sizes and multiples the preprocessor fields at `keys`
    name (0 or 1 of each)."""
    size_keys, divisor_keys = keys
    size = _get_path(pre, size_keys)
    if size is not None:
        h, w = _hw(size, f"{what}.{'.'.join(size_keys)}")
        bound = (max(bound[0], h), max(bound[1], w))
    divisor = _get_path(pre, divisor_keys)
    if is_int(divisor) and divisor > 1:
        bound = (round_up(bound[0], divisor), round_up(bound[1], divisor))
    return bound


def _largest_seg_image(found: List[Tuple[str, list]], pre: Mapping, segmentor: Mapping) -> Size:
    """mmseg: training batches padded to the preprocessor's `size` / `size_divisor`; test batches
    to its `test_cfg`'s; in slide inference the model sees crops of `test_cfg.crop_size`."""
    test = segmentor.get('test_cfg') if isinstance(segmentor.get('test_cfg'), Mapping) else {}
    slide = _hw(test['crop_size'], 'model.test_cfg.crop_size') \
        if test.get('mode') == 'slide' and test.get('crop_size') is not None else None
    bound: Size = (0, 0)
    for where, steps in found:
        training = not where.startswith(('val_dataloader', 'test_dataloader'))
        if training:
            out = _padded(_read(where, steps, seg=True), pre, (SEG_PAD_SIZES[0],
                                                                SEG_PAD_DIVISORS[0]), where)
        elif slide is not None:
            out = slide  # each crop is at most crop_size, whatever the padded image
        else:
            out = _padded(_read(where, steps, seg=True), pre, (SEG_PAD_SIZES[1],
                                                                SEG_PAD_DIVISORS[1]), where)
        bound = (max(bound[0], out[0]), max(bound[1], out[1]))
    return bound


def largest_image(cfg: Mapping, preprocessor: Optional[Mapping] = None,
                  segmentor: Optional[Mapping] = None) -> Size:
    """The largest (height, width) a config's train/val/test pipelines can feed the model, after
    the data preprocessor's batch padding.

    Args:
        cfg: The whole config (with `train_dataloader`, ...).
        preprocessor: The detector's `data_preprocessor` config (pad_size_divisor,
            batch_augments; a segmentor's: size, size_divisor, test_cfg).
        segmentor: The model config when it is an mmseg segmentor: its pipelines are read in
            mmseg's terms, and its `test_cfg` may crop (slide inference).

    Raises:
        ValueError: No pipeline, or one whose output size cannot be read (the message names the
            transform).

    Example:
        >>> cfg = Config.fromfile('configs/retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py')
        >>> largest_image(cfg, cfg.model.data_preprocessor)
        (256, 256)
    """
    found = list(_pipelines(cfg))
    if not found:
        raise _Unreadable('the config has no train/val/test dataloader pipelines')
    pre = preprocessor if isinstance(preprocessor, Mapping) else {}
    if segmentor is not None:
        return _largest_seg_image(found, pre, segmentor)
    bound: Optional[Size] = (0, 0)
    for where, steps in found:
        bound = _bigger(bound, _read(where, steps, seg=False))
    assert bound is not None
    for aug in pre.get('batch_augments') or []:
        if type_name(aug) == 'BatchFixedSizePad':
            h, w = _pairs(aug['size'])[0]  # BatchFixedSizePad's size is (h, w)
            bound = (max(bound[0], h), max(bound[1], w))
        else:
            raise _Unreadable(f'batch augment {type_name(aug)!r} may change the image size in a '
                              f'way not known here')
    divisor = pre.get('pad_size_divisor', 1)
    if is_int(divisor) and divisor > 1:
        bound = (round_up(bound[0], divisor), round_up(bound[1], divisor))
    return bound


def resolve_input_size(cfg: Mapping, det: Mapping, path: str) -> Optional[BackbonePlan]:
    """`backbone.input_size='auto'` (and, in a config with pipelines, a missing input_size of a
    model that only runs at one size): the model is built for the largest image the pipelines
    produce, rounded up to its deepest stride (and the batch padding), as (H, W) or, where the
    model only takes square sizes, (S, S). Models that take any size get 'any'.

    Args:
        cfg: The whole config (its pipelines).
        det: A detector config in it, changed in place.
        path: The detector's path, for messages.

    Returns:
        The plan of the backbone as resolved, None if it is not a timm backbone.
    """
    backbone = det.get('backbone')
    if not isinstance(backbone, Mapping) or timm_model_name(backbone) is None:
        return None
    given = to_plain(backbone.get('input_size'))
    if given is not None and not is_auto(given):
        return plan_from_config(backbone)
    where = f'{path}.backbone'
    rest = {k: v for k, v in backbone.items() if k != 'input_size'}
    plan = plan_from_config(rest)
    if plan.fixed_size is None:  # takes any size already
        if given == AUTO:
            set_logged(backbone, 'input_size', 'any', where, 'the model takes any input size',
                       level=logging.INFO)
        return plan
    if given is None and not any(isinstance(cfg.get(k), Mapping) for k in _LOADERS):
        return plan  # a model config alone: the user chose timm's size by leaving input_size out
    name = timm_model_name(backbone)
    pre = det.get('data_preprocessor')
    segmentor = det if SEGMENTOR_KEY in det else None
    try:
        h, w = largest_image(cfg, pre, segmentor)
    except _Unreadable as err:
        raise ValueError(
            f"{where}.input_size{'=' + repr(AUTO) if given else ' (missing)'}: {name!r} only "
            f'runs at one input size ({plan.fixed_size[0]}x{plan.fixed_size[1]} as built by '
            f'default), and the largest image of the config cannot be read from its pipelines: '
            f'{err}. Write input_size=(H, W) for your largest padded input (mmdet\'s own tools '
            f'build the model config alone, without the pipelines: there too).') from None
    step = max(s.stride for s in plan.levels)
    for keys in (SEG_PAD_DIVISORS if segmentor is not None else PAD_DIVISORS):
        divisor = _get_path(pre, keys)
        if is_int(divisor) and divisor > 1:
            step = math.lcm(step, divisor)
    # and the margin its maps need (unpadded convolutions, as measured at its default size)
    size = (round_up(h, step) + plan.margin, round_up(w, step) + plan.margin)
    errors = []
    for candidate in dict.fromkeys([size, (max(size), max(size))]):
        try:
            plan = plan_from_config(dict(rest, input_size=candidate))
        except ValueError as err:
            errors.append(f'{candidate}: {err}')
            continue
        if plan.max_input[0] < h or plan.max_input[1] < w:
            errors.append(f'{candidate}: its maps cover only {plan.max_input[0]}x'
                          f'{plan.max_input[1]} of it')
            continue
        set_logged(backbone, 'input_size', list(candidate), where,
                   f'the largest image of the pipelines is {h}x{w}', level=logging.INFO)
        return plan
    raise ValueError(f'{where}.input_size: {name!r} only runs at one input size and cannot be '
                     f'built for the largest image of the pipelines ({h}x{w}); tried '
                     f"{'; '.join(errors)}. Resize images smaller or pick a model that takes "
                     f'any size.')
