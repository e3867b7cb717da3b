"""Twins whose configs are not ResNet-like: mmdet's `HRNet` and `EfficientNet` (for `convert`).

- `HRNet` with one of timm's HRNet `extra` settings (w18_small, w18_small_v2, w18 ... w64) is
  timm's `hrnet_*` with `feature_location=''`: timm's plain branch outputs (its default,
  `'incre'`, adds the classification head's bottlenecks: other maps, other weights). The keys
  are the same names; outputs, BN statistics and gradients bit-identical (eval and train).
- `EfficientNet` b0..b8 is timm's `tf_efficientnet_b*` with mmdet's default TF-"same" padding
  (`Conv2dAdaptivePadding`), or `efficientnet_b*` with `conv_cfg=None`; BN eps and momentum
  carried as timm's `bn_eps` / `bn_momentum`. mmdet groups the same blocks into 7 layers
  (layer 0 the stem; layers 4 and 5 each join two of timm's stages), so keys map by position.
  mmdet's `Swish` computes x * sigmoid(x) in two ops, timm's `SiLU` in one: outputs differ by
  float rounding only (measured up to 3e-6 at stride 32 on b3 in train mode; 0 with mmdet's Swish
  replaced by `nn.SiLU`). mmdet spaces stochastic depth as linspace(0, rate, N), timm as
  rate * i / N: with `drop_path_rate > 0`, training draws other per-block rates.
"""
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ['HRNET_NAMES', 'EFFICIENTNET_ARCHS', 'twin_of', 'native_of', 'KEY_RULES']

HRNET_NAMES = ('hrnet_w18_small', 'hrnet_w18_small_v2', 'hrnet_w18', 'hrnet_w30', 'hrnet_w32',
               'hrnet_w40', 'hrnet_w44', 'hrnet_w48', 'hrnet_w64')
EFFICIENTNET_ARCHS = ('b0', 'b1', 'b2', 'b3', 'b4', 'b5', 'b6', 'b7', 'b8')
KEY_RULES = {'HRNet': 'same', 'EfficientNet': 'position'}
_STAGES = ('stage1', 'stage2', 'stage3', 'stage4')
_STAGE_KEYS = ('num_modules', 'num_branches', 'block', 'num_blocks', 'num_channels')
_SAME_PAD = 'Conv2dAdaptivePadding'
_SWISH = ('Swish', 'SiLU')
_HRNET_OPTIONS = dict(conv_cfg=None, multiscale_output=True, with_cp=False, pretrained=None)
_EFF_OPTIONS = dict(with_cp=False)
# every option of mmdet's HRNet / EfficientNet (3.3.0): carried, checked above, or ignored
_KNOWN = dict(HRNet=('type', 'extra', 'in_channels', 'conv_cfg', 'norm_cfg', 'norm_eval',
                     'with_cp', 'zero_init_residual', 'multiscale_output', 'pretrained',
                     'init_cfg'),
              EfficientNet=('type', 'arch', 'drop_path_rate', 'out_indices', 'frozen_stages',
                            'conv_cfg', 'norm_cfg', 'act_cfg', 'norm_eval', 'with_cp',
                            'init_cfg'))


def _fail(kind: str, key: str, value: Any, allowed: str, fix: str) -> None:
    raise ValueError(f'{kind} with {key}={value!r} has no timm twin: {allowed}. {fix}')


def _norm(kind: str, norm_cfg: Optional[Mapping], default_eps: float
          ) -> Tuple[Dict[str, Any], float, float]:
    """(TimmBackbone options, eps, momentum) of an mmdet BN/SyncBN norm_cfg."""
    norm_cfg = dict(norm_cfg or {})
    kind_ok = norm_cfg.get('type', 'BN') in ('BN', 'SyncBN')
    if not kind_ok or norm_cfg.get('requires_grad', True) is not True \
            or set(norm_cfg) - {'type', 'requires_grad', 'eps', 'momentum'}:
        _fail(kind, 'norm_cfg', norm_cfg, "allowed are dict(type='BN' or 'SyncBN') with "
              'requires_grad=True (frozen BN affine parameters have no TimmBackbone equivalent)',
              "Use norm_cfg=dict(type='BN') or dict(type='SyncBN').")
    options = dict(sync_bn=True) if norm_cfg.get('type') == 'SyncBN' else {}
    return options, float(norm_cfg.get('eps', default_eps)), float(norm_cfg.get('momentum', 0.1))


def _hrnet_extra(name: str) -> Dict[str, Any]:
    from timm.models.hrnet import cfg_cls
    cfg = cfg_cls[name]
    return {stage: dict(num_modules=cfg[stage]['num_modules'],
                        num_branches=cfg[stage]['num_branches'],
                        block=cfg[stage]['block_type'],
                        num_blocks=tuple(cfg[stage]['num_blocks']),
                        num_channels=tuple(cfg[stage]['num_channels']))
            for stage in _STAGES}


def _normal_extra(extra: Any) -> Any:
    if not isinstance(extra, Mapping):
        return extra
    return {stage: {k: tuple(v) if isinstance(v, list) else v
                    for k, v in dict(extra[stage]).items() if k in _STAGE_KEYS}
            for stage in _STAGES if stage in extra}


