# Shared by every timm_backbones segmentation config; list it after the mmseg base config(s):
#   _base_ = ['mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py',
#             './_base_/timm_seg_runtime.py']
#
# - custom_imports: importing timm_backbones.seg registers TimmBackbone, `timm.<arch>`, the
#   runner, hooks, the layer-decay constructor and the built-in synthetic segmentation set in
#   mmseg's registries, and makes mmseg's MODELS resolve 'auto' fields when it builds a model
#   (mmseg's own tools/train.py, tools/test.py and MMSegInferencer load these configs too).
# - runner_type: TimmBackboneRunner resolves the whole config before building (so a fixed-size
#   backbone gets its input size from the pipelines), keeps timm's fused norm+act layers under
#   SyncBN, writes plain checkpoints and loads them weights-only. Scoped name: mmseg's
#   tools/train.py looks runners up before any default scope is set.
#
# Configs on mmseg's ResNet bases also set model.pretrained=None: those bases set
# 'open-mmlab://resnet50_v1c', which mmseg would hand to the backbone (a timm backbone chooses its
# weights with backbone.pretrained); resolve_config says so if it is left in.
#
# Backbones with pretrained=True download timm's weights (Hugging Face hub) when the model is
# built; offline, point pretrained at a timm weight file
# (--cfg-options model.backbone.pretrained=/path/to/pytorch_model.bin) or use pretrained=False.
custom_imports = dict(imports=['timm_backbones', 'timm_backbones.seg'],
                      allow_failed_imports=False)
runner_type = 'mmseg.TimmBackboneRunner'
sample_seeding = True  # per-sample augmentation seeding: exact resume (see timm_runtime.py)
