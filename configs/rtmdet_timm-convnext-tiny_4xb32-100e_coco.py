# RTMDet-L with timm's ConvNeXt-T, as mmdet's rtmdet_l_convnext_b_4xb32-100e_coco.py (100 epochs;
# plain AdamW instead of mmpretrain's layer-wise lr decay). Neck and head keep the base's SyncBN
# (batch norm on one process) rather than that config's GroupNorm(32): its groups must divide
# every width the neck derives from the backbone's channels (half of each level's), which most
# timm backbones' do not (convnext_atto: 40), so swapping the backbone would fail (resolve_config
# rejects such a pairing, naming the norm).
_base_ = ['mmdet::rtmdet/rtmdet_l_8xb32-300e_coco.py', './_base_/timm_runtime.py']

model = dict(
    data_preprocessor=dict(
        _delete_=True,
        type='DetDataPreprocessor',
        mean='auto',  # timm pretrained_cfg of the backbone
        std='auto',
        bgr_to_rgb=True,
        pad_size_divisor='auto',
        batch_augments=None),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='convnext_tiny.fb_in1k',
        out_indices=(-3, -2, -1),  # the last three levels: strides 8, 16, 32
        pretrained=True,
        drop_path_rate=0.4,
        with_cp=True),
    neck=dict(in_channels='auto'),
    bbox_head=dict(anchor_generator=dict(strides='auto')))

max_epochs = 100
stage2_num_epochs = 10
interval = 10
base_lr = 0.001

train_cfg = dict(
    max_epochs=max_epochs,
    val_interval=interval,
    dynamic_intervals=[(max_epochs - stage2_num_epochs, 1)])

optim_wrapper = dict(optimizer=dict(lr=base_lr))

param_scheduler = [
    dict(type='LinearLR', start_factor=1.0e-5, by_epoch=False, begin=0, end=1000),
    dict(
        # cosine lr from epoch 50 to 100
        type='CosineAnnealingLR',
        eta_min=base_lr * 0.05,
        begin=max_epochs // 2,
        end=max_epochs,
        T_max=max_epochs // 2,
        by_epoch=True,
        convert_to_iter_based=True),
]

custom_hooks = [
    dict(
        type='EMAHook',
        ema_type='ExpMomentumEMA',
        momentum=0.0002,
        update_buffers=True,
        priority=49),
    dict(
        type='PipelineSwitchHook',
        switch_epoch=max_epochs - stage2_num_epochs,
        switch_pipeline={{_base_.train_pipeline_stage2}})
]
