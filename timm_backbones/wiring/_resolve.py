"""`resolve_config`: fills the `'auto'` channel and stride fields of detector and segmentor
configs from the timm backbone that feeds them, and rejects explicit values that disagree with it.

The backbone is planned once per detector (`BackbonePlan`: meta-device builds, no weights) and
the plan is handed to every rule; each neck in the chain maps its levels to its outputs through
the table in `_necks.py`; heads, RoI extractors and DETR-style attention then read the levels
they are fed; so do the decode and auxiliary heads of segmentors (`_seg_heads.py`; their
classes are looked up in mmseg's registry). Detectors this function produced are recognised and not resolved again (mmdet's
registry resolves what it builds, see `engine/_api.py`, so a runner or `init_detector` that
resolved the whole config first pays once). A value written out that does not match
(typically inherited from a `_base_` config written for ResNet) fails here, naming the field, the
given and the correct value, and the fix (`'auto'`), never as a shape error at the first forward.
"""
import copy
import importlib
import inspect
import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from mmengine.config import Config

from .._cache import Memo
from .._configs import (AUTO, is_auto, is_int, set_logged, timm_model_name, to_list, to_plain,
                        type_name)
from .._meta_ops import on_meta
from .._plan import BackbonePlan
from .._pyramid import skip_unread
from .._specs import FeatureSpec, SpecTuple, format_specs, round_up
from ._heads import (ATTENTION_LEVELS, DENSE_HEADS, GENERATORS, HEAD_STRIDES, LIST_IN_CHANNELS,
                     NECK_FIELDS, PAD_DIVISORS, ROI_EXTRACTORS)
from ._necks import NECKS, neck_configs, supported_necks
from ._seg_heads import (AUXILIARY_HEAD, AUXILIARY_STRIDE, DECODE_HEAD_BASE, FIRST_FINEST,
                         FIRST_LEVEL_CHANNELS, IGNORED_STRIDES, MULTI_LEVEL_HEADS,
                         SEG_HEAD_STRIDES, SEG_HEADS, SEG_PAD_DIVISORS, SEG_PAD_SIZE, SEG_SCOPE,
                         SEGMENTOR_KEY, SEGMENTOR_PRETRAINED)
from ._pipeline import resolve_input_size
from ._preprocess import resolve_normalization
from ._swap import has_swap_mark, swap_marked

__all__ = ['AUTO', 'resolve_config', 'has_timm_backbone']

_MISSING = object()
_DET_SCOPE = 'mmdet'
_RESOLVED = Memo('resolved detectors', 256)  # reprs of detector configs resolve_config produced

_CfgT = TypeVar('_CfgT', Config, dict)


@dataclass(frozen=True)
class _Feed:
    """The levels reaching a point of the model, and how to describe them in messages."""
    levels: Optional[SpecTuple]  # None: not known (see `why`)
    source: str
    listing: str = ''
    why: str = ''
    align: int = 1  # input sides must be multiples of this for the necks so far
    aligned_by: str = ''  # the neck that asks for it, and why


def resolve_config(cfg: _CfgT) -> _CfgT:
    """A copy of `cfg` with every `'auto'` channel/stride field filled from its timm backbone.

    Every detector in the config (`model`, and models nested in it such as `model.detector`) whose
    `backbone` is a timm backbone is resolved: neck input fields (a missing one counts as
    `'auto'`; see `_necks.NECKS` for the supported necks), dense heads' `in_channels` and strides
    (anchor/prior generators, FCOS-style `strides`), RoI extractors' `featmap_strides` and
    `out_channels`, and the `num_levels` of DETR-style multi-scale attention; the data
    preprocessor's `mean`/`std` (`_preprocess.py`: timm's pretrained normalization) and the
    backbone's `input_size='auto'` (`_pipeline.py`: the largest image of the pipelines). Explicit
    values are checked against the backbone. Resolving a resolved config changes nothing.

    Args:
        cfg: An mmengine `Config` or a config dict (the whole config, or a model dict). It is not
            modified.

    Returns:
        A new `Config` (or dict) with the fields filled.

    Raises:
        ValueError: An explicit value disagrees with the backbone (the message names the field,
            both values and the fix), or `'auto'` cannot be filled (unknown neck type, non-timm
            backbone, a size-dependent stride).

    Example:
        >>> cfg = resolve_config(dict(model=dict(
        ...     type='RetinaNet', backbone=dict(type='timm.resnet18', out_indices=(2, 3, 4)),
        ...     neck=dict(type='FPN', in_channels='auto', out_channels=256, num_outs=5))))
        >>> cfg['model']['neck']['in_channels']
        [128, 256, 512]
    """
    if not isinstance(cfg, (Config, Mapping)):
        raise TypeError(f'resolve_config takes an mmengine Config or a dict, got '
                        f'{type(cfg).__name__}')
    out = copy.deepcopy(cfg)
    swap_marked(out)  # backbones marked timm=ARCH (`--cfg-options model.backbone.timm=ARCH`)
    for path, detector in _detectors(out, ''):
        if _fingerprint(detector) in _RESOLVED:
            continue
        plan = resolve_input_size(out, detector, path)  # the one plan of this backbone
        resolve_normalization(detector, path)
        _resolve_detector(detector, path, plan)
        _RESOLVED.get(_fingerprint(detector), lambda: True)
    return out


