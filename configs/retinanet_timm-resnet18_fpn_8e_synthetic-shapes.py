# The main job (`make demo`): RetinaNet with timm's resnet18 on the built-in synthetic shapes set
# (generated on first use into data/synthetic_shapes/), trained from scratch on a 2-core CPU in
# about 10 minutes, evaluated with the COCO metric (pycocotools). The work dir receives the
# checkpoints, loss_curve.png / .json and images with predicted boxes (vis_data/vis_image/).
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', './_base_/timm_runtime.py']

data_root = 'data/synthetic_shapes/'
synthetic = dict(num_train=400, num_val=100, img_size=(256, 256), seed=0)
classes = ('circle', 'square', 'triangle', 'star', 'cross')

model = dict(
    data_preprocessor=dict(  # timm's normalization; batches padded as the backbone needs
        pad_size_divisor='auto', mean='auto', std='auto'),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='resnet18',
        out_indices=(-3, -2, -1),  # the last three levels: strides 8, 16, 32
        pretrained=False),      # no hub access needed: trained from scratch
    neck=dict(in_channels='auto', out_channels=128, start_level=0, num_outs=4),
    bbox_head=dict(
        num_classes=len(classes),
        in_channels=128,
        feat_channels=128,
        stacked_convs=2,
        anchor_generator=dict(octave_base_scale=3, strides='auto')),
    test_cfg=dict(score_thr=0.05, max_per_img=50))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=synthetic['img_size'], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=synthetic['img_size'], keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
dataset = dict(type='SyntheticShapesDataset', data_root=data_root, synthetic=synthetic,
               metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=8, num_workers=1, persistent_workers=True,
    dataset=dict(_delete_=True, **dataset, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=True),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True,
    dataset=dict(_delete_=True, **dataset, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='SyntheticCocoMetric', data_root=data_root, synthetic=synthetic,
                     ann_file='annotations/instances_val.json', metric='bbox',
                     _delete_=True)
test_evaluator = val_evaluator

max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min=1e-5),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=4, max_keep_ckpts=2),
    visualization=dict(draw=True, interval=6, score_thr=0.3))  # ~4 val images with boxes
custom_hooks = [dict(type='LossCurveHook', interval=50)]
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False)
