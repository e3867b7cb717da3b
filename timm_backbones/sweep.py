"""Which timm architectures work in which detector (or segmentor): the check of one architecture in
the shipped detector and segmentation families (`families.py`: the configs in `configs/`, as `timm-backbones config DETECTOR
ARCH` prints them), used by `tools/sweep.py`, the compatibility matrix (`docs/compatibility.csv`)
and the tests.

A check is what a user's first run would do, on the meta device (no weights, no memory): the
family's config with the architecture as backbone is resolved (`resolve_config`), the whole
detector is built, and it runs at two detection-sized, non-square images (`CHECK_SIZES`, one
with sides that are not multiples of 32): the backbone at the image size and at the size the
config's data preprocessor pads it to, the neck and the dense heads at the padded size. Every
map must be exactly ceil(input / stride) for the levels the wiring predicted, and every backbone
map NCHW-contiguous (the layout contract, `_specs.check_layout`; meta tensors have strides).
Outcomes:
'ok'; 'rejected' (resolve_config or the backbone refused the architecture up front with a clear
error of ours); 'failed' (anything else: a wiring bug to fix). Segmentation families (mmseg) are
checked the same way (`check_seg_family`): backbone, neck and every decode and auxiliary head.
"""
import copy
import importlib.metadata
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .families import (FAMILIES, SEGMENTATION, DetectorFamily, configs_dir, family_backbone,
                       family_config_text, family_model, get_family)
from ._plan import plan_backbone
from ._meta_ops import fast_meta, on_meta
from ._probe import supports_kwargs
from ._cache import Memo
from ._specs import FeatureSpec, check_layout, check_maps, round_up

__all__ = ['DetectorFamily', 'FAMILIES', 'MATRIX_FAMILIES', 'DETECTION_SIZES', 'CHECK_SIZES',
           'STATUSES',
           'FamilyResult', 'ArchResult', 'describe_architecture', 'family_backbone',
           'family_config_text', 'family_model', 'check_family', 'check_architecture',
           'is_plain', 'configs_dir', 'environment', 'check_layer_decay', 'SEG_CHECK_SIZE',
           'SEG_MATRIX_FAMILIES', 'check_seg_family']

# (H, W) images a check runs the detector at: detection-like and non-square, one a multiple of
# 32 and one not (odd sides), within every family's canvas
DETECTION_SIZES = ((608, 800), (427, 569))
STATUSES = ('ok', 'rejected', 'failed', 'timeout')


# The families of the published matrix (docs/compatibility.csv): every shipped detector config,
# and every segmentation family (one per head kind).
SEG_MATRIX_FAMILIES = ('upernet', 'segformer', 'fpn', 'mask2former')
MATRIX_FAMILIES = ('retinanet', 'fcos', 'atss', 'faster-rcnn', 'mask-rcnn', 'cascade-rcnn',
                   'yolof', 'dino', 'rtmdet') + SEG_MATRIX_FAMILIES
SEG_CHECK_SIZE = (384, 512)  # H, W: a non-square input within the segmentation families' crop
_DECODER_SIZE = (128, 160)  # H, W of the CPU run of MaskFormer-style pixel decoders
# the sizes of detection families whose canvas is smaller (RTMDet's 640x640 test scale)
CHECK_SIZES = {'rtmdet': ((480, 640), (427, 569))}


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


def _neck_levels(model: Mapping[str, Any]) -> Tuple[FeatureSpec, ...]:
    """The levels the neck table predicts for the model's neck(s)."""
    from ._plan import feature_specs
    from .wiring import neck_levels
    return neck_levels(model, feature_specs(model['backbone']))


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