def _fingerprint(detector: Mapping) -> str:
    return repr(to_plain(detector))


def has_timm_backbone(cfg: Union[Config, Mapping]) -> bool:
    """Whether any model in the config (at any nesting, e.g. `model.detector`) has a timm backbone.

    Args:
        cfg: An mmengine `Config` or a config dict.

    Example:
        >>> has_timm_backbone(dict(model=dict(backbone=dict(type='timm.resnet18'))))
        True
    """
    return has_swap_mark(cfg) or \
        any(timm_model_name(d['backbone']) is not None for _, d in _detectors(cfg, ''))


def _items(node: Any) -> List[Tuple[Any, Any]]:
    if isinstance(node, Config) or isinstance(node, Mapping):
        return list(node.items())
    if isinstance(node, (list, tuple)):
        return list(enumerate(node))
    return []


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f'{path}[{key}]'
    return f'{path}.{key}' if path else str(key)


def _detectors(node: Any, path: str) -> Iterator[Tuple[str, Mapping]]:
    """Every mapping with a `backbone` config (the model, and detectors nested in wrappers)."""
    if isinstance(node, Mapping) and isinstance(node.get('backbone'), Mapping):
        yield path or 'model', node
    for key, child in _items(node):
        if key != 'backbone':
            yield from _detectors(child, _join(path, key))


def _cannot_fill(where: str, key: str, feed: _Feed) -> ValueError:
    return ValueError(f"{where}.{key}='auto' cannot be filled: {feed.why}")


def _mismatch(where: str, key: str, given: Any, expected: Any, feed: _Feed,
              what: str = 'does not match the levels fed to it') -> ValueError:
    return ValueError(
        f'{where}.{key}={to_list(given)!r} {what}: it must be {to_list(expected)!r}, from '
        f"{feed.source}. Fix: set {key}='auto' to fill it from the backbone (or write "
        f'{to_list(expected)!r}). Explicit values are often inherited from a _base_ config written '
        f'for another backbone; with config inheritance, override them with '
        f"{key}='auto'.\n{feed.source}:\n{feed.listing}")


def _resolve_detector(det: Mapping, path: str, plan: Optional[BackbonePlan]) -> None:
    backbone = det['backbone']
    segmentor = SEGMENTOR_KEY in det
    scope = SEG_SCOPE if segmentor else _DET_SCOPE
    if plan is None:
        kind = type_name(backbone)
        feed = _Feed(None, f'{path}.backbone', why=(
            f"{path}.backbone (type={kind!r}) is not a timm backbone, so its levels are not "
            f"known here; 'auto' needs type='TimmBackbone' or type='timm.<arch>'. Write the "
            f'value explicitly for {kind!r}.'))
    else:
        plan = _skip_unread_pyramid_levels(det, path, plan)
        options = ', '.join(f'{k}={backbone[k]!r}' for k in
                            ('out_indices', 'output_stride') if backbone.get(k) is not None)
        feed = _Feed(plan.specs,
                     f"the timm backbone {plan.model_name!r}{f' ({options})' if options else ''}"
                     f' at {path}.backbone', listing=format_specs(plan.specs))
        if segmentor:
            _check_segmentor_pretrained(det, path)
    for where, neck in neck_configs(det, path):
        feed = _resolve_neck(neck, feed, where, scope)
    if plan is not None:  # after the necks: what they need of the input sides counts too
        if segmentor:
            _resolve_pad_divisor(det, plan, path, feed, SEG_PAD_DIVISORS, SEG_PAD_SIZE)
        else:
            _resolve_pad_divisor(det, plan, path, feed, PAD_DIVISORS)
    if segmentor:
        _resolve_seg_heads(det, feed, path)
        return
    for key in DENSE_HEADS:
        if isinstance(det.get(key), Mapping):
            _resolve_head(det[key], feed, f'{path}.{key}')
    if isinstance(det.get('roi_head'), Mapping):
        _resolve_roi_head(det['roi_head'], feed, f'{path}.roi_head')
    _resolve_attention_levels(det, feed, path)


