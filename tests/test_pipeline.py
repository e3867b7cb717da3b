"""`input_size='auto'` (`wiring/_pipeline.py`): models that only run at one size are built for the
largest image the config's pipelines produce; unreadable pipelines fail asking for (H, W)."""
import os

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config

import timm_backbones  # noqa: F401  (registers the modules)
from timm_backbones import TimmBackbone, resolve_config
from timm_backbones.wiring._pipeline import largest_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = 'retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py'  # pipelines: Resize to 256


def config(name):
    return Config.fromfile(os.path.join(ROOT, 'configs', name))


def pipeline_cfg(*transforms, **preprocessor):
    """A config with one train pipeline: loading, `transforms`, packing."""
    steps = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
             *transforms, dict(type='PackDetInputs')]
    return dict(train_dataloader=dict(dataset=dict(type='CocoDataset', pipeline=steps)),
                model=dict(data_preprocessor=dict(type='DetDataPreprocessor', **preprocessor)))


def largest(cfg):
    return largest_image(cfg, cfg['model']['data_preprocessor'])


@pytest.mark.parametrize('name, expected', [
    (SYNTHETIC, (256, 256)),
    ('rtmdet_timm-convnext-tiny_4xb32-100e_coco.py', (640, 640)),  # crop + pad, both stages
    ('dino-4scale_timm-swin-tiny_8xb2-12e_coco.py', (1333, 1333)),  # RandomChoice of resizes
    # pad_size_divisor='auto': the padding follows from the backbone (resolve_input_size
    # rounds the size up to the backbone's deepest stride)
    ('retinanet_timm-pvt-v2-b2_fpn_1x_coco.py', (1333, 1333)),
])
def test_largest_image_of_shipped_configs(name, expected):
    cfg = config(name)
    assert largest_image(cfg, cfg.model.data_preprocessor) == expected


@pytest.mark.parametrize('transforms, preprocessor, expected', [
    ([dict(type='Resize', scale=(1333, 800), keep_ratio=True)], {}, (1333, 1333)),  # either way
    ([dict(type='Resize', scale=(320, 256), keep_ratio=False)], {}, (256, 320)),  # (w, h)
    ([dict(type='RandomResize', scale=(640, 480), ratio_range=(0.5, 2.0), keep_ratio=True),
      dict(type='RandomCrop', crop_size=(512, 384))], {}, (384, 512)),  # crop: (w, h)
    ([dict(type='RandomChoiceResize', scales=[(480, 1333), (800, 1000)], keep_ratio=True)], {},
     (1333, 1333)),
    ([dict(type='Mosaic', img_scale=(320, 320)),
      dict(type='RandomAffine', border=(-160, -160))], {}, (320, 320)),
    ([dict(type='Resize', scale=(300, 200), keep_ratio=False),
      dict(type='Pad', size_divisor=64)], {}, (256, 320)),
    ([dict(type='Resize', scale=(300, 200), keep_ratio=False)], dict(pad_size_divisor=32),
     (224, 320)),
    ([dict(type='Resize', scale=(300, 200), keep_ratio=False)],
     dict(batch_augments=[dict(type='BatchFixedSizePad', size=(256, 256))]), (256, 300)),
])
def test_largest_image_of_transforms(transforms, preprocessor, expected):
    assert largest(pipeline_cfg(*transforms, **preprocessor)) == expected


def test_fixed_size_model_runs_in_a_stock_pipeline():
    # efficientformerv2 only runs at the size it is built for (224 by default); swapped into a
    # config whose pipeline gives 256x256 images it is built for 256x256, and runs
    cfg = config(SYNTHETIC)
    cfg.merge_from_dict({'model.backbone.model_name': 'efficientformerv2_s0'})
    default = TimmBackbone('efficientformerv2_s0', out_indices=(-3, -2, -1)).eval()
    with pytest.raises(ValueError, match='only runs at 224x224'):
        default(torch.rand(1, 3, 256, 256))  # the failure input_size='auto' prevents
    backbone_cfg = resolve_config(cfg).model.backbone
    assert list(backbone_cfg.input_size) == [256, 256]
    backbone = MODELS.build(backbone_cfg).eval()
    with torch.no_grad():
        outs = backbone(torch.rand(1, 3, 256, 256))
        assert [o.shape[-1] for o in outs] == [32, 16, 8]
        assert [o.shape[-1] for o in backbone(torch.rand(1, 3, 192, 256))] == [32, 16, 8]


def test_auto_choices():
    # explicit 'auto' on a model that takes any size: 'any'
    cfg = config(SYNTHETIC)
    cfg.model.backbone.input_size = 'auto'
    assert resolve_config(cfg).model.backbone.input_size == 'any'
    # a model that only takes square sizes gets the square holding the largest image
    cfg = pipeline_cfg(dict(type='Resize', scale=(320, 256), keep_ratio=False))
    cfg['model']['backbone'] = dict(type='TimmBackbone', model_name='nest_tiny',
                                    input_size='auto')
    assert list(resolve_config(cfg)['model']['backbone']['input_size']) == [320, 320]
    # a model config alone, input_size left out: timm's size, as before
    alone = dict(type='RetinaNet', backbone=dict(type='TimmBackbone', model_name='nest_tiny'))
    assert 'input_size' not in resolve_config(alone)['backbone']


