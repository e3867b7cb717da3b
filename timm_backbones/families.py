"""The detector and segmentor families, derived from the shipped configs: each family is a config
in `configs/` (detection) or `configs/seg/` (segmentation, mmseg), every channel and stride field
`'auto'`, and any timm architecture goes into it by swapping the backbone. The one source for
`timm-backbones config FAMILY ARCH` (`family_config_text`), the compatibility sweep (`sweep.py`,
`family_model`) and the tests.

What a family keeps of its config's backbone is `FAMILY_OPTIONS` (which levels its neck takes);
the rest (the model, its weights, drop path, freezing) belongs to the shipped model. A model that
only runs at one size is built for the family's `canvas` (covering its test scale); in a
segmentation family it is also tested in slide mode, on crops of that size (`fixed_size_model`).
"""
import copy
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping

from mmengine.config import Config

from ._cache import memoize
from ._plan import plan_from_config
from ._specs import round_up

__all__ = ['DetectorFamily', 'FAMILIES', 'FAMILY_OPTIONS', 'DETECTION', 'SEGMENTATION',
           'SEG_FAMILIES', 'configs_dir', 'get_family', 'family_backbone', 'family_config_text',
           'family_model', 'fixed_size_model']

# Backbone options a family takes from its config: the levels its neck is built for.
FAMILY_OPTIONS = ('out_indices',)
DETECTION, SEGMENTATION = 'detection', 'segmentation'  # the tasks (mmdet, mmseg)


@dataclass(frozen=True)
class DetectorFamily:
    """One detector (or segmentor) family: a shipped config whose backbone any timm architecture
    replaces.

    Args:
        name: Short name (`timm-backbones config NAME ARCH`).
        title: Detector (segmentor) and neck / head, for tables.
        config: The config file, relative to `configs/`.
        canvas: Side of the square a fixed-size model takes (covers the config's test
            scale, or a segmentor's crop; a multiple of 7, 14, 16 and 32 where it can be). It
            is built for the canvas rounded up to its deepest stride (levit's 64: the necks' 2x
            upsampling then meets every level), plus the margin its maps need
            (`BackbonePlan.margin`: pit's unpadded patch embedding).
        task: `DETECTION` (mmdet) or `SEGMENTATION` (mmseg).

    Example:
        >>> FAMILIES['yolof'].config
        'yolof_timm-resnet50-c5_8xb8-1x_coco.py'
    """
    name: str
    title: str
    config: str
    canvas: int = 1344
    task: str = DETECTION

    @property
    def package(self) -> str:
        """The OpenMMLab package of the family's models."""
        return 'mmseg' if self.task == SEGMENTATION else 'mmdet'

    @property
    def path(self) -> Path:
        """The config file."""
        return configs_dir() / self.config


FAMILIES: Dict[str, DetectorFamily] = {f.name: f for f in (
    DetectorFamily('retinanet', 'RetinaNet + FPN', 'retinanet_timm-pvt-v2-b2_fpn_1x_coco.py'),
    DetectorFamily('fcos', 'FCOS + FPN', 'fcos_timm-resnet50_fpn_gn-head_1x_coco.py'),
    DetectorFamily('atss', 'ATSS + FPN', 'atss_timm-efficientnet-b3_fpn_1x_coco.py'),
    DetectorFamily('faster-rcnn', 'Faster R-CNN + FPN',
                   'faster-rcnn_timm-regnety-032_fpn_1x_coco.py'),
    DetectorFamily('mask-rcnn', 'Mask R-CNN + FPN', 'mask-rcnn_timm-convnext-tiny_fpn_1x_coco.py'),
    DetectorFamily('cascade-rcnn', 'Cascade R-CNN + FPN',
                   'cascade-rcnn_timm-resnext50-32x4d_fpn_1x_coco.py'),
    DetectorFamily('yolof', 'YOLOF + DilatedEncoder', 'yolof_timm-resnet50-c5_8xb8-1x_coco.py'),
    DetectorFamily('dino', 'DINO + ChannelMapper', 'dino-4scale_timm-swin-tiny_8xb2-12e_coco.py'),
    DetectorFamily('rtmdet', 'RTMDet + CSPNeXtPAFPN',
                   'rtmdet_timm-convnext-tiny_4xb32-100e_coco.py', canvas=672),
    # segmentation (mmseg): ADE20K configs, 512x512 crops
    DetectorFamily('upernet', 'UPerNet + FCN auxiliary head',
                   'seg/upernet_timm-convnext-tiny_4xb4-160k_ade20k-512x512.py', canvas=512,
                   task=SEGMENTATION),
    DetectorFamily('segformer', 'SegFormer head',
                   'seg/segformer_timm-pvt-v2-b2_8xb2-160k_ade20k-512x512.py', canvas=512,
                   task=SEGMENTATION),
    DetectorFamily('fpn', 'Semantic FPN (FPN + FPNHead)',
                   'seg/fpn_timm-efficientnet-b3_4xb4-160k_ade20k-512x512.py', canvas=512,
                   task=SEGMENTATION),
    DetectorFamily('mask2former', 'Mask2Former (mmseg)',
                   'seg/mask2former_timm-swin-tiny_8xb2-160k_ade20k-512x512.py', canvas=512,
                   task=SEGMENTATION),
)}
SEG_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.task == SEGMENTATION)


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


