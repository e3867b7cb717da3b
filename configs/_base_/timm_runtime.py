# Shared by every timm_backbones config; list it after the mmdet base config(s):
#   _base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', './_base_/timm_runtime.py']
#
# - custom_imports: importing timm_backbones registers TimmBackbone, `timm.<arch>`, the runner
#   and hooks; timm_backbones.data registers the built-in synthetic dataset and metric (kept out
#   of the plugin import itself, which stays light). mmdet's own tools/train.py and
#   tools/test.py load these configs too.
# - runner_type: TimmBackboneRunner resolves 'auto' channel/stride fields from the timm backbone
#   before building, keeps timm's fused norm+act layers under SyncBN (sync_bn='torch'), loads
#   checkpoints weights-only, and runs `--launcher pytorch` on CPUs (gloo).
#
# Backbones with pretrained=True download timm's weights (Hugging Face hub) when the model is
# built. Offline, point pretrained at a timm weight file instead
# (--cfg-options model.backbone.pretrained=/path/to/pytorch_model.bin), or use
# pretrained=False (random init). The configs' data preprocessors use mean='auto', std='auto':
# resolve_config fills the normalization of the backbone's timm pretrained_cfg (RGB, 0..255),
# and rejects explicit values that disagree with a pretrained backbone's.
custom_imports = dict(imports=['timm_backbones', 'timm_backbones.data'],
                      allow_failed_imports=False)
# Scoped name: mmdet's tools/train.py looks runners up in mmengine's root registry, with no default
# scope set yet; the runner is registered in mmdet's.
runner_type = 'mmdet.TimmBackboneRunner'
# Augmentation randomness per sample: each training sample's pipeline (RandomFlip, ...) is seeded
# from (seed, epoch, sample index) instead of a dataloader worker's running stream, so a run
# resumed with --resume ends bit-exactly where an uninterrupted one does, whatever num_workers and
# persistent_workers are (timm_backbones/engine/_seeding.py). False: mmengine's per-worker seeding.
sample_seeding = True
