"""Layer-wise lr decay (`engine/_layer_decay.py`): every timm backbone parameter gets the lr scale
and weight decay that timm's own `param_groups_layer_decay` gives it in the full timm model,
necks and heads the base lr; mmengine's other paramwise_cfg keys compose with it."""
import os

import pytest
import timm
import torch
from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from timm.optim import param_groups_layer_decay
from torch import nn

import timm_backbones  # noqa: F401  (registers the modules)
from timm_backbones import TimmBackbone, TimmLayerDecayOptimWrapperConstructor, build_detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR, WD, RATE = 1e-3, 0.05, 0.75
# a CNN, ConvNeXt, a ViT (FeatureGetterNet), Swin (NHWC), MambaOut (NHWC), EfficientNet (its own
# feature class)
MODELS = ['resnet18', 'convnext_atto', 'vit_tiny_patch16_224', 'swin_tiny_patch4_window7_224',
          'mambaout_femto', 'efficientnet_b0']


class Detector(nn.Module):
    """A backbone with a neck and a head, as the constructor sees a detector."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Conv2d(backbone.out_channels[-1], 8, 1)
        self.head = nn.Linear(8, 2)


def _timm_reference(name, tmp_path):
    """The full timm model with every parameter filled with its own number (1, 2, ...), saved as a
    timm weight file, and what timm's `param_groups_layer_decay` gives each number."""
    full = timm.create_model(name)
    with torch.no_grad():
        for i, p in enumerate(full.parameters()):
            p.fill_(i + 1)
    path = str(tmp_path / f'{name}.pth')
    torch.save(full.state_dict(), path)
    groups = param_groups_layer_decay(full, weight_decay=WD, layer_decay=RATE,
                                      no_weight_decay_list=full.no_weight_decay()
                                      if hasattr(full, 'no_weight_decay') else ())
    expected = {int(p.flatten()[0].item()): (LR * g['lr_scale'], g['weight_decay'])
                for g in groups for p in g['params']}
    return path, expected


def _groups(model, **paramwise):
    wrapper = TimmLayerDecayOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=LR, weight_decay=WD)),
        dict(layer_decay_rate=RATE, **paramwise))(model)
    return wrapper.optimizer.param_groups


def _by_param(groups):
    found = {}
    for g in groups:
        for p in g['params']:
            assert id(p) not in found, 'a parameter is in two groups'
            found[id(p)] = g
    return found


@pytest.mark.parametrize('name', MODELS)
def test_matches_timm_param_groups_layer_decay(name, tmp_path):
    # the rule: each backbone parameter's (lr, weight_decay) equals timm's for that parameter of
    # the full model; the parameter is identified through timm's own weight loading (the weight
    # file of the full model, loaded into the feature extractor)
    path, expected = _timm_reference(name, tmp_path)
    model = Detector(TimmBackbone(name, pretrained=path))
    groups = _by_param(_groups(model))
    assert set(groups) == {id(p) for p in model.parameters()}  # every parameter, exactly once
    for n, p in model.backbone.model.named_parameters():  # the timm part (not the pyramid)
        group = groups[id(p)]
        lr, wd = expected[int(p.flatten()[0].item())]
        assert group['lr'] == pytest.approx(lr) and group.get('weight_decay', WD) == wd, n
    assert len({g['lr'] for g in groups.values()}) > 3  # layers really differ
    new = [model.neck, model.head] + ([model.backbone.pyramid] if model.backbone.pyramid else [])
    for p in (p for m in new for p in m.parameters()):
        assert groups[id(p)].get('lr', LR) == LR  # neck, head, simple pyramid: the base lr