def _check_segmentor_pretrained(det: Mapping, path: str) -> None:
    """mmseg's EncoderDecoder copies its own `pretrained` into the backbone config (and asserts
    the backbone has none): with a timm backbone, the value (mmseg's ResNet bases inherit
    'open-mmlab://resnet50_v1c') would replace the backbone's own `pretrained`."""
    given = det.get(SEGMENTOR_PRETRAINED)
    if given is None:
        return
    raise ValueError(
        f'{path}.{SEGMENTOR_PRETRAINED}={given!r}: mmseg hands a segmentor\'s pretrained to its '
        f'backbone, but the timm backbone at {path}.backbone takes its weights from its own '
        f'pretrained option (True: timm\'s hub weights of the model_name tag; a path: a timm '
        f'weight file). Fix: set {path}.{SEGMENTOR_PRETRAINED}=None (with config inheritance, '
        f'write {SEGMENTOR_PRETRAINED}=None in model=dict(...): mmseg\'s ResNet base configs set '
        f"it) and choose the weights with backbone.pretrained.")


def _skip_unread_pyramid_levels(det: Mapping, path: str, plan: BackbonePlan) -> BackbonePlan:
    """An automatic simple pyramid builds only the levels the first neck reads: with FPN's
    start_level=1 (RetinaNet), a stride-4 branch would get no gradient (and DDP would fail on the
    unused parameters). The backbone's `pyramid_strides`, left out of the config, are filled with
    None for the unread levels (their source map is passed through, no parameters); the neck's
    own fields are not touched. A `pyramid_strides` written in the config is kept. Returns the
    plan with those strides."""
    backbone, necks = det['backbone'], neck_configs(det, path)
    rule = NECKS.get(type_name(necks[0][1])) if necks else None
    if rule is None or rule.reads is None or 'pyramid_strides' in backbone or \
            not plan.pyramid_strides:
        return plan
    try:
        read = rule.reads(necks[0][1], plan.specs, necks[0][0])
    except ValueError:
        return plan  # an invalid range: the neck's own resolution reports it
    strides = skip_unread(plan.pyramid_strides, read)
    if strides == plan.pyramid_strides:
        return plan
    set_logged(backbone, 'pyramid_strides', list(strides), f'{path}.backbone')
    return replace(plan, pyramid_strides=tuple(strides))


def _resolve_pad_divisor(det: Mapping, plan: BackbonePlan, path: str, feed: _Feed,
                         fields: Sequence[Sequence[str]], size_key: Optional[str] = None) -> None:
    """The data preprocessor's padding multiples (`fields`: detectors' `pad_size_divisor`,
    segmentors' `size_divisor` and `test_cfg.size_divisor`): 'auto' -> the plan's
    `pad_size_divisor`, made a multiple of what the necks need (`feed.align`: necks that
    upsample by a fixed factor and concatenate need sides that are multiples of their deepest
    input stride); an explicit value must be a multiple of both. A fixed-size model must take
    the padded inputs: the divisor must divide the largest input it takes. `size_key`: a fixed
    padding size beside a divisor (SegDataPreProcessor pads to one or the other): where it is
    set, 'auto' is None."""
    pre = det.get('data_preprocessor')
    need = math.lcm(plan.pad_divisor, feed.align)
    auto = math.lcm(plan.pad_size_divisor, feed.align)
    for keys in fields:
        holder, key = _get_path(pre, keys[:-1]), keys[-1]
        if not isinstance(holder, Mapping) or key not in holder:
            continue
        value = holder[key]
        where = '.'.join([f'{path}.data_preprocessor', *keys[:-1]])
        size = holder.get(size_key) if size_key else None
        if size is not None and is_auto(value):
            set_logged(holder, key, None, where, f'{size_key}={to_list(size)!r} is set: batches '
                       f'are padded to it')
            continue
        if size is not None and value is not None:
            raise ValueError(
                f'{where}.{key}={value!r} and {where}.{size_key}={to_list(size)!r}: mmseg pads '
                f'batches to a fixed size or to a multiple, not both. Fix: {key}=None (or '
                f"'auto'), or remove {size_key}.")
        if value is None and size_key is not None:
            continue  # SegDataPreProcessor's default: no padding to a multiple
        _check_fixed_size_fits(plan, path, feed, auto, f'{where}.{key}')
        if is_auto(value):
            set_logged(holder, key, auto, where)
        elif not is_int(value):
            raise TypeError(f"{where}.{key} must be an int or 'auto', got {value!r} "
                            f"({type(value).__name__}). Fix: {key}='auto' (gives {auto}).")
        elif value < 1 or value % need:
            why = [f'the timm backbone at {path}.backbone needs input sides that are multiples '
                   f'of {plan.pad_divisor} (window attention, patch size)'] \
                if value % plan.pad_divisor else []
            why += [f'{feed.aligned_by}, so input sides must be multiples of {feed.align}'] \
                if value % feed.align else []
            raise ValueError(
                f'{where}.{key}={value!r}: {"; ".join(why)}. Fix: '
                f"{key}='auto' (gives {auto}) or a multiple of {need}.")


