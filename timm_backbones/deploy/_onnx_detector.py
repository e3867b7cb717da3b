"""`OnnxDetector`: an end-to-end ONNX graph (`export_end2end`) as an mmdet model, so that
mmengine's test loop, the config's dataloader and evaluator evaluate it exactly as they evaluate
a checkpoint (`tools/test.py CONFIG MODEL.onnx`, `onnx_test_config`).

Each batch of the dataloader runs in onnxruntime, images of equal size together; the detections
are mapped back to the original image as mmdet's heads map them with `rescale=True` (boxes by
the pipeline's `scale_factor`; masks pasted into the original image with mmdet's
`_do_paste_mask` and thresholded at the graph's `mask_thr_binary`).
"""
import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from mmdet.models.utils import samplelist_boxtype2tensor
from mmdet.registry import DATASETS, MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.structures import InstanceData
from torch import Tensor

from ..engine._export import _require_extra
from ._export import INPUT_NAME
from ._settings import ExportError

__all__ = ['OnnxDetector', 'read_metadata', 'onnx_test_config', 'rescale_detections']

_REQUIRED = ('boxes', 'scores', 'labels', 'num_dets')


def read_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """The `metadata_props` of an end-to-end graph, JSON-decoded (see `onnx_metadata`).

    Example:
        >>> read_metadata('retinanet.onnx')['classes']
        ['circle', 'square', 'triangle', 'star', 'cross']
    """
    return _decode(_session(path).get_modelmeta().custom_metadata_map)


def _decode(raw: Mapping[str, str]) -> Dict[str, Any]:
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _session(path: Union[str, Path], providers: Optional[Sequence[str]] = None,
             threads: Optional[int] = None) -> Any:
    _require_extra('onnxruntime')
    import onnxruntime
    if not Path(path).is_file():
        raise FileNotFoundError(f'no ONNX file at {path}')
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options,
                                        providers=list(providers or ['CPUExecutionProvider']))


def rescale_detections(boxes: Tensor, scale_factor: Sequence[float], family: str,
                       masks: bool) -> Tensor:
    """Boxes in the graph's input coordinates -> the original image's, with mmdet's arithmetic:
    dense and box-only two-stage heads multiply by `1 / scale_factor` (`scale_boxes`), Mask
    R-CNN's mask head and DETR heads divide by it.

    Args:
        boxes: `(N, 4)`.
        scale_factor: `(w_scale, h_scale)` of the test pipeline's resize.
        family: `'dense'`, `'two-stage'` or `'dino'` (the graph's `family` metadata).
        masks: Whether the graph has masks (Mask R-CNN rescales in its mask head).
    """
    factor = boxes.new_tensor(list(scale_factor)).repeat(2)
    if family == 'dino' or masks:
        return boxes / factor
    return boxes * boxes.new_tensor([1 / s for s in scale_factor]).repeat(2)


