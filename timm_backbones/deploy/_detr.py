"""DINO's prediction with shapes a graph can carry: mmdet's `DINO.predict` for a batch.

mmdet's transformer reads the feature maps' sizes back from a `spatial_shapes` tensor (it loops
over its rows to build reference points, proposals and the per-level views of multi-scale
deformable attention), which a graph cannot do: the sizes would be data. While the graph is
built, three methods of the detector's own modules are replaced by versions that take the sizes
from the feature maps themselves (`_level_sizes`); their arithmetic is mmdet's / mmcv's:

- `DeformableDetrTransformerEncoder.get_encoder_reference_points`,
- `DeformableDETR.gen_encoder_output_proposals`,
- `MultiScaleDeformableAttention.forward` (mmcv's PyTorch path, `grid_sample`, instead of its
  compiled CUDA op, which has no ONNX equivalent).

The padding mask is always computed (mmdet skips it when no image of the batch is padded, which
gives the same numbers), so images whose size is not a multiple of `pad_size_divisor` get the
mask mmdet gives them. The head's `_predict_by_feat_single` follows: the `max_per_img` best
(query, class) sigmoid scores, boxes scaled to the unpadded input and clipped to it.
"""
import contextlib
import types
from typing import Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.ops import MultiScaleDeformableAttention
from mmdet.models.layers.transformer import DeformableDetrTransformerEncoder
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from torch import Tensor, nn

from ._dense import Detections, ImageSize, gather
from ._settings import ExportError, positive_int

__all__ = ['check_dino', 'dino_detections']

Sizes = List[Tuple[int, int]]


def check_dino(detector: nn.Module, where: str) -> None:
    """Refuse a DINO whose classifier or encoder is not the one this module reproduces.

    Args:
        detector: The DINO detector.
        where: Its name for messages.
    """
    if not detector.bbox_head.loss_cls.use_sigmoid:
        raise ExportError(f'{where}: the bbox_head classifier is a softmax; the end-to-end graph '
                          f"reproduces DINO's sigmoid (focal loss) scores.")
    if not isinstance(detector.encoder, DeformableDetrTransformerEncoder):
        raise ExportError(f'{where}: the encoder is {type(detector.encoder).__name__}, not '
                          f'DeformableDetrTransformerEncoder.')


def _encoder_reference_points(sizes: Sizes, spatial_shapes: Tensor, valid_ratios: Tensor,
                              device: torch.device) -> Tensor:
    """`DeformableDetrTransformerEncoder.get_encoder_reference_points` with python sizes."""
    points = []
    for lvl, (h, w) in enumerate(sizes):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device), indexing='ij')
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        points.append(torch.stack((ref_x, ref_y), -1))
    reference_points = torch.cat(points, 1)
    return reference_points[:, :, None] * valid_ratios[:, None]


def _encoder_output_proposals(detector: nn.Module, sizes: Sizes, memory: Tensor,
                              memory_mask: Tensor, spatial_shapes: Tensor
                              ) -> Tuple[Tensor, Tensor]:
    """`DeformableDETR.gen_encoder_output_proposals` with python sizes and a mask."""
    batch = memory.size(0)
    proposals = []
    start = 0
    for lvl, (h, w) in enumerate(sizes):
        mask = memory_mask[:, start:start + h * w].view(batch, h, w, 1)
        valid_h = torch.sum(~mask[:, :, 0, 0], 1).unsqueeze(-1)
        valid_w = torch.sum(~mask[:, 0, :, 0], 1).unsqueeze(-1)
        scale = torch.cat([valid_w, valid_h], 1).view(batch, 1, 1, 2)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
            torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device),
            indexing='ij')
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
        grid = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * 0.05 * (2.0**lvl)
        proposals.append(torch.cat((grid, wh), -1).view(batch, -1, 4))
        start = start + h * w
    output_proposals = torch.cat(proposals, 1)
    valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).sum(
        -1, keepdim=True) == output_proposals.shape[-1]
    output_proposals = torch.log(output_proposals / (1 - output_proposals))
    output_proposals = output_proposals.masked_fill(memory_mask.unsqueeze(-1), float('inf'))
    output_proposals = output_proposals.masked_fill(~valid, float('inf'))
    output_memory = memory.masked_fill(memory_mask.unsqueeze(-1), float(0))
    output_memory = output_memory.masked_fill(~valid, float(0))
    output_memory = detector.memory_trans_fc(output_memory)
    output_memory = detector.memory_trans_norm(output_memory)
    return output_memory, output_proposals


