"""The in-graph operations of the end-to-end export that mmcv's compiled ops cannot give the
exporter, each with an eager implementation (so the end-to-end module runs, and is tested, in
PyTorch) and its ONNX translation for torch's dynamo exporter:

- `batched_nms_indices`: non-maximum suppression of a batch of images in one op, the semantics of
  ONNX `NonMaxSuppression` with one class (eager: torchvision's `nms` per image);
- `padded_nms`: mmcv's `batched_nms` (per-label NMS through coordinate offsets, as mmdet's heads
  call it) on fixed-size candidate lists, returning fixed-size `(B, K)` indices: the shapes a
  deployed graph needs;
- `roi_align`: mmcv's `RoIAlign` (avg pooling) as torchvision's `roi_align`, which the exporter
  translates to ONNX `RoiAlign` (opset >= 16 for `aligned=True`, `half_pixel`).

`TRANSLATIONS` is the `custom_translation_table` for `torch.onnx.export(..., dynamo=True)`.
"""
from typing import Callable, Dict, Tuple

import torch
import torchvision
from torch import Tensor

__all__ = ['batched_nms_indices', 'padded_nms', 'roi_align', 'translations', 'NOT_A_CANDIDATE']

# Candidates whose score is below 0 take no part in NMS: the heads' scores are probabilities.
NOT_A_CANDIDATE = -1.0
_SCORE_THRESHOLD = -0.5  # what NonMaxSuppression is given: every probability passes


@torch.library.custom_op('timm_backbones::batched_nms', mutates_args=())
def _batched_nms(boxes: Tensor, scores: Tensor, iou_threshold: float,
                 max_per_image: int) -> Tensor:
    selected = []
    for image in range(boxes.shape[0]):
        candidates = (scores[image] > _SCORE_THRESHOLD).nonzero().squeeze(1)
        keep = torchvision.ops.nms(boxes[image, candidates], scores[image, candidates],
                                   iou_threshold)
        keep = candidates[keep[:max_per_image]]
        selected.append(torch.stack([torch.full_like(keep, image), torch.zeros_like(keep), keep],
                                    1))
    return torch.cat(selected) if selected else boxes.new_zeros((0, 3), dtype=torch.int64)


@_batched_nms.register_fake
def _batched_nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float,
                      max_per_image: int) -> Tensor:
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 3), dtype=torch.int64)


def batched_nms_indices(boxes: Tensor, scores: Tensor, iou_threshold: float,
                        max_per_image: int) -> Tensor:
    """Greedy NMS of each image of a batch: ONNX `NonMaxSuppression` with one class.

    Args:
        boxes: `(B, N, 4)` boxes `(x1, y1, x2, y2)`.
        scores: `(B, N)`; a candidate takes part if its score is >= 0 (`NOT_A_CANDIDATE` marks
            the others).
        iou_threshold: A box is suppressed by a kept box of higher score when their IoU is
            greater than this.
        max_per_image: At most this many boxes are kept per image.

    Returns:
        `(M, 3)` int64 rows `(image, 0, box index)`, image by image, each image's in descending
        score order.

    Example:
        >>> batched_nms_indices(torch.tensor([[[0., 0, 10, 10], [1, 1, 10, 10]]]),
        ...                     torch.tensor([[0.9, 0.8]]), 0.5, 100)
        tensor([[0, 0, 0]])
    """
    return torch.ops.timm_backbones.batched_nms(boxes, scores, float(iou_threshold),
                                                int(max_per_image))


