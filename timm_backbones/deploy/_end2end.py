"""`End2EndDetector`: a detector as one module from raw images to detections, the module the
end-to-end ONNX graph is exported from (and which runs in PyTorch as well).

Input: `images (B, 3, H, W)` uint8, the channel order the config's test pipeline produces (BGR
for mmdet's `LoadImageFromFile`, i.e. `cv2.imread`), every image of a batch the same size, after
the pipeline's resize. In the graph, the data preprocessor's work: channel flip (`bgr_to_rgb`),
`(x - mean) / std`, bottom/right padding to `pad_size_divisor` with `pad_value`.

Outputs: `boxes (B, K, 4)` (x1, y1, x2, y2) in the coordinates of `images`, `scores (B, K)`,
`labels (B, K)` (int64, -1 in empty slots), `num_dets (B,)` (int64: the first `num_dets[b]`
slots of image b hold detections, best first; the others are zeros), and for Mask R-CNN-style
detectors `masks (B, K, 28, 28)`: each detection's mask probabilities in its box, to be pasted
into the image (`paste_masks`). K is the `max_per_img` of the config's `test_cfg`.

Families: single-stage detectors with BaseDenseHead post-processing (RetinaNet, FCOS, ATSS,
YOLOF, RTMDet, ...: `_dense.py`), two-stage detectors with RPNHead + StandardRoIHead /
CascadeRoIHead (Faster / Mask / Cascade R-CNN: `_rcnn.py`), DINO (`_detr.py`). Others fail with
`ExportError` when the module is made.
"""
import contextlib
from typing import Iterator, List, Tuple

import torch
import torch.nn.functional as F
from mmdet.models.detectors import DINO, SingleStageDetector, TwoStageDetector
from torch import Tensor, nn

from ._dense import Detections, check_dense_head, check_rpn_head, dense_detections, rpn_proposals
from ._detr import check_dino, dino_detections
from ._rcnn import check_roi_head, roi_detections, roi_masks
from ._settings import ExportError, nms_settings, positive_int, test_cfg_of

__all__ = ['End2EndDetector', 'family_of', 'output_names', 'mmdet_eager_paths']


def family_of(detector: nn.Module) -> str:
    """`'dense'`, `'two-stage'` or `'dino'`: which post-processing the detector gets, after
    checking every part of it the graph reproduces and the `test_cfg` settings it reads
    (`ExportError` naming the detector, the part and the fix otherwise).

    Args:
        detector: An mmdet detector.

    Example:
        >>> family_of(init_detector('configs/retinanet_timm-pvt-v2-b2_fpn_1x_coco.py'))
        'dense'
    """
    name = type(detector).__name__
    try:
        family = _family(detector, name)
        _check_test_cfgs(detector, family)
    except ExportError as err:
        message = str(err)
        raise ExportError(message if message.startswith(name) else f'{name}: {message}') \
            from None
    return family


def _family(detector: nn.Module, where: str) -> str:
    if isinstance(detector, DINO):
        check_dino(detector, where)
        return 'dino'
    if isinstance(detector, TwoStageDetector):
        if not detector.with_rpn:
            raise ExportError(f'{where}: a two-stage detector without rpn_head (proposals from '
                              f'a file) cannot be exported end to end.')
        check_rpn_head(detector.rpn_head, where)
        check_roi_head(detector.roi_head, where)
        return 'two-stage'
    if isinstance(detector, SingleStageDetector):
        check_dense_head(detector.bbox_head, where)
        return 'dense'
    raise ExportError(f'{where}: the end-to-end export handles single-stage detectors '
                      f'(RetinaNet, FCOS, ATSS, YOLOF, RTMDet), two-stage detectors (Faster / '
                      f'Mask / Cascade R-CNN) and DINO, not {where} ('
                      f'{type(detector).__mro__[1].__name__}). Export the head tensors with '
                      f'--raw.')


# where each head's test_cfg sits in a config
TEST_CFG = {'dense': 'model.test_cfg', 'dino': 'model.test_cfg', 'rpn': 'model.test_cfg.rpn',
            'rcnn': 'model.test_cfg.rcnn'}


def _check_test_cfgs(detector: nn.Module, family: str) -> None:
    """Read every setting the graph takes from the test_cfgs once (clear errors up front)."""
    if family == 'dino':
        positive_int(test_cfg_of(detector.bbox_head, TEST_CFG['dino']), 'max_per_img',
                     TEST_CFG['dino'])
        return
    heads = [(detector.bbox_head, 'dense', True)] if family == 'dense' else \
        [(detector.rpn_head, 'rpn', True), (detector.roi_head, 'rcnn', False)]
    for head, key, with_nms_pre in heads:
        cfg = test_cfg_of(head, TEST_CFG[key])
        if with_nms_pre:
            positive_int(cfg, 'nms_pre', TEST_CFG[key])
        positive_int(cfg, 'max_per_img', TEST_CFG[key])
        nms_settings(cfg.get('nms'), f'{TEST_CFG[key]}.nms')


