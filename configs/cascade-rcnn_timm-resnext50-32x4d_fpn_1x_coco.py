# Cascade R-CNN with timm's ResNeXt-50 32x4d, as mmdet's cascade-rcnn_x101-32x4d_fpn_1x_coco.py.
_base_ = ['mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py', './_base_/timm_runtime.py']

model = dict(
    data_preprocessor=dict(  # timm's normalization; batches padded as the backbone needs
        pad_size_divisor='auto', mean='auto', std='auto'),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='resnext50_32x4d.a1h_in1k',  # last 4 levels: strides 4..32
        pretrained=True,
        frozen_stages=1,
        norm_eval=True),
    neck=dict(in_channels='auto'),
    rpn_head=dict(anchor_generator=dict(strides='auto')),
    roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto')))
