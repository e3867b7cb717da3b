"""RoI heads' prediction with fixed shapes: mmdet's `StandardRoIHead.predict` (Faster / Mask
R-CNN) and `CascadeRoIHead.predict` (Cascade (Mask) R-CNN) for a batch of `(B, P)` padded
proposals, so that it runs in a graph.

mmdet's steps, in its order: RoI features from the level `map_roi_levels` picks (RoIAlign as
torchvision's `roi_align`, computed on every level and selected per RoI, since a graph cannot
split RoIs by level), the box head, softmax, the box coder (clipped to the unpadded input),
`multiclass_nms` (every (RoI, class) pair above `score_thr`, NMS per class, `max_per_img`); a
cascade refines the RoIs stage by stage with the argmax class and averages the stages' logits;
the mask head runs on the detected boxes and gives each its label's `(28, 28)` probabilities
(mmdet pastes them into the image afterwards, as `OnnxDetector` and `tools/infer_onnx.py` do).
Padded proposals go through the heads too, and their pairs take no part in NMS.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
from mmdet.models.roi_heads.bbox_heads import BBoxHead
from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from torch import Tensor, nn

from ._dense import Detections, ImageSize, _nms, _overridden
from ._ops import NOT_A_CANDIDATE, roi_align
from ._settings import ExportError, positive_int

__all__ = ['check_roi_head', 'roi_detections', 'roi_masks']


def _stages(roi_head: nn.Module, name: str) -> List[nn.Module]:
    modules = getattr(roi_head, name)
    return list(modules) if isinstance(modules, nn.ModuleList) else [modules]


def check_roi_head(roi_head: nn.Module, where: str) -> None:
    """Refuse RoI heads, extractors and box/mask heads whose prediction is not the one this module
    reproduces, naming the part and the fix.

    Args:
        roi_head: The detector's `roi_head`.
        where: The detector's name for messages.
    """
    base = CascadeRoIHead if isinstance(roi_head, CascadeRoIHead) else StandardRoIHead
    if not isinstance(roi_head, (StandardRoIHead, CascadeRoIHead)):
        raise ExportError(f'{where}: the end-to-end export handles StandardRoIHead and '
                          f'CascadeRoIHead, not {type(roi_head).__name__}. Export the head '
                          f'tensors with --raw.')
    changed = _overridden(roi_head, base, 'predict', 'predict_bbox', 'predict_mask',
                          '_bbox_forward', '_mask_forward')
    if changed:
        raise ExportError(f'{where}: {type(roi_head).__name__} overrides {", ".join(changed)} '
                          f'of {base.__name__}; the end-to-end graph reproduces '
                          f"{base.__name__}'s prediction. Export the head tensors with --raw.")
    parts = [('bbox_roi_extractor', SingleRoIExtractor), ('bbox_head', BBoxHead)]
    if roi_head.with_mask:
        parts += [('mask_roi_extractor', SingleRoIExtractor), ('mask_head', FCNMaskHead)]
        if getattr(roi_head, 'share_roi_extractor', False):
            raise ExportError(f'{where}: share_roi_extractor=True is not reproduced by the '
                              f'end-to-end graph. Export the head tensors with --raw.')
    for name, kind in parts:
        for module in _stages(roi_head, name):
            if type(module) is not kind and not isinstance(module, kind):
                raise ExportError(f'{where}: roi_head.{name} is {type(module).__name__}; the '
                                  f'end-to-end graph handles {kind.__name__} and its subclasses.')
            if kind is SingleRoIExtractor:
                _check_extractor(module, f'{where}: roi_head.{name}')
            if kind is BBoxHead:
                if _overridden(module, BBoxHead, '_predict_by_feat_single', 'regress_by_class'):
                    raise ExportError(f'{where}: roi_head.{name} ({type(module).__name__}) '
                                      f'has its own prediction, not BBoxHead\'s. Export the head '
                                      f'tensors with --raw.')
                if module.custom_cls_channels or module.custom_activation:
                    raise ExportError(f'{where}: roi_head.{name} uses '
                                      f'{type(module.loss_cls).__name__} (custom activation), '
                                      f'which the end-to-end graph does not reproduce.')
                if not module.with_reg:
                    raise ExportError(f'{where}: roi_head.{name} has no box regression '
                                      f'(with_reg=False); the end-to-end graph needs it.')
    if roi_head.with_shared_head:
        raise ExportError(f'{where}: roi_head.shared_head (a ResLayer after RoIAlign, C4 '
                          f'models) is not reproduced by the end-to-end graph. Export the head '
                          f'tensors with --raw.')


def _check_extractor(extractor: nn.Module, where: str) -> None:
    for layer in extractor.roi_layers:
        kind = type(layer).__name__
        if kind != 'RoIAlign' or getattr(layer, 'pool_mode', 'avg') != 'avg':
            mode = getattr(layer, 'pool_mode', None)
            raise ExportError(f"{where} uses {kind} (pool_mode={mode!r}): the end-to-end graph "
                              f"has RoIAlign with pool_mode='avg' (ONNX RoiAlign). Export the "
                              f'head tensors with --raw.')


def _roi_features(extractor: nn.Module, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
    """`SingleRoIExtractor.forward`: each RoI's features from the level `map_roi_levels` picks."""
    feats = feats[:extractor.num_inputs]
    rois = rois.type_as(feats[0])

    def align(level: int) -> Tensor:
        layer = extractor.roi_layers[level]
        return roi_align(feats[level], rois, layer.output_size, layer.spatial_scale,
                         layer.sampling_ratio, layer.aligned)

    if len(feats) == 1:
        return align(0)
    levels = extractor.map_roi_levels(rois, len(feats))
    out = align(0)
    for level in range(1, len(feats)):
        out = torch.where((levels == level)[:, None, None, None], align(level), out)
    return out


