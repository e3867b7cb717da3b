"""ONNX export of detectors: the `mode='tensor'` forward (backbone, neck and head raw outputs,
no post-processing) of a `(1, 3, H, W)` normalized input as one graph, with torch's dynamo
exporter, and a check of the exported graph against eager in onnxruntime.

The exporter needs the optional `export` extra (`pip install -e .[export]`: onnx, onnxscript,
onnxruntime); importing this module does not.
"""
import importlib.util
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ['TensorForward', 'flatten_tensors', 'export_onnx', 'run_onnx', 'check_onnx']

_EXTRA = ('onnx', 'onnxscript', 'onnxruntime')


def flatten_tensors(outputs: Any) -> List[Tensor]:
    """The tensors of nested tuples/lists/dicts, depth first, in order (dicts by insertion).

    Args:
        outputs: A tensor or a nesting of tuples, lists and dicts holding tensors.

    Example:
        >>> [t.shape for t in flatten_tensors(([torch.zeros(1)], (torch.zeros(2),)))]
        [torch.Size([1]), torch.Size([2])]
    """
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [t for o in outputs for t in flatten_tensors(o)]
    raise TypeError(f'cannot export an output of type {type(outputs).__name__} ({outputs!r}): '
                    f"the detector's mode='tensor' forward must return tensors in tuples, lists "
                    f'or dicts.')


class TensorForward(nn.Module):
    """A detector's `forward(inputs, data_samples, mode='tensor')` on one `(1, 3, H, W)`
    normalized input, returning the flat tuple of its tensor outputs (`flatten_tensors`).

    Args:
        detector: An mmdet detector (eval mode for inference outputs).
        shape: (H, W) of the input, recorded in the data samples' metainfo that some heads read
            (DETR-style masks).

    Example:
        >>> outputs = TensorForward(detector, (320, 320))(torch.rand(1, 3, 320, 320))
    """

    def __init__(self, detector: nn.Module, shape: Tuple[int, int]) -> None:
        super().__init__()
        self.detector = detector
        self.shape = tuple(shape)

    def forward(self, inputs: Tensor) -> Tuple[Tensor, ...]:
        from mmdet.structures import DetDataSample  # mmdet is imported by the package anyway
        sample = DetDataSample(metainfo=dict(
            img_shape=self.shape, ori_shape=self.shape, pad_shape=self.shape,
            batch_input_shape=self.shape, scale_factor=(1.0, 1.0)))
        return tuple(flatten_tensors(self.detector(inputs, [sample], mode='tensor')))


def _check_shape(shape: Sequence[int]) -> Tuple[int, int]:
    if len(shape) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                  for v in shape):
        raise ValueError(f'shape must be (H, W), two positive ints, got {tuple(shape)!r}')
    return int(shape[0]), int(shape[1])


def _require_extra(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f'ONNX export needs {", ".join(missing)} (not installed). Install the '
                          f"export extra: pip install -e '.[export]' (or make install, which "
                          f'installs it).')


def export_onnx(detector: nn.Module, out: Union[str, Path], shape: Sequence[int],
                opset_version: Optional[int] = None) -> List[str]:
    """Export a detector's `mode='tensor'` forward for a `(1, 3, H, W)` normalized input to ONNX
    with torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`).

    The graph has one input, `inputs`, and its outputs are the flat list of the forward's
    tensor outputs in order (`flatten_tensors`; e.g. RetinaNet: the classification scores of
    every level, then the box regressions of every level).

    Args:
        detector: The detector, e.g. from `init_detector` (put in eval mode for the export).
        out: The `.onnx` file to write (weights embedded).
        shape: (H, W) of the input.
        opset_version: ONNX opset (None: the exporter's default).

    Returns:
        The graph's output names, in order.

    Example:
        >>> model = init_detector('configs/retinanet_timm-pvt-v2-b2_fpn_1x_coco.py', 'ckpt.pth')
        >>> export_onnx(model, 'retinanet.onnx', (512, 512))
    """
    _require_extra('onnx', 'onnxscript')
    shape = _check_shape(shape)
    detector.eval()
    wrapper = TensorForward(detector, shape).eval()
    example = torch.zeros(1, 3, *shape)
    with torch.no_grad():
        program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=['inputs'],
                                    opset_version=opset_version, verbose=False)
    if program is None:  # pragma: no cover - torch returns the program for dynamo=True
        raise RuntimeError('torch.onnx.export(dynamo=True) returned no program')
    program.save(str(out), external_data=False)
    return [o.name for o in program.model.graph.outputs]


def run_onnx(path: Union[str, Path], inputs: Tensor) -> List[Tensor]:
    """Run an exported graph in onnxruntime (CPU) and return its outputs, in order.

    Args:
        path: The `.onnx` file (from `export_onnx`).
        inputs: The `(1, 3, H, W)` normalized input.

    Example:
        >>> outputs = run_onnx('retinanet.onnx', torch.rand(1, 3, 512, 512))
    """
    _require_extra('onnxruntime')
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return [torch.from_numpy(o) for o in session.run(None, {name: inputs.numpy()})]


def check_onnx(detector: nn.Module, path: Union[str, Path], inputs: Tensor) -> float:
    """The largest absolute difference between the exported graph (onnxruntime) and the
    detector's eager `mode='tensor'` outputs for `inputs`; raises if the outputs' number or
    shapes differ.

    Args:
        detector: The exported detector.
        path: The `.onnx` file.
        inputs: A `(1, 3, H, W)` normalized input of the exported size.

    Example:
        >>> check_onnx(model, 'retinanet.onnx', torch.randn(1, 3, 512, 512))
        2.4e-06
    """
    detector.eval()
    with torch.no_grad():
        eager = TensorForward(detector, tuple(inputs.shape[-2:]))(inputs)
    exported = run_onnx(path, inputs)
    if len(exported) != len(eager):
        raise RuntimeError(f'{path}: {len(exported)} outputs, eager has {len(eager)}')
    diff = 0.0
    for i, (a, b) in enumerate(zip(exported, eager)):
        if a.shape != b.shape:
            raise RuntimeError(f'{path}: output {i} has shape {tuple(a.shape)}, eager '
                               f'{tuple(b.shape)}')
        diff = max(diff, (a - b).abs().max().item() if a.numel() else 0.0)
    return diff