def _check_fixed_size_fits(plan: BackbonePlan, path: str, feed: _Feed, auto: int,
                           where: str) -> None:
    """A fixed-size model behind necks that need aligned sides must take every input padded to
    `auto`: the largest input it takes must be a multiple of it."""
    top = plan.max_input
    if top is None or feed.align <= 1 or not any(side % auto for side in top):
        return
    fits = round_up(max(top), auto) + plan.margin
    raise ValueError(
        f'{where}: {feed.aligned_by}, so input sides must be multiples of '
        f'{feed.align}; {plan.model_name!r} at {path}.backbone only runs at '
        f'{plan.fixed_size[0]}x{plan.fixed_size[1]} and takes inputs up to {top[0]}x'
        f'{top[1]}, which {auto} does not divide, so padded batches could outgrow it. Fix: '
        f'build the backbone for a size whose sides are multiples of {auto}'
        f"{f' (plus its margin of {plan.margin} px)' if plan.margin else ''}, e.g. "
        f'input_size=({fits}, {fits}), or choose levels (out_indices) with a smaller '
        f'deepest stride.')


def _resolve_neck(cfg: Mapping, feed: _Feed, where: str, scope: str = _DET_SCOPE) -> _Feed:
    kind = type_name(cfg)
    rule = NECKS.get(kind)
    autos = [k for k in NECK_FIELDS if is_auto(cfg.get(k))]
    if rule is None:
        if autos:
            raise ValueError(
                f"{where}.{autos[0]}='auto': neck type {kind!r} is not one resolve_config can "
                f"wire. Supported necks: {', '.join(supported_necks())}. Write "
                f'{autos[0]} explicitly for {kind!r}.')
        return _Feed(None, where, why=f'{where} (type={kind!r}) is not a neck resolve_config '
                                      f"knows, so its outputs are not known; supported necks: "
                                      f"{', '.join(supported_necks())}.")
    if feed.levels is None:
        if autos:
            raise _cannot_fill(where, autos[0], feed)
        return _Feed(None, where, why=feed.why)
    expected = rule.inputs(cfg, feed.levels, where)
    filled = {k for k in expected if cfg.get(k, _MISSING) is _MISSING or is_auto(cfg.get(k))}
    filled |= {k for k, source in rule.follows.items() if source in filled and k in expected}
    for key, value in expected.items():
        if key in filled:
            set_logged(cfg, key, value, where)
        elif to_plain(cfg[key]) != to_plain(value):
            raise _mismatch(where, key, cfg[key], value, feed)
    left = [k for k in NECK_FIELDS if is_auto(cfg.get(k))]
    if left:
        raise ValueError(f"{where}.{left[0]}='auto': {kind} chooses {left[0]} itself (it does "
                         f'not follow from the backbone); write a value.')
    outputs = rule.outputs(cfg, feed.levels, where)
    _check_builds(cfg, feed, where, scope)
    align, aligned_by = feed.align, feed.aligned_by
    multiple = rule.align(cfg, feed.levels, where) if rule.align is not None else 1
    if align % multiple:
        align = math.lcm(align, multiple)
        aligned_by = (f'{where} ({kind}) resamples levels by a fixed factor and merges them '
                      f'with their neighbours')
    return _Feed(outputs, f'{where} ({kind})', listing=format_specs(outputs), align=align,
                 aligned_by=aligned_by)


def _check_builds(cfg: Mapping, feed: _Feed, where: str, scope: str) -> None:
    """The neck, as filled, builds (on the meta device: no memory): a neck whose layers cannot
    take the levels it is fed (e.g. GroupNorm groups that do not divide a width the neck derives
    from its input channels) fails here, naming the neck and the levels, not when the detector
    is built."""
    cls = _model_class(cfg, scope)
    if cls is None:
        return  # an unknown type: the registry says so when the detector is built
    try:
        with on_meta():
            cls(**{k: copy.deepcopy(v) for k, v in cfg.items() if k != 'type'})
    except (ValueError, AssertionError, TypeError, RuntimeError, KeyError, IndexError,
            ZeroDivisionError) as err:
        norm = cfg.get('norm_cfg')
        hint = (f" Its norm_cfg={to_list(norm)!r}: GroupNorm's num_groups must divide every "
                f'width the neck makes from these channels (use a smaller num_groups, or BN).'
                if isinstance(norm, Mapping) and type_name(norm) == 'GN' else '')
        raise ValueError(
            f'{where} ({type_name(cfg)}) cannot be built for the levels fed to it: '
            f'{type(err).__name__}: {err}.{hint} Or choose backbone levels (out_indices) or a '
            f'backbone whose channels suit it.\n{feed.source}:\n{feed.listing}') from err


