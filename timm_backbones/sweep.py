"""Which timm architectures work in which detector: the shipped detector families as data
(`FAMILIES`: the config `timm-backbones config DETECTOR ARCH` prints), and the check of one
architecture in them (`check_architecture`) used by `tools/sweep.py`, the compatibility matrix
(`docs/compatibility.csv`) and the tests.

A check is what a user's first run would do, on the meta device (no weights, no memory): the
family's config with the architecture as backbone is resolved (`resolve_config`), the whole
detector is built, and the backbone, neck and dense heads run at a detection-sized, non-square
input; every map is checked against the levels the wiring predicted. Outcomes:
'ok'; 'rejected' (resolve_config or the backbone refused the architecture up front with a clear
error of ours); 'failed' (anything else: a wiring bug to fix).
"""
import copy
import functools
import math
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ._configs import type_name
from ._plan import plan_backbone, plan_from_config
from ._probe import fast_meta, supports_kwargs
from ._specs import FeatureSpec, size_near

__all__ = ['DetectorFamily', 'FAMILIES', 'MATRIX_FAMILIES', 'DETECTION_SIZE', 'STATUSES',
           'FamilyResult', 'ArchResult', 'describe_architecture', 'family_backbone',
           'family_config_text', 'family_model', 'check_family', 'check_architecture',
           'is_plain', 'configs_dir', 'environment', 'check_layer_decay']

DETECTION_SIZE = (608, 800)  # H, W: a detection-like, non-square input
STATUSES = ('ok', 'rejected', 'failed', 'timeout')
_RGB = dict(bgr_to_rgb=True)  # caffe-style BGR bases (FCOS, ...): timm's weights take RGB


@dataclass(frozen=True)
class DetectorFamily:
    """One detector family shipped in `configs/`, as the overrides of mmdet's base config that
    make it work with any timm backbone.

    Args:
        name: Short name (`timm-backbones config NAME ARCH`).
        title: Detector and neck, for tables.
        base: mmdet's base config (`mmdet::...`).
        shipped: The config in `configs/` this family follows.
        backbone: TimmBackbone options besides model_name / pretrained.
        model: The other model overrides (every channel and stride field `'auto'`).
        canvas: Side of the square a fixed-size model is built for (covers the base config's
            test scale; a multiple of 7, 14, 16 and 32).
        size: (H, W) the check runs the detector at (non-square, within the canvas).

    Example:
        >>> FAMILIES['yolof'].backbone
        {'out_indices': (-1,)}
    """
    name: str
    title: str
    base: str
    shipped: str
    backbone: Dict[str, Any]
    model: Dict[str, Any]
    canvas: int = 1344
    size: Tuple[int, int] = DETECTION_SIZE


