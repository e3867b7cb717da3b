# SegFormer's all-MLP head with timm's PVTv2-B2 on ADE20K (mmseg's segformer_mit-b0 setup with the
# backbone swapped): PVTv2 is the hierarchical transformer SegFormer's MiT encoder is derived from
# (overlapping patch embeddings, spatial-reduction attention); its four levels (strides 4..32)
# feed the head, with in_channels and in_index filled from the backbone.
_base_ = ['mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
          './_base_/timm_seg_runtime.py']

model = dict(
    data_preprocessor=dict(mean='auto', std='auto', size_divisor='auto'),  # timm's normalization
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='pvt_v2_b2.in1k',  # 4 levels, strides 4..32; takes any input size
        pretrained=True,
        drop_path_rate=0.1),
    decode_head=dict(in_channels='auto', in_index='auto'))