def _deformable_attention(module: nn.Module, sizes: Sizes, query: Tensor, key: Tensor = None,
                          value: Tensor = None, identity: Tensor = None,
                          query_pos: Tensor = None, key_padding_mask: Tensor = None,
                          reference_points: Tensor = None, spatial_shapes: Tensor = None,
                          level_start_index: Tensor = None, **kwargs) -> Tensor:
    """`MultiScaleDeformableAttention.forward` (mmcv's PyTorch path) with python sizes."""
    value = query if value is None else value
    identity = query if identity is None else identity
    if query_pos is not None:
        query = query + query_pos
    if not module.batch_first:
        query, value = query.permute(1, 0, 2), value.permute(1, 0, 2)
    batch, num_query, _ = query.shape
    num_value = value.shape[1]
    value = module.value_proj(value)
    if key_padding_mask is not None:
        value = value.masked_fill(key_padding_mask[..., None], 0.0)
    value = value.view(batch, num_value, module.num_heads, -1)
    offsets = module.sampling_offsets(query).view(batch, num_query, module.num_heads,
                                                  module.num_levels, module.num_points, 2)
    weights = module.attention_weights(query).view(
        batch, num_query, module.num_heads, module.num_levels * module.num_points)
    weights = weights.softmax(-1).view(batch, num_query, module.num_heads, module.num_levels,
                                       module.num_points)
    if reference_points.shape[-1] == 2:
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        locations = reference_points[:, :, None, :, None, :] + \
            offsets / normalizer[None, None, None, :, None, :]
    else:
        locations = reference_points[:, :, None, :, None, :2] + \
            offsets / module.num_points * reference_points[:, :, None, :, None, 2:] * 0.5
    output = _sample_levels(value, sizes, locations, weights)
    output = module.output_proj(output)
    if not module.batch_first:
        output = output.permute(1, 0, 2)
    return module.dropout(output) + identity


