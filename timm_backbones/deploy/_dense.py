"""Dense heads' post-processing with fixed shapes: what mmdet's `BaseDenseHead.predict_by_feat`
(RetinaNet, FCOS, ATSS, YOLOF, RTMDet, ...) and `RPNHead.predict_by_feat` do per image, done for
a batch with `(B, K)` outputs, so that it runs in a graph.

The steps and their order are mmdet's: per level, the `nms_pre` best (prior, class) scores above
`score_thr` (taking the `nms_pre` best and then dropping those not above `score_thr` keeps the
same set as mmdet's filter-then-top-k); the head's own `prior_generator` and `bbox_coder` decode
them, clipped to the unpadded input; score factors (centerness) multiply after thresholding;
`min_bbox_size`; NMS per label with mmcv's offsets; `max_per_img`. Candidates that mmdet drops are
kept as slots marked `NOT_A_CANDIDATE`, which NMS ignores.
"""
from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from mmdet.models.dense_heads import RPNHead
from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from torch import Tensor, nn

from ._ops import NOT_A_CANDIDATE, padded_nms
from ._settings import ExportError, nms_settings, positive_int

__all__ = ['Detections', 'check_dense_head', 'dense_detections', 'rpn_proposals', 'gather']

ImageSize = Tuple[int, int]  # (h, w) of the unpadded input: ints, or SymInts while exporting


class Detections(NamedTuple):
    """Fixed-size detections of a batch: `boxes (B, K, 4)`, `scores (B, K)`, `labels (B, K)`
    (-1 in empty slots), `keep (B, K)` (True for a detection; the first `keep.sum(1)` slots)."""
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    keep: Tensor


def gather(values: Tensor, index: Tensor) -> Tensor:
    """`values[b, index[b, k]]` for `values (B, N, ...)` and `index (B, K)`: `(B, K, ...)`.

    Example:
        >>> gather(torch.arange(6.).view(1, 3, 2), torch.tensor([[2, 0]]))
        tensor([[[4., 5.],
                 [0., 1.]]])
    """
    expanded = index.view(*index.shape, *([1] * (values.dim() - 2)))
    return values.gather(1, expanded.expand(*index.shape, *values.shape[2:]))


def _top(scores: Tensor, nms_pre: int) -> Tuple[Tensor, Tensor]:
    """The `nms_pre` best of `scores (B, N)` (all of them when fewer), best first."""
    k = torch.sym_min(nms_pre, scores.shape[1])
    return scores.topk(k, dim=1)


def _overridden(head: nn.Module, base: type, *names: str) -> List[str]:
    return [n for n in names if getattr(type(head), n) is not getattr(base, n)]


def check_dense_head(head: nn.Module, where: str) -> None:
    """Refuse a dense head whose post-processing is not `BaseDenseHead`'s (which this module
    reproduces), naming the head and what it overrides.

    Args:
        head: The detector's `bbox_head`.
        where: The detector's name for messages.
    """
    _check_head(head, BaseDenseHead, 'single-stage detectors whose bbox_head', where,
                exclude=RPNHead)
    if getattr(head.loss_cls, 'custom_cls_channels', False):
        raise ExportError(f'{where}: {type(head.loss_cls).__name__} has custom class channels '
                          f'(custom activation), which the end-to-end graph does not reproduce. '
                          f'Export the head tensors with --raw.')


def _scores(head: nn.Module, cls_score: Tensor) -> Tensor:
    """`(B, A*C, H, W)` logits -> `(B, H*W*A, C)` probabilities, as the head computes them."""
    batch = cls_score.shape[0]
    cls_score = cls_score.permute(0, 2, 3, 1).reshape(batch, -1, head.cls_out_channels)
    if head.use_sigmoid_cls:
        return cls_score.sigmoid()
    return cls_score.softmax(-1)[..., :-1]  # the last channel is the background


def _flat(tensor: Tensor, dim: int) -> Tensor:
    """`(B, A*dim, H, W)` -> `(B, H*W*A, dim)` (mmdet's order of priors)."""
    return tensor.permute(0, 2, 3, 1).reshape(tensor.shape[0], -1, dim)


def _decode(head: nn.Module, priors: Tensor, deltas: Tensor, size: ImageSize) -> Tensor:
    """The head's `bbox_coder.decode` of `(B, N, *)` priors and predictions, clipped to `size`."""
    batch = deltas.shape[0]
    boxes = head.bbox_coder.decode(priors.flatten(0, 1), deltas.flatten(0, 1), max_shape=size)
    return boxes.reshape(batch, -1, 4)


