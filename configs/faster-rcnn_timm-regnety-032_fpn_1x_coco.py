# Faster R-CNN with timm's RegNetY-3.2GF, as mmdet's faster-rcnn_regnetx-3.2GF_fpn_1x_coco.py.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', './_base_/timm_runtime.py']

model = dict(
    data_preprocessor=dict(  # timm's normalization; batches padded as the backbone needs
        pad_size_divisor='auto', mean='auto', std='auto'),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='regnety_032.ra_in1k',  # last 4 levels: strides 4..32
        pretrained=True,
        frozen_stages=1,
        norm_eval=True),
    neck=dict(in_channels='auto'),
    rpn_head=dict(anchor_generator=dict(strides='auto')),
    roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto')))

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.00005))
