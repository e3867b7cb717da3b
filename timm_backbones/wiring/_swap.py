"""Swapping a detector's backbone for a timm model: `swap_backbone` (a whole config, one arch),
`swap_marked` (backbones marked `timm=ARCH`, e.g. by `--cfg-options model.backbone.timm=ARCH`)
and `swap_config_text` (a config file a user can keep, inheriting the original).

The new backbone feeds the strides the old one fed: the old backbone is built on the meta device
(no weights) and run on a meta image, so any mmdet backbone (ResNet, Swin, PVT, RegNet, HRNet,
EfficientNet, CSPNeXt, ...) tells its own output strides; the timm levels are matched to them by
stride (`feature_info`), and a plain (same-stride) model gets a simple pyramid with those strides.
Every field `resolve_config` derives becomes `'auto'` (the first neck's `in_channels`, heads fed
by the backbone directly, `data_preprocessor` mean/std and `pad_size_divisor`); what carries over
keeps its meaning (`frozen_stages`, `norm_eval`, `with_cp`, SyncBN, frozen BN, `pretrained`), and
what cannot (DCN, plugins, caffe style, other norms) is said in one line each.
"""
import copy
import os
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple, Union

from mmengine.config import Config
from mmengine.logging import print_log

from .._configs import timm_model_name, to_plain, type_name
from .._meta_ops import on_meta
from .._plan import plan_backbone, plan_from_config
from .._timm import check_model_name
from ._heads import DENSE_HEADS
from ._necks import NECKS, neck_configs

__all__ = ['SwapResult', 'swap_backbone', 'swap_marked', 'has_swap_mark', 'swap_config_text',
           'backbone_strides', 'SWAP_KEY', 'config_file']

SWAP_KEY = 'timm'  # `model.backbone.timm=ARCH`: swap this backbone for the timm model ARCH
_DET_SCOPE = 'mmdet'
_META_SIZE = 512  # side of the meta image the old backbone is run on (a multiple of 128)
_CPU_SIZE = 256  # the same on CPU, for backbones that cannot be built on meta
# mmdet backbones whose out_indices i feed stride 4 * 2**i, for backbones that cannot be built
# here (e.g. `mmpretrain.ConvNeXt` without mmpretrain installed).
_RESNET_LIKE = ('ResNet', 'ResNetV1d', 'ResNeXt', 'Res2Net', 'ResNeSt', 'RegNet',
                'DetectoRS_ResNet', 'DetectoRS_ResNeXt', 'SwinTransformer', 'ConvNeXt',
                'PyramidVisionTransformer', 'PyramidVisionTransformerV2')
# Old keys whose meaning TimmBackbone shares, carried as they are.
_CARRIED = ('frozen_stages', 'norm_eval', 'with_cp', 'in_channels', 'drop_path_rate')
# TimmBackbone options written next to `timm=ARCH` are the user's and kept.
_TIMM_ONLY = ('output_stride', 'model_kwargs', 'input_size', 'pyramid', 'pyramid_channels',
              'frozen_bn', 'sync_bn', 'channels_last', 'compile')
_NOT_CARRIED = {
    'dcn': "deformable convolutions (dcn/stage_with_dcn) are mmdet ResNet layers; the timm "
           "model's convolutions stay plain",
    'plugins': "ResNet plugins (e.g. GCNet context blocks) are inserted into mmdet's ResNet "
               "stages; the timm model has none",
}


def config_file(source: Union[str, Path]) -> str:
    """The file of a config path or a `package::name` (e.g. `mmdet::retinanet/x.py`, the
    config shipped in the installed package; mmengine resolves such names only in `_base_`).

    Raises:
        FileNotFoundError: The file is not there (the message says where it looked).

    Example:
        >>> config_file('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')  # doctest: +SKIP
        '.../site-packages/mmdet/.mim/configs/retinanet/retinanet_r50_fpn_1x_coco.py'
    """
    text = str(source)
    if '::' not in text:
        if not Path(text).is_file():
            raise FileNotFoundError(f'no config file {text!r}')
        return text
    package, name = text.split('::', 1)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f'{text!r}: the package {package!r} is not installed')
    path = Path(spec.submodule_search_locations[0]) / '.mim' / 'configs' / name
    if not path.is_file():
        raise FileNotFoundError(f'{text!r}: no such config in the installed {package} '
                                f'(looked for {path}); folder names are as in its configs/ '
                                f'(e.g. mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py)')
    return str(path)


