"""Weights and configs between mmdet's native backbones and their `TimmBackbone` twins.

A twin is a timm architecture that computes exactly what an mmdet backbone computes, so that a
detector's weights move from one to the other and give the same losses, gradients and
detections (`tests/test_equivalence.py` is the oracle). Twins:

| mmdet backbone | timm model |
|---|---|
| `ResNet` depth 18/34/50/101/152, `style='pytorch'` | `resnet18` ... `resnet152` |
| `ResNet` with `deep_stem=True` (no `avg_down`) | `resnet50c`, `resnet101c`, `resnet152c` |
| `ResNetV1d` (or `ResNet` with `deep_stem` and `avg_down`) | `resnet18d` ... `resnet152d` |
| `ResNeXt` depth d, `groups` g, `base_width` w | `resnext{d}_{g}x{w}d` where timm has it |
| `RegNet` `regnetx_400mf` ... `regnetx_12gf` (name or arch dict) | `regnetx_004` ... `regnetx_120` |
| `ResNeSt` (depth, stem) (50, 64), (101, 128), (200, 128) | `resnest50d`, `101e`, `200e` |
| `CSPNeXt` P5, RTMDet's factors, torch's BN eps (`SyncBN`) | `cspnext_tiny` ... `cspnext_x` |
| `HRNet` with timm's stage settings (`extra`) | `hrnet_w18` ... with `feature_location=''` |
| `EfficientNet` b0..b8 (TF "same" padding / `conv_cfg=None`) | `tf_efficientnet_b*` / `efficientnet_b*` |

In a detector's state dict the native backbone's keys sit under `backbone.` and the twin's
under `backbone.model.` (TimmBackbone holds timm's feature extractor as `model`). Only the
backbone's keys change name; tensors and every other key pass through untouched, so a round trip
gives back the same state dict. `key_map` derives the name mapping by building both backbones on
the meta device (no weights allocated) and checks that it is one to one with equal shapes.

mmdet backbones without a twin and why: `NO_TWIN`.

Example:
    >>> twin = twin_config(dict(type='ResNet', depth=50, frozen_stages=1, norm_eval=True))
    >>> twin['model_name'], twin['out_indices']
    ('resnet50', (1, 2, 3, 4))
    >>> timm_sd = convert_state_dict(native_detector_sd, to='timm', arch=native_backbone_cfg)
"""
import contextlib
import copy
import re
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ._cache import Memo
from ._twins import KEY_RULES, native_of, twin_of

__all__ = ['TWIN_TYPES', 'NO_TWIN', 'REGNET_NAMES', 'RESNEST_NAMES', 'CSPNEXT_NAMES',
           'twin_config', 'native_config', 'key_map',
           'convert_state_dict']

# mmdet backbones with a timm twin
TWIN_TYPES = ('ResNet', 'ResNetV1d', 'ResNeXt', 'RegNet', 'ResNeSt', 'CSPNeXt', 'HRNet',
              'EfficientNet')

# mmdet's RegNet arch names -> timm's (same w0, wa, wm, group width, depth; bot_mul 1.0)
REGNET_NAMES = {
    'regnetx_400mf': 'regnetx_004', 'regnetx_800mf': 'regnetx_008',
    'regnetx_1.6gf': 'regnetx_016', 'regnetx_3.2gf': 'regnetx_032',
    'regnetx_4.0gf': 'regnetx_040', 'regnetx_6.4gf': 'regnetx_064',
    'regnetx_8.0gf': 'regnetx_080', 'regnetx_12gf': 'regnetx_120'}
_REGNET_ARCHS = {  # mmdet's RegNet.arch_settings, so an arch dict is recognised without mmdet
    'regnetx_400mf': dict(w0=24, wa=24.48, wm=2.54, group_w=16, depth=22, bot_mul=1.0),
    'regnetx_800mf': dict(w0=56, wa=35.73, wm=2.28, group_w=16, depth=16, bot_mul=1.0),
    'regnetx_1.6gf': dict(w0=80, wa=34.01, wm=2.25, group_w=24, depth=18, bot_mul=1.0),
    'regnetx_3.2gf': dict(w0=88, wa=26.31, wm=2.25, group_w=48, depth=25, bot_mul=1.0),
    'regnetx_4.0gf': dict(w0=96, wa=38.65, wm=2.43, group_w=40, depth=23, bot_mul=1.0),
    'regnetx_6.4gf': dict(w0=184, wa=60.83, wm=2.07, group_w=56, depth=17, bot_mul=1.0),
    'regnetx_8.0gf': dict(w0=80, wa=49.56, wm=2.88, group_w=120, depth=23, bot_mul=1.0),
    'regnetx_12gf': dict(w0=168, wa=73.36, wm=2.37, group_w=112, depth=19, bot_mul=1.0)}

