# Mask R-CNN with timm's ViT-B/16 (MAE weights) and layer-wise lr decay, set up as ViTDet: the
# last block feeds a simple feature pyramid (strides 4..32, built by TimmBackbone), AdamW with
# layer decay 0.7 through timm's own param_groups_layer_decay (block i: lr x 0.7 ** (12 - i), the
# patch embedding and tokens: lr x 0.7 ** 13; neck and heads: lr; no weight decay on 1-D
# parameters and timm's no_weight_decay() names such as pos_embed).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/timm_runtime.py']

model = dict(
    data_preprocessor=dict(  # timm's normalization; batches padded as the backbone needs
        pad_size_divisor='auto', mean='auto', std='auto'),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='vit_base_patch16_224.mae',  # any input size (dynamic_img_size)
        pretrained=True,
        drop_path_rate=0.1),
    neck=dict(in_channels='auto'),
    rpn_head=dict(anchor_generator=dict(strides='auto')),
    roi_head=dict(bbox_roi_extractor=dict(featmap_strides='auto'),
                  mask_roi_extractor=dict(featmap_strides='auto')))

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='TimmLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.7),
    optimizer=dict(
        _delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.1))