def test_unreadable_pipelines_ask_for_input_size():
    cfg = pipeline_cfg(dict(type='Resize', scale=(320, 256), keep_ratio=False),
                       dict(type='Albu', transforms=[]))
    cfg['model']['backbone'] = dict(type='TimmBackbone', model_name='efficientformerv2_s0')
    with pytest.raises(ValueError, match=r"(?s)input_size \(missing\).*only runs at one input "
                                         r"size.*transform 'Albu'.*input_size=\(H, W\)"):
        resolve_config(cfg)
    no_resize = pipeline_cfg()  # sizes of the original images
    no_resize['model']['backbone'] = dict(type='TimmBackbone', model_name='efficientformerv2_s0',
                                          input_size='auto')
    with pytest.raises(ValueError, match=r"input_size='auto'.*original image size"):
        resolve_config(no_resize)
    alone = dict(type='RetinaNet', backbone=dict(type='TimmBackbone',
                                                 model_name='efficientformerv2_s0',
                                                 input_size='auto'))
    with pytest.raises(ValueError, match='no train/val/test dataloader pipelines'):
        resolve_config(alone)
    with pytest.raises(ValueError, match="input_size='auto' is filled by resolve_config"):
        TimmBackbone('efficientformerv2_s0', input_size='auto')  # built directly


def test_auto_size_covers_the_margin_of_short_maps():
    # pit's stride-8 map falls a pixel short of input / 8: built for the largest image plus
    # that margin, its maps cover every image of the pipeline
    cfg = pipeline_cfg(dict(type='Resize', scale=(416, 320), keep_ratio=False))
    cfg['model']['backbone'] = dict(type='TimmBackbone', model_name='pit_ti_224',
                                    input_size='auto')
    backbone_cfg = resolve_config(cfg)['model']['backbone']
    assert list(backbone_cfg['input_size']) == [328, 424]
    backbone = MODELS.build(backbone_cfg)
    assert backbone.plan.max_input == (320, 416)


# ---- segmentors (mmseg) --------------------------------------------------------------------------
SEG_ROOT = os.path.join(ROOT, 'configs', 'seg')
UPERNET = 'upernet_timm-convnext-tiny_4xb4-160k_ade20k-512x512.py'
MASK2FORMER = 'mask2former_timm-swin-tiny_8xb2-160k_ade20k-512x512.py'
SEG_DEMO = 'upernet_timm-resnet18_1xb8-400it_synthetic-shapes-128x128.py'


def seg_config(name, **changes):
    cfg = Config.fromfile(os.path.join(SEG_ROOT, name))
    cfg.merge_from_dict(changes)
    return cfg


def seg_largest(cfg):
    return largest_image(cfg, cfg.model.data_preprocessor, cfg.model)


@pytest.mark.parametrize('name, changes, expected', [
    # ADE20K: training crops 512x512 (RandomCrop after RandomResize, padded to size=crop_size);
    # whole-image tests: Resize(2048, 512) keeping the ratio, in either orientation
    (UPERNET, {}, (2048, 2048)),
    # slide inference: the model sees crops of test_cfg.crop_size only
    (UPERNET, {'model.test_cfg': dict(mode='slide', crop_size=(512, 512), stride=(341, 341))},
     (512, 512)),
    # Mask2Former: ResizeShortestEdge (long side <= max_size 2048), then a 512x512 crop; tests
    # padded to test_cfg.size_divisor
    (MASK2FORMER, {}, (2048, 2048)),
    (MASK2FORMER, {'model.test_cfg': dict(mode='slide', crop_size=(512, 512))}, (512, 512)),
    (SEG_DEMO, {}, (128, 128)),
])
def test_largest_image_of_segmentation_configs(name, changes, expected):
    assert seg_largest(seg_config(name, **changes)) == expected


def test_segmentation_pipelines_read_in_mmseg_terms():
    # mmseg's RandomCrop takes (h, w) (mmdet's takes (w, h)); ResizeShortestEdge without
    # max_size keeps the original aspect ratio: unreadable
    crop = [dict(type='RandomResize', scale=(640, 640), ratio_range=(1.0, 2.0), keep_ratio=True),
            dict(type='RandomCrop', crop_size=(256, 320))]
    cfg = dict(train_dataloader=dict(dataset=dict(pipeline=crop)),
               model=dict(decode_head=dict(), data_preprocessor=dict(size=None)))
    assert largest_image(cfg, cfg['model']['data_preprocessor'], cfg['model']) == (256, 320)
    assert largest_image(cfg, cfg['model']['data_preprocessor']) == (320, 256)  # as mmdet's
    cfg['train_dataloader']['dataset']['pipeline'] = [dict(type='ResizeShortestEdge', scale=512)]
    with pytest.raises(ValueError, match='ResizeShortestEdge without max_size keeps the aspect'):
        largest_image(cfg, {}, cfg['model'])


def test_fixed_size_model_sized_from_mmseg_pipelines():
    # hiera only runs at the size it is built for: in the UPerNet config with slide inference it
    # is built for the 512x512 crops; with whole-image inference for ADE20K's test images
    slide = dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
    cfg = seg_config(UPERNET, **{'model.backbone.model_name': 'hiera_tiny_224',
                                 'model.test_cfg': slide})
    assert list(resolve_config(cfg).model.backbone.input_size) == [512, 512]
    cfg = seg_config(UPERNET, **{'model.backbone.model_name': 'hiera_tiny_224',
                                 'model.backbone.input_size': 'auto'})
    assert list(resolve_config(cfg).model.backbone.input_size) == [2048, 2048]