def _model_class(cfg: Mapping, scope: str = _DET_SCOPE) -> Optional[type]:
    """The class a config builds, looked up in the models registry of `scope` ('mmdet',
    'mmseg'; None if unknown or the package is not installed)."""
    kind = cfg.get('type')
    if isinstance(kind, type):
        return kind
    if not isinstance(kind, str):
        return None
    try:  # imported here: `import timm_backbones` never imports mmseg
        models = importlib.import_module(f'{scope}.registry').MODELS
        found = models.get(kind)
    except (ImportError, KeyError):
        return None
    return found if isinstance(found, type) else None


def _class_names(cfg: Mapping, scope: str = _DET_SCOPE
                 ) -> Tuple[Optional[type], Tuple[str, ...]]:
    """The config's class and the names of it and its bases (just the type name if unknown)."""
    cls = _model_class(cfg, scope)
    if cls is None:
        return None, (type_name(cfg) or '',)
    return cls, tuple(c.__name__ for c in cls.__mro__)


def _takes(cls: Optional[type], arg: str) -> bool:
    """Whether `cls` or a base class names `arg` in `__init__` (FCOSHead passes `strides` on to
    AnchorFreeHead through **kwargs), so a missing value falls to a default worth checking."""
    for klass in (cls.__mro__ if cls is not None else ()):
        if '__init__' not in vars(klass):
            continue
        try:
            if arg in inspect.signature(klass.__init__).parameters:
                return True
        except (TypeError, ValueError):
            continue
    return False


def _resolve_head(head: Mapping, feed: _Feed, where: str, scope: str = _DET_SCOPE) -> None:
    cls, names = _class_names(head, scope)
    if 'in_channels' in head:
        _head_in_channels(head, feed, where, per_level=bool(set(names) & set(LIST_IN_CHANNELS)))
    for base, key in HEAD_STRIDES:
        if base in names:
            _stride_field(head, key, feed, where, fill_missing=_takes(cls, key))
    for gen_where, gen in _generators(head, where):
        _stride_field(gen, 'strides', feed, gen_where, fill_missing=True)
    decoder = head.get('pixel_decoder')
    if isinstance(decoder, Mapping):
        _resolve_pixel_decoder(decoder, feed, f'{where}.pixel_decoder', scope)


def _head_in_channels(head: Mapping, feed: _Feed, where: str, per_level: bool) -> None:
    given = head['in_channels']
    if feed.levels is None:
        if is_auto(given):
            raise _cannot_fill(where, 'in_channels', feed)
        return
    channels = [lv.channels for lv in feed.levels]
    if per_level:
        expected: Any = channels
    elif len(set(channels)) == 1:
        expected = channels[0]
    elif is_auto(given):
        raise ValueError(
            f"{where}.in_channels='auto': {type_name(head)} takes one in_channels for all levels, "
            f'but the levels fed to it have channels {channels}. Add a neck that maps them to one '
            f"width (e.g. neck=dict(type='FPN', in_channels='auto', out_channels=256, "
            f'num_outs=5)).\n{feed.source}:\n{feed.listing}')
    else:
        return  # a head fed levels of several widths: nothing to compare one int with
    if is_auto(given):
        set_logged(head, 'in_channels', expected, where)
    elif to_plain(given) != to_plain(expected):
        raise _mismatch(where, 'in_channels', given, expected, feed)


def _generators(node: Any, path: str) -> Iterator[Tuple[str, Mapping]]:
    """Prior-generator configs at any depth of a head config."""
    for key, child in _items(node):
        child_path = _join(path, key)
        if key in GENERATORS and isinstance(child, Mapping):
            yield child_path, child
        elif key not in ('train_cfg', 'test_cfg') and not str(key).startswith('loss'):
            yield from _generators(child, child_path)


_MAX_INPUT_SIDE = 8192  # the largest input side `_input_over_map` looks for


