# Mask R-CNN with timm's ConvNeXt-T, optimizer as mmdet's convnext/swin Mask R-CNN configs.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/timm_runtime.py']

model = dict(
    data_preprocessor=dict(  # timm's normalization; batches padded as the backbone needs
        pad_size_divisor='auto', mean='auto', std='auto'),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='convnext_tiny.fb_in1k',  # 4 levels, strides 4..32
        pretrained=True,
        drop_path_rate=0.4),
    neck=dict(in_channels='auto'),
    rpn_head=dict(anchor_generator=dict(strides='auto')),
    roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto'),
                  mask_roi_extractor=dict(featmap_strides='auto')))

optim_wrapper = dict(
    type='OptimWrapper',
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    optimizer=dict(
        _delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05))
