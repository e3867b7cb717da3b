"""The detector families (`families.py`) are the shipped configs: each names a config in
configs/, `config FAMILY ARCH` prints that config with the backbone swapped, and the sweep checks
exactly that model."""
import os

import pytest
from mmengine.config import Config

from helpers import ROOT
from timm_backbones.families import (DETECTION, FAMILIES, FAMILY_OPTIONS, SEG_FAMILIES,
                                     SEGMENTATION, family_config_text, family_model, get_family)
from timm_backbones.sweep import MATRIX_FAMILIES


def test_families_are_the_shipped_configs():
    # rule: every family is a shipped COCO config (segmentation: ADE20K, in configs/seg/), and
    # every shipped COCO / ADE20K config is a family or a variant of one (e.g. layer decay)
    shipped = {f for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith('_coco.py')}
    shipped |= {f'seg/{f}' for f in os.listdir(os.path.join(ROOT, 'configs', 'seg'))
                if '_ade20k-' in f}
    assert {f.config for f in FAMILIES.values()} <= shipped
    assert all(any(os.path.basename(f).startswith(name + '_') or
                   os.path.basename(f).startswith(name + '-') for name in FAMILIES)
               for f in shipped), shipped
    assert {f.task for f in FAMILIES.values()} == {DETECTION, SEGMENTATION}
    assert set(SEG_FAMILIES) == {n for n, f in FAMILIES.items() if f.config.startswith('seg/')}


def test_fixed_size_models_in_segmentation_families_infer_in_slide_mode():
    # a model that only runs at one size is built for the family's 512x512 crops and tested on
    # crops of that size (mmseg's whole-image inference would feed it larger test images)
    model = family_model('upernet', 'hiera_tiny_224')
    assert model['backbone']['input_size'] == (512, 512)
    assert model['test_cfg'] == dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
    assert family_model('upernet', 'resnet18')['test_cfg'] == dict(mode='whole')  # as shipped
    assert 'slide' not in str(family_model('retinanet', 'hiera_tiny_224'))  # detection: none
    assert set(MATRIX_FAMILIES) <= set(FAMILIES)
    with pytest.raises(ValueError, match="unknown detector family 'retina'.*'retinanet'"):
        get_family('retina')


@pytest.mark.parametrize('family', list(FAMILIES))
def test_family_is_its_config_with_the_backbone_swapped(family):
    # rule: one source: everything but the backbone is the shipped config's, and the backbone
    # keeps only the family's options (the levels the neck takes)
    shipped = Config.fromfile(str(FAMILIES[family].path)).model.to_dict()
    model = family_model(family, 'convnext_atto')
    backbone = model.pop('backbone')
    wanted = {k: shipped['backbone'][k] for k in FAMILY_OPTIONS if k in shipped['backbone']}
    shipped.pop('backbone')
    assert model == shipped
    assert backbone == dict(type='TimmBackbone', model_name='convnext_atto', pretrained=False,
                            **{k: tuple(v) for k, v in wanted.items()})


@pytest.mark.parametrize('family', list(FAMILIES))
def test_family_model_is_the_printed_config(family, tmp_path):
    # rule: the sweep checks exactly the model the CLI prints
    path = tmp_path / 'cfg.py'
    path.write_text(family_config_text(family, 'convnext_atto', pretrained=False))
    printed = Config.fromfile(str(path)).model.to_dict()
    model = family_model(family, 'convnext_atto')
    assert printed['backbone'].pop('_delete_', None) in (True, None)
    assert Config(dict(model=printed)).model.to_dict() == Config(dict(model=model)).model.to_dict()


def test_fixed_size_models_get_a_canvas_their_maps_and_necks_fit():
    # a model that only runs at one size is built for the family's canvas rounded up to its
    # deepest stride (levit's 64: RTMDet's 672 -> 704, so its neck's 2x upsampling meets every
    # level), plus the margin its maps need (pit's stride-8 map is a pixel short: 8 px)
    from timm_backbones.families import family_backbone
    assert family_backbone('rtmdet', 'levit_128')['input_size'] == (704, 704)
    assert family_backbone('retinanet', 'levit_128')['input_size'] == (1344, 1344)
    assert family_backbone('retinanet', 'pit_ti_224')['input_size'] == (1352, 1352)
    assert 'input_size' not in family_backbone('rtmdet', 'resnet18')
