# DINO (4 scales) with timm's Swin-T: levels 1-3 (strides 8, 16, 32) into the ChannelMapper, which
# adds the fourth scale, as mmdet's dino-4scale_r50_8xb2-12e_coco.py.
_base_ = ['mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', './_base_/timm_runtime.py']

model = dict(
    data_preprocessor=dict(  # Swin's windows: multiples of 32 (base: 1); timm's normalization
        pad_size_divisor='auto', mean='auto', std='auto'),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='swin_tiny_patch4_window7_224.ms_in1k',  # any input size (dynamic_img_size)
        out_indices=(-3, -2, -1),  # the last three levels: strides 8, 16, 32
        pretrained=True,
        drop_path_rate=0.2),
    neck=dict(in_channels='auto'))
