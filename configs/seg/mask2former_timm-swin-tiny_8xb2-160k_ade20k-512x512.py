# Mask2Former with timm's Swin-T on ADE20K (mmseg's mask2former_r50 setup with the backbone
# swapped): the four levels (strides 4..32) into the head; its in_channels, the head's strides and
# its pixel decoder's strides (the ones that are used) are filled from the backbone.
_base_ = ['mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py']

# ./_base_/timm_seg_runtime.py, written out: mmseg's Mask2Former base sets custom_imports itself
# (mmdet.models), and mmengine refuses a key set by two bases.
custom_imports = dict(imports=['mmdet.models', 'timm_backbones', 'timm_backbones.seg'],
                      allow_failed_imports=False)
runner_type = 'mmseg.TimmBackboneRunner'
sample_seeding = True

model = dict(
    data_preprocessor=dict(  # timm's normalization; Swin's windows: padded to multiples of 32
        mean='auto', std='auto', test_cfg=dict(size_divisor='auto')),
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='swin_tiny_patch4_window7_224.ms_in1k',  # any input size (dynamic_img_size)
        pretrained=True,
        drop_path_rate=0.3),
    decode_head=dict(
        in_channels='auto',
        strides='auto',  # mmseg passes it on to mmdet's head, which ignores it
        pixel_decoder=dict(strides='auto')))

# as mmseg's mask2former_swin-t config: the backbone at 0.1x lr, no decay on norms, position
# tables and query/level embeddings
backbone_embed_multi = dict(lr_mult=0.1, decay_mult=0.0)
embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=0.1, decay_mult=1.0),
            'relative_position_bias_table': backbone_embed_multi,
            'query_embed': embed_multi,
            'query_feat': embed_multi,
            'level_embed': embed_multi,
        },
        norm_decay_mult=0.0))
