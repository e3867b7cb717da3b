"""Plain (same-stride) models: simple feature pyramid, any input size, fixed-size models."""
import math

import pytest
import torch
from helpers import PLAIN

from timm_backbones import TimmBackbone, feature_specs

SIZE = (320, 416)  # non-square, not 224


def _exact_shapes(backbone, outs, size):
    assert len(outs) == len(backbone.feature_specs)
    for out, spec in zip(outs, backbone.feature_specs):
        assert out.shape[1] == spec.channels
        assert tuple(out.shape[2:]) == tuple(math.ceil(s / spec.stride) for s in size), \
            (out.shape, spec)


@pytest.mark.parametrize('name', PLAIN)
def test_plain_models_get_a_true_pyramid(name):
    backbone = TimmBackbone(name).eval()
    assert backbone.out_strides == [4, 8, 16, 32]
    with torch.no_grad():
        outs = backbone(torch.rand(1, 3, *SIZE))
    _exact_shapes(backbone, outs, SIZE)
    # ViTDet channels, halved per 2x upsampling, from the real model's last level; the specs
    # computed without weights say the same
    c = backbone.model.feature_info.info[-1]['num_chs']
    assert [o.shape[1] for o in outs] == [c // 4, c // 2, c, c]
    specs = feature_specs(dict(type='TimmBackbone', model_name=name))
    assert [(s.channels, s.stride) for s in specs] == [(c // 4, 4), (c // 2, 8), (c, 16), (c, 32)]


def test_pyramid_layouts_and_options():
    # one level per stride (BEiT / mmseg style)
    b = TimmBackbone('deit_tiny_patch16_224', out_indices=(2, 5, 8, 11))
    assert [s.index for s in b.feature_specs] == [2, 5, 8, 11]
    assert b.out_strides == [4, 8, 16, 32]
    with torch.no_grad():
        _exact_shapes(b, b.eval()(torch.rand(1, 3, *SIZE)), SIZE)
    # n levels feed the n deepest strides
    b = TimmBackbone('vit_tiny_patch16_224', out_indices=(-3, -2, -1))
    assert b.out_strides == [8, 16, 32] and [s.index for s in b.feature_specs] == [9, 10, 11]
    # a single requested level: no pyramid under 'auto' (e.g. YOLOF's one level) ...
    b = TimmBackbone('vit_tiny_patch16_224', out_indices=(-1,))
    assert b.pyramid is None and b.out_strides == [16]
    # ... but 'simple' builds one from it
    b = TimmBackbone('vit_tiny_patch16_224', out_indices=(-1,), pyramid='simple',
                     pyramid_strides=(8, 16, 32, 64), pyramid_channels=96)
    assert b.out_strides == [8, 16, 32, 64] and b.out_channels == [96] * 4
    with torch.no_grad():
        _exact_shapes(b, b.eval()(torch.rand(1, 3, *SIZE)), SIZE)
    # pyramid=None keeps timm's same-stride levels
    b = TimmBackbone('vit_tiny_patch16_224', pyramid=None)
    assert b.out_strides == [16, 16, 16, 16]


def test_skipped_levels_pass_their_source_through():
    # a None stride is a level the neck does not read: no parameters, the source map (cropped
    # to ceil(input / its stride)) comes out unchanged
    b = TimmBackbone('vit_tiny_patch16_224', pyramid_strides=(None, 8, 16, 32)).eval()
    assert b.out_strides == [16, 8, 16, 32] and b.out_channels == [192, 96, 192, 192]
    assert list(b.pyramid.branches[0].parameters()) == []
    x = torch.rand(1, 3, *SIZE)  # 320x416: multiples of 16, so nothing is cropped
    with torch.no_grad():
        outs = b(x)
        source = b.model(x)[-1]
    _exact_shapes(b, outs, SIZE)
    assert torch.equal(outs[0], source)


def test_pyramid_errors():
    with pytest.raises(ValueError, match=r"is hierarchical.*Use pyramid=None"):
        TimmBackbone('resnet18', pyramid='simple')  # hierarchical models need no pyramid
    with pytest.raises(ValueError, match='give one level .* or at most one level per stride'):
        TimmBackbone('vit_tiny_patch16_224', out_indices=(7, 8, 9, 10, 11))  # 5 levels, 4 strides
    with pytest.raises(ValueError, match="pyramid must be 'auto', 'simple' or None"):
        TimmBackbone('vit_tiny_patch16_224', pyramid='fpn')
    with pytest.raises(ValueError, match='pyramid_strides must be increasing'):
        TimmBackbone('vit_tiny_patch16_224', pyramid_strides=(16, 8))
    with pytest.raises(ValueError, match='pyramid_strides must be increasing'):
        TimmBackbone('vit_tiny_patch16_224', pyramid_strides=(None, None))  # builds nothing


@pytest.mark.parametrize('name,divisor', [('swin_tiny_patch4_window7_224', 32),
                                          ('vit_tiny_patch16_224', 1),
                                          ('maxvit_tiny_tf_224', 224)])
def test_any_input_size(name, divisor):
    backbone = TimmBackbone(name).eval()
    assert all(s.pad_divisor == divisor for s in backbone.feature_specs)
    with torch.no_grad():  # not a multiple of the divisor: padded, then cropped
        _exact_shapes(backbone, backbone(torch.rand(1, 3, 300, 404)), (300, 404))


def test_fixed_size_model():
    # pit has fixed position embeddings: it runs at one size; smaller inputs are padded
    backbone = TimmBackbone('pit_ti_224', input_size=(320, 416)).eval()
    assert backbone.plan.fixed_size == (320, 416)
    with torch.no_grad():
        _exact_shapes(backbone, backbone(torch.rand(1, 3, 300, 400)), (300, 400))
    with pytest.raises(ValueError, match=r'only runs at 320x416.*input_size=\(H, W\)'):
        backbone(torch.rand(1, 3, 352, 416))  # larger than the built size
    with pytest.raises(ValueError, match="cannot be built for that size.*input_size='any'"):
        TimmBackbone('resnet18', input_size=(320, 416))  # CNNs take any size already


def test_plain_model_frozen_stages_and_with_cp():
    b = TimmBackbone('vit_tiny_patch16_224', frozen_stages=3, with_cp=True)
    frozen = {n for n, p in b.named_parameters() if not p.requires_grad}
    assert any('patch_embed' in n for n in frozen) and any('cls_token' in n for n in frozen)
    assert any('blocks.2.' in n for n in frozen) and not any('blocks.3.' in n for n in frozen)
    assert not any(n.startswith('pyramid') for n in frozen)
    outs = b.train()(torch.rand(1, 3, 128, 160))
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is None for n, p in b.named_parameters() if n in frozen)
    assert all(p.grad is not None for n, p in b.named_parameters()
               if n.startswith('pyramid') and p.requires_grad)


def test_input_size_fixed_keeps_timm_defaults():
    # 'fixed': no dynamic-size arguments, so a ViT only runs at its native 224x224 (smaller
    # inputs padded to it, larger ones a clear error); 'any' (default) takes the larger input
    fixed = TimmBackbone('vit_tiny_patch16_224', input_size='fixed').eval()
    assert 'dynamic_img_size' not in fixed.plan.kwargs and fixed.plan.fixed_size == (224, 224)
    with torch.no_grad():
        _exact_shapes(fixed, fixed(torch.rand(1, 3, 160, 208)), (160, 208))
        with pytest.raises(ValueError, match='only runs at 224x224'):
            fixed(torch.rand(1, 3, *SIZE))
        anysize = TimmBackbone('vit_tiny_patch16_224').eval()
        assert anysize.plan.kwargs['dynamic_img_size'] and anysize.plan.fixed_size is None
        _exact_shapes(anysize, anysize(torch.rand(1, 3, *SIZE)), SIZE)
    with pytest.raises(ValueError, match="input_size must be 'any', 'fixed' or"):
        TimmBackbone('vit_tiny_patch16_224', input_size='dynamic')
