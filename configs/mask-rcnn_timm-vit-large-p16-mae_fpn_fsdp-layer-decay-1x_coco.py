# Mask R-CNN with timm's ViT-L/16 (MAE weights), set up as ViTDet and trained with FSDP: the
# ViT-B config's detector (simple feature pyramid from the last block, FPN, layer-wise lr decay
# through timm's param_groups_layer_decay) with the large model, sharded over the GPUs by
# mmengine's FlexibleRunner + FSDPStrategy instead of a DDP replica per GPU.
#
#   tools/dist_train.sh configs/mask-rcnn_timm-vit-large-p16-mae_fpn_fsdp-layer-decay-1x_coco.py 8
#
# - runner_type: TimmBackboneFlexibleRunner, the FlexibleRunner counterpart of
#   TimmBackboneRunner (resolved 'auto' fields, per-sample seeding, verified weights-only loads,
#   gloo on CPUs); mmdet's own tools/train.py runs it too.
# - Each of the 24 ViT blocks is one FSDP unit ('timm_block_wrap_policy': the blocks are found
#   from the timm model, so swapping model_name for e.g. eva02_large_patch14_224.mim_in22k needs
#   no other edit) and is recomputed in the backward pass ('timm_block_check_fn').
# - bf16 mixed precision for the blocks only (on GPUs): the stem, the pyramid, the neck and the
#   heads stay in float32 (mmcv's RoIAlign has no bfloat16 kernel).
# - Checkpoints are full state dicts (state_dict_cfg='full'): init_detector, tools/test.py and
#   DDP runs (TimmBackboneRunner) load them, and runs resume from each other's checkpoints.
_base_ = './mask-rcnn_timm-vit-base-p16-mae_fpn_layer-decay-1x_coco.py'

model = dict(
    backbone=dict(
        model_name='vit_large_patch16_224.mae',  # 24 blocks, 1024 channels, ~303 M parameters
        drop_path_rate=0.4))  # ViTDet's rate for ViT-L

# ViTDet's layer decay for ViT-L: block i gets lr x 0.8 ** (24 - i)
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.8))

runner_type = 'mmdet.TimmBackboneFlexibleRunner'
strategy = dict(
    type='FSDPStrategy',
    model_wrapper=dict(
        auto_wrap_policy=dict(
            type='timm_block_wrap_policy',
            mixed_precision=dict(param_dtype='bfloat16', reduce_dtype='float32',
                                 buffer_dtype='float32'))),
    activation_checkpointing=dict(check_fn='timm_block_check_fn'),
    state_dict_cfg='full')