def _input_over_map(given: Any, expected: int) -> bool:
    """Whether a fractional stride is `input / map size` for some input side N: the anchor
    stride of a detector designed for one input size (YOLACT's `550 / 69`, ..., `550 / 5` for
    its 550 px input, whose maps are ceil(550 / 8) = 69, ..., ceil(550 / 128) = 5). mmdet takes
    any float; a stride is accepted when some N <= 8192 gives a map of m = ceil(N / expected)
    >= 2 cells and N / m equals it (to 1e-6): no tolerance to tune, and a stride of another
    level (550 / 35 for stride 8, or 4.0) never matches (one-cell maps would admit any stride
    below the level's)."""
    if not isinstance(given, float) or given <= 0:
        return False
    for cells in range(2, int(_MAX_INPUT_SIDE / given) + 2):
        side = given * cells
        if abs(side - round(side)) <= 1e-6 * side and \
                -(-round(side) // expected) == cells:
            return True
    return False


def _same_stride(given: Any, expected: Optional[int]) -> bool:
    """A stride written as `s` or `(s_w, s_h)` equals the level stride (unknown: anything); a
    fractional stride matches when it is input / map size for one input size
    (`_input_over_map`, YOLACT)."""
    if expected is None:
        return True
    if isinstance(given, (list, tuple)):
        return len(given) == 2 and all(_same_stride(g, expected) for g in given)
    return given == expected or _input_over_map(given, expected)


def _stride_field(cfg: Mapping, key: str, feed: _Feed, where: str, fill_missing: bool,
                  prefix: bool = False) -> None:
    """Fill or check a per-level strides field.

    Args:
        cfg: The config holding the field.
        key: The field name.
        feed: The levels it describes.
        where: Path of `cfg`, for messages.
        fill_missing: Treat a missing field as 'auto' (the class takes it, with a default).
        prefix: The field describes the first len(value) levels (RoI extractors); 'auto' then
            means the levels up to the first extra level.
    """
    given = cfg.get(key, _MISSING)
    if given is _MISSING and not fill_missing:
        return
    if feed.levels is None:
        if is_auto(given):
            raise _cannot_fill(where, key, feed)
        return
    levels = feed.levels[:_first_extra(feed.levels)] if prefix else feed.levels
    strides = [lv.stride for lv in levels]
    if given is _MISSING or is_auto(given):
        unknown = [i for i, s in enumerate(strides) if s is None]
        if unknown:
            raise ValueError(
                f"{where}.{key}='auto' cannot be filled: the stride of level(s) {unknown} depends "
                f'on the input size (e.g. unpadded extra convs), so write the strides for your '
                f'input size (input size / feature map size).\n{feed.source}:\n{feed.listing}')
        set_logged(cfg, key, strides, where)
        return
    if not isinstance(given, (list, tuple)):
        raise ValueError(f'{where}.{key} must be a list with one stride per level, got '
                         f'{given!r}.')
    # a prefix field may also name extra levels: it must match the first len(given) levels
    compared = [lv.stride for lv in feed.levels[:len(given)]] if prefix else strides
    if len(given) != len(compared):
        raise _mismatch(where, key, given, strides, feed,
                        what=f'has {len(given)} entries for {len(compared)} levels')
    if not all(_same_stride(g, e) for g, e in zip(given, compared)):
        # for 'auto' the expected value; unknown (size-dependent) strides keep what was given
        shown = strides if prefix else [g if e is None else e for g, e in zip(given, strides)]
        raise _mismatch(where, key, given, shown, feed,
                        what='does not match the strides of the levels fed to it')


def _first_extra(levels: Sequence[FeatureSpec]) -> int:
    for i, lv in enumerate(levels):
        if lv.extra:
            return i
    return len(levels)


def _resolve_pixel_decoder(decoder: Mapping, feed: _Feed, where: str, scope: str) -> None:
    """MSDeformAttnPixelDecoder (Mask2Former) reads strides; its encoder uses the last levels."""
    cls, _ = _class_names(decoder, scope)
    if 'strides' in decoder or _takes(cls, 'strides'):
        _stride_field(decoder, 'strides', feed, where, fill_missing=_takes(cls, 'strides'))
    num_levels = _get_path(decoder, ('encoder', 'layer_cfg', 'self_attn_cfg', 'num_levels'))
    if feed.levels is not None and isinstance(num_levels, int) and \
            num_levels > len(feed.levels):
        raise ValueError(
            f'{where}.encoder.layer_cfg.self_attn_cfg.num_levels={num_levels} but only '
            f'{len(feed.levels)} levels are fed to the head: use at most {len(feed.levels)} '
            f'(and the same num_transformer_feat_level), or return more backbone levels.'
            f'\n{feed.source}:\n{feed.listing}')


def _get_path(cfg: Mapping, keys: Sequence[str]) -> Any:
    node: Any = cfg
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _resolve_roi_head(roi_head: Mapping, feed: _Feed, where: str) -> None:
    for key in ROI_EXTRACTORS:
        extractor = roi_head.get(key)
        if isinstance(extractor, Mapping):
            _resolve_extractor(extractor, feed, f'{where}.{key}')
        elif isinstance(extractor, (list, tuple)):  # one per stage (Cascade R-CNN)
            for i, one in enumerate(extractor):
                if isinstance(one, Mapping):
                    _resolve_extractor(one, feed, f'{where}.{key}[{i}]')


def _resolve_extractor(extractor: Mapping, feed: _Feed, where: str) -> None:
    """featmap_strides: the strides of the first levels (those the extractor pools from);
    out_channels: their channels."""
    _stride_field(extractor, 'featmap_strides', feed, where, fill_missing=True, prefix=True)
    given = extractor.get('out_channels', _MISSING)
    if feed.levels is None:
        if is_auto(given):
            raise _cannot_fill(where, 'out_channels', feed)
        return
    strides = extractor['featmap_strides']
    channels = sorted({lv.channels for lv in feed.levels[:len(strides)]})
    if len(channels) != 1:
        raise ValueError(
            f'{where} pools from levels of different widths {channels} (the first '
            f'{len(strides)} levels); RoI extractors need one width: add a neck such as FPN.'
            f'\n{feed.source}:\n{feed.listing}')
    if given is _MISSING or is_auto(given):
        set_logged(extractor, 'out_channels', channels[0], where)
    elif given != channels[0]:
        raise _mismatch(where, 'out_channels', given, channels[0], feed)


def _resolve_attention_levels(det: Mapping, feed: _Feed, path: str) -> None:
    """Deformable-DETR-style detectors: `num_feature_levels` and the `num_levels` of their
    multi-scale deformable attention = the number of levels fed to the transformer. Their
    defaults (4) count as 'auto' for DeformableDETR and its subclasses (DINO, DDQ-DETR, ...)."""
    deformable = 'DeformableDETR' in _class_names(det)[1]
    fields = [(det, 'num_feature_levels', path)]
    for keys in ATTENTION_LEVELS:
        attn = _get_path(det, keys)
        if isinstance(attn, Mapping):
            fields.append((attn, 'num_levels', f"{path}.{'.'.join(keys)}"))
    for cfg, key, where in fields:
        given = cfg.get(key, _MISSING)
        if given is _MISSING and not deformable:
            continue
        if feed.levels is None:
            if is_auto(given):
                raise _cannot_fill(where, key, feed)
            continue
        if given is _MISSING or is_auto(given):
            set_logged(cfg, key, len(feed.levels), where)
        elif given != len(feed.levels):
            raise _mismatch(where, key, given, len(feed.levels), feed,
                            what='does not match the number of levels fed to the transformer')


# ---- segmentors (mmseg) -------------------------------------------------------------------------
def _resolve_seg_heads(det: Mapping, feed: _Feed, path: str) -> None:
    """The decode and auxiliary heads of a segmentor (each a dict or a list of them), all fed the
    neck's outputs (the backbone's without a neck)."""
    for key in SEG_HEADS:
        heads = det.get(key)
        listed = isinstance(heads, (list, tuple))
        for i, head in enumerate(heads if listed else [heads]):
            if isinstance(head, Mapping):
                _resolve_decode_head(head, feed, f'{path}.{key}[{i}]' if listed else
                                     f'{path}.{key}', auxiliary=key == AUXILIARY_HEAD)


def _resolve_decode_head(head: Mapping, feed: _Feed, where: str, auxiliary: bool) -> None:
    cls, names = _class_names(head, SEG_SCOPE)
    if DECODE_HEAD_BASE not in names:
        if cls is not None and set(names) & set(LIST_IN_CHANNELS):  # mmdet's MaskFormer heads
            _resolve_head(head, feed, where, SEG_SCOPE)
            for base, key in IGNORED_STRIDES:
                if base in names:
                    _stride_field(head, key, feed, where, fill_missing=False)
            return
        autos = [k for k, v in head.items() if is_auto(v)]
        if autos:
            known = 'is not an mmseg decode head' if cls is not None else \
                "is not in mmseg's registry (a typo, or a module custom_imports must import)"
            raise ValueError(f"{where}.{autos[0]}='auto': {type_name(head)!r} {known}, so "
                             f'resolve_config cannot tell which levels it reads. Write '
                             f'{autos[0]} explicitly.')
        return
    levels = feed.levels
    if levels is None:
        for key in ('in_index', 'in_channels', *(k for _, k in SEG_HEAD_STRIDES),
                    *(k for _, k in FIRST_LEVEL_CHANNELS)):
            if is_auto(head.get(key)):
                raise _cannot_fill(where, key, feed)
        return
    multi = head.get('input_transform', 'multiple_select' if set(names) & set(MULTI_LEVEL_HEADS)
                     else None) is not None
    index = _in_index(head, feed, where, multi, auxiliary)
    read = [levels[i] for i in index]
    chosen = _Feed(tuple(read), f"{feed.source}, the level(s) {list(index)} its in_index reads",
                   listing=format_specs(read))
    channels = [lv.channels for lv in read]
    _fill_or_check(head, 'in_channels', channels if multi else channels[0], chosen, where)
    for base, key in SEG_HEAD_STRIDES:
        if base in names:
            _stride_field(head, key, chosen, where, fill_missing=True)
    if set(names) & set(FIRST_FINEST):
        strides = [lv.stride for lv in read]
        if None not in strides and min(strides) != strides[0]:
            raise ValueError(
                f'{where} ({type_name(head)}) upsamples every level it reads to the size of the '
                f'first, which must be the finest; in_index={to_list(head["in_index"])} reads '
                f"strides {strides}. List the finest level first (in_index='auto' reads every "
                f'level in order).\n{feed.source}:\n{feed.listing}')
    for base, key in FIRST_LEVEL_CHANNELS:
        if base in names and key in head and head[key] != 0:  # 0: the branch is off
            _fill_or_check(head, key, levels[0].channels, feed, where)


def _fill_or_check(cfg: Mapping, key: str, expected: Any, feed: _Feed, where: str) -> None:
    """A field that follows from the levels: filled when 'auto' or missing, else compared."""
    given = cfg.get(key, _MISSING)
    if given is _MISSING or is_auto(given):
        set_logged(cfg, key, expected, where)
    elif to_plain(given) != to_plain(expected):
        raise _mismatch(where, key, given, expected, feed)


def _in_index(head: Mapping, feed: _Feed, where: str, multi: bool,
              auxiliary: bool) -> Tuple[int, ...]:
    """The absolute levels a decode head reads, filling `in_index` when 'auto' (several-level
    heads: all levels, in order; a main single-level head: the deepest; an auxiliary head: the
    level nearest stride 16) or, for several-level heads, missing (mmseg's default -1 is a
    single level); an explicit value is checked against the levels."""
    levels = feed.levels
    assert levels is not None
    n = len(levels)
    given = head.get('in_index', _MISSING)
    if is_auto(given) or (given is _MISSING and multi):
        value: Any = list(range(n)) if multi else \
            (_nearest_stride(levels, AUXILIARY_STRIDE) if auxiliary else n - 1)
        set_logged(head, 'in_index', value, where)
        return tuple(value) if multi else (value,)
    given = -1 if given is _MISSING else to_plain(given)  # BaseDecodeHead's default
    kind = 'a list of level indices' if multi else 'one level index (an int)'
    valid = isinstance(given, tuple) and all(is_int(i) for i in given) if multi else \
        is_int(given)
    if not valid:
        raise ValueError(
            f"{where}.in_index={to_list(given)!r}: {type_name(head)} reads {kind} "
            f"(input_transform={head.get('input_transform', 'multiple_select' if multi else None)!r})"
            f". Fix: in_index='auto'.\n{feed.source}:\n{feed.listing}")
    indices = given if multi else (given,)
    bad = [i for i in indices if not -n <= i < n]
    if bad:
        raise ValueError(
            f'{where}.in_index={to_list(given)!r} names level(s) {bad}, but {n} levels are fed '
            f"to it (indices {-n}..{n - 1}). Fix: in_index='auto' "
            f"({'every level' if multi else 'auxiliary: the level nearest stride 16' if auxiliary else 'the deepest level'}), "
            f'or indices of these levels. An in_index inherited from a _base_ config is '
            f"often written for ResNet's four levels.\n{feed.source}:\n{feed.listing}")
    return tuple(i % n for i in indices)


def _nearest_stride(levels: Sequence[FeatureSpec], target: int) -> int:
    """The index of the level whose stride is nearest `target` (log scale); among equals, the
    last that is not the deepest level (mmseg's dilated ResNets: layer3 of strides 4, 8, 8, 8);
    between a finer and a coarser level as near, the finer."""
    known = [(i, lv.stride) for i, lv in enumerate(levels) if lv.stride is not None]
    if not known:
        return len(levels) - 1
    best = min(abs(math.log2(s / target)) for _, s in known)
    near = [(i, s) for i, s in known if abs(math.log2(s / target)) == best]
    finest = min(s for _, s in near)
    candidates = [i for i, s in near if s == finest]
    inner = [i for i in candidates if i != len(levels) - 1]
    return (inner or candidates)[-1]
