"""The neck table: for every mmdet 3.3 neck `resolve_config` can wire, which input fields follow
from the levels that feed it (and in which convention: list or one int, which order), and which
levels it outputs (channels, strides), so necks can be chained and head strides filled.

Each entry reads the neck's own config the way the neck's `__init__`/`forward` do (start_level,
end_level, num_outs, add_extra_convs, ...), and checks what the neck needs of its inputs (e.g.
strides that double level to level for necks that upsample by 2 and concatenate) so a bad pairing
fails here, with the levels listed, instead of with a shape error at the first forward.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .._configs import type_name
from .._specs import FeatureSpec, SpecTuple, format_specs

__all__ = ['NeckRule', 'NECKS', 'supported_necks', 'neck_configs', 'neck_levels']


@dataclass(frozen=True)
class NeckRule:
    """How one neck type is wired.

    Args:
        inputs: `(neck_cfg, levels, where) -> {field: value}`: the value each input field must
            have when the neck is fed `levels` (`where` names the neck in error messages).
        outputs: `(neck_cfg, levels, where) -> levels`: what the neck returns, in order.
        follows: Fields that are derived copies of another field (`{field: source}`): they are
            refilled whenever the source is `'auto'` or missing (SSDNeck's `out_channels` repeats
            its `in_channels` before its own extra levels).
        reads: `(neck_cfg, levels, where) -> indices` of the input levels whose values the
            neck's forward uses (FPN: start_level..end_level; DilatedEncoder: the last one);
            None: all of them. Automatic pyramids skip the other levels (no unused branches).
        align: `(neck_cfg, levels, where) -> multiple`: what the input image sides must be a
            multiple of for the neck's maps to line up (necks that resample a level by a fixed
            factor and add or concatenate it to its neighbour: a 2x-upsampled map of 8 rows
            does not meet one of 15); None: any size (necks that resize to size).

    Example:
        >>> fpn = dict(type='FPN', out_channels=256, num_outs=5)
        >>> levels = (FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32))
        >>> NECKS['FPN'].inputs(fpn, levels, 'model.neck')
        {'in_channels': [64, 128, 256]}
        >>> [lv.stride for lv in NECKS['FPN'].outputs(fpn, levels, 'model.neck')]
        [8, 16, 32, 64, 128]
    """
    inputs: Callable[[Mapping, SpecTuple, str], Dict[str, Any]]
    outputs: Callable[[Mapping, SpecTuple, str], SpecTuple]
    follows: Mapping[str, str] = field(default_factory=dict)
    reads: Optional[Callable[[Mapping, SpecTuple, str], Tuple[int, ...]]] = None
    align: Optional[Callable[[Mapping, SpecTuple, str], int]] = None


def supported_necks() -> Tuple[str, ...]:
    """Neck types `resolve_config` can fill, sorted.

    Example:
        >>> 'FPN' in supported_necks()
        True
    """
    return tuple(sorted(NECKS))


def _fail(where: str, message: str, levels: Sequence[FeatureSpec]) -> ValueError:
    return ValueError(f'{where}: {message}\nLevels feeding it:\n{format_specs(levels)}')


_REQUIRED = object()


def _int_option(cfg: Mapping, key: str, default: Any, where: str) -> int:
    value = cfg.get(key, default)
    if value is _REQUIRED:
        raise ValueError(f'{where}.{key} is required (an int) to wire {type_name(cfg)!r}.')
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f'{where}.{key} must be an int, got {value!r}.')
    return value


def _int_list_option(cfg: Mapping, key: str, count: int, where: str,
                     levels: Sequence[FeatureSpec]) -> List[int]:
    value = cfg.get(key)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
        raise ValueError(f'{where}.{key} must be a list of ints (one per level), got {value!r}.')
    if len(value) != count:
        raise _fail(where, f'{key}={list(value)} has {len(value)} entries but the neck gets '
                           f'{count} levels: give one per level, or choose {count} backbone '
                           f'levels (out_indices) to match.', levels)
    return list(value)


def _channels(levels: Sequence[FeatureSpec]) -> List[int]:
    return [lv.channels for lv in levels]


def _uniform_channels(levels: Sequence[FeatureSpec], where: str, kind: str) -> int:
    channels = set(_channels(levels))
    if len(channels) != 1:
        raise _fail(where, f'{kind} takes one in_channels for all its inputs, but the levels '
                           f'feeding it have channels {_channels(levels)}. Put a neck that maps '
                           f'every level to the same width in front of it, e.g. '
                           f"neck=[dict(type='FPN', in_channels='auto', out_channels=256, "
                           f'num_outs=5), dict(type={kind!r}, ...)].', levels)
    return channels.pop()


def _check_doubling(levels: Sequence[FeatureSpec], where: str, kind: str, why: str,
                    all_levels: Sequence[FeatureSpec]) -> None:
    """Each level must have twice the stride of the one before (unknown strides are skipped)."""
    for a, b in zip(levels, levels[1:]):
        if a.stride is not None and b.stride is not None and b.stride != 2 * a.stride:
            raise _fail(where, f'{kind} {why}, so each level it uses must have twice the '
                               f'stride of the previous one; got strides '
                               f'{[lv.stride for lv in levels]}. Choose backbone levels '
                               f'(out_indices) whose strides double, or use a neck that resizes '
                               f'to size (FPN, ChannelMapper).', all_levels)


def _check_increasing(levels: Sequence[FeatureSpec], where: str, kind: Optional[str],
                      all_levels: Sequence[FeatureSpec]) -> None:
    """FPN-style necks run top-down from the last level (the deepest) and add extra levels
    below it: the levels must come shallow to deep, each stride at least the previous one."""
    strides = [lv.stride for lv in levels if lv.stride is not None]
    if any(b < a for a, b in zip(strides, strides[1:])):
        indices = [lv.index for lv in all_levels]
        fix = (f', e.g. out_indices={tuple(sorted(indices))}' if None not in indices else '')
        raise _fail(where, f'{kind} needs its levels in increasing stride order (shallow to '
                           f'deep: it runs top-down from the last one and adds extra levels '
                           f'below it), got strides {strides}. List the backbone levels in '
                           f'that order{fix}.', all_levels)


def _doubled(stride: Optional[int], times: int = 1) -> Optional[int]:
    return None if stride is None else stride * 2 ** times


def _extras(last_stride: Optional[int], channels: int, count: int) -> List[FeatureSpec]:
    """`count` levels each halving the previous map (stride-2 conv or pooling)."""
    return [FeatureSpec(channels, _doubled(last_stride, i + 1), extra=True) for i in range(count)]


def _list_input(cfg: Mapping, levels: SpecTuple, where: str) -> Dict[str, Any]:
    return {'in_channels': _channels(levels)}


def _used_range(cfg: Mapping, levels: SpecTuple, where: str,
                default_start: int = 0) -> Tuple[int, int, int]:
    """(start, stop, num_outs) the way FPN-style necks read start_level/end_level/num_outs."""
    n = len(levels)
    kind = type_name(cfg)
    start = _int_option(cfg, 'start_level', default_start, where)
    end = _int_option(cfg, 'end_level', -1, where)
    num_outs = _int_option(cfg, 'num_outs', _REQUIRED, where)
    if not 0 <= start < n:
        raise _fail(where, f'start_level={start} but only {n} levels feed {kind!r}: use '
                           f'0..{n - 1}.', levels)
    if end in (-1, n - 1):
        stop = n
        if num_outs < n - start:
            raise _fail(where, f'num_outs={num_outs} is fewer than the {n - start} levels used '
                               f'from start_level={start}: use num_outs >= {n - start}.', levels)
    else:
        if not start <= end < n:
            raise _fail(where, f'end_level={end} must be -1 or in {start}..{n - 1}.', levels)
        stop = end + 1
        if num_outs != stop - start:
            raise _fail(where, f'num_outs={num_outs} must be {stop - start} '
                               f'(end_level - start_level + 1) when end_level is set.', levels)
    return start, stop, num_outs


def _fpn_reads(cfg: Mapping, levels: SpecTuple, where: str) -> Tuple[int, ...]:
    start, stop, _ = _used_range(cfg, levels, where)
    return tuple(range(start, stop))


def _last_read(cfg: Mapping, levels: SpecTuple, where: str) -> Tuple[int, ...]:
    return (len(levels) - 1,)


def _fpn_outputs(doubling: Optional[str] = None, default_start: int = 0
                 ) -> Callable[[Mapping, SpecTuple, str], SpecTuple]:
    """Outputs of FPN-style necks: levels start..end (inclusive) at out_channels, then
    `num_outs - used` extra levels, each halving the previous one."""
    def outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
        start, stop, num_outs = _used_range(cfg, levels, where, default_start)
        used = levels[start:stop]
        _check_increasing(used, where, type_name(cfg), levels)
        why = doubling
        if why is None and 'scale_factor' in (cfg.get('upsample_cfg') or {}):
            why = 'upsamples by a fixed scale_factor and adds'
        if why:
            _check_doubling(used, where, type_name(cfg), why, levels)
        out_channels = _int_option(cfg, 'out_channels', _REQUIRED, where)
        return tuple([FeatureSpec(out_channels, lv.stride) for lv in used]
                     + _extras(used[-1].stride, out_channels, num_outs - len(used)))
    return outputs


def _nasfpn_outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    outs = _fpn_outputs()(cfg, levels, where)
    if len(outs) != 5:
        raise _fail(where, f'NASFPN always returns 5 levels (P3-P7), so num_outs must be 5, got '
                           f'{len(outs)}.', levels)
    return outs


def _nasfcos_outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    # forward: three adapted levels feed fixed cells; outputs are resized to inputs[1..3]
    start, stop, num_outs = _used_range(cfg, levels, where, default_start=1)
    if stop - start != 3 or len(levels) < 4:
        raise _fail(where, f'NASFCOS_FPN wires exactly three levels (start_level..end_level) and '
                           f'sizes its outputs like inputs 1, 2 and 3, so it needs at least four '
                           f'input levels and three used ones; got {len(levels)} levels, '
                           f'start_level={start}, {stop - start} used.', levels)
    _check_increasing(levels, where, 'NASFCOS_FPN', levels)
    out_channels = _int_option(cfg, 'out_channels', _REQUIRED, where)
    sized_like = levels[1:4]
    return tuple([FeatureSpec(out_channels, lv.stride) for lv in sized_like]
                 + _extras(sized_like[-1].stride, out_channels, num_outs - 3))


def _channel_mapper_outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    _check_increasing(levels, where, 'ChannelMapper', levels)
    out_channels = _int_option(cfg, 'out_channels', _REQUIRED, where)
    num_outs = len(levels) if cfg.get('num_outs') is None else \
        _int_option(cfg, 'num_outs', _REQUIRED, where)
    return tuple([FeatureSpec(out_channels, lv.stride) for lv in levels]
                 + _extras(levels[-1].stride, out_channels, max(0, num_outs - len(levels))))


def _hrfpn_outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    # forward: input i is upsampled by 2**i to level 0, fused, then pooled by 2**i per output
    _check_doubling(levels, where, 'HRFPN', 'upsamples input i by 2**i onto input 0', levels)
    out_channels = _int_option(cfg, 'out_channels', _REQUIRED, where)
    num_outs = _int_option(cfg, 'num_outs', 5, where)
    conv_stride = _int_option(cfg, 'stride', 1, where)
    base = None if levels[0].stride is None else levels[0].stride * conv_stride
    return tuple(FeatureSpec(out_channels, _doubled(base, i), extra=i >= len(levels))
                 for i in range(num_outs))


def _bfp_inputs(cfg: Mapping, levels: SpecTuple, where: str) -> Dict[str, Any]:
    channels = _uniform_channels(levels, where, 'BFP')
    refine_level = _int_option(cfg, 'refine_level', 2, where)
    if not 0 <= refine_level < len(levels):
        raise _fail(where, f'refine_level={refine_level} must be in 0..{len(levels) - 1} '
                           f'(one of the {len(levels)} levels feeding BFP).', levels)
    return {'in_channels': channels, 'num_levels': len(levels)}


def _same_levels(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    return tuple(levels)


def _csp_pafpn_outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    _check_doubling(levels, where, type_name(cfg), 'upsamples by 2 and concatenates', levels)
    out_channels = _int_option(cfg, 'out_channels', _REQUIRED, where)
    return tuple(FeatureSpec(out_channels, lv.stride) for lv in levels)


def _yolov3_inputs(cfg: Mapping, levels: SpecTuple, where: str) -> Dict[str, Any]:
    # forward starts from feats[-1] with in_channels[0]: deepest level first
    return {'num_scales': len(levels), 'in_channels': _channels(levels)[::-1]}


def _yolov3_outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    _check_doubling(levels, where, 'YOLOV3Neck', 'upsamples by 2 and concatenates', levels)
    out_channels = _int_list_option(cfg, 'out_channels', len(levels), where, levels)
    return tuple(FeatureSpec(c, lv.stride) for c, lv in zip(out_channels, levels[::-1]))


def _ssd_extra_count(cfg: Mapping, where: str) -> int:
    strides, paddings = cfg.get('level_strides'), cfg.get('level_paddings')
    if not isinstance(strides, (list, tuple)) or not isinstance(paddings, (list, tuple)) or \
            len(strides) != len(paddings):
        raise ValueError(f'{where}.level_strides and level_paddings must be lists of the same '
                         f'length (one per extra level), got {strides!r} and {paddings!r}.')
    return len(strides)


def _ssd_inputs(cfg: Mapping, levels: SpecTuple, where: str) -> Dict[str, Any]:
    fields: Dict[str, Any] = {'in_channels': _channels(levels)}
    out_channels = cfg.get('out_channels')
    if isinstance(out_channels, (list, tuple)):
        # out_channels = the input channels, then one entry per extra level (the last ones)
        count = _ssd_extra_count(cfg, where)
        if len(out_channels) < count:
            raise ValueError(f'{where}.out_channels={list(out_channels)} needs at least one entry '
                             f'per extra level ({count}, from level_strides).')
        fields['out_channels'] = _channels(levels) + list(out_channels[len(out_channels) - count:])
    return fields


def _ssd_outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    # Extra levels end at a few pixels, where a strided conv's ceil / an unpadded conv's border
    # makes input_size / map_size differ from any nominal stride: SSD configs write the measured
    # ratio (e.g. 107, 160, 320 at 320 px), so these strides are left to the config.
    count = _ssd_extra_count(cfg, where)
    out_channels = list(cfg.get('out_channels'))
    return tuple(list(levels) + [FeatureSpec(c, None, extra=True)
                                 for c in out_channels[len(out_channels) - count:]])


def _last_input(cfg: Mapping, levels: SpecTuple, where: str) -> Dict[str, Any]:
    return {'in_channels': levels[-1].channels}


def _dilated_encoder_outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    # forward uses feature[-1] only
    out_channels = _int_option(cfg, 'out_channels', _REQUIRED, where)
    return (FeatureSpec(out_channels, levels[-1].stride),)


def _ct_resnet_outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    # forward: x[-1] through (conv, deconv stride 2) per entry of num_deconv_filters
    filters = cfg.get('num_deconv_filters')
    if not isinstance(filters, (list, tuple)) or not filters:
        raise ValueError(f'{where}.num_deconv_filters must be a non-empty list of ints, got '
                         f'{filters!r}.')
    stride, times = levels[-1].stride, len(filters)
    exact = stride is not None and stride % 2 ** times == 0
    return (FeatureSpec(int(filters[-1]), stride // 2 ** times if exact else None),)


def _ssh_inputs(cfg: Mapping, levels: SpecTuple, where: str) -> Dict[str, Any]:
    return {'num_scales': len(levels), 'in_channels': _channels(levels)}


def _ssh_outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    out_channels = _int_list_option(cfg, 'out_channels', len(levels), where, levels)
    return tuple(FeatureSpec(c, lv.stride) for c, lv in zip(out_channels, levels))


def _dyhead_inputs(cfg: Mapping, levels: SpecTuple, where: str) -> Dict[str, Any]:
    return {'in_channels': _uniform_channels(levels, where, 'DyHead')}


def _dyhead_outputs(cfg: Mapping, levels: SpecTuple, where: str) -> SpecTuple:
    _check_doubling(levels, where, 'DyHead', 'fuses each level with a stride-2 conv of the '
                    'level before', levels)
    out_channels = _int_option(cfg, 'out_channels', _REQUIRED, where)
    return tuple(FeatureSpec(out_channels, lv.stride, extra=lv.extra) for lv in levels)


def _deepest(cfg: Mapping, levels: SpecTuple, where: str) -> int:
    """Input sides must be multiples of the deepest stride fed: upsampling by 2 then meets the
    level above exactly (ceil(input / stride) is even at every stride below the deepest)."""
    return max((lv.stride for lv in levels if lv.stride is not None), default=1)


def _deepest_if_scaled(cfg: Mapping, levels: SpecTuple, where: str) -> int:
    """FPN-style necks upsample to the size of the level above, unless `upsample_cfg` sets a
    fixed scale_factor (then as `_deepest`, over the levels used)."""
    if 'scale_factor' not in (cfg.get('upsample_cfg') or {}):
        return 1
    start, stop, _ = _used_range(cfg, levels, where)
    return _deepest(cfg, levels[start:stop], where)


_FPN = NeckRule(_list_input, _fpn_outputs(), reads=_fpn_reads, align=_deepest_if_scaled)

NECKS: Dict[str, NeckRule] = {
    # in_channels: one per input level, in order; all inputs are passed (len is asserted).
    'FPN': _FPN,
    'FPN_DropBlock': _FPN,
    'PAFPN': NeckRule(_list_input, _fpn_outputs('adds a stride-2 bottom-up path'),
                      reads=_fpn_reads, align=_deepest_if_scaled),
    'FPN_CARAFE': NeckRule(_list_input, _fpn_outputs('upsamples by 2 and adds'),
                           reads=_fpn_reads, align=_deepest),
    'FPG': NeckRule(_list_input, _fpn_outputs('sums neighbouring levels made by stride-2 convs'),
                    reads=_fpn_reads, align=_deepest),
    'NASFPN': NeckRule(_list_input, _nasfpn_outputs),
    'NASFCOS_FPN': NeckRule(_list_input, _nasfcos_outputs),
    'HRFPN': NeckRule(_list_input, _hrfpn_outputs, align=_deepest),
    # ChannelMapper (DETR family): one conv per input, extra stride-2 convs up to num_outs
    'ChannelMapper': NeckRule(_list_input, _channel_mapper_outputs),
    'YOLOXPAFPN': NeckRule(_list_input, _csp_pafpn_outputs, align=_deepest),
    'CSPNeXtPAFPN': NeckRule(_list_input, _csp_pafpn_outputs, align=_deepest),
    # SSDNeck: out_channels repeats in_channels, then one entry per extra level
    'SSDNeck': NeckRule(_ssd_inputs, _ssd_outputs, follows={'out_channels': 'in_channels'}),
    # one int, and the level count, for inputs that must share one width
    'BFP': NeckRule(_bfp_inputs, _same_levels),
    'DyHead': NeckRule(_dyhead_inputs, _dyhead_outputs),
    # deepest level first; outputs deepest first too
    'YOLOV3Neck': NeckRule(_yolov3_inputs, _yolov3_outputs, align=_deepest),
    'SSH': NeckRule(_ssh_inputs, _ssh_outputs),
    # one int: the last input level only
    'DilatedEncoder': NeckRule(_last_input, _dilated_encoder_outputs, reads=_last_read),
    'CTResNetNeck': NeckRule(_last_input, _ct_resnet_outputs, reads=_last_read),
}


def neck_configs(model: Mapping[str, Any], path: str = 'model') -> List[Tuple[str, Mapping]]:
    """(config path, config) of each neck of a detector config, in order (a neck list is a
    chain; no neck: empty).

    Example:
        >>> neck_configs(dict(neck=dict(type='FPN')))
        [('model.neck', {'type': 'FPN'})]
    """
    necks = model.get('neck')
    if isinstance(necks, (list, tuple)):
        return [(f'{path}.neck[{i}]', n) for i, n in enumerate(necks) if isinstance(n, Mapping)]
    return [(f'{path}.neck', necks)] if isinstance(necks, Mapping) else []


def neck_levels(model: Mapping[str, Any], levels: SpecTuple) -> SpecTuple:
    """The levels the neck chain of a (resolved) detector config returns when fed `levels`
    (the backbone's specs), from the table above.

    Example:
        >>> model = dict(neck=dict(type='FPN', in_channels=[128, 256, 512], out_channels=256,
        ...                        num_outs=5))
        >>> [lv.stride for lv in neck_levels(model, feature_specs(dict(type='timm.resnet18',
        ...                                                            out_indices=(2, 3, 4))))]
        [8, 16, 32, 64, 128]
    """
    for where, cfg in neck_configs(model):
        levels = NECKS[type_name(cfg)].outputs(cfg, levels, where)
    return levels