def test_composes_with_mmengine_paramwise_keys():
    model = Detector(TimmBackbone('convnext_atto'))
    plain = _by_param(_groups(model))
    groups = _by_param(_groups(model, norm_decay_mult=0.0, custom_keys={
        'neck': dict(lr_mult=2.0), 'backbone.model.stages_3': dict(lr_mult=0.5)}))
    assert all(groups[id(p)]['lr'] == 2 * LR for p in model.neck.parameters())  # custom_keys
    stage3 = [p for n, p in model.backbone.named_parameters() if n.startswith('model.stages_3')]
    assert stage3 and all(groups[id(p)]['lr'] == pytest.approx(0.5 * plain[id(p)]['lr'])
                          for p in stage3)  # lr_mult x layer scale
    norm = model.backbone.model.stages_0.blocks[0].norm
    assert groups[id(norm.weight)]['weight_decay'] == 0.0  # norm_decay_mult
    conv = model.backbone.model.stages_0.blocks[0].conv_dw.weight
    assert groups[id(conv)]['weight_decay'] == WD and groups[id(conv)]['lr'] < LR


def test_pyramid_and_frozen_stages():
    # a ViT's simple pyramid is new (neck-like): base lr; frozen parameters are in no group
    model = Detector(TimmBackbone('vit_tiny_patch16_224', frozen_stages=2))
    groups = _by_param(_groups(model))
    assert set(groups) == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(groups[id(p)].get('lr', LR) == LR for p in model.backbone.pyramid.parameters())
    blocks = model.backbone.model.model.blocks
    assert groups[id(blocks[11].attn.qkv.weight)]['lr'] == pytest.approx(LR * RATE)
    assert groups[id(blocks[2].attn.qkv.weight)]['lr'] == pytest.approx(LR * RATE ** 10)


def test_registered_and_built_from_the_shipped_config():
    # the shipped layer-decay config, as users run it (pretrained=False: no download)
    cfg = Config.fromfile(os.path.join(
        ROOT, 'configs', 'mask-rcnn_timm-vit-base-p16-mae_fpn_layer-decay-1x_coco.py'))
    assert cfg.optim_wrapper.constructor == 'TimmLayerDecayOptimWrapperConstructor'
    assert OPTIM_WRAPPER_CONSTRUCTORS.get(cfg.optim_wrapper.constructor) is \
        TimmLayerDecayOptimWrapperConstructor
    cfg.model.backbone.pretrained = False
    init_default_scope('mmdet')
    model = build_detector(cfg)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    groups = _by_param(wrapper.optimizer.param_groups)
    rate, lr = cfg.optim_wrapper.paramwise_cfg.layer_decay_rate, cfg.optim_wrapper.optimizer.lr
    vit = model.backbone.model.model
    assert groups[id(vit.blocks[11].mlp.fc1.weight)]['lr'] == pytest.approx(lr * rate)
    assert groups[id(vit.patch_embed.proj.weight)]['lr'] == pytest.approx(lr * rate ** 13)
    assert groups[id(vit.pos_embed)]['weight_decay'] == 0.0  # timm's no_weight_decay()
    assert all(groups[id(p)]['lr'] == lr for p in model.rpn_head.parameters())


def test_bad_input():
    no_matcher = r"PoolingVisionTransformer \('pit_ti_224'\) has no group_matcher.*remove"
    with pytest.raises(ValueError, match=no_matcher):  # models without group_matcher
        _groups(Detector(TimmBackbone('pit_ti_224')))
    with pytest.raises(ValueError, match=r'layer_decay_rate must be a number in \(0, 1\]'):
        TimmLayerDecayOptimWrapperConstructor(dict(optimizer=dict(type='SGD', lr=0.1)),
                                              dict(layer_decay_rate=1.5))
    with pytest.raises(ValueError, match='needs paramwise_cfg=dict.layer_decay_rate'):
        TimmLayerDecayOptimWrapperConstructor(dict(optimizer=dict(type='SGD', lr=0.1)), {})
    with pytest.raises(ValueError, match='the model has no TimmBackbone'):
        _groups(nn.Sequential(nn.Linear(2, 2)))