# mmdet ResNeSt (depth, stem_channels) of its configs -> timm's (deep stem, avg-down, split
# attention radix 2, reduction_factor 4, avg_down_stride; keys as ResNetV1d's): bit-identical
RESNEST_NAMES = {(50, 64): 'resnest50d', (101, 128): 'resnest101e', (200, 128): 'resnest200e'}
_RESNEST_FIXED = dict(groups=1, base_width=4, radix=2, reduction_factor=4, avg_down_stride=True)

# mmdet CSPNeXt (deepen_factor, widen_factor) of RTMDet's tiny/s/m/l/x configs -> timm's cspnext
# (timm's port of mmdet's CSPNeXt P5: same blocks, channel attention, SPP; keys stageN ->
# stages.N-1). Outputs, BN statistics and gradients bit-identical with torch's BN eps/momentum.
CSPNEXT_NAMES = {(0.167, 0.375): 'cspnext_tiny', (0.33, 0.5): 'cspnext_s',
                 (0.67, 0.75): 'cspnext_m', (1.0, 1.0): 'cspnext_l', (1.33, 1.25): 'cspnext_x'}
# mmdet's CSPNeXt defaults that a twin must keep (timm's CspNext has no option for the others)
_CSPNEXT_FIXED = dict(arch='P5', use_depthwise=False, expand_ratio=0.5, arch_ovewrite=None,
                      spp_kernel_sizes=(5, 9, 13), channel_attention=True, conv_cfg=None)
_CSPNEXT_ACTS = (dict(type='SiLU'), dict(type='SiLU', inplace=True),
                 dict(type='SiLU', inplace=False))

# mmdet backbones that have no twin, and why (checked against timm 1.0.31 and mmdet 3.3.0).
NO_TWIN = {
    'ResNet(style="caffe")': 'the stride-2 conv of each first block is the 1x1 conv1 (caffe '
                             'style); timm resnets stride the 3x3 conv2: different math',
    'ResNet(norm_cfg requires_grad=False)': 'BN affine parameters frozen outside the frozen '
                                            'stages (DINO, YOLOF); TimmBackbone trains them '
                                            "(its frozen_bn is timm's FrozenBatchNorm2d: other "
                                            'arithmetic, no num_batches_tracked)',
    'ResNet(dcn / plugins / dilations / strides)': 'no timm resnet option computes them',
    'RegNet(regnety / custom arch)': 'mmdet has RegNetX only; an arch dict that is not one of '
                                     'its named RegNetX archs has no timm model',
    'CSPNeXt(default norm_cfg / P6 / options)': 'mmdet\'s default norm_cfg is BN with eps=1e-3, '
        'momentum=0.03 (timm\'s cspnext uses torch\'s 1e-5, 0.1; RTMDet\'s configs set '
        "norm_cfg=dict(type='SyncBN'), which has the twin); arch='P6' (5 stages), "
        'use_depthwise, expand_ratio, spp_kernel_sizes, channel_attention=False, other '
        'activations or factors than tiny/s/m/l/x have no timm option',
    'MobileNetV2': 'math equal (measured: mmdet MobileNetV2 layer1..layer7 vs timm '
                   'mobilenetv2_100 levels, bit-identical in eval and train mode with the same '
                   "weights), but mmdet always builds conv2 (1x1 conv to 1280 channels, out "
                   "index 7) and timm's feature extractor drops its conv_head: the weights are "
                   'not one to one, and index 7 has no timm level',
    'EfficientNet(arch es/em/el)': "timm's tf_efficientnet_es/em (EdgeTPU) use ReLU where "
                                   "mmdet applies act_cfg (Swish by default): outputs differ by "
                                   "up to 0.14 with the same weights; el's layers do not match",
    'PyramidVisionTransformerV2': "other math: timm's pvt_v2 patch-embed and spatial-reduction "
                                  'LayerNorms have eps=1e-5 (mmdet 1e-6; measured on b0: stage '
                                  'outputs differ by up to 9e-5); with those eps set equal, '
                                  "3.8e-6 remains (mmdet's nn.MultiheadAttention vs timm's q/kv "
                                  'Linear + scaled_dot_product_attention). Weights also need '
                                  'reshaping, not renaming (in_proj -> q, kv; 1x1-conv FFN -> '
                                  'Linear)',
    'Res2Net': "other math in one op: timm's res2net50d avg-pools the last split of layer1's "
               'first block (AvgPool2d(3, stride=1, padding=1): is_first is true there because '
               "of the downsample); mmdet's v1b pools it only where conv2's stride is not 1 "
               '(measured: stage 1 differs by up to 0.27; with that one pool removed, '
               'bit-identical in eval and train mode, keys as ResNetV1d\'s)',
    'ResNeSt(other settings)': 'radix, reduction_factor, groups, base_width, '
                               'avg_down_stride other than 2, 4, 1, 4, True, depth 152, or '
                               'another (depth, stem_channels) than RESNEST_NAMES: no timm '
                               'resnest computes them',
    'HRNet(other extra / multiscale_output=False / with_cp)': 'timm has HRNets for the stage '
        'settings of hrnet_w18_small, _small_v2, w18, w30, w32, w40, w44, w48, w64 only, always '
        'with four outputs, and no gradient checkpointing',
    'SwinTransformer': "other math: mmdet applies a LayerNorm to each output (norm0..norm3, "
                       "2,880 parameters on swin-tiny that timm's features do not have), and "
                       "its patch merging orders the 2x2 neighbours' channels as nn.Unfold does "
                       "(channel-major) where timm's concatenates them by position: merge "
                       'weights would need permuting, not renaming',
    'Darknet': "other math: timm's darknet53 uses LeakyReLU(0.01), mmdet's Darknet "
               'LeakyReLU(0.1) (same layers and shapes; measured outputs off by up to 0.25 of '
               '1.8 with the same weights)',
    'CSPDarknet': "other architecture: mmdet's (YOLOX) starts with a Focus stem (space-to-depth, "
                  "12 channels) and is scaled by deepen/widen factors; timm's cspdarknet53 is "
                  "YOLOv4's",
    'SSDVGG, HourglassNet, DetectoRS_ResNet, TridentResNet': 'no timm counterpart (timm has no '
        "VGG with SSD's extra layers, no Hourglass; DetectoRS' and TridentNet's ResNets change "
        'the blocks themselves)',
}