def output_names(detector: nn.Module) -> List[str]:
    """The graph's output names: boxes, scores, labels, num_dets (and masks).

    Example:
        >>> output_names(mask_rcnn)
        ['boxes', 'scores', 'labels', 'num_dets', 'masks']
    """
    names = ['boxes', 'scores', 'labels', 'num_dets']
    roi_head = getattr(detector, 'roi_head', None)
    if roi_head is not None and getattr(roi_head, 'with_mask', False):
        names.append('masks')
    return names


@contextlib.contextmanager
def mmdet_eager_paths() -> Iterator[None]:
    """`torch.onnx.is_in_onnx_export()` reads False inside: mmdet branches on it for the legacy
    TorchScript exporter (other box decoding code, TensorRT-style dummy boxes); the end-to-end
    graph follows the code of mmdet's eager `predict`, which torch's dynamo exporter traces."""
    original = torch.onnx.is_in_onnx_export
    torch.onnx.is_in_onnx_export = lambda: False
    try:
        yield
    finally:
        torch.onnx.is_in_onnx_export = original


class _Preprocess(nn.Module):
    """The data preprocessor's test-time work on a uint8 batch (mmengine's
    `ImgDataPreprocessor`): channel flip, normalization, padding to `pad_size_divisor`."""

    def __init__(self, preprocessor: nn.Module) -> None:
        super().__init__()
        self.flip = bool(getattr(preprocessor, '_channel_conversion', False))
        self.normalize = bool(getattr(preprocessor, '_enable_normalize', False))
        if self.normalize:
            self.register_buffer('mean', preprocessor.mean.detach().clone().float(), False)
            self.register_buffer('std', preprocessor.std.detach().clone().float(), False)
        self.divisor = int(getattr(preprocessor, 'pad_size_divisor', 1) or 1)
        self.pad_value = float(getattr(preprocessor, 'pad_value', 0))

    def forward(self, images: Tensor) -> Tensor:
        if self.flip:
            images = images[:, [2, 1, 0]]
        inputs = images.float()
        if self.normalize:
            inputs = (inputs - self.mean) / self.std
        h, w = inputs.shape[-2:]
        pad_h, pad_w = (-h) % self.divisor, (-w) % self.divisor
        return F.pad(inputs, (0, pad_w, 0, pad_h), value=self.pad_value)


class End2EndDetector(nn.Module):
    """A detector from uint8 images to fixed-size detections (see the module docstring).

    Args:
        detector: An mmdet detector in eval mode (e.g. from `init_detector`); its data
            preprocessor's settings are copied into the module.

    Example:
        >>> model = End2EndDetector(init_detector(config, checkpoint))
        >>> boxes, scores, labels, num_dets = model(images)  # images: (1, 3, H, W) uint8
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.family = family_of(detector)
        self.detector = detector
        self.preprocess = _Preprocess(detector.data_preprocessor)
        self.output_names = output_names(detector)

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'images must be (B, 3, H, W) uint8, got {tuple(images.shape)}')
        size = (images.shape[2], images.shape[3])
        inputs = self.preprocess(images)
        padded = (inputs.shape[2], inputs.shape[3])
        masks = None
        with mmdet_eager_paths():
            feats = self.detector.extract_feat(inputs)
            if self.family == 'dense':
                outs = self.detector.bbox_head(feats)
                dets = dense_detections(self.detector.bbox_head, outs, size,
                                        TEST_CFG['dense'])
            elif self.family == 'two-stage':
                proposals = rpn_proposals(self.detector.rpn_head, self.detector.rpn_head(feats),
                                          size, TEST_CFG['rpn'])
                dets = roi_detections(self.detector.roi_head, feats, proposals, size,
                                      TEST_CFG['rcnn'])
                if 'masks' in self.output_names:
                    masks = roi_masks(self.detector.roi_head, feats, dets)
            else:
                dets = dino_detections(self.detector, feats, size, padded, TEST_CFG['dino'])
        outputs = _outputs(dets)
        return outputs if masks is None else outputs + (masks, )


def _outputs(dets: Detections) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return dets.boxes, dets.scores, dets.labels, dets.keep.sum(1)
