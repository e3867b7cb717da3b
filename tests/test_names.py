"""`_names.py`: the one mapping from a timm feature wrapper's names back to the full model's,
checked against the real wrappers (FeatureListNet flattens, FeatureGetterNet and
EfficientNetFeatures keep the model's names under or without a prefix)."""
import pytest
import timm
import torch

from timm_backbones._names import full_name, spellings, unwrapped_name, wrapper_path


def test_spellings_unflatten_and_drop_prefixes():
    assert list(spellings('stages_1.blocks.0.w')) == [
        'stages_1.blocks.0.w', 'stages.1.blocks.0.w', 'blocks.0.w', '0.w', 'w']
    assert list(spellings('model.conv_stem.weight'))[:3] == [
        'model.conv_stem.weight', 'conv_stem.weight', 'conv.stem.weight']


@pytest.mark.parametrize('name', ['convnext_atto', 'vit_tiny_patch16_224', 'efficientnet_b0',
                                  'resnet18', 'swin_tiny_patch4_window7_224', 'xception41'])
def test_every_wrapper_parameter_maps_to_the_full_model(name):
    # rule: each parameter of the feature wrapper is a parameter of the full model, with the
    # same shape (layer decay and the pretrained-load count rely on it)
    with torch.device('meta'):
        full = dict(timm.create_model(name).named_parameters())
        wrapper = timm.create_model(name, features_only=True)
    for wname, param in wrapper.named_parameters():
        found = full_name(wname, lambda n: n in full and full[n].shape == param.shape)
        assert found is not None, wname
        assert wname.endswith(found) or found.replace('.', '_', 1) in wname, (wname, found)


def test_wrapper_path_finds_feature_info_modules():
    # rule: every feature_info module of a wrapper is found under the wrapper's own name
    with torch.device('meta'):
        listed = timm.create_model('convnext_atto', features_only=True)
        getter = timm.create_model('vit_tiny_patch16_224', features_only=True)
    paths = [p for p, _ in listed.named_modules()]
    assert wrapper_path(paths, 'stages.1') == 'stages_1'
    assert wrapper_path([p for p, _ in getter.named_modules()], 'blocks.11') == 'model.blocks.11'
    assert wrapper_path(paths, 'no.such') == '' and wrapper_path(paths, '') == ''


def test_wrapper_parts_are_dropped():
    # rule: FSDP units and activation-checkpoint wrappers insert name parts; the one mapping
    # drops them, so an FSDP-wrapped model's names map like the plain model's
    name = 'model.blocks.0._fsdp_wrapped_module._checkpoint_wrapped_module.norm1.weight'
    assert unwrapped_name(name) == 'model.blocks.0.norm1.weight'
    assert full_name(name, {'blocks.0.norm1.weight'}.__contains__) == 'blocks.0.norm1.weight'
    assert full_name('_fsdp_wrapped_module.stages_1.w', {'stages.1.w'}.__contains__) == \
        'stages.1.w'
    paths = ['model.blocks.0', 'model.blocks.0._fsdp_wrapped_module']
    assert wrapper_path(paths, 'blocks.0') == 'model.blocks.0'  # the outermost: the FSDP unit
