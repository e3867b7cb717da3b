"""Engine pieces: the mmengine runner for timm backbone configs, detector building for
inference (`build_detector`, `init_detector`), ONNX export (`export_onnx`, `check_onnx`) and
training hooks. Importing it registers `TimmBackboneRunner` (RUNNERS) and `LossCurveHook` (HOOKS)
in mmdet's registries.
"""
from ._api import build_detector, init_detector
from ._export import check_onnx, export_onnx, flatten_tensors, run_onnx
from ._hooks import LossCurveHook
from ._runner import TimmBackboneRunner

__all__ = ['TimmBackboneRunner', 'build_detector', 'init_detector', 'LossCurveHook',
           'export_onnx', 'check_onnx', 'run_onnx', 'flatten_tensors']