def _min_size(boxes: Tensor, min_bbox_size: float) -> Tensor:
    """mmdet's `min_bbox_size` rule: width and height strictly above it."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return (w > min_bbox_size) & (h > min_bbox_size)


def _nms(boxes: Tensor, scores: Tensor, labels: Tensor, cfg: Mapping, k: int,
         where: str) -> Detections:
    iou, agnostic = nms_settings(cfg.get('nms'), f'{where}.nms')
    index, keep = padded_nms(boxes, scores, labels, iou, k, agnostic)
    return Detections(
        boxes=torch.where(keep[..., None], gather(boxes, index), boxes.new_zeros(())),
        scores=torch.where(keep, gather(scores, index), scores.new_zeros(())),
        labels=torch.where(keep, gather(labels, index), labels.new_full((), -1)),
        keep=keep)


def dense_detections(head: nn.Module, outs: Sequence[List[Tensor]], size: ImageSize,
                     where: str) -> Detections:
    """`BaseDenseHead.predict_by_feat` for a batch, boxes in input coordinates (no rescale).

    Args:
        head: The `bbox_head` (checked with `check_dense_head`).
        outs: Its forward outputs: class scores and box predictions per level, and score
            factors (centerness) per level for FCOS/ATSS-style heads.
        size: (h, w) of the unpadded input (boxes are clipped to it, as to mmdet's `img_shape`).
        where: The `test_cfg`'s place in the config (messages).
    """
    cfg = head.test_cfg
    nms_pre = positive_int(cfg, 'nms_pre', where)
    k = positive_int(cfg, 'max_per_img', where)
    score_thr = cfg.get('score_thr', 0)
    cls_scores, bbox_preds = outs[0], outs[1]
    factors: Optional[List[Tensor]] = outs[2] if len(outs) > 2 else None
    priors = head.prior_generator.grid_priors([c.shape[-2:] for c in cls_scores],
                                              dtype=cls_scores[0].dtype,
                                              device=cls_scores[0].device)
    dim = head.bbox_coder.encode_size
    mlvl = {'scores': [], 'labels': [], 'priors': [], 'deltas': [], 'factors': []}
    for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
        scores = _scores(head, cls_score)
        classes = scores.shape[-1]
        top, index = _top(scores.flatten(1), nms_pre)  # (prior, class) pairs, best first
        prior = index // classes
        mlvl['scores'].append(torch.where(top > score_thr, top,
                                          top.new_tensor(NOT_A_CANDIDATE)))
        mlvl['labels'].append(index % classes)
        mlvl['priors'].append(priors[level][prior])
        mlvl['deltas'].append(gather(_flat(bbox_pred, dim), prior))
        if factors is not None:
            mlvl['factors'].append(gather(_flat(factors[level], 1), prior)[..., 0].sigmoid())
    scores = torch.cat(mlvl['scores'], 1)
    boxes = _decode(head, torch.cat(mlvl['priors'], 1), torch.cat(mlvl['deltas'], 1), size)
    valid = scores >= 0
    if factors is not None:
        scores = scores * torch.cat(mlvl['factors'], 1)
    if cfg.get('min_bbox_size', -1) >= 0:
        valid = valid & _min_size(boxes, cfg['min_bbox_size'])
    scores = torch.where(valid, scores, scores.new_tensor(NOT_A_CANDIDATE))
    return _nms(boxes, scores, torch.cat(mlvl['labels'], 1), cfg, k, where)


def check_rpn_head(head: nn.Module, where: str) -> None:
    """Refuse an RPN head whose post-processing is not `RPNHead`'s."""
    _check_head(head, RPNHead, 'two-stage detectors whose rpn_head', where)


def _check_head(head: nn.Module, base: type, role: str, where: str,
                exclude: Optional[type] = None) -> None:
    """`head` must be a `base` (not an `exclude`) that keeps `base`'s prediction methods."""
    if not isinstance(head, base) or (exclude is not None and isinstance(head, exclude)):
        raise ExportError(f'{where}: the end-to-end export handles {role} is an mmdet '
                          f'{base.__name__}, not {type(head).__name__}. Export the head tensors '
                          f'with --raw.')
    changed = _overridden(head, base, 'predict_by_feat', '_predict_by_feat_single',
                          '_bbox_post_process', 'predict')
    if changed:
        raise ExportError(f'{where}: {type(head).__name__} overrides {", ".join(changed)} of '
                          f"{base.__name__}, so its detections are not {base.__name__}'s "
                          f'post-processing, which the end-to-end graph reproduces. Export the '
                          f'head tensors with --raw.')


def rpn_proposals(head: nn.Module, outs: Sequence[List[Tensor]], size: ImageSize,
                  where: str) -> Detections:
    """`RPNHead.predict_by_feat` for a batch: `max_per_img` proposals per image (NMS per level).

    Args:
        head: The `rpn_head`.
        outs: Its forward outputs (objectness and box deltas per level).
        size: (h, w) of the unpadded input.
        where: The `test_cfg`'s place in the config (messages).
    """
    cfg = head.test_cfg
    nms_pre = positive_int(cfg, 'nms_pre', where)
    k = positive_int(cfg, 'max_per_img', where)
    cls_scores, bbox_preds = outs
    priors = head.prior_generator.grid_priors([c.shape[-2:] for c in cls_scores],
                                              dtype=cls_scores[0].dtype,
                                              device=cls_scores[0].device)
    dim = head.bbox_coder.encode_size
    mlvl = {'scores': [], 'levels': [], 'priors': [], 'deltas': []}
    for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
        top, index = _top(_scores(head, cls_score)[..., 0], nms_pre)
        mlvl['scores'].append(top)
        mlvl['levels'].append(torch.full_like(index, level))
        mlvl['priors'].append(priors[level][index])
        mlvl['deltas'].append(gather(_flat(bbox_pred, dim), index))
    scores = torch.cat(mlvl['scores'], 1)
    boxes = _decode(head, torch.cat(mlvl['priors'], 1), torch.cat(mlvl['deltas'], 1), size)
    if cfg.get('min_bbox_size', -1) >= 0:
        scores = torch.where(_min_size(boxes, cfg['min_bbox_size']), scores,
                             scores.new_tensor(NOT_A_CANDIDATE))
    return _nms(boxes, scores, torch.cat(mlvl['levels'], 1), cfg, k, where)