def _sample_levels(value: Tensor, sizes: Sizes, locations: Tensor, weights: Tensor) -> Tensor:
    """mmcv's `multi_scale_deformable_attn_pytorch` with python sizes."""
    batch, _, heads, dims = value.shape
    _, queries, _, levels, points, _ = locations.shape
    values = value.split([h * w for h, w in sizes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for level, (h, w) in enumerate(sizes):
        value_l = values[level].flatten(2).transpose(1, 2).reshape(batch * heads, dims, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode='bilinear', padding_mode='zeros',
                                     align_corners=False))
    weights = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(
        batch, heads * dims, queries)
    return output.transpose(1, 2).contiguous()


@contextlib.contextmanager
def _level_sizes(detector: nn.Module, sizes: Sizes) -> Iterator[None]:
    """Replace the three size-reading methods of this detector's modules (instance attributes,
    removed on exit)."""
    patched = [(detector.encoder, 'get_encoder_reference_points',
                lambda spatial_shapes, valid_ratios, device:
                _encoder_reference_points(sizes, spatial_shapes, valid_ratios, device)),
               (detector, 'gen_encoder_output_proposals',
                lambda memory, memory_mask, spatial_shapes:
                _encoder_output_proposals(detector, sizes, memory, memory_mask, spatial_shapes))]
    for module in detector.modules():
        if isinstance(module, MultiScaleDeformableAttention):
            patched.append((module, 'forward', types.MethodType(
                lambda self, *args, **kwargs: _deformable_attention(self, sizes, *args, **kwargs),
                module)))
    for module, name, function in patched:
        setattr(module, name, function)
    try:
        yield
    finally:
        for module, name, _ in patched:
            delattr(module, name)


def _pre_transformer(detector: nn.Module, feats: Sequence[Tensor], size: ImageSize,
                     padded: ImageSize) -> Tuple[dict, dict]:
    """`DeformableDETR.pre_transformer` with the padding mask of an unpadded `size` in a
    `padded` batch."""
    batch = feats[0].shape[0]
    device = feats[0].device
    rows = torch.arange(padded[0], device=device)[:, None] >= size[0]
    cols = torch.arange(padded[1], device=device)[None, :] >= size[1]
    masks = (rows | cols).to(feats[0].dtype)[None].expand(batch, -1, -1)
    flat_feats, flat_pos, flat_masks, mlvl_masks = [], [], [], []
    for lvl, feat in enumerate(feats):
        mask = F.interpolate(masks[None], size=feat.shape[-2:]).to(torch.bool).squeeze(0)
        pos = detector.positional_encoding(mask)
        channels = feat.shape[1]
        flat_feats.append(feat.view(batch, channels, -1).permute(0, 2, 1))
        pos = pos.view(batch, channels, -1).permute(0, 2, 1)
        flat_pos.append(pos + detector.level_embed[lvl].view(1, 1, -1))
        flat_masks.append(mask.flatten(1))
        mlvl_masks.append(mask)
    mask_flatten = torch.cat(flat_masks, 1)
    # mmdet: torch._shape_as_tensor per level, which torch.export cannot trace
    spatial_shapes = torch.tensor([list(f.shape[-2:]) for f in feats], dtype=torch.long,
                                  device=device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1, )),
                                   spatial_shapes.prod(1).cumsum(0)[:-1]))
    valid_ratios = torch.stack([detector.get_valid_ratio(m) for m in mlvl_masks], 1)
    encoder_inputs = dict(feat=torch.cat(flat_feats, 1), feat_mask=mask_flatten,
                          feat_pos=torch.cat(flat_pos, 1), spatial_shapes=spatial_shapes,
                          level_start_index=level_start_index, valid_ratios=valid_ratios)
    decoder_inputs = dict(memory_mask=mask_flatten, spatial_shapes=spatial_shapes,
                          level_start_index=level_start_index, valid_ratios=valid_ratios)
    return encoder_inputs, decoder_inputs


def dino_detections(detector: nn.Module, feats: Sequence[Tensor], size: ImageSize,
                    padded: ImageSize, where: str) -> Detections:
    """`DINO.predict` for a batch, boxes in input coordinates (no rescale).

    Args:
        detector: The DINO detector (checked with `check_dino`).
        feats: The neck's feature maps.
        size: (h, w) of the unpadded input.
        padded: (h, w) of the padded input the backbone saw.
        where: The `test_cfg`'s place in the config (messages).
    """
    k = positive_int(detector.bbox_head.test_cfg, 'max_per_img', where)
    sizes = [tuple(f.shape[-2:]) for f in feats]
    with _level_sizes(detector, sizes):
        encoder_inputs, decoder_inputs = _pre_transformer(detector, feats, size, padded)
        encoder_outputs = detector.forward_encoder(**encoder_inputs)
        decoder_extra, _ = detector.pre_decoder(**encoder_outputs, batch_data_samples=None)
        decoder_inputs.update(decoder_extra)
        decoder_outputs = detector.forward_decoder(**decoder_inputs)
    cls_scores, bbox_preds = detector.bbox_head(**decoder_outputs)
    cls_score, bbox_pred = cls_scores[-1].sigmoid(), bbox_preds[-1]
    classes = cls_score.shape[-1]
    scores, index = cls_score.flatten(1).topk(k, dim=1)
    labels = index % classes
    boxes = bbox_cxcywh_to_xyxy(gather(bbox_pred, index // classes))
    h, w = size
    x = (boxes[..., 0::2] * w).clamp(min=0, max=w)  # mmdet: scaled to img_shape, clipped
    y = (boxes[..., 1::2] * h).clamp(min=0, max=h)
    boxes = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)
    return Detections(boxes=boxes, scores=scores, labels=labels,
                      keep=torch.ones_like(labels, dtype=torch.bool))