def _paste(masks: Tensor, boxes: Tensor, shape: Sequence[int], threshold: float) -> Tensor:
    """`FCNMaskHead._predict_by_feat_single` after the head: one mask at a time, as mmdet does
    on a CPU."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
    height, width = int(shape[0]), int(shape[1])
    out = torch.zeros(len(masks), height, width, dtype=torch.bool if threshold >= 0 else
                      torch.uint8)
    for i in range(len(masks)):
        pasted, where = _do_paste_mask(masks[i:i + 1, None], boxes[i:i + 1], height, width,
                                       skip_empty=True)
        pasted = pasted >= threshold if threshold >= 0 else (pasted * 255).to(torch.uint8)
        out[(slice(i, i + 1), ) + where] = pasted
    return out


@MODELS.register_module()
class OnnxDetector(BaseModel):
    """An end-to-end ONNX graph as an mmdet model for mmengine's test loop (predict only).

    Args:
        onnx_file: The graph from `export_end2end` / `tools/export.py` (not a `--raw` one).
        providers: onnxruntime execution providers (default: CPU).
        threads: onnxruntime intra-op threads (default: onnxruntime's).
        data_preprocessor: Unused settings are refused: the graph normalizes and pads itself,
            so the batch reaches it as the pipeline made it (uint8).
        init_cfg: Unused (no weights to initialize).

    Example:
        >>> cfg.model = dict(type='OnnxDetector', onnx_file='retinanet.onnx')
        >>> Runner.from_cfg(cfg).test()
    """

    def __init__(self, onnx_file: str, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if data_preprocessor is not None:
            raise ValueError('OnnxDetector takes no data_preprocessor: the graph normalizes and '
                             'pads its uint8 input itself.')
        super().__init__(init_cfg=init_cfg)
        self.onnx_file = str(onnx_file)
        self.session = _session(onnx_file, providers, threads)
        self.metadata = _decode(self.session.get_modelmeta().custom_metadata_map)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or any(name not in outputs for name in _REQUIRED):
            raise ExportError(f'{onnx_file} is not an end-to-end graph of tools/export.py: its '
                              f'inputs are {inputs} and outputs {outputs}, expected input '
                              f'{INPUT_NAME!r} and outputs {list(_REQUIRED)} (+ masks). Export '
                              f'it again without --raw.')
        self.outputs = outputs
        self.family = self.metadata.get('family', 'dense')
        shape = self.session.get_inputs()[0].shape  # ints where the graph is static
        self.static = {name: size for name, size in zip(('batch', None, 'height', 'width'), shape)
                       if name and isinstance(size, int)}

    def forward(self, inputs: Union[Tensor, List[Tensor]],
                data_samples: Optional[List[DetDataSample]] = None,
                mode: str = 'predict') -> List[DetDataSample]:
        if mode != 'predict':
            raise ValueError(f"OnnxDetector runs an exported graph: mode='predict' only, got "
                             f'{mode!r} (train and tensor outputs need the PyTorch model).')
        return self.predict(inputs, data_samples)

    def predict(self, inputs: Union[Tensor, List[Tensor]],
                data_samples: Optional[List[DetDataSample]] = None) -> List[DetDataSample]:
        """Detections of a batch of `(3, H, W)` uint8 images (the pipeline's `inputs`), rescaled
        to each original image; set as `pred_instances` of the data samples.

        Args:
            inputs: The images, a list or a `(B, 3, H, W)` tensor.
            data_samples: Their samples (`scale_factor`, `ori_shape`); made when None.
        """
        images = list(inputs)
        if data_samples is None:
            data_samples = [DetDataSample(metainfo=dict(
                ori_shape=tuple(i.shape[-2:]), img_shape=tuple(i.shape[-2:]),
                scale_factor=(1.0, 1.0))) for i in images]
        samplelist_boxtype2tensor(data_samples)  # as mmdet's DetDataPreprocessor does
        start = 0
        while start < len(images):
            end = start + 1
            while end < len(images) and images[end].shape == images[start].shape:
                end += 1
            self._run(images[start:end], data_samples[start:end])
            start = end
        return data_samples

    def _run(self, images: List[Tensor], samples: List[DetDataSample]) -> None:
        for image in images:
            if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f'OnnxDetector takes (3, H, W) uint8 images as the test '
                                 f'pipeline packs them, got {tuple(image.shape)} {image.dtype}')
        fixed = (self.static.get('height'), self.static.get('width'))
        if fixed != (None, None) and any(
                f is not None and f != s for f, s in zip(fixed, images[0].shape[-2:])):
            raise ValueError(f'{self.onnx_file} takes images of exactly {fixed[0]}x{fixed[1]} '
                             f'(height x width fixed when it was exported), the test pipeline '
                             f'gives {images[0].shape[1]}x{images[0].shape[2]}. Export with '
                             f'--dynamic all, or make the pipeline produce that size (Resize '
                             f'with keep_ratio=False, or Pad with size).')
        if self.static.get('batch') not in (None, len(images)):
            if self.static['batch'] != 1:
                raise ValueError(f"{self.onnx_file} takes batches of exactly "
                                 f"{self.static['batch']} images, got {len(images)} of one size; "
                                 f'export with --dynamic batch or all, or set the dataloader\'s '
                                 f'batch_size.')
            for image, sample in zip(images, samples):  # a graph for single images
                self._run([image], [sample])
            return
        batch = torch.stack([image.cpu() for image in images]).numpy()
        results = dict(zip(self.outputs, self.session.run(None, {INPUT_NAME: batch})))
        with_masks = 'masks' in results
        for b, sample in enumerate(samples):
            count = int(results['num_dets'][b])
            boxes = torch.from_numpy(np.ascontiguousarray(results['boxes'][b, :count]))
            boxes = rescale_detections(boxes, sample.metainfo.get('scale_factor', (1.0, 1.0)),
                                       self.family, with_masks)
            instances = InstanceData(
                bboxes=boxes, scores=torch.from_numpy(results['scores'][b, :count].copy()),
                labels=torch.from_numpy(results['labels'][b, :count].copy()))
            if with_masks:
                instances.masks = _paste(torch.from_numpy(results['masks'][b, :count].copy()),
                                         boxes, sample.metainfo['ori_shape'],
                                         float(self.metadata.get('mask_thr_binary', 0.5)))
            sample.pred_instances = instances


def _config_classes(cfg: Config) -> Optional[List[str]]:
    """Class names of the config's test dataset (its `metainfo`, else its class's METAINFO)."""
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    while isinstance(dataset.get('dataset'), Mapping):
        dataset = dataset['dataset']
    classes = (dataset.get('metainfo') or {}).get('classes')
    kind = dataset.get('type')
    if classes is None and isinstance(kind, str) and DATASETS.get(kind) is not None:
        classes = getattr(DATASETS.get(kind), 'METAINFO', {}).get('classes')
    return list(classes) if classes is not None else None


def onnx_test_config(cfg: Config, onnx_file: Union[str, Path],
                     providers: Optional[Sequence[str]] = None) -> Config:
    """A copy of a test config whose model is the end-to-end graph (`OnnxDetector`): the
    config's dataloader and evaluator then evaluate the graph as they would a checkpoint.

    Args:
        cfg: The config the graph was exported from.
        onnx_file: The end-to-end `.onnx` file.
        providers: onnxruntime execution providers (default: CPU).

    Raises:
        ValueError: The graph's class names (metadata) differ from the config's test dataset's.

    Example:
        >>> runner = Runner.from_cfg(onnx_test_config(cfg, 'retinanet.onnx'))
        >>> runner.test()
    """
    classes = read_metadata(onnx_file).get('classes')
    expected = _config_classes(cfg)
    if classes and expected is not None and list(classes) != expected:
        raise ValueError(f'{onnx_file} was exported for the classes {classes[:8]}'
                         f'{"..." if len(classes) > 8 else ""} ({len(classes)}), but the '
                         f"config's test dataset has {expected[:8]}"
                         f'{"..." if len(expected) > 8 else ""} ({len(expected)}). Evaluate it '
                         f'with the config it was exported from.')
    out = copy.deepcopy(cfg)
    out.model = dict(type='OnnxDetector', onnx_file=str(onnx_file),
                     providers=list(providers) if providers else None)
    out.load_from = None
    return out
