# FCOS with timm's ResNet-50 (A1 recipe weights), as mmdet's fcos_r50-caffe_fpn_gn-head_1x_coco.py.
_base_ = ['mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', './_base_/timm_runtime.py']

model = dict(
    data_preprocessor=dict(  # RGB, timm's normalization (the base is caffe-style BGR)
        pad_size_divisor='auto', mean='auto', std='auto', bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='resnet50.a1_in1k',  # last 4 levels: strides 4..32
        pretrained=True,
        frozen_stages=1,
        norm_eval=True),
    neck=dict(in_channels='auto'),
    bbox_head=dict(strides='auto'))
