"""The head table: which fields of heads, RoI extractors and DETR-style transformers describe
the levels they are fed, as data. `_resolve.py` applies these rules; `_necks.py` holds the neck
rules.
"""
__all__ = ['NECK_FIELDS', 'DENSE_HEADS', 'LIST_IN_CHANNELS', 'HEAD_STRIDES', 'GENERATORS',
           'ROI_EXTRACTORS', 'ATTENTION_LEVELS', 'PAD_DIVISORS']

# Neck fields that may hold 'auto'; which of them a neck fills is its `NECKS` entry.
NECK_FIELDS = ('in_channels', 'num_levels', 'num_scales', 'out_channels')
# Detector keys of heads fed by the last neck's outputs (all of them).
DENSE_HEADS = ('rpn_head', 'bbox_head', 'mask_head', 'panoptic_head')
# Head classes (or their subclasses) whose in_channels has one entry per level; the others take
# one int shared by all levels.
LIST_IN_CHANNELS = ('MaskFormerHead', 'SSDHead', 'YOLOV3Head')
# Head arguments that are the strides of the levels the head is fed, by head (base) class.
HEAD_STRIDES = (('AnchorFreeHead', 'strides'), ('YOLOXHead', 'strides'),
                ('RepPointsHead', 'point_strides'), ('YOLOV3Head', 'featmap_strides'))
# Prior generators inside heads (any depth: CascadeRPNHead nests them in its stages).
GENERATORS = ('prior_generator', 'anchor_generator', 'approx_anchor_generator',
              'square_anchor_generator')
# RoI extractors fed the first len(featmap_strides) levels (`x[:extractor.num_inputs]`).
ROI_EXTRACTORS = ('bbox_roi_extractor', 'mask_roi_extractor', 'grid_roi_extractor')
# Multi-scale deformable attention of DETR-style detectors: one level per neck output.
ATTENTION_LEVELS = (('encoder', 'layer_cfg', 'self_attn_cfg'),
                    ('decoder', 'layer_cfg', 'cross_attn_cfg'))
# DetDataPreprocessor fields (paths) padding batches to a multiple.
PAD_DIVISORS = (('pad_size_divisor',),)