def check_family(family: str, arch: str,
                 sizes: Optional[Sequence[Tuple[int, int]]] = None) -> FamilyResult:
    """`arch` in a detector family, on the meta device: resolve, build the whole detector, and
    for each image size (default: the family's `CHECK_SIZES`) run the backbone at that size and
    at the size the config pads it to, then the neck and the dense heads on the padded maps;
    every map must be exactly ceil(input / stride) (`check_maps(exact=True)`), every backbone
    map NCHW-contiguous (`check_layout`).

    Example:
        >>> check_family('retinanet', 'resnet18').status
        'ok'
    """
    from mmengine.registry import init_default_scope

    if get_family(family).task == SEGMENTATION:  # one size (the first of `sizes`)
        return check_seg_family(family, arch, tuple(sizes[0]) if sizes else None)
    resolved = _resolved(family, arch)
    if isinstance(resolved, FamilyResult):
        return resolved
    model_cfg, levels = resolved
    try:
        init_default_scope('mmdet')
        detector, maps = _detector(model_cfg)
        specs = detector.backbone.feature_specs
        divisor = model_cfg['data_preprocessor'].get('pad_size_divisor', 1)
        for size in sizes or CHECK_SIZES.get(family, DETECTION_SIZES):
            padded = tuple(round_up(s, divisor) for s in size)
            with torch.no_grad(), on_meta():
                for hw in dict.fromkeys([tuple(size), padded]):
                    if hw not in maps:  # the backbone's maps, shared by families with its config
                        maps[hw] = detector.backbone(torch.empty(1, 3, *hw, device='meta'))
                    check_maps([f.shape for f in maps[hw]], specs, hw, f'{family} backbone',
                               exact=True)
                    check_layout(maps[hw], f'{family} backbone')
                feats = detector.neck(maps[padded]) if detector.with_neck else maps[padded]
                check_maps([f.shape for f in feats], levels, padded, f'{family} neck',
                           exact=True)
                _run_heads(detector, feats)
    except Exception as err:  # noqa: BLE001 - the matrix records every failure with its reason
        return FamilyResult('failed', _first_line(err))
    return FamilyResult('ok')


def _resolved(family: str, arch: str) -> Union[Tuple[Dict[str, Any], Any], FamilyResult]:
    """`arch` in `family`'s config, resolved: (model config, the levels the neck gives), or the
    'rejected' result with resolve_config's reason."""
    from .wiring import resolve_config
    try:
        model_cfg = resolve_config(dict(model=family_model(family, arch)))['model']
        return model_cfg, _neck_levels(model_cfg)
    except (ValueError, TypeError) as err:
        return FamilyResult('rejected', _first_line(err))


def check_seg_family(family: str, arch: str, size: Optional[Tuple[int, int]] = None
                     ) -> FamilyResult:
    """`arch` in a segmentation family (mmseg), on the meta device: resolve, build the whole
    segmentor, run backbone, neck and every decode and auxiliary head at `size` (default
    `SEG_CHECK_SIZE`; padded as the config pads) and check every map: each head's output has its
    classes at the size of the first level it reads. A MaskFormer-style head's pixel decoder
    (deformable attention: shapes read from tensors, no meta run) runs on CPU zeros of the
    maps' shapes, its weights made real.

    Example:
        >>> check_seg_family('upernet', 'resnet18').status
        'ok'
    """
    from mmengine.registry import init_default_scope

    from . import seg  # noqa: F401  (registers the plugin in mmseg's registries)
    resolved = _resolved(family, arch)
    if isinstance(resolved, FamilyResult):
        return resolved
    model_cfg, levels = resolved
    try:
        init_default_scope('mmseg')
        segmentor, maps = _detector(model_cfg)
        size = size or SEG_CHECK_SIZE
        pre = model_cfg['data_preprocessor']
        divisor = pre.get('size_divisor') or (pre.get('test_cfg') or {}).get('size_divisor') or 1
        def features(hw: Tuple[int, int]) -> Sequence[torch.Tensor]:
            padded = tuple(round_up(s, divisor) for s in hw)
            with torch.no_grad(), fast_meta():
                if padded not in maps:
                    maps[padded] = segmentor.backbone(torch.empty(1, 3, *padded, device='meta'))
                    check_layout(maps[padded], f'{family} backbone')
                feats = segmentor.neck(maps[padded]) if segmentor.with_neck else maps[padded]
                check_maps([f.shape for f in feats], levels, padded, f'{family} neck')
            return feats

        auxiliary = getattr(segmentor, 'auxiliary_head', None)
        heads = [segmentor.decode_head] + (list(auxiliary) if isinstance(
            auxiliary, torch.nn.ModuleList) else [auxiliary] if auxiliary else [])
        for head in heads:  # pixel decoders run on the CPU: at a small size
            _run_seg_head(head, features(_DECODER_SIZE if hasattr(head, 'pixel_decoder')
                                         else size))
    except Exception as err:  # noqa: BLE001 - the matrix records every failure with its reason
        return FamilyResult('failed', _first_line(err))
    return FamilyResult('ok')