_RESNET_DEPTHS = (18, 34, 50, 101, 152)
_BN = dict(type='BN', requires_grad=True)
# mmdet's defaults of the options a twin must agree with (ResNet; RegNet's differ, below).
_RESNET_FIXED = dict(num_stages=4, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1),
                     style='pytorch', conv_cfg=None, dcn=None,
                     stage_with_dcn=(False, False, False, False), plugins=None,
                     base_channels=64, pretrained=None)
_IGNORED = ('zero_init_residual',)  # initialisation only: weights come from the checkpoint
_CARRIED = ('frozen_stages', 'norm_eval', 'with_cp', 'in_channels', 'out_indices', 'norm_cfg',
            'init_cfg', 'type', 'depth', 'deep_stem', 'avg_down', 'stem_channels', 'groups',
            'base_width', 'arch')


# ---- configs -----------------------------------------------------------------------------------
def _type_name(cfg: Mapping) -> str:
    value = cfg.get('type')
    if not isinstance(value, str):
        raise TypeError(f'A backbone config needs a type name, got type={value!r}: pass e.g. '
                        "dict(type='ResNet', depth=50).")
    return value.split('.', 1)[1] if value.startswith('mmdet.') else value


def _check_value(kind: str, key: str, value: Any, allowed: Any, fix: str) -> None:
    norm = tuple(value) if isinstance(value, list) else value
    if norm != allowed:
        raise ValueError(f'{kind} with {key}={value!r} has no timm twin: only {key}={allowed!r} '
                         f'computes what a timm model does. {fix}')


def _norm_option(kind: str, norm_cfg: Optional[Mapping]) -> Dict[str, Any]:
    """TimmBackbone options for an mmdet norm_cfg (BN trains its affine parameters; SyncBN)."""
    norm_cfg = dict(norm_cfg or _BN)
    norm_type = norm_cfg.get('type', 'BN')
    if norm_type not in ('BN', 'SyncBN') or norm_cfg.get('requires_grad', True) is not True \
            or set(norm_cfg) - {'type', 'requires_grad'}:
        raise ValueError(f'{kind} with norm_cfg={norm_cfg!r} has no timm twin: allowed are '
                         "dict(type='BN', requires_grad=True) and dict(type='SyncBN', "
                         "requires_grad=True), with torch's eps and momentum (frozen BN affine "
                         "parameters outside the frozen stages have no TimmBackbone equivalent). "
                         "Set norm_cfg=dict(type='BN', "
                         'requires_grad=True) in the native config to compare.')
    return dict(sync_bn=True) if norm_type == 'SyncBN' else {}


def _timm_has(name: str) -> bool:
    import timm
    return name in timm.list_models()


