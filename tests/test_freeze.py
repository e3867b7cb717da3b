"""frozen_stages (`_freeze.py`): mmdet's meaning on every family (-1 nothing, 0 the stem, k the stem
and the first k stages; the stem ends before the first level of stride >= 4), frozen parameters
get no gradient, frozen modules stay in eval mode."""
import pytest
import torch
from helpers import REPRESENTATIVE
from mmdet.models import ResNet

import timm_backbones  # noqa: F401  (registers the modules)
from timm_backbones import TimmBackbone
from timm_backbones._freeze import find_module, first_stage


def _bn_stats(module):
    return {n: b.clone() for n, b in module.named_buffers() if 'running' in n}


def _num_frozen(module):
    return sum(p.numel() for p in module.parameters() if not p.requires_grad)


def _frozen_roots(backbone):
    """The top-level names (under the timm wrapper) of the frozen parameters."""
    return {n.split('.')[1] for n, p in backbone.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize('k', [0, 1, 2, 3, 4])
def test_resnet50_freezes_what_mmdet_resnet50_freezes(k):
    # the rule: frozen_stages has mmdet's meaning; on timm's resnet50 it freezes exactly the
    # parameters mmdet's ResNet-50 freezes (k=1: 225,344 = conv1/bn1 + layer1)
    timm_count = _num_frozen(TimmBackbone('resnet50', frozen_stages=k))
    assert timm_count == _num_frozen(ResNet(depth=50, frozen_stages=k))
    if k == 1:
        assert timm_count == 225344


def test_same_number_same_meaning_after_a_swap():
    # frozen_stages=1 is the stem and the first stage (stride 4) on every family; stride-2
    # levels (resnet's act1, efficientnet's blocks.0) belong to the stem
    assert _frozen_roots(TimmBackbone('resnet18', frozen_stages=1)) == {'conv1', 'bn1', 'layer1'}
    assert _frozen_roots(TimmBackbone('convnext_atto', frozen_stages=1)) == \
        {'stem_0', 'stem_1', 'stages_0'}
    effnet = TimmBackbone('efficientnet_b0', frozen_stages=1)
    assert _frozen_roots(effnet) == {'conv_stem', 'bn1', 'blocks'}
    blocks = {n.split('.')[2] for n, p in effnet.named_parameters()
              if not p.requires_grad and n.startswith('model.blocks.')}
    assert blocks == {'0', '1'}  # blocks.0 (stride 2: stem) and blocks.1 (stride 4: stage 1)
    assert _frozen_roots(TimmBackbone('mambaout_femto', frozen_stages=1)) == {'stem', 'stages_0'}


def test_frozen_stages_zero_is_the_stem():
    frozen = [n for n, p in TimmBackbone('resnet18', frozen_stages=0).named_parameters()
              if not p.requires_grad]
    assert frozen and all(n.startswith(('model.conv1.', 'model.bn1.')) for n in frozen)
    assert _num_frozen(TimmBackbone('resnet18', frozen_stages=-1)) == 0  # -1: nothing


def test_plain_model_stages_are_blocks():
    # ViT: patch_embed and the class/position tokens are the stem, each block a stage
    b = TimmBackbone('vit_tiny_patch16_224', frozen_stages=0)
    frozen = {n for n, p in b.named_parameters() if not p.requires_grad}
    assert {'model.model.cls_token', 'model.model.pos_embed'} <= frozen
    assert any('patch_embed' in n for n in frozen) and not any('blocks.' in n for n in frozen)
    b = TimmBackbone('vit_tiny_patch16_224', frozen_stages=2)
    frozen = {n for n, p in b.named_parameters() if not p.requires_grad}
    assert any('blocks.1.' in n for n in frozen) and not any('blocks.2.' in n for n in frozen)


def test_first_stage_is_the_first_level_of_stride_4():
    assert first_stage(TimmBackbone('resnet18').levels) == 1  # strides 2, 4, ...
    assert first_stage(TimmBackbone('convnext_atto').levels) == 0  # strides 4, ...
    assert first_stage(TimmBackbone('dla34').levels) == 2  # strides 1, 2, 4, ...


@pytest.mark.parametrize('name', [n for n in REPRESENTATIVE if n != 'hrnet_w18_small'])
def test_frozen_stages(name):
    backbone = TimmBackbone(name, frozen_stages=1)
    backbone.train()
    frozen = {id(p) for p in backbone.parameters() if not p.requires_grad}
    assert frozen, 'frozen_stages=1 froze nothing'
    assert len(frozen) < len(list(backbone.parameters())), 'froze everything'
    # the first stage's module is frozen
    stage = backbone.levels[first_stage(backbone.levels)].module
    first = dict(backbone.model.named_modules())[find_module(backbone.model, stage)]
    assert all(not p.requires_grad for p in first.parameters())
    frozen_modules = backbone.frozen_modules()
    assert frozen_modules and all(not m.training for m in frozen_modules)
    stats = {id(m): _bn_stats(m) for m in frozen_modules}
    outs = backbone(torch.rand(2, 3, 224, 224))
    sum(o.float().mean() for o in outs).backward()
    for p in backbone.parameters():
        if id(p) in frozen:
            assert p.grad is None  # frozen params get no gradient
    assert any(p.grad is not None for p in backbone.parameters() if p.requires_grad)
    for m in frozen_modules:  # running stats of frozen stages do not move
        for n, before in stats[id(m)].items():
            assert torch.equal(before, dict(m.named_buffers())[n])
    backbone.train(True)  # train() re-applies eval mode
    assert all(not m.training for m in frozen_modules)