def _run_seg_head(head: torch.nn.Module, feats: Sequence[torch.Tensor]) -> None:
    """A decode head on the maps: its classes at the size of the first level it reads; a
    pixel decoder (MaskFormer-style heads) on CPU zeros: its mask features at the first level's
    size, its multi-scale features at the deepest levels' sizes."""
    decoder = getattr(head, 'pixel_decoder', None)
    if decoder is not None:
        real = copy.deepcopy(decoder).to_empty(device='cpu')
        with torch.no_grad():
            for tensor in list(real.parameters()) + list(real.buffers()):
                tensor.fill_(0.01) if tensor.is_floating_point() else tensor.zero_()
            mask, multi = real([torch.zeros(f.shape) for f in feats])
        wanted = [tuple(f.shape[-2:]) for f in feats[::-1][:len(multi)]]
        if tuple(mask.shape[-2:]) != tuple(feats[0].shape[-2:]) or \
                [tuple(m.shape[-2:]) for m in multi] != wanted:
            raise AssertionError(f'pixel decoder: mask features {tuple(mask.shape)} and '
                                 f'multi-scale features {[tuple(m.shape) for m in multi]} for '
                                 f'maps {[tuple(f.shape) for f in feats]}')
        return
    with torch.no_grad(), fast_meta():
        out = head(list(feats))
    index = head.in_index if isinstance(head.in_index, (list, tuple)) else [head.in_index]
    first = feats[index[0]]
    if out.shape[1] != head.out_channels or tuple(out.shape[-2:]) != tuple(first.shape[-2:]):
        raise AssertionError(f'{type(head).__name__}: output {tuple(out.shape)} for maps '
                             f'{[tuple(f.shape) for f in feats]} (in_index {head.in_index}, '
                             f'{head.out_channels} classes)')


# Meta-device detectors by their config less the backbone, and the current architecture's
# backbones by config (with their output maps by input size): families and architectures that
# share a neck/head config or a backbone config build it once.
_DETECTORS = Memo('sweep detectors', 64)
_BACKBONES = Memo('sweep backbones', 64)


def _detector(model_cfg: Dict[str, Any]) -> Tuple[torch.nn.Module, Dict[Tuple[int, ...], Any]]:
    """The detector of a resolved model config, built on the meta device, with its backbone
    (and that backbone's cache of output maps). A detector built before from the same config
    apart from the backbone is reused with this backbone in place."""
    from mmengine.config import ConfigDict
    from mmdet.registry import MODELS
    key = repr({k: v for k, v in model_cfg.items() if k != 'backbone'})
    backbone_key = repr(model_cfg['backbone'])
    built = []

    def build() -> torch.nn.Module:
        built.append(True)
        return MODELS.build(ConfigDict(model_cfg)).eval()

    with on_meta():
        detector = _DETECTORS.get(key, build)
        backbone, maps = _BACKBONES.get(backbone_key, lambda: (  # a new detector's own backbone
            detector.backbone if built else
            MODELS.build(ConfigDict(model_cfg['backbone'])).eval(), {}))
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
                       sizes: Optional[Sequence[Tuple[int, int]]] = None) -> ArchResult:
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
        result.families[family] = check_family(family, arch, sizes)
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
    found = dict(timm=timm.__version__, torch=torch.__version__.split('+')[0],
                 mmdet=mmdet.__version__, mmengine=mmengine.__version__)
    try:  # read, not imported (the segmentation families import it when they are checked)
        found['mmseg'] = importlib.metadata.version('mmsegmentation')
    except importlib.metadata.PackageNotFoundError:
        pass
    return dict(found, timm_backbones=__version__, cpus=str(os.cpu_count()))


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
        with on_meta():
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