@dataclass(frozen=True)
class SwapResult:
    """A swapped config and what the swap did, one line per decision.

    Args:
        config: The config with its backbone(s) replaced (not yet resolved: fields are 'auto').
        notes: One line each: the levels chosen, what was carried over, what was not.
    """
    config: Union[Config, dict]
    notes: Tuple[str, ...]


def _model_class(kind: Any) -> Optional[type]:
    if isinstance(kind, type):
        return kind
    if not isinstance(kind, str):
        return None
    scope, _, name = kind.rpartition('.')
    try:
        models = importlib.import_module(f'{scope or _DET_SCOPE}.registry').MODELS
        found = models.get(name if scope else kind)
    except (ImportError, KeyError):
        return None
    return found if isinstance(found, type) else None


def backbone_strides(backbone: Mapping[str, Any]) -> Tuple[int, ...]:
    """The output strides of a backbone config, in output order, without weights: timm backbones
    from their plan; others built on the meta device and run on a meta image (DCN and plugins,
    which do not change strides, are left out of that build), or for ResNet-like types from
    `out_indices` (stride 4 * 2**i).

    Args:
        backbone: A backbone config dict.

    Raises:
        ValueError: The strides cannot be told (the message says why and what to do).

    Example:
        >>> backbone_strides(dict(type='ResNet', depth=50, out_indices=(1, 2, 3)))
        (8, 16, 32)
    """
    if timm_model_name(backbone) is not None:
        return tuple(s.stride for s in plan_from_config(backbone).specs)
    cfg = {k: copy.deepcopy(v) for k, v in backbone.items()
           if k not in ('type', 'dcn', 'stage_with_dcn', 'plugins', 'init_cfg', 'pretrained',
                        SWAP_KEY)}
    cls = _model_class(backbone.get('type'))
    error: Optional[Exception] = None
    if cls is not None:
        for meta in (True, False):  # a few backbones cannot be built on meta (`.item()`)
            try:
                return _run_strides(cls, cfg, meta)
            except Exception as err:  # noqa: BLE001 - any failure falls back to the next way
                error = err
    if type_name(backbone) in _RESNET_LIKE:
        indices = to_plain(backbone.get('out_indices', (0, 1, 2, 3)))
        return tuple(4 * 2 ** int(i) for i in indices)
    why = (f'building it on the meta device failed ({type(error).__name__}: {error})'
           if error is not None else f"its type {backbone.get('type')!r} is not in mmdet's "
           f'registry (a package custom_imports must import?)')
    raise ValueError(
        f'cannot tell the output strides of the backbone {type_name(backbone)!r}: {why}. Swap by '
        f"hand: type='TimmBackbone', model_name=..., out_indices chosen by stride, and the "
        f"neck's in_channels='auto'.")


def _run_strides(cls: type, cfg: Dict[str, Any], meta: bool) -> Tuple[int, ...]:
    """Build `cls(**cfg)` (on the meta device, or on CPU with weights) and run it in eval mode
    on one image; the strides are the image side over each output's height."""
    import contextlib

    import torch
    side = _META_SIZE if meta else _CPU_SIZE
    with (on_meta() if meta else contextlib.nullcontext()), torch.no_grad():
        model = cls(**cfg)
        model.eval()
        outs = model(torch.zeros(1, cfg.get('in_channels', 3), side, side,
                                 device='meta' if meta else 'cpu'))
    outs = outs if isinstance(outs, (list, tuple)) else (outs,)
    return tuple(int(round(side / o.shape[-2])) for o in outs)