def _hrnet_twin(cfg: Mapping) -> Tuple[str, Dict[str, Any]]:
    extra = _normal_extra(cfg.get('extra'))
    name = next((n for n in HRNET_NAMES if _hrnet_extra(n) == extra), None)
    if name is None:
        _fail('HRNet', 'extra', cfg.get('extra'), 'only the stage settings of timm\'s '
              + ', '.join(HRNET_NAMES) + ' have one', 'Use one of them (e.g. '
              "mmdet's hrnetv2p-w18/w32/w40 configs).")
    for key, allowed in _HRNET_OPTIONS.items():
        if cfg.get(key, allowed) != allowed:
            _fail('HRNet', key, cfg[key], f'only {key}={allowed!r} computes what timm does'
                  + (" (timm's HRNet has no gradient checkpointing)" if key == 'with_cp' else ''),
                  'Remove it from the config.')
    twin = dict(type='TimmBackbone', model_name=name, out_indices=(1, 2, 3, 4),
                frozen_stages=-1, norm_eval=cfg.get('norm_eval', True),
                model_kwargs=dict(feature_location=''))
    norm_options, eps, momentum = _norm('HRNet', cfg.get('norm_cfg'), 1e-5)
    twin.update(norm_options)
    if (eps, momentum) != (1e-5, 0.1):
        _fail('HRNet', 'norm_cfg', cfg.get('norm_cfg'), "timm's HRNet uses torch's BN eps 1e-5 "
              'and momentum 0.1', 'Remove eps and momentum from norm_cfg.')
    return name, twin


def _efficientnet_twin(cfg: Mapping) -> Tuple[str, Dict[str, Any]]:
    arch = cfg.get('arch', 'b0')
    if arch not in EFFICIENTNET_ARCHS:
        _fail('EfficientNet', 'arch', arch, f'allowed are {", ".join(EFFICIENTNET_ARCHS)} (the '
              "EdgeTPU archs es/em/el differ: timm's tf_efficientnet_es/em use ReLU where "
              "mmdet applies act_cfg, Swish by default, measured outputs off by up to 0.14; "
              "el's layers do not match)", 'Use a b* arch.')
    conv = cfg.get('conv_cfg', dict(type=_SAME_PAD))
    conv_type = conv.get('type') if isinstance(conv, Mapping) else conv
    if conv_type not in (_SAME_PAD, None) or (isinstance(conv, Mapping) and len(conv) > 1):
        _fail('EfficientNet', 'conv_cfg', conv, f"allowed are dict(type='{_SAME_PAD}') (TF "
              "'same' padding: timm's tf_efficientnet_*) and None (symmetric padding: timm's "
              'efficientnet_*)', 'Use one of them.')
    act = dict(cfg.get('act_cfg', dict(type='Swish')))
    if act.get('type') not in _SWISH or set(act) - {'type', 'inplace'}:
        _fail('EfficientNet', 'act_cfg', act, "timm's EfficientNet uses SiLU (Swish)",
              "Use act_cfg=dict(type='Swish').")
    for key, allowed in _EFF_OPTIONS.items():
        if cfg.get(key, allowed) != allowed:
            _fail('EfficientNet', key, cfg[key], f'only {key}={allowed!r} is mapped',
                  'Remove it from the config.')
    out_indices = tuple(cfg.get('out_indices', (6,)))
    if not all(isinstance(i, int) and 1 <= i <= 5 for i in out_indices) \
            or max(out_indices) != 5:
        _fail('EfficientNet', 'out_indices', out_indices, 'indices must be in 1..5 and include '
              "5: index 0 (the stem conv) and 6 (the 1x1 conv to 1280 channels) have no level "
              "in timm's feature extractor, and mmdet builds no layer after the largest index "
              "while timm keeps them all (the weights would not be one to one)",
              'Use e.g. out_indices=(3, 4, 5) (strides 8, 16, 32).')
    frozen = cfg.get('frozen_stages', 0)
    if frozen == 1 or not isinstance(frozen, int) or not 0 <= frozen <= 6:
        _fail('EfficientNet', 'frozen_stages', frozen, 'allowed are 0 and 2..6 (mmdet freezes '
              "layers 0..k-1; TimmBackbone's stem holds the stem conv and timm's stride-2 "
              'blocks.0 together, so freezing the stem conv alone has no equivalent)',
              'Use 0 (nothing) or 2 (the stem and the stride-2 layer) or more.')
    norm_options, eps, momentum = _norm('EfficientNet', cfg.get('norm_cfg', dict(eps=1e-3)),
                                        1e-5)
    name = ('tf_efficientnet_' if conv_type == _SAME_PAD else 'efficientnet_') + arch
    twin = dict(type='TimmBackbone', model_name=name,
                out_indices=tuple(i - 1 for i in out_indices),
                frozen_stages=frozen - 2 if frozen >= 2 else -1,
                norm_eval=cfg.get('norm_eval', False),
                model_kwargs=dict(bn_eps=eps, bn_momentum=momentum))
    if cfg.get('drop_path_rate', 0.0):
        twin['drop_path_rate'] = cfg['drop_path_rate']
    twin.update(norm_options)
    return name, twin