# every preprocessor field that follows from the backbone: pad divisor and timm's normalization
_AUTO_PAD = dict(pad_size_divisor='auto', mean='auto', std='auto')
FAMILIES: Dict[str, DetectorFamily] = {f.name: f for f in (
    DetectorFamily(
        'retinanet', 'RetinaNet + FPN', 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
        'retinanet_timm-pvt-v2-b2_fpn_1x_coco.py', {},
        dict(data_preprocessor=_AUTO_PAD, neck=dict(in_channels='auto'),
             bbox_head=dict(anchor_generator=dict(strides='auto')))),
    DetectorFamily(
        'fcos', 'FCOS + FPN', 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
        'fcos_timm-resnet50_fpn_gn-head_1x_coco.py', {},
        dict(data_preprocessor=dict(**_RGB, **_AUTO_PAD), neck=dict(in_channels='auto'),
             bbox_head=dict(strides='auto'))),
    DetectorFamily(
        'atss', 'ATSS + FPN', 'mmdet::atss/atss_r50_fpn_1x_coco.py',
        'atss_timm-efficientnet-b3_fpn_1x_coco.py', dict(out_indices=(-3, -2, -1)),
        dict(data_preprocessor=_AUTO_PAD,
             neck=dict(in_channels='auto', start_level=0, add_extra_convs='on_input'),
             bbox_head=dict(anchor_generator=dict(strides='auto')))),
    DetectorFamily(
        'faster-rcnn', 'Faster R-CNN + FPN', 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
        'faster-rcnn_timm-regnety-032_fpn_1x_coco.py', {},
        dict(data_preprocessor=_AUTO_PAD, neck=dict(in_channels='auto'),
             rpn_head=dict(anchor_generator=dict(strides='auto')),
             roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto')))),
    DetectorFamily(
        'mask-rcnn', 'Mask R-CNN + FPN', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
        'mask-rcnn_timm-convnext-tiny_fpn_1x_coco.py', {},
        dict(data_preprocessor=_AUTO_PAD, neck=dict(in_channels='auto'),
             rpn_head=dict(anchor_generator=dict(strides='auto')),
             roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto'),
                           mask_roi_extractor=dict(featmap_strides='auto')))),
    DetectorFamily(
        'cascade-rcnn', 'Cascade R-CNN + FPN',
        'mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py',
        'cascade-rcnn_timm-resnext50-32x4d_fpn_1x_coco.py', {},
        dict(data_preprocessor=_AUTO_PAD, neck=dict(in_channels='auto'),
             rpn_head=dict(anchor_generator=dict(strides='auto')),
             roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto')))),
    DetectorFamily(
        'yolof', 'YOLOF + DilatedEncoder', 'mmdet::yolof/yolof_r50-c5_8xb8-1x_coco.py',
        'yolof_timm-resnet50-c5_8xb8-1x_coco.py', dict(out_indices=(-1,)),
        dict(data_preprocessor=dict(**_RGB, **_AUTO_PAD), neck=dict(in_channels='auto'),
             bbox_head=dict(anchor_generator=dict(strides='auto')))),
    DetectorFamily(
        'dino', 'DINO + ChannelMapper', 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
        'dino-4scale_timm-swin-tiny_8xb2-12e_coco.py', dict(out_indices=(-3, -2, -1)),
        dict(data_preprocessor=_AUTO_PAD, neck=dict(in_channels='auto'))),
    DetectorFamily(
        'rtmdet', 'RTMDet + CSPNeXtPAFPN', 'mmdet::rtmdet/rtmdet_l_8xb32-300e_coco.py',
        'rtmdet_timm-convnext-tiny_4xb32-100e_coco.py', dict(out_indices=(-3, -2, -1)),
        dict(data_preprocessor=dict(_delete_=True, type='DetDataPreprocessor', **_RGB,
                                    pad_size_divisor='auto', batch_augments=None),
             neck=dict(in_channels='auto'),
             bbox_head=dict(anchor_generator=dict(strides='auto'))),
        canvas=672, size=(480, 640)),
)}
# The families of the published matrix (docs/compatibility.csv): one per neck kind.
MATRIX_FAMILIES = ('retinanet', 'faster-rcnn', 'dino', 'yolof', 'rtmdet')


def configs_dir() -> Path:
    """The shipped `configs/` folder (next to the package in a source checkout).

    Raises:
        FileNotFoundError: The package was installed without its configs.
    """
    found = Path(__file__).resolve().parent.parent / 'configs'
    if not (found / '_base_' / 'timm_runtime.py').is_file():
        raise FileNotFoundError(
            f'the shipped configs are not at {found} (timm_backbones installed without its '
            f'source tree). Install it from a checkout (`pip install -e .`) to use them.')
    return found


def _family(name: str) -> DetectorFamily:
    if name not in FAMILIES:
        import difflib
        close = difflib.get_close_matches(name, list(FAMILIES), n=1)
        hint = f' Did you mean {close[0]!r}?' if close else ''
        raise ValueError(f'unknown detector family {name!r}; the shipped families are '
                         f'{", ".join(FAMILIES)}.{hint}')
    return FAMILIES[name]


def family_backbone(family: str, arch: str, pretrained: bool = True) -> Dict[str, Any]:
    """The TimmBackbone config of `arch` in a family: the family's options, plus an input size
    covering the family's canvas for a model that only runs at the size it is built for.

    Example:
        >>> family_backbone('dino', 'resnet18')['out_indices']
        (-3, -2, -1)
    """
    spec = _family(family)
    cfg = dict(_delete_=True, type='TimmBackbone', model_name=arch,
               **copy.deepcopy(spec.backbone), pretrained=pretrained)
    plain = dict(type='TimmBackbone', model_name=arch, **spec.backbone)
    if plan_from_config(plain).fixed_size is not None:
        cfg['input_size'] = (spec.canvas, spec.canvas)
    return cfg


def _py(value: Any, indent: int) -> str:
    """A config value as Python source (dicts as `dict(...)`, one key per line when long)."""
    if isinstance(value, Mapping):
        items = [f'{k}={_py(v, indent + 4)}' for k, v in value.items()]
        flat = f"dict({', '.join(items)})"
        if len(flat) + indent <= 88:
            return flat
        pad = ' ' * (indent + 4)
        return 'dict(\n' + ',\n'.join(pad + i for i in items) + ')'
    if isinstance(value, tuple) and len(value) == 1:
        return f'({_py(value[0], indent)},)'
    return repr(value)


def family_config_text(family: str, arch: str, pretrained: bool = True) -> str:
    """A complete config (Python source) for `arch` in a shipped detector family: mmdet's base
    config and the shipped `configs/_base_/timm_runtime.py` (absolute path, so the file works
    wherever it is saved), and the model overrides, every channel and stride `'auto'`.

    Args:
        family: A key of `FAMILIES`.
        arch: A timm architecture or tag.
        pretrained: The backbone's `pretrained`.

    Example:
        >>> print(family_config_text('retinanet', 'convnext_tiny'))  # doctest: +SKIP
    """
    spec = _family(family)
    backbone = family_backbone(family, arch, pretrained)
    specs = plan_from_config({k: v for k, v in backbone.items() if k != '_delete_'}).specs
    runtime = configs_dir() / '_base_' / 'timm_runtime.py'
    model = dict(backbone=backbone, **copy.deepcopy(spec.model))
    levels = ', '.join(f'{s.channels}@{s.stride}' for s in specs)
    lines = [
        f"# {spec.title} with timm's {arch}: `timm-backbones config {family} {arch}`",
        f'# (set up as configs/{spec.shipped}).',
        f'# Backbone outputs, channels@stride: {levels}.',
        "# Fields set to 'auto' are filled from the backbone when the config is resolved",
        '# (TimmBackboneRunner, tools/train.py, `timm-backbones check CONFIG`).',
    ]
    if 'input_size' in backbone:
        lines.append(f"# {arch} only runs at the size it is built for: built for "
                     f"{backbone['input_size']}, smaller inputs are zero-padded to it.")
    lines += [f"_base_ = [{spec.base!r}, {str(runtime)!r}]", '',
              f'model = {_py(model, 0)}', '']
    return '\n'.join(lines)


@functools.lru_cache(maxsize=None)
def _template(family: str) -> Dict[str, Any]:
    """The family's whole model config (mmdet base + overrides), parsed once; the backbone is
    the only part that depends on the architecture."""
    from mmengine.config import Config
    text = family_config_text(family, 'resnet18', pretrained=False)
    return Config.fromstring(text, '.py').model.to_dict()


def family_model(family: str, arch: str) -> Dict[str, Any]:
    """The model config `family_config_text(family, arch, pretrained=False)` gives, as a dict
    (the base config is parsed once per family).

    Example:
        >>> family_model('yolof', 'resnet18')['neck']['type']
        'DilatedEncoder'
    """
    model = copy.deepcopy(_template(family))
    backbone = family_backbone(family, arch, pretrained=False)
    backbone.pop('_delete_')
    model['backbone'] = backbone
    return model


@dataclass
class FamilyResult:
    """The outcome of one architecture in one family.

    Args:
        status: One of `STATUSES`.
        reason: The error (first line), empty when ok.
    """
    status: str
    reason: str = ''


@dataclass
class ArchResult:
    """What one architecture is and how it does in each family.

    Args:
        arch: timm architecture.
        levels: Number of timm feature levels.
        channels: Channels of every level.
        strides: Strides of every level.
        params: Parameters of the feature extractor (millions; meta build).
        layout: 'NCHW' or 'NHWC' (timm's output).
        output_strides: The `output_stride` values (8, 16) timm accepts for it.
        fixed_size: 'HxW' of a model that only runs at one size, else ''.
        pad_divisor: Input sides must be multiples of this.
        plain: Whether every level has the same stride (ViT-like).
        families: Family name -> FamilyResult.
        seconds: Time of the whole check.
    """
    arch: str
    levels: int = 0
    channels: List[int] = field(default_factory=list)
    strides: List[int] = field(default_factory=list)
    params: float = 0.0
    layout: str = ''
    output_strides: List[int] = field(default_factory=list)
    fixed_size: str = ''
    pad_divisor: int = 0
    plain: bool = False
    families: Dict[str, FamilyResult] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        """Plain data (JSON-ready)."""
        return asdict(self)


def _first_line(err: BaseException) -> str:
    text = f'{type(err).__name__}: {err}'.strip()
    return text.splitlines()[0][:400] if text else type(err).__name__


def _check_maps(maps: Sequence[torch.Tensor], levels: Sequence[FeatureSpec],
                size: Tuple[int, int], what: str) -> None:
    """Each map has its level's channels and about input / stride pixels per side."""
    if len(maps) != len(levels):
        raise AssertionError(f'{what}: {len(maps)} maps for {len(levels)} predicted levels')
    for out, level in zip(maps, levels):
        ok = out.shape[1] == level.channels and (level.stride is None or all(
            size_near(g, s, level.stride) for g, s in zip(out.shape[2:], size)))
        if not ok:
            expect = [math.ceil(s / level.stride) for s in size] if level.stride else '?'
            raise AssertionError(f'{what}: got {tuple(out.shape)}, expected {level.channels} '
                                 f'channels and about {expect} at stride {level.stride}')


def _neck_levels(model: Mapping[str, Any]) -> Tuple[FeatureSpec, ...]:
    """The levels the neck table predicts for the model's neck(s)."""
    from .wiring import NECKS
    from ._plan import feature_specs
    levels = feature_specs(model['backbone'])
    necks = model.get('neck')
    for i, cfg in enumerate(necks if isinstance(necks, (list, tuple)) else [necks]):
        if cfg is not None:
            levels = NECKS[type_name(cfg)].outputs(cfg, levels, f'model.neck[{i}]')
    return levels


def _run_heads(detector: torch.nn.Module, feats: Sequence[torch.Tensor]) -> None:
    """Dense heads (RPN, single-stage heads) on the neck's maps: one output per level their
    prior generator knows, each the size of its map."""
    for key in ('rpn_head', 'bbox_head'):
        head = getattr(detector, key, None)
        generator = getattr(head, 'prior_generator', None)
        if head is None or generator is None:  # DETR-style and RoI heads need more than maps
            continue
        outs = head(tuple(feats))
        scores = outs[0]
        if len(scores) != generator.num_levels or len(scores) != len(feats):
            raise AssertionError(f'{key}: {len(scores)} outputs for {len(feats)} maps and '
                                 f'{generator.num_levels} prior strides')
        for score, feat in zip(scores, feats):
            if tuple(score.shape[-2:]) != tuple(feat.shape[-2:]):
                raise AssertionError(f'{key}: output {tuple(score.shape)} for a map of '
                                     f'{tuple(feat.shape)}')


def check_family(family: str, arch: str, size: Optional[Tuple[int, int]] = None
                 ) -> FamilyResult:
    """`arch` in a detector family, on the meta device: resolve, build the whole detector, run
    backbone, neck and dense heads at `size` (default: the family's; padded as the config pads)
    and check every map.

    Example:
        >>> check_family('retinanet', 'resnet18').status
        'ok'
    """
    from mmengine.registry import init_default_scope

    from .wiring import resolve_config
    try:
        model_cfg = resolve_config(dict(model=family_model(family, arch)))['model']
        levels = _neck_levels(model_cfg)
    except (ValueError, TypeError) as err:
        return FamilyResult('rejected', _first_line(err))
    try:
        init_default_scope('mmdet')
        detector, maps = _detector(model_cfg)
        size = size or FAMILIES[family].size
        divisor = model_cfg['data_preprocessor'].get('pad_size_divisor', 1)
        padded = tuple(-(-s // divisor) * divisor for s in size)
        with torch.no_grad(), fast_meta():
            if padded not in maps:  # the backbone's maps, shared by families with its config
                maps[padded] = detector.backbone(torch.empty(1, 3, *padded, device='meta'))
            feats = detector.neck(maps[padded]) if detector.with_neck else maps[padded]
            _check_maps(feats, levels, padded, f'{family} neck')
            _run_heads(detector, feats)
    except Exception as err:  # noqa: BLE001 - the matrix records every failure with its reason
        return FamilyResult('failed', _first_line(err))
    return FamilyResult('ok')


# Meta-device detectors by their config less the backbone, and the current architecture's
# backbones by config (with their output maps by input size): families and architectures that
# share a neck/head config or a backbone config build it once.
_DETECTORS: 'OrderedDict[str, torch.nn.Module]' = OrderedDict()
_DETECTORS_KEPT = 64
_BACKBONES: Dict[str, Tuple[torch.nn.Module, Dict[Tuple[int, ...], Any]]] = {}


def _detector(model_cfg: Dict[str, Any]) -> Tuple[torch.nn.Module, Dict[Tuple[int, ...], Any]]:
    """The detector of a resolved model config, built on the meta device, with its backbone
    (and that backbone's cache of output maps). A detector built before from the same config
    apart from the backbone is reused with this backbone in place."""
    from mmengine.config import ConfigDict
    from mmdet.registry import MODELS
    key = repr({k: v for k, v in model_cfg.items() if k != 'backbone'})
    backbone_key = repr(model_cfg['backbone'])
    with torch.device('meta'), fast_meta():
        detector = _DETECTORS.get(key)
        if detector is None:
            detector = MODELS.build(ConfigDict(model_cfg)).eval()
            _BACKBONES.setdefault(backbone_key, (detector.backbone, {}))
            _DETECTORS[key] = detector
            while len(_DETECTORS) > _DETECTORS_KEPT:
                _DETECTORS.popitem(last=False)
        elif backbone_key not in _BACKBONES:
            _BACKBONES[backbone_key] = (MODELS.build(ConfigDict(model_cfg['backbone'])).eval(),
                                        {})
    backbone, maps = _BACKBONES[backbone_key]
    detector.backbone = backbone
    return detector, maps


def describe_architecture(arch: str) -> ArchResult:
    """What an architecture is (levels, parameters, layout, input sizes, output strides), from
    meta-device builds; no family checks.

    Raises:
        ValueError: It cannot be planned as a backbone (the message says why).

    Example:
        >>> describe_architecture('resnet18').output_strides
        [8, 16]
    """
    from ._probe import meta_model
    result = ArchResult(arch)
    plan = plan_backbone(arch, pyramid=None)
    result.levels = len(plan.levels)
    result.channels = [s.channels for s in plan.levels]
    result.strides = [s.stride for s in plan.levels]
    result.layout = plan.output_format
    result.pad_divisor = plan.pad_divisor
    result.fixed_size = 'x'.join(map(str, plan.fixed_size)) if plan.fixed_size else ''
    result.plain = len(set(result.strides)) == 1
    model = meta_model(arch, plan.kwargs)
    result.params = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    result.output_strides = [s for s in (8, 16)
                             if supports_kwargs(arch, dict(plan.kwargs, output_stride=s))]
    return result


def check_architecture(arch: str, families: Sequence[str] = MATRIX_FAMILIES,
                       size: Optional[Tuple[int, int]] = None) -> ArchResult:
    """Describe `arch` and check it in each family (see `check_family`).

    Example:
        >>> r = check_architecture('resnet18', families=('retinanet',))
        >>> r.strides, r.families['retinanet'].status
        ([2, 4, 8, 16, 32], 'ok')
    """
    start = time.perf_counter()
    _BACKBONES.clear()  # the previous architecture's
    try:
        result = describe_architecture(arch)
    except (ValueError, TypeError) as err:
        reason = _first_line(err)
        result = ArchResult(arch)
        result.families = {f: FamilyResult('rejected', reason) for f in families}
        result.seconds = round(time.perf_counter() - start, 2)
        return result
    for family in families:
        result.families[family] = check_family(family, arch, size)
    result.seconds = round(time.perf_counter() - start, 2)
    return result


def is_plain(name: str) -> bool:
    """Whether the architecture's default levels share one stride (ViT-like); False for models
    that cannot be planned.

    Example:
        >>> is_plain('vit_tiny_patch16_224'), is_plain('resnet18')
        (True, False)
    """
    try:
        levels = plan_backbone(name, pyramid=None).levels
    except (ValueError, TypeError):
        return False
    return len({s.stride for s in levels}) == 1


def environment() -> Dict[str, str]:
    """Versions of the stack and the CPU count (for reports)."""
    import mmdet
    import mmengine
    import timm

    from .version import __version__
    return dict(timm=timm.__version__, torch=torch.__version__.split('+')[0],
                mmdet=mmdet.__version__, mmengine=mmengine.__version__,
                timm_backbones=__version__, cpus=str(os.cpu_count()))


def check_layer_decay(name: str, rate: float = 0.75) -> Tuple[str, str]:
    """Whether `TimmLayerDecayOptimWrapperConstructor` gives the default backbone of `name`
    layer-decay groups (meta device, no weights).

    Returns:
        (status, reason): 'groups' (every backbone parameter got timm's layer scale; reason
        names the number of layers), 'no_group_matcher' (the clear error for models without
        one), 'rejected' (the backbone itself is rejected with a clear error of ours, before
        layer decay) or 'failed' (anything else: a bug to fix).

    Example:
        >>> check_layer_decay('convnext_atto')[0]
        'groups'
    """
    from ._backbone import TimmBackbone
    from .engine import NoGroupMatcherError, layer_decay_settings
    try:
        with torch.device('meta'):
            backbone = TimmBackbone(name)
    except (ValueError, TypeError) as err:
        return 'rejected', f'{type(err).__name__}: {err}'
    try:
        settings = layer_decay_settings(backbone, rate)
    except NoGroupMatcherError as err:
        return 'no_group_matcher', str(err)
    except Exception as err:  # the sweep records every failure with its reason
        return 'failed', f'{type(err).__name__}: {err}'
    named = [n for n, _ in backbone.model.named_parameters()]
    if len(settings) != len(named):
        return 'failed', f'{len(settings)} of {len(named)} parameters got a layer scale'
    return 'groups', f'{len({s for s, _ in settings.values()})} layers'
