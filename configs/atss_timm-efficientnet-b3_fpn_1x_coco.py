# ATSS with timm's EfficientNet-B3, set up as mmdet's EfficientNet-B3 RetinaNet: three levels
# (strides 8, 16, 32) into the FPN, SyncBN in the backbone (timm's SyncBatchNormAct keeps the
# activations fused into its batch norms; reverted to batch norms without a distributed launcher).
_base_ = ['mmdet::atss/atss_r50_fpn_1x_coco.py', './_base_/timm_runtime.py']

model = dict(
    data_preprocessor=dict(  # timm's normalization; batches padded as the backbone needs
        pad_size_divisor='auto', mean='auto', std='auto'),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='efficientnet_b3',
        out_indices=(-3, -2, -1),  # the last three levels: strides 8, 16, 32
        pretrained=True,
        frozen_stages=0,
        norm_eval=False,
        sync_bn=True,
        drop_path_rate=0.2),
    neck=dict(in_channels='auto', start_level=0, add_extra_convs='on_input'),
    bbox_head=dict(anchor_generator=dict(strides='auto')))