def padded_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, k: int,
               class_agnostic: bool = False) -> Tuple[Tensor, Tensor]:
    """mmcv's `batched_nms` on fixed-size candidate lists, keeping the best `k` per image.

    NMS runs per value of `idxs` (labels, or feature levels for RPN proposals) through mmcv's
    coordinate offsets: `idxs * (max coordinate + 1)` added to the boxes, the maximum taken over
    the image's candidates as mmcv takes it over the boxes it is given.

    Args:
        boxes: `(B, N, 4)`.
        scores: `(B, N)`, `NOT_A_CANDIDATE` (< 0) where a slot holds no candidate.
        idxs: `(B, N)` integer groups.
        iou_threshold: NMS IoU threshold (`nms.iou_threshold` of a `test_cfg`).
        k: Kept boxes per image (`max_per_img`).
        class_agnostic: NMS across groups (mmcv's `class_agnostic`).

    Returns:
        `index` `(B, k)` int64 positions in `N` of the kept boxes in descending score order (0
        in unused slots) and `keep` `(B, k)` bool, True for the slots holding a kept box.

    Example:
        >>> index, keep = padded_nms(boxes, scores, labels, 0.5, 100)
        >>> kept_boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))
    """
    batch = scores.shape[0]
    candidate = scores >= 0
    if class_agnostic:
        nms_boxes = boxes
    else:
        masked = torch.where(candidate[..., None], boxes, boxes.new_tensor(float('-inf')))
        max_coordinate = masked.flatten(1).amax(1)
        max_coordinate = torch.where(torch.isfinite(max_coordinate), max_coordinate,
                                     max_coordinate.new_zeros(()))
        offsets = idxs.to(boxes) * (max_coordinate[:, None] + boxes.new_tensor(1))
        nms_boxes = boxes + offsets[..., None]
    selected = batched_nms_indices(nms_boxes, scores, iou_threshold, k)
    image, box = selected[:, 0], selected[:, 2]
    counts = (image[:, None] == torch.arange(batch, device=image.device)[None, :]).sum(0)
    first = counts.cumsum(0) - counts  # where each image's rows start
    rank = torch.arange(selected.shape[0], device=image.device) - first[image]
    slot = image * k + rank  # rank < k: NMS kept at most k per image
    index = box.new_zeros(batch * k).index_copy(0, slot, box).view(batch, k)
    keep = torch.zeros(batch * k, dtype=torch.bool, device=box.device).index_copy(
        0, slot, torch.ones_like(box, dtype=torch.bool)).view(batch, k)
    return index, keep


def roi_align(features: Tensor, rois: Tensor, output_size: Tuple[int, int],
              spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """mmcv's `RoIAlign` (avg pooling) through torchvision, which exports to ONNX `RoiAlign`.

    Args:
        features: `(B, C, H, W)`.
        rois: `(N, 5)` rows `(image index, x1, y1, x2, y2)`.
        output_size: `(h, w)` of each RoI's features.
        spatial_scale: Feature-map scale of the input coordinates (1 / stride).
        sampling_ratio: Samples per bin side (0: adaptive, `ceil(roi size / output size)`).
        aligned: Half-pixel offset (mmcv's default, True).

    Example:
        >>> roi_align(torch.rand(1, 8, 32, 32), torch.tensor([[0., 1, 1, 20, 20]]), (7, 7),
        ...           1 / 4, 0, True).shape
        torch.Size([1, 8, 7, 7])
    """
    return torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio,
                                     aligned)


def translations() -> Dict[Callable, Callable]:
    """The dynamo exporter's `custom_translation_table` for the ops above (needs onnxscript).

    Example:
        >>> torch.onnx.export(model, args, dynamo=True, custom_translation_table=translations())
    """
    from onnxscript import opset18 as op
    from onnxscript.onnx_types import FLOAT, INT64

    def nms_onnx(boxes: FLOAT, scores: FLOAT, iou_threshold: float,
                 max_per_image: int) -> INT64:
        return op.NonMaxSuppression(boxes, op.Unsqueeze(scores, [1]),
                                    op.Constant(value_ints=[max_per_image]),
                                    op.Constant(value_floats=[iou_threshold]),
                                    op.Constant(value_floats=[_SCORE_THRESHOLD]))

    return {torch.ops.timm_backbones.batched_nms.default: nms_onnx}