def twin_of(kind: str, cfg: Mapping) -> Tuple[str, Dict[str, Any]]:
    """(timm name, TimmBackbone config) of an mmdet `HRNet` / `EfficientNet` config."""
    unknown = [k for k in cfg if k not in _KNOWN[kind]]
    if unknown:
        raise ValueError(f'{kind} option(s) {unknown} are not options of mmdet\'s {kind} '
                         f'(it takes {", ".join(_KNOWN[kind])}). Fix the config.')
    name, twin = (_hrnet_twin if kind == 'HRNet' else _efficientnet_twin)(cfg)
    if cfg.get('in_channels', 3) != 3:
        twin['in_channels'] = cfg['in_channels']
    return name, twin


def _check_options(name: str, cfg: Mapping, allowed_kwargs: Dict[str, Any]) -> None:
    allowed = ('type', 'model_name', 'out_indices', 'frozen_stages', 'norm_eval', 'in_channels',
               'sync_bn', 'pretrained', 'model_kwargs', 'drop_path_rate')
    extra = [k for k in cfg if k not in allowed]
    kwargs = dict(cfg.get('model_kwargs') or {})
    bad = {k: v for k, v in kwargs.items() if k not in allowed_kwargs}
    if extra or bad:
        raise ValueError(f'TimmBackbone {name!r} option(s) {extra + list(bad)} have no native '
                         f'mmdet equivalent; a twin carries only {", ".join(allowed)} and '
                         f'model_kwargs {", ".join(allowed_kwargs) or "(none)"}. Remove them '
                         'to convert.')


def native_of(name: str, cfg: Mapping) -> Optional[Dict[str, Any]]:
    """The native mmdet config of a TimmBackbone `cfg` of timm model `name`, or None if `name`
    is neither an HRNet nor an EfficientNet twin."""
    base = name.split('.', 1)[0]
    kwargs = dict(cfg.get('model_kwargs') or {})
    native: Dict[str, Any]
    if base in HRNET_NAMES:
        _check_options(base, cfg, dict(feature_location=''))
        if kwargs.get('feature_location') != '':
            raise ValueError(f"TimmBackbone {base!r} without model_kwargs=dict(feature_location="
                             "'') returns timm's 'incre' features (the classification head's "
                             "bottlenecks: other maps and weights than mmdet's HRNet), which "
                             "have no native twin. The twin is dict(type='TimmBackbone', "
                             f"model_name={base!r}, out_indices=(1, 2, 3, 4), model_kwargs="
                             "dict(feature_location='')).")
        if tuple(cfg.get('out_indices') or ()) != (1, 2, 3, 4) or cfg.get('frozen_stages', -1) \
                != -1 or cfg.get('drop_path_rate'):
            raise ValueError(f'TimmBackbone {base!r}: mmdet\'s HRNet returns exactly levels '
                             '1..4 and has no frozen_stages or drop path; set out_indices=(1, '
                             '2, 3, 4), frozen_stages=-1 and no drop_path_rate to convert.')
        native = dict(type='HRNet', extra=_hrnet_extra(base),
                      norm_eval=cfg.get('norm_eval', False))
        if cfg.get('sync_bn'):
            native['norm_cfg'] = dict(type='SyncBN', requires_grad=True)
    else:
        prefix = 'tf_efficientnet_' if base.startswith('tf_') else 'efficientnet_'
        arch = base[len(prefix):] if base.startswith(prefix) else None
        if arch not in EFFICIENTNET_ARCHS:
            return None
        _check_options(base, cfg, dict(bn_eps=None, bn_momentum=None))
        levels = tuple(cfg.get('out_indices') or range(5))  # TimmBackbone's default: all
        if not all(isinstance(i, int) and 0 <= i <= 4 for i in levels) \
                or max(levels) != 4:
            raise ValueError(f'TimmBackbone {base!r} out_indices={levels!r}: a native '
                             'EfficientNet twin needs levels in 0..4 including 4 (mmdet builds '
                             'no layers after its largest index). Fix out_indices.')
        frozen = cfg.get('frozen_stages', -1)
        native = dict(type='EfficientNet', arch=arch, out_indices=tuple(i + 1 for i in levels),
                      frozen_stages=frozen + 2 if frozen >= 0 else 0,
                      norm_eval=cfg.get('norm_eval', False), act_cfg=dict(type='Swish'),
                      norm_cfg=dict(type='SyncBN' if cfg.get('sync_bn') else 'BN',
                                    requires_grad=True,
                                    eps=kwargs.get('bn_eps', 1e-3 if prefix[:3] == 'tf_'
                                                   else 1e-5),
                                    momentum=kwargs.get('bn_momentum', 0.1)))
        native['conv_cfg'] = dict(type=_SAME_PAD) if prefix[:3] == 'tf_' else None
        if cfg.get('drop_path_rate'):
            native['drop_path_rate'] = cfg['drop_path_rate']
    if cfg.get('in_channels', 3) != 3:
        native['in_channels'] = cfg['in_channels']
    return native
