# RetinaNet with timm's PVTv2-B2, as mmdet's retinanet_pvtv2-b2_fpn_1x_coco.py.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', './_base_/timm_runtime.py']

model = dict(
    data_preprocessor=dict(  # timm's normalization; batches padded as the backbone needs
        pad_size_divisor='auto', mean='auto', std='auto'),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='pvt_v2_b2',  # 4 levels, strides 4..32
        pretrained=True,
        drop_path_rate=0.1),
    neck=dict(in_channels='auto'),  # FPN start_level=1: P3-P5 + 2 extra levels, as the base
    bbox_head=dict(anchor_generator=dict(strides='auto')))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, weight_decay=0.0001))