def _native_to_timm_name(cfg: Mapping) -> Tuple[str, str]:
    """(timm model name, key rule) for a native backbone config, or a clear error."""
    kind = _type_name(cfg)
    if kind not in TWIN_TYPES:
        reason = next((why for name, why in NO_TWIN.items()
                       if kind in re.split(r'[ ,(]+', name)), None)
        raise ValueError(f'mmdet backbone type {kind!r} has no timm twin'
                         + (f' ({reason})' if reason else '')
                         + f'. Backbones with a twin: {", ".join(TWIN_TYPES)}. Use a '
                         "TimmBackbone from scratch instead (dict(type='TimmBackbone', "
                         "model_name=...)).")
    if kind in KEY_RULES:
        return twin_of(kind, cfg)[0], KEY_RULES[kind]
    if kind == 'RegNet':
        arch = cfg.get('arch')
        if isinstance(arch, Mapping):
            arch = next((name for name, value in _REGNET_ARCHS.items()
                         if dict(arch) == value), dict(arch))
        if arch not in REGNET_NAMES:
            raise ValueError(f'RegNet arch={arch!r} has no timm twin: allowed are '
                             f'{", ".join(REGNET_NAMES)} (or their arch dicts). Pick one of '
                             'them, or a TimmBackbone regnet (timm.list_models("regnet*")).')
        return REGNET_NAMES[arch], 'regnet'
    if kind == 'CSPNeXt':
        factors = (cfg.get('deepen_factor', 1.0), cfg.get('widen_factor', 1.0))
        if factors not in CSPNEXT_NAMES:
            raise ValueError(f'CSPNeXt with deepen_factor={factors[0]!r}, widen_factor='
                             f'{factors[1]!r} has no timm twin: allowed (deepen_factor, '
                             f'widen_factor) are {", ".join(map(str, CSPNEXT_NAMES))} '
                             "(RTMDet's tiny/s/m/l/x). Use one of them.")
        return CSPNEXT_NAMES[factors], 'cspnext'
    if kind == 'ResNeSt':
        for key, allowed in _RESNEST_FIXED.items():
            _check_value(kind, key, cfg.get(key, allowed), allowed, 'timm has ResNeSt twins for '
                         "mmdet's shipped settings only. Remove it from the config.")
        arch = (cfg.get('depth'), cfg.get('stem_channels') or 64)
        if arch not in RESNEST_NAMES:
            raise ValueError(f'ResNeSt with depth={arch[0]!r}, stem_channels={arch[1]!r} has no '
                             f'timm twin: allowed (depth, stem_channels) are '
                             f'{", ".join(map(str, RESNEST_NAMES))} (as mmdet\'s configs set '
                             'them). Use one of them.')
        return RESNEST_NAMES[arch], 'resnet_deep'
    depth = cfg.get('depth')
    if depth not in _RESNET_DEPTHS:
        raise ValueError(f'{kind} depth={depth!r} has no timm twin: allowed depths are '
                         f'{_RESNET_DEPTHS}.')
    deep, avg = kind == 'ResNetV1d', kind == 'ResNetV1d'
    if kind != 'ResNetV1d':
        deep, avg = bool(cfg.get('deep_stem', False)), bool(cfg.get('avg_down', False))
    if kind == 'ResNeXt':
        groups, width = cfg.get('groups', 1), cfg.get('base_width', 4)
        name = f'resnext{depth}_{groups}x{width}d'
        if deep or avg:
            raise ValueError(f'ResNeXt with deep_stem={deep}, avg_down={avg} has no timm twin: '
                             'only the plain stem (deep_stem=False, avg_down=False) is mapped.')
    elif avg and not deep:
        raise ValueError(f'{kind} with avg_down=True and deep_stem=False has no timm twin: timm '
                         'resnets with avg_down also have the deep stem (resnet*d). Set both '
                         '(ResNetV1d) or neither.')
    else:
        name = f'resnet{depth}' + ('d' if avg else 'c' if deep else '')
    if not _timm_has(name):
        raise ValueError(f'{kind} config {dict(cfg)!r} would map to timm {name!r}, which timm '
                         f'does not have. Twins exist for ' + ', '.join(TWIN_TYPES) + '.')
    return name, 'resnet_deep' if deep else 'resnet'


def _check_native(cfg: Mapping, drop_init_cfg: bool) -> None:
    """Every option of a native backbone config either carried to the twin or at its default."""
    kind = _type_name(cfg)
    if kind == 'CSPNeXt':
        _check_cspnext(cfg, drop_init_cfg)
        return
    fixed = dict(_RESNET_FIXED)
    if kind == 'RegNet':
        fixed.update(strides=(2, 2, 2, 2), base_channels=32)
    if kind == 'ResNeSt':
        fixed.update(_RESNEST_FIXED)
    for key, value in cfg.items():
        if key in _CARRIED or key in _IGNORED:
            continue
        if key not in fixed:
            raise ValueError(f'{kind} option {key}={value!r} has no TimmBackbone equivalent: '
                             f'the twin carries {", ".join(_CARRIED)} and needs '
                             f'{", ".join(fixed)} at their defaults. Remove it from the config.')
        fix = ('mmdet\'s caffe style strides the 1x1 conv; timm strides the 3x3 conv, so the '
               "math differs. Use style='pytorch' (and retrain or pytorch-style weights)."
               if key == 'style' else 'Remove it from the config.')
        _check_value(kind, key, value, fixed[key], fix)
    stem = cfg.get('stem_channels')
    allowed_stem = 32 if kind == 'RegNet' else (None, 64, 128) if kind == 'ResNeSt' \
        else (None, 64)
    if kind == 'RegNet' and stem is not None:
        _check_value(kind, 'stem_channels', stem, 32, 'Remove it from the config.')
    if kind != 'RegNet' and stem not in allowed_stem:
        raise ValueError(f'{kind} with stem_channels={stem!r} has no timm twin: allowed '
                         f'{allowed_stem}. Remove it from the config.')
    _check_init(kind, cfg, drop_init_cfg)


