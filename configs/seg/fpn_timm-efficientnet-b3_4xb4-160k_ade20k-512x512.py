# Semantic FPN with timm's EfficientNet-B3 on ADE20K (mmseg's sem_fpn/fpn_r50 setup with the
# backbone swapped): the last four levels (strides 4..32) into the FPN neck, its four outputs into
# FPNHead; the neck's in_channels, the head's in_channels, in_index and feature_strides are filled
# from the backbone.
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py', './_base_/timm_seg_runtime.py']

model = dict(
    pretrained=None,  # the base's 'open-mmlab://resnet50_v1c' (backbone weights: see below)
    data_preprocessor=dict(mean='auto', std='auto', size_divisor='auto'),  # timm's normalization
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='efficientnet_b3.ra2_in1k',  # 5 levels; the default last four: strides 4..32
        pretrained=True,
        drop_path_rate=0.2),
    neck=dict(in_channels='auto'),
    decode_head=dict(in_channels='auto', in_index='auto', feature_strides='auto'))
