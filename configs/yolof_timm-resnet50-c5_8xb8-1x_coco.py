# YOLOF with timm's ResNet-50 (A1 recipe weights): the last level (C5, stride 32) only, as mmdet's
# yolof_r50-c5_8xb8-1x_coco.py.
_base_ = ['mmdet::yolof/yolof_r50-c5_8xb8-1x_coco.py', './_base_/timm_runtime.py']

model = dict(
    data_preprocessor=dict(  # RGB, timm's normalization (the base is caffe-style BGR)
        pad_size_divisor='auto', mean='auto', std='auto', bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='resnet50.a1_in1k',
        out_indices=(-1, ),
        pretrained=True,
        frozen_stages=1,
        norm_eval=True),
    neck=dict(in_channels='auto'),
    bbox_head=dict(anchor_generator=dict(strides='auto')))