def _levels_for(arch: str, strides: Sequence[int], backbone_path: str
                ) -> Tuple[Dict[str, Any], str]:
    """TimmBackbone shape options feeding `strides`, and a line saying so."""
    plan = plan_backbone(arch)
    levels = plan.levels
    available = sorted({lv.stride for lv in levels})
    if len(available) == 1:  # a plain model: its simple pyramid makes the strides
        return ({'pyramid_strides': list(strides)},
                f'{backbone_path}: {arch!r} is a plain model (every level stride '
                f'{available[0]}): its simple pyramid feeds strides {list(strides)}')
    indices = []
    for stride in strides:
        found = [i for i, lv in enumerate(levels) if lv.stride == stride]
        if not found:
            raise ValueError(
                f'{arch!r} has no level of stride {stride}: its levels have strides '
                f'{[lv.stride for lv in levels]}, and the config feeds its neck strides '
                f'{list(strides)}. Fix: choose a timm model with levels at these strides (e.g. '
                f"'resnet18', 'convnext_atto'), or a plain ViT-style model (it gets a simple "
                f'pyramid with any strides).')
        indices.append(found[-1])
    return ({'out_indices': tuple(indices)},
            f'{backbone_path}: {arch!r} levels {indices} feed strides {list(strides)}, as the '
            f'old backbone did')


def _pretrained_from(old: Mapping[str, Any], path: str) -> Tuple[Any, Optional[str]]:
    """(pretrained value, a line) from the old backbone's `init_cfg` / `pretrained`."""
    checkpoints = []
    init = old.get('init_cfg')
    for one in (init if isinstance(init, (list, tuple)) else [init]):
        if isinstance(one, Mapping) and one.get('type') == 'Pretrained' and one.get('checkpoint'):
            checkpoints.append(one['checkpoint'])
    if isinstance(old.get('pretrained'), str):
        checkpoints.append(old['pretrained'])
    if timm_model_name(old) is not None:
        return old.get('pretrained', False), None
    if not checkpoints:
        return False, None
    return True, (f'{path}.pretrained=True: the old backbone loaded {checkpoints[0]!r} (weights '
                  f'of {type_name(old)}); the timm model gets timm\'s own pretrained weights '
                  f'(offline: pretrained=False or a timm weight file)')


def _norm_options(old: Mapping[str, Any], path: str, notes: List[str]) -> Dict[str, Any]:
    norm = old.get('norm_cfg')
    if not isinstance(norm, Mapping):
        return {}
    out: Dict[str, Any] = {}
    kind = norm.get('type', 'BN')
    if kind in ('SyncBN', 'MMSyncBN', 'NaiveSyncBN'):
        out['sync_bn'] = True
        notes.append(f"{path}.sync_bn=True: the old backbone's norm_cfg type={kind!r}")
    elif kind not in ('BN', 'BN2d'):
        notes.append(f'{path}: norm_cfg type={kind!r} not carried: the timm model keeps its own '
                     f'normalization layers')
    if norm.get('requires_grad') is False:
        out['frozen_bn'] = True
        notes.append(f"{path}.frozen_bn=True: the old backbone's norm_cfg requires_grad=False "
                     f'(norm layers frozen)')
    return out