def _check_init(kind: str, cfg: Mapping, drop_init_cfg: bool) -> None:
    init = cfg.get('init_cfg')
    if init is not None and not drop_init_cfg:
        raise ValueError(f'{kind} init_cfg={init!r} points at mmdet-format weights, which a '
                         'TimmBackbone cannot load as they are. Convert them '
                         '(tools/convert_checkpoint.py IN OUT --to timm) and load the result '
                         "with init_cfg=dict(type='Pretrained', checkpoint=OUT, "
                         "prefix='backbone.'), or pass drop_init_cfg=True.")


_CSPNEXT_CARRIED = ('type', 'deepen_factor', 'widen_factor', 'out_indices', 'frozen_stages',
                    'norm_eval', 'norm_cfg', 'act_cfg', 'init_cfg')


def _check_cspnext(cfg: Mapping, drop_init_cfg: bool) -> None:
    """A CSPNeXt config computes what timm's cspnext does: P5, RTMDet's blocks, torch's BN."""
    for key, value in cfg.items():
        if key in _CSPNEXT_CARRIED:
            continue
        if key not in _CSPNEXT_FIXED:
            raise ValueError(f'CSPNeXt option {key}={value!r} has no TimmBackbone equivalent: '
                             f'the twin carries {", ".join(_CSPNEXT_CARRIED)} and needs '
                             f'{", ".join(_CSPNEXT_FIXED)} at their defaults. Remove it from the '
                             'config.')
        _check_value('CSPNeXt', key, value, _CSPNEXT_FIXED[key], 'Remove it from the config.')
    act = cfg.get('act_cfg', dict(type='SiLU'))
    if dict(act) not in _CSPNEXT_ACTS:
        raise ValueError(f"CSPNeXt with act_cfg={act!r} has no timm twin: timm's cspnext uses "
                         "SiLU. Set act_cfg=dict(type='SiLU') (RTMDet's configs do).")
    if 'norm_cfg' not in cfg:
        raise ValueError("CSPNeXt without norm_cfg uses mmdet's default, BN with eps=1e-3 and "
                         "momentum=0.03, which timm's cspnext (torch's eps=1e-5, momentum=0.1) "
                         "does not compute. Set norm_cfg=dict(type='SyncBN') as RTMDet's configs "
                         "do (or dict(type='BN')).")
    _check_init('CSPNeXt', cfg, drop_init_cfg)


def twin_config(backbone: Mapping, drop_init_cfg: bool = False) -> Dict[str, Any]:
    """The `TimmBackbone` config that computes what a native mmdet backbone config computes.

    mmdet's `out_indices` (0..3: strides 4..32) become timm's levels (1..4: timm counts the
    stride-2 stem output as level 0; CSPNeXt's 0..4 count the stem too and carry over as they
    are); `frozen_stages`, `norm_eval` (mmdet's default: True, CSPNeXt's False), `with_cp` and
    `in_channels` carry over; SyncBN becomes `sync_bn=True`.

    Args:
        backbone: A native backbone config (`type` one of `TWIN_TYPES`).
        drop_init_cfg: Drop the native `init_cfg` (mmdet-format weights a TimmBackbone cannot
            load as they are) instead of failing; load converted weights yourself.

    Returns:
        A new `dict(type='TimmBackbone', ...)`.

    Example:
        >>> twin_config(dict(type='ResNet', depth=50, frozen_stages=1, norm_eval=True,
        ...                  out_indices=(0, 1, 2, 3)))
        {'type': 'TimmBackbone', 'model_name': 'resnet50', 'out_indices': (1, 2, 3, 4),
         'frozen_stages': 1, 'norm_eval': True}
    """
    cfg = dict(backbone)
    kind = _type_name(cfg)
    if kind in KEY_RULES:  # HRNet, EfficientNet: twin_of checks every option
        _check_init(kind, cfg, drop_init_cfg)
        return twin_of(kind, cfg)[1]
    name, _ = _native_to_timm_name(cfg)
    _check_native(cfg, drop_init_cfg)
    # mmdet's CSPNeXt counts its stem as index 0, like timm: its indices are timm's levels
    cspnext = kind == 'CSPNeXt'
    out_indices = cfg.get('out_indices', (2, 3, 4) if cspnext else (0, 1, 2, 3))
    top = 4 if cspnext else 3
    if not all(isinstance(i, int) and 0 <= i <= top for i in out_indices):
        raise ValueError(f'{kind} out_indices={out_indices!r}: expected indices 0..{top}. '
                         'Fix the config.')
    twin = dict(type='TimmBackbone', model_name=name,
                out_indices=tuple(i + (0 if cspnext else 1) for i in out_indices),
                frozen_stages=cfg.get('frozen_stages', -1),
                norm_eval=cfg.get('norm_eval', not cspnext))  # mmdet's defaults
    if cfg.get('with_cp', False):
        twin['with_cp'] = True
    if cfg.get('in_channels', 3) != 3:
        twin['in_channels'] = cfg['in_channels']
    norm_cfg = cfg.get('norm_cfg')
    if cspnext and norm_cfg is not None and 'requires_grad' not in norm_cfg:
        norm_cfg = dict(norm_cfg, requires_grad=True)  # mmcv's default
    twin.update(_norm_option(kind, norm_cfg))
    return twin