def get_family(name: str) -> DetectorFamily:
    """The family called `name`; a `ValueError` listing the families (and a close match)."""
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, list(FAMILIES), n=1)
        hint = f' Did you mean {close[0]!r}?' if close else ''
        raise ValueError(f'unknown detector family {name!r}; the shipped families are '
                         f'{", ".join(FAMILIES)}.{hint}')
    return FAMILIES[name]


@memoize(size=32)
def _shipped_model(name: str) -> Dict[str, Any]:
    """The family's shipped model config as a dict (the config is parsed once)."""
    return Config.fromfile(str(get_family(name).path)).model.to_dict()


def family_backbone(family: str, arch: str, pretrained: bool = True) -> Dict[str, Any]:
    """The TimmBackbone config of `arch` in a family: the family's options, plus an input size
    covering the family's canvas for a model that only runs at the size it is built for.

    Example:
        >>> family_backbone('dino', 'resnet18')['out_indices']
        (-3, -2, -1)
    """
    spec = get_family(family)
    shipped = _shipped_model(family)['backbone']
    options = {k: copy.deepcopy(shipped[k]) for k in FAMILY_OPTIONS if k in shipped}
    if isinstance(options.get('out_indices'), list):
        options['out_indices'] = tuple(options['out_indices'])
    cfg = dict(type='TimmBackbone', model_name=arch, **options, pretrained=pretrained)
    plan = plan_from_config({k: v for k, v in cfg.items() if k != 'pretrained'})
    if plan.fixed_size:  # the canvas in whole deepest strides, and the margin its maps need
        side = round_up(spec.canvas, max(s.stride for s in plan.specs)) + plan.margin
        cfg['input_size'] = (side, side)
    return cfg


def fixed_size_model(family: str, backbone: Mapping[str, Any]) -> Dict[str, Any]:
    """Model settings (besides the backbone) a family's config gets for a backbone that only
    runs at one size: a segmentor infers in slide mode on crops of the size it is built for
    (mmseg's whole-image inference would feed it test images larger than that); detectors need
    none.

    Example:
        >>> fixed_size_model('upernet', dict(input_size=(512, 512)))
        {'test_cfg': {'mode': 'slide', 'crop_size': (512, 512), 'stride': (341, 341)}}
    """
    size = backbone.get('input_size')
    if get_family(family).task != SEGMENTATION or size is None:
        return {}
    return dict(test_cfg=dict(mode='slide', crop_size=tuple(size),
                              stride=tuple(2 * s // 3 for s in size)))


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
    """A complete config (Python source) for `arch` in a family: the shipped config (absolute
    path, so the file works wherever it is saved) with its backbone replaced.

    Args:
        family: A key of `FAMILIES`.
        arch: A timm architecture or tag.
        pretrained: The backbone's `pretrained`.

    Example:
        >>> print(family_config_text('retinanet', 'convnext_tiny'))  # doctest: +SKIP
    """
    spec = get_family(family)
    backbone = family_backbone(family, arch, pretrained)
    specs = plan_from_config({k: v for k, v in backbone.items() if k != 'pretrained'}).specs
    levels = ', '.join(f'{s.channels}@{s.stride}' for s in specs)
    lines = [
        f"# {spec.title} with timm's {arch}: `timm-backbones config {family} {arch}`",
        f'# (configs/{spec.config} with the backbone swapped).',
        f'# Backbone outputs, channels@stride: {levels}.',
        "# Every channel and stride field of the base is 'auto': filled from the backbone when",
        f"# the config is resolved (any route: tools/train.py, {spec.package}'s own tools and "
        'APIs,',
        '# `timm-backbones check CONFIG`).',
    ]
    if 'input_size' in backbone:
        lines.append(f"# {arch} only runs at the size it is built for: built for "
                     f"{backbone['input_size']}, smaller inputs are zero-padded to it.")
    extra = fixed_size_model(family, backbone)
    if extra:
        lines.append('# Tested in slide mode, on crops of that size.')
    lines += [f'_base_ = [{str(spec.path)!r}]', '',
              f'model = {_py(dict(backbone=dict(_delete_=True, **backbone), **extra), 0)}', '']
    return '\n'.join(lines)


def family_model(family: str, arch: str) -> Dict[str, Any]:
    """The model config `family_config_text(family, arch, pretrained=False)` gives, as a dict
    (the shipped config is parsed once per family).

    Example:
        >>> family_model('yolof', 'resnet18')['neck']['type']
        'DilatedEncoder'
    """
    model = copy.deepcopy(_shipped_model(family))
    model['backbone'] = family_backbone(family, arch, pretrained=False)
    for key, value in fixed_size_model(family, model['backbone']).items():
        model[key] = {**model.get(key, {}), **value}  # merged as config inheritance merges
    return model