def _new_backbone(old: Mapping[str, Any], arch: str, path: str,
                  pretrained: Any) -> Tuple[Dict[str, Any], List[str]]:
    """The TimmBackbone config replacing `old`, and the lines saying what happened."""
    check_model_name(arch)
    strides = backbone_strides(old)
    if len(strides) > 1 and any(b <= a for a, b in zip(strides, strides[1:])):
        raise ValueError(
            f'{path} (type={type_name(old)!r}) returns maps of strides {list(strides)}: not a '
            f'feature pyramid (strides must increase, e.g. stacked hourglasses), so no timm '
            f'model can take its place level for level. Write the detector for a pyramid '
            f'backbone instead.')
    shape, line = _levels_for(arch, strides, path)
    notes = [line]
    new: Dict[str, Any] = {'type': 'TimmBackbone', 'model_name': arch}
    new.update(shape)
    is_timm = timm_model_name(old) is not None
    for key in _CARRIED + (_TIMM_ONLY if is_timm or SWAP_KEY in old else ()):
        if key in old and old[key] is not None:
            new[key] = copy.deepcopy(old[key])
            if key in ('frozen_stages', 'norm_eval', 'with_cp') and old[key] not in (False, -1):
                notes.append(f'{path}.{key}={old[key]!r} carried over (same meaning on the timm '
                             f'model)')
    if not is_timm:
        for key, value in _norm_options(old, path, notes).items():
            new.setdefault(key, value)
    if pretrained is None:
        value, line = _pretrained_from(old, path)
        if SWAP_KEY in old and 'pretrained' in old and not isinstance(old['pretrained'], str):
            value, line = old['pretrained'], None  # written next to timm=ARCH: the user's
        if line:
            notes.append(line)
    else:
        value = pretrained
    new['pretrained'] = value
    if not is_timm:
        for key, why in _NOT_CARRIED.items():
            if old.get(key) is not None:
                notes.append(f'{path}.{key} not carried: {why}')
        if old.get('style') == 'caffe':
            notes.append(f"{path}.style='caffe' not carried: caffe-style weights (stride in the "
                         f'1x1 conv, BGR inputs) have no timm counterpart; the timm model takes '
                         f"RGB inputs normalized as its pretrained_cfg says")
    return new, notes


def _swap_detector(det: MutableMapping, arch: str, path: str, pretrained: Any) -> List[str]:
    """Replace `det['backbone']` in place and set the fields it feeds to 'auto'."""
    old = det['backbone']
    roi = det.get('roi_head')
    if isinstance(roi, Mapping) and isinstance(roi.get('shared_head'), Mapping):
        shared = roi['shared_head']
        raise ValueError(
            f'{path}.roi_head.shared_head ({type_name(shared)}, stage={shared.get("stage")}) is '
            f"a stage of the old backbone ({type_name(old)}) run on each RoI (a C4 detector: "
            f'TridentNet, faster-rcnn_r50-caffe-c4): it is built for that backbone\'s channels '
            f"and cannot take a timm model's maps, so the swap cannot carry it. Swap the "
            f"family's FPN config instead (e.g. "
            f"'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py').")
    necks = neck_configs(det, path)
    if necks and isinstance(necks[0][1], Mapping) and 'rfp_backbone' in necks[0][1]:
        raise ValueError(
            f'{necks[0][0]} ({type_name(necks[0][1])}) is DetectoRS\' recursive feature pyramid: '
            f'it holds a second {type_name(necks[0][1]["rfp_backbone"])} (rfp_backbone) that '
            f'takes the image ({path}.backbone output_img=True) and the pyramid fed back into '
            f"its stages, so no timm model can take the backbone's place. Swap a config without "
            f"RFP instead (e.g. 'mmdet::htc/htc_r50_fpn_1x_coco.py').")
    new, notes = _new_backbone(old, arch, f'{path}.backbone', pretrained)
    det['backbone'] = new
    if necks:
        where, neck = necks[0]
        if type_name(neck) in NECKS:
            neck['in_channels'] = 'auto'
        else:
            notes.append(f"{where}: neck type {type_name(neck)!r} is not one resolve_config "
                         f'wires; its in_channels are left as written')
    else:
        for key in DENSE_HEADS:
            head = det.get(key)
            if isinstance(head, MutableMapping) and 'in_channels' in head:
                head['in_channels'] = 'auto'
                notes.append(f"{path}.{key}.in_channels='auto': the head takes the backbone's "
                             f'maps directly')
    pre = det.get('data_preprocessor')
    if isinstance(pre, MutableMapping):
        if 'mean' in pre or 'std' in pre:
            pre['mean'], pre['std'] = 'auto', 'auto'
            if pre.get('bgr_to_rgb') is False:
                notes.append(f'{path}.data_preprocessor.bgr_to_rgb=True: timm models take RGB')
            pre['bgr_to_rgb'] = True
        if 'pad_size_divisor' in pre:
            old_divisor = pre['pad_size_divisor']
            need = plan_from_config(new).pad_size_divisor
            if not (isinstance(old_divisor, int) and old_divisor % need == 0 and
                    old_divisor > need):
                pre['pad_size_divisor'] = 'auto'
            else:  # a larger multiple is the detector's own choice (FPG: 64): kept
                notes.append(f'{path}.data_preprocessor.pad_size_divisor={old_divisor} kept: a '
                             f'multiple of the {need} the timm backbone needs')
    return notes