def native_config(backbone: Union[str, Mapping]) -> Dict[str, Any]:
    """The native mmdet backbone config whose twin is a `TimmBackbone` config (or model name).

    Args:
        backbone: `dict(type='TimmBackbone', model_name=..., ...)` or a bare timm model name
            (`'resnet50'`, `'resnext101_32x4d'`, `'regnetx_032'`, `'resnet50d'`).

    Returns:
        A new native config, e.g. `dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3),
        frozen_stages=-1, norm_eval=False, style='pytorch')`.
    """
    cfg = dict(type='TimmBackbone', model_name=backbone) if isinstance(backbone, str) \
        else dict(backbone)
    kind = _type_name(cfg)
    if kind.startswith('timm.'):
        cfg['model_name'], kind = kind[5:], 'TimmBackbone'
    if kind != 'TimmBackbone':
        raise ValueError(f'native_config expects a TimmBackbone config or a timm model name, '
                         f'got type={kind!r}. For native configs use twin_config.')
    native_twin = native_of(str(cfg['model_name']), cfg)  # HRNet, EfficientNet
    if native_twin is not None:
        return native_twin
    allowed = ('type', 'model_name', 'out_indices', 'frozen_stages', 'norm_eval', 'with_cp',
               'in_channels', 'sync_bn', 'pretrained')
    extra = [k for k in cfg if k not in allowed]
    if extra:
        raise ValueError(f'TimmBackbone option(s) {extra} have no native mmdet equivalent; a '
                         f'twin carries only {", ".join(allowed)}. Remove them to convert.')
    name = str(cfg['model_name']).split('.', 1)[0]
    native: Dict[str, Any]
    match = re.fullmatch(r'resnet(\d+)([cd]?)', name)
    resnext = re.fullmatch(r'resnext(\d+)_(\d+)x(\d+)d', name)
    regnet = {v: k for k, v in REGNET_NAMES.items()}.get(name)
    cspnext = {v: k for k, v in CSPNEXT_NAMES.items()}.get(name)
    resnest = {v: k for k, v in RESNEST_NAMES.items()}.get(name)
    if cspnext:
        native = dict(type='CSPNeXt', arch='P5', deepen_factor=cspnext[0],
                      widen_factor=cspnext[1], norm_cfg=dict(type='BN'),
                      act_cfg=dict(type='SiLU'))
        levels = tuple(cfg.get('out_indices', (2, 3, 4)))
        if not all(isinstance(i, int) and 0 <= i <= 4 for i in levels):
            raise ValueError(f'TimmBackbone out_indices={levels!r}: a native CSPNeXt returns '
                             'levels 0..4 (strides 2..32). Fix out_indices.')
        native.update(out_indices=levels, frozen_stages=cfg.get('frozen_stages', -1),
                      norm_eval=cfg.get('norm_eval', False))
        if cfg.get('with_cp') or cfg.get('in_channels', 3) != 3:
            raise ValueError(f"TimmBackbone {name!r} with with_cp or in_channels != 3 has no "
                             "native twin: mmdet's CSPNeXt has neither option. Remove them.")
        if cfg.get('sync_bn'):
            native['norm_cfg'] = dict(type='SyncBN')
        return native
    if match:
        depth, variant = int(match.group(1)), match.group(2)
        native = dict(type='ResNetV1d' if variant == 'd' else 'ResNet', depth=depth)
        if variant == 'c':
            native['deep_stem'] = True
    elif resnext:
        native = dict(type='ResNeXt', depth=int(resnext.group(1)), groups=int(resnext.group(2)),
                      base_width=int(resnext.group(3)))
    elif regnet:
        native = dict(type='RegNet', arch=regnet)
    elif resnest:
        native = dict(type='ResNeSt', depth=resnest[0], stem_channels=resnest[1])
    else:
        raise ValueError(f'timm model {name!r} has no native mmdet twin: twins are resnet{{18,34,'
                         f'50,101,152}}[c|d], resnext*_*x*d, {", ".join(REGNET_NAMES.values())}, '
                         f'{", ".join(RESNEST_NAMES.values())}, '
                         f'{", ".join(CSPNEXT_NAMES.values())}, hrnet_w* (with '
                         "model_kwargs=dict(feature_location='')), tf_efficientnet_b0..b8 and "
                         'efficientnet_b0..b8.')
    levels = tuple(cfg.get('out_indices', (1, 2, 3, 4)))
    if not all(isinstance(i, int) and 1 <= i <= 4 for i in levels):
        raise ValueError(f'TimmBackbone out_indices={levels!r}: a native twin returns only '
                         'levels 1..4 (strides 4..32). Fix out_indices.')
    native.update(out_indices=tuple(i - 1 for i in levels),
                  frozen_stages=cfg.get('frozen_stages', -1),
                  norm_eval=cfg.get('norm_eval', False))
    if native['type'] != 'RegNet':
        native['style'] = 'pytorch'
    if cfg.get('with_cp'):
        native['with_cp'] = True
    if cfg.get('in_channels', 3) != 3:
        native['in_channels'] = cfg['in_channels']
    if cfg.get('sync_bn'):
        native['norm_cfg'] = dict(type='SyncBN', requires_grad=True)
    _native_to_timm_name(native)  # timm has it
    return native


