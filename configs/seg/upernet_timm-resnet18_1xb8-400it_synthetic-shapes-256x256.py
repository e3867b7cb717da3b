# The segmentation demo (`make demo-seg`): UPerNet with timm's resnet18 on the built-in synthetic
# shapes with per-pixel label maps (generated on first use into data/synthetic_shapes_seg/; the
# background is class 0, the five shapes 1..5), trained from scratch on a 2-core CPU in a few
# minutes and evaluated with mmseg's IoUMetric (mIoU over the six classes). The work dir receives
# the checkpoints, loss_curve.png / .json and pictures of validation images with their ground
# truth and predicted masks (<timestamp>/vis_data/vis_image/).
_base_ = ['mmseg::upernet/upernet_r18_4xb4-80k_ade20k-512x512.py',
          './_base_/timm_seg_runtime.py']

data_root = 'data/synthetic_shapes_seg/'
synthetic = dict(num_train=400, num_val=100, img_size=(256, 256), seed=0)
num_classes = 6  # background + circle, square, triangle, star, cross
crop_size = (256, 256)
norm_cfg = dict(type='BN', requires_grad=True)  # one process (the runner reverts SyncBN anyway)

model = dict(
    pretrained=None,  # the base's 'open-mmlab://resnet18_v1c': the timm backbone is trained
    data_preprocessor=dict(  # timm's normalization; training batches padded to the crop size
        mean='auto', std='auto', size=crop_size),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='resnet18',  # the last four levels: strides 4..32
        pretrained=False),      # no hub access needed: trained from scratch
    decode_head=dict(in_channels='auto', in_index='auto', channels=128, num_classes=num_classes,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels='auto', in_index='auto',  # the level nearest stride 16
                        channels=64, num_classes=num_classes, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
dataset = dict(type='SyntheticShapesSegDataset', data_root=data_root, synthetic=synthetic)
train_dataloader = dict(
    batch_size=8, num_workers=1, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(_delete_=True, **dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train')))
val_dataloader = dict(
    batch_size=1, num_workers=1, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(_delete_=True, **dataset, pipeline=test_pipeline, test_mode=True,
                 data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val')))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 400
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=200)
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=0.9, eta_min=1e-5, by_epoch=False, begin=50, end=max_iters),
]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=200, max_keep_ckpts=2),
    visualization=dict(draw=True, interval=25))  # 4 of the 100 validation images, with masks
visualizer = dict(alpha=0.6)  # masks over the image, the shapes still visible beneath
custom_hooks = [dict(type='LossCurveHook', interval=50)]
randomness = dict(seed=0)