def _detectors(node: Any, path: str) -> List[Tuple[str, MutableMapping]]:
    """Model configs with a backbone config: the model of a whole config and models nested in
    it (`model.detector`); not other sections (an optimizer's `custom_keys` may name
    `backbone`)."""
    if not path and isinstance(node, (Config, Mapping)) and 'type' not in node and \
            isinstance(node.get('model'), Mapping):
        return _detectors(node['model'], 'model')
    found = []
    mapping = isinstance(node, (Config, Mapping))
    if mapping and isinstance(node.get('backbone'), Mapping):
        found.append((path or 'model', node))
    items = node.items() if mapping else \
        enumerate(node) if isinstance(node, (list, tuple)) else ()
    for key, child in items:
        if key != 'backbone':
            sub = f'{path}[{key}]' if isinstance(key, int) else (f'{path}.{key}' if path else key)
            found.extend(_detectors(child, sub))
    return found


def swap_backbone(cfg: Union[Config, Mapping], arch: str, pretrained: Any = None) -> SwapResult:
    """A copy of `cfg` whose detector backbone(s) are `TimmBackbone(arch)` feeding the strides
    the old one fed; the fields the backbone decides are `'auto'` (resolve_config fills them).

    Args:
        cfg: A whole config (`Config` or dict with `model`), or a model dict. Not modified.
        arch: A timm architecture or `arch.tag`.
        pretrained: None: from the old backbone (a checkpoint in its init_cfg -> True: timm's
            weights for `arch`); else the new backbone's `pretrained`.

    Raises:
        ValueError: Unknown arch (close matches), no backbone in the config, or a backbone that
            cannot be replaced level for level (the reason).

    Example:
        >>> swapped = swap_backbone(Config.fromfile('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'),
        ...                         'convnext_atto', pretrained=False)
        >>> swapped.config.model.backbone.model_name
        'convnext_atto'
    """
    if not isinstance(cfg, (Config, Mapping)):
        raise TypeError(f'swap_backbone takes an mmengine Config or a dict, got '
                        f'{type(cfg).__name__}')
    check_model_name(arch)
    out = copy.deepcopy(cfg)
    detectors = _detectors(out, '')
    if not detectors:
        model = out.get('model', out)
        top = sorted(str(k) for k in model.keys()) if isinstance(model, Mapping) else []
        raise ValueError(
            f'no backbone to swap: no model in the config has a backbone dict (model keys: '
            f'{top}). swap_backbone works on detector configs with model.backbone (or '
            f'detectors nested in wrappers, e.g. model.detector.backbone).')
    notes: List[str] = []
    for path, det in detectors:
        notes.extend(_swap_detector(det, arch, path, pretrained))
    _add_import(out)
    return SwapResult(out, tuple(notes))


def _add_import(cfg: Any) -> None:
    """custom_imports lists timm_backbones (a whole config only)."""
    if not isinstance(cfg, (Config, MutableMapping)) or 'model' not in cfg:
        return
    imports = cfg.get('custom_imports') or {}
    names = imports.get('imports') or []
    names = [names] if isinstance(names, str) else list(names)
    if 'timm_backbones' not in names:
        cfg['custom_imports'] = dict(imports=names + ['timm_backbones'],
                                     allow_failed_imports=imports.get('allow_failed_imports',
                                                                      False))