def _pair(arch: Union[str, Mapping]) -> Tuple[Dict[str, Any], Dict[str, Any], str]:
    """(native config, twin config, key rule) for any form of `arch`."""
    if isinstance(arch, str) or _type_name(arch) == 'TimmBackbone' \
            or _type_name(arch).startswith('timm.'):
        native = native_config(arch)
    else:
        native = dict(arch)
    for key in ('init_cfg', 'pretrained', 'drop_path_rate'):  # no keys (and .item() on meta)
        native.pop(key, None)
    twin = twin_config(native)
    _, rule = _native_to_timm_name(native)
    twin.pop('sync_bn', None)  # key names are those of BN
    native.pop('norm_cfg', None)
    if rule == 'cspnext':
        native['norm_cfg'] = dict(type='BN')
    return native, twin, rule


# ---- key names ---------------------------------------------------------------------------------
_DEEP_STEM = {'0': 'conv1.0', '1': 'conv1.1', '3': 'conv1.3', '4': 'conv1.4', '6': 'conv1.6',
              '7': 'bn1'}


def _timm_key(native_key: str, rule: str) -> str:
    """The TimmBackbone key (without `model.`) of a native backbone key."""
    if rule == 'resnet_deep':
        match = re.match(r'stem\.(\d+)\.(.*)', native_key)
        if match and match.group(1) in _DEEP_STEM:
            return f'{_DEEP_STEM[match.group(1)]}.{match.group(2)}'
    if rule == 'cspnext':  # timm's features getter wraps the model once more
        return 'model.' + re.sub(r'^stage(\d+)\.',
                                 lambda m: f'stages.{int(m.group(1)) - 1}.', native_key)
    if rule == 'regnet':
        if native_key.startswith(('conv1.', 'bn1.')):
            return 'stem.' + ('conv.' if native_key.startswith('conv1.') else 'bn.') \
                + native_key.split('.', 1)[1]
        match = re.match(r'layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.*)', native_key)
        if match:
            stage, block, part, num, rest = match.groups()
            return f's{stage}.b{int(block) + 1}.conv{num}.{"conv" if part == "conv" else "bn"}' \
                f'.{rest}'
        match = re.match(r'layer(\d)\.(\d+)\.downsample\.([01])\.(.*)', native_key)
        if match:
            stage, block, index, rest = match.groups()
            return f's{stage}.b{int(block) + 1}.downsample.{"conv" if index == "0" else "bn"}' \
                f'.{rest}'
    return native_key  # resnet, HRNet: timm kept the original (= mmdet's) names


def _shapes(module: torch.nn.Module) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


_KEY_MAPS = Memo('convert key maps', size=32, failures=(KeyError, ValueError, TypeError))


def _rows(arch: Union[str, Mapping]) -> Tuple[Tuple[str, str, Tuple[int, ...]], ...]:
    """(native key, TimmBackbone key, shape) of every backbone tensor, memoized per arch."""
    return _KEY_MAPS.get(_frozen_repr(arch), lambda: _build_rows(arch))


def _build_rows(arch: Union[str, Mapping]) -> Tuple[Tuple[str, str, Tuple[int, ...]], ...]:
    import mmdet.models  # noqa: F401  (registers the backbones)
    from mmdet.registry import MODELS

    from ._backbone import TimmBackbone
    native_cfg, twin_cfg, rule = _pair(arch)
    # mmdet's EfficientNet calls .item() while building: built on the CPU (a second at most)
    with contextlib.nullcontext() if rule == 'position' else torch.device('meta'):
        native = MODELS.build(copy.deepcopy(native_cfg))
    with torch.device('meta'):
        twin = TimmBackbone(**{k: v for k, v in twin_cfg.items() if k != 'type'})
    native_shapes, twin_shapes = _shapes(native), _shapes(twin)
    if rule == 'position':  # EfficientNet: the same tensors in the same order, other names
        return _rows_by_position(native_shapes, twin_shapes, twin_cfg['model_name'])
    rows = []
    for key, shape in native_shapes.items():
        target = 'model.' + _timm_key(key, rule)
        if target not in twin_shapes:
            raise KeyError(f'internal: native key {key!r} maps to {target!r}, which '
                           f'TimmBackbone {twin_cfg["model_name"]!r} does not have')
        if twin_shapes[target] != shape:
            raise ValueError(f'internal: native {key!r} {shape} vs twin {target!r} '
                             f'{twin_shapes[target]}')
        rows.append((key, target, shape))
    left = set(twin_shapes) - {target for _, target, _ in rows}
    if left:
        raise KeyError(f'internal: TimmBackbone keys {sorted(left)[:5]} have no native key '
                       f'in {native_cfg!r}')
    return tuple(rows)


