# UPerNet with timm's ConvNeXt-T on ADE20K (mmseg's upernet_r50 setup with the backbone swapped):
# the four levels (strides 4..32) into UPerHead, the stride-16 level into the auxiliary FCN head.
# Optimizer as mmseg's convnext/upernet_convnext_tiny config (AdamW, lr 1e-4).
_base_ = ['mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py',
          './_base_/timm_seg_runtime.py']

model = dict(
    pretrained=None,  # the base's 'open-mmlab://resnet50_v1c' (backbone weights: see below)
    data_preprocessor=dict(mean='auto', std='auto', size_divisor='auto'),  # timm's normalization
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='convnext_tiny.fb_in1k',  # 4 levels, strides 4..32
        pretrained=True,
        drop_path_rate=0.4),
    decode_head=dict(in_channels='auto', in_index='auto'),
    auxiliary_head=dict(in_channels='auto', in_index='auto'))  # the level nearest stride 16

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, begin=1500, end=160000, eta_min=0.0, by_epoch=False),
]