def swap_marked(cfg: Any) -> List[str]:
    """Swap, in place, every backbone config marked `timm=ARCH` (e.g. by mmdet's
    `--cfg-options model.backbone.timm=ARCH`) for `TimmBackbone(ARCH)`; returns the notes, which
    are also logged. TimmBackbone options written beside the mark (`pretrained=False`,
    `frozen_bn=True`, ...) are kept.

    Example:
        >>> model = dict(backbone=dict(type='ResNet', depth=18, timm='resnet18'),
        ...              neck=dict(type='FPN', in_channels=[64, 128, 256, 512],
        ...                        out_channels=64, num_outs=4))
        >>> notes = swap_marked(model); model['neck']['in_channels']
        'auto'
    """
    notes: List[str] = []
    for path, det in _detectors(cfg, ''):
        arch = det['backbone'].get(SWAP_KEY)
        if arch is None:
            continue
        if not isinstance(arch, str):
            raise TypeError(f'{path}.backbone.{SWAP_KEY}={arch!r}: give a timm model name, e.g. '
                            f'{path}.backbone.{SWAP_KEY}=convnext_atto')
        notes.extend(_swap_detector(det, arch, path, None))
    for line in notes:
        print_log(f'swap: {line}', logger='current')
    return notes


def has_swap_mark(cfg: Any) -> bool:
    """Whether some backbone config in `cfg` is marked `timm=ARCH`."""
    return any(SWAP_KEY in det['backbone'] for _, det in _detectors(cfg, ''))


# ---- writing a config a user can keep -----------------------------------------------------------
def _diff(old: Any, new: Any) -> Any:
    """The override turning `old` into `new` (plain dicts, `Config.to_dict()`: dicts merged key
    by key; a backbone replaced)."""
    out: Dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key, None) if isinstance(old, Mapping) else None
        if key == 'backbone' and isinstance(value, Mapping):
            if to_plain(before) != to_plain(value):
                out[key] = {'_delete_': True, **value}
        elif isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = _diff(before, value)
            if sub:
                out[key] = sub
        elif not isinstance(old, Mapping) or key not in old or \
                to_plain(before) != to_plain(value):
            out[key] = value
    return out


def _format(value: Any, indent: int = 0) -> str:
    pad = ' ' * (indent + 4)
    if isinstance(value, Mapping):
        if not value:
            return 'dict()'
        parts = [f'{pad}{k}={_format(v, indent + 4)}' for k, v in value.items()]
        return 'dict(\n' + ',\n'.join(parts) + ')'
    if isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
        return '[\n' + ',\n'.join(pad + _format(v, indent + 4) for v in value) + ']'
    return repr(value)


def swap_config_text(source: Union[str, Path], arch: str, pretrained: Any = None,
                     out_dir: Optional[Union[str, Path]] = None) -> Tuple[str, SwapResult]:
    """The text of a config file inheriting `source` with its backbone swapped for `arch`
    (`swap_backbone`), and the swap: only the changed fields are written, the notes as comments.

    Args:
        source: A config file path or an `mmdet::` name.
        arch: A timm architecture or tag.
        pretrained: See `swap_backbone`.
        out_dir: Where the file will be written (a path source is referenced relative to it).

    Example:
        >>> text, _ = swap_config_text('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 'resnet18')
    """
    original = Config.fromfile(config_file(source))
    result = swap_backbone(original, arch, pretrained=pretrained)
    base = str(source)
    if '::' not in base:
        base = str(Path(base).resolve())
        if out_dir is not None:
            base = os.path.relpath(base, Path(out_dir).resolve())
    override = _diff(original.to_dict(), result.config.to_dict())
    lines = [f'# {source} with the timm backbone {arch!r} (timm-backbones swap).',
             '# What the swap did:']
    lines += [f'#   {n}' for n in result.notes]
    lines += [f'_base_ = [{base!r}]', '']
    for key, value in override.items():
        lines.append(f'{key} = {_format(value)}')
    return '\n'.join(lines) + '\n', result