def _rows_by_position(native: Dict[str, Tuple[int, ...]], twin: Dict[str, Tuple[int, ...]],
                      name: str) -> Tuple[Tuple[str, str, Tuple[int, ...]], ...]:
    """Rows pairing keys in registration order: as many, each pair of equal shape and kind."""
    if len(native) != len(twin):
        raise KeyError(f'internal: the native backbone has {len(native)} tensors, TimmBackbone '
                       f'{name!r} {len(twin)}')
    rows = []
    for (key, shape), (target, twin_shape) in zip(native.items(), twin.items()):
        if shape != twin_shape or key.rsplit('.', 1)[-1] != target.rsplit('.', 1)[-1]:
            raise ValueError(f'internal: native {key!r} {shape} vs twin {target!r} {twin_shape}')
        rows.append((key, target, shape))
    return tuple(rows)


def _frozen_repr(arch: Union[str, Mapping]) -> str:
    if isinstance(arch, str):
        return repr(arch)
    return repr({k: (tuple(v) if isinstance(v, list) else
                     dict(v) if isinstance(v, Mapping) else v) for k, v in dict(arch).items()})


def key_map(arch: Union[str, Mapping]) -> Dict[str, str]:
    """Native backbone key -> TimmBackbone key (`model.` included, detector prefix excluded).

    Derived by building both on the meta device, checked one to one with equal shapes.

    Args:
        arch: A native backbone config, a TimmBackbone config, or a timm model name.

    Example:
        >>> key_map('resnet50d')['stem.7.weight']
        'model.bn1.weight'
    """
    return OrderedDict((n, t) for n, t, _ in _rows(arch))


def convert_state_dict(state_dict: Mapping[str, Any], to: str,
                       arch: Union[str, Mapping], prefix: str = 'backbone.') -> 'OrderedDict':
    """A detector (or backbone) state dict with its backbone keys renamed for the other side.

    Keys not under `prefix` pass through; tensors are not copied. Every backbone key must be
    one the source backbone has, with its shape, and every such key must be present.

    Args:
        state_dict: The detector's state dict (`checkpoint['state_dict']`).
        to: `'timm'` (native keys -> TimmBackbone keys) or `'mmdet'` (back).
        arch: The native backbone config, the TimmBackbone config, or the timm model name.
        prefix: Where the backbone sits in `state_dict` (`''` for a bare backbone).

    Returns:
        A new OrderedDict in the input's key order.

    Example:
        >>> sd = convert_state_dict(ckpt['state_dict'], 'timm', arch=cfg.model.backbone)
    """
    if to not in ('timm', 'mmdet'):
        raise ValueError(f"to={to!r}: expected 'timm' (native mmdet backbone -> TimmBackbone) or "
                         "'mmdet' (TimmBackbone -> native).")
    rows = _rows(arch)
    if to == 'timm':
        table = {n: (t, s) for n, t, s in rows}
        other = {t for _, t, _ in rows}
        source, target = 'the native mmdet backbone', 'TimmBackbone'
    else:
        table = {t: (n, s) for n, t, s in rows}
        other = {n for n, _, _ in rows}
        source, target = 'TimmBackbone', 'the native mmdet backbone'
    out: 'OrderedDict[str, Any]' = OrderedDict()
    seen = set()
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        rest = key[len(prefix):]
        if rest not in table:
            hint = (f' It is a {target} key already: the state dict looks converted; use '
                    f"to={'mmdet' if to == 'timm' else 'timm'!r} or leave it as it is."
                    if rest in other else
                    f' Expected keys like {prefix}{next(iter(table))!r}; check arch= (the '
                    f'backbone config the checkpoint was trained with) and prefix=.')
            raise KeyError(f'{key!r} is not a key of {source} {_arch_name(arch)}.{hint}')
        new, shape = table[rest]
        got = tuple(getattr(value, 'shape', ()))
        if got != shape:
            raise ValueError(f'{key!r} has shape {got}, but {source} {_arch_name(arch)} expects '
                             f'{shape}. The checkpoint is of another architecture: fix arch=.')
        out[prefix + new] = value
        seen.add(rest)
    missing = [k for k in table if k not in seen]
    if missing:
        raise KeyError(f'{len(missing)} key(s) of {source} {_arch_name(arch)} are missing from '
                       f'the state dict, e.g. {prefix + missing[0]!r}. Check prefix={prefix!r} '
                       'and arch=.')
    return out


def _arch_name(arch: Union[str, Mapping]) -> str:
    return repr(arch) if isinstance(arch, str) else repr(dict(arch))
