"""Deployment: detectors exported end to end to ONNX, and those graphs evaluated and run.

- `End2EndDetector` (`_end2end.py`): a detector as one module from uint8 images to fixed-size
  detections (`boxes`, `scores`, `labels`, `num_dets`, `masks`), with the data preprocessor
  and the heads' own post-processing inside: dense heads (`_dense.py`), RoI heads (`_rcnn.py`),
  DINO (`_detr.py`), the in-graph NMS and RoIAlign (`_ops.py`), the test_cfg settings they read
  (`_settings.py`).
- `export_end2end` (`_export.py`): the ONNX graph (torch's dynamo exporter, dynamic batch /
  height / width where the exporter allows), with class names and the test pipeline's resize in
  its metadata; `tools/export.py`.
- `OnnxDetector` (`_onnx_detector.py`): a graph as an mmdet model, so that `tools/test.py CONFIG
  MODEL.onnx` evaluates it with the config's evaluator, like a checkpoint.

The deploy target itself needs none of this: `tools/infer_onnx.py` runs a graph with
onnxruntime, numpy and opencv only. Importing this package registers `OnnxDetector` in mmdet's
MODELS; the export needs the `export` extra (onnx, onnxscript, onnxruntime).
"""
from ._end2end import End2EndDetector, family_of, output_names
from ._export import (ExportResult, check_end2end, export_end2end, onnx_metadata, pipeline_steps,
                      run_end2end)
from ._onnx_detector import OnnxDetector, onnx_test_config, read_metadata, rescale_detections
from ._ops import batched_nms_indices, padded_nms, roi_align
from ._settings import ExportError

__all__ = ['End2EndDetector', 'family_of', 'output_names', 'export_end2end', 'ExportResult',
           'ExportError', 'onnx_metadata', 'pipeline_steps', 'run_end2end', 'check_end2end',
           'OnnxDetector',
           'onnx_test_config', 'read_metadata', 'rescale_detections', 'batched_nms_indices',
           'padded_nms', 'roi_align']