def _rois(boxes: Tensor) -> Tensor:
    """`(B, P, 4)` -> `(B * P, 5)` rows `(image index, x1, y1, x2, y2)` (mmdet's `bbox2roi`)."""
    batch, count = boxes.shape[:2]
    index = torch.arange(batch, device=boxes.device, dtype=boxes.dtype)
    index = index[:, None, None].expand(batch, count, 1)
    return torch.cat([index, boxes], -1).flatten(0, 1)


def _box_forward(roi_head: nn.Module, stage: Optional[int], feats: Sequence[Tensor],
                 rois: Tensor) -> Tuple[Tensor, Tensor]:
    extractor, head = roi_head.bbox_roi_extractor, roi_head.bbox_head
    if stage is not None:
        extractor, head = extractor[stage], head[stage]
    return head(_roi_features(extractor, feats, rois))


def _decode(head: nn.Module, rois: Tensor, deltas: Tensor, size: ImageSize) -> Tensor:
    return head.bbox_coder.decode(rois, deltas, max_shape=size)


def roi_detections(roi_head: nn.Module, feats: Sequence[Tensor], proposals: Detections,
                   size: ImageSize, where: str) -> Detections:
    """`StandardRoIHead.predict_bbox` / `CascadeRoIHead.predict_bbox` for a batch (no rescale).

    Args:
        roi_head: The detector's `roi_head` (checked with `check_roi_head`).
        feats: The neck's feature maps.
        proposals: `rpn_proposals` (padded, `keep` marks the proposals).
        size: (h, w) of the unpadded input.
        where: The rcnn `test_cfg`'s place in the config (messages).
    """
    cfg = roi_head.test_cfg
    k = positive_int(cfg, 'max_per_img', where)
    batch, count = proposals.keep.shape
    rois = _rois(proposals.boxes)
    if isinstance(roi_head, CascadeRoIHead):
        logits = []
        for stage in range(roi_head.num_stages):
            cls_score, bbox_pred = _box_forward(roi_head, stage, feats, rois)
            logits.append(cls_score)
            if stage < roi_head.num_stages - 1:
                head = roi_head.bbox_head[stage]
                label = cls_score[:, :-1].argmax(dim=1)
                refined = head.regress_by_class(rois[:, 1:], label, bbox_pred,
                                                dict(img_shape=size))
                rois = torch.cat([rois[:, :1], refined], 1)
        cls_score = sum(logits) / float(len(logits))
        head = roi_head.bbox_head[-1]
    else:
        cls_score, bbox_pred = _box_forward(roi_head, None, feats, rois)
        head = roi_head.bbox_head
    scores = torch.softmax(cls_score, -1)[:, :-1].reshape(batch, count, -1)
    classes = scores.shape[-1]
    per_class = 1 if head.reg_class_agnostic else head.num_classes
    boxes = _decode(head, rois[:, 1:].repeat_interleave(per_class, dim=0),
                    bbox_pred.reshape(-1, head.bbox_coder.encode_size), size)
    boxes = boxes.reshape(batch, count, per_class, 4).expand(batch, count, classes, 4)
    valid = (scores > cfg.get('score_thr', 0)) & proposals.keep[..., None]
    scores = torch.where(valid, scores, scores.new_tensor(NOT_A_CANDIDATE))
    labels = torch.arange(classes, device=scores.device).expand(batch, count, classes)
    return _nms(boxes.reshape(batch, -1, 4), scores.flatten(1), labels.flatten(1), cfg, k, where)


def roi_masks(roi_head: nn.Module, feats: Sequence[Tensor], detections: Detections) -> Tensor:
    """The mask head's `(B, K, 28, 28)` probabilities of each detection's label (zeros in empty
    slots): `StandardRoIHead.predict_mask` before pasting; a cascade averages its stages'
    probabilities (mmdet's `merge_aug_masks`).

    Args:
        roi_head: The detector's `roi_head`.
        feats: The neck's feature maps.
        detections: `roi_detections`.
    """
    batch, k = detections.keep.shape
    rois = _rois(detections.boxes)
    stages = range(roi_head.num_stages) if isinstance(roi_head, CascadeRoIHead) else [None]
    probabilities = []
    for stage in stages:
        extractor, head = roi_head.mask_roi_extractor, roi_head.mask_head
        if stage is not None:
            extractor, head = extractor[stage], head[stage]
        logits = head(_roi_features(extractor, feats, rois))
        if not head.class_agnostic:
            label = detections.labels.clamp(min=0).flatten()
            logits = logits.gather(1, label[:, None, None, None].expand(-1, 1, *logits.shape[2:]))
        probabilities.append(logits[:, 0].sigmoid())
    masks = (sum(probabilities) / float(len(probabilities))).reshape(batch, k,
                                                                     *probabilities[0].shape[1:])
    return torch.where(detections.keep[..., None, None], masks, masks.new_zeros(()))
