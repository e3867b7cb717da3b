"""Exporting `End2EndDetector` to ONNX with torch's dynamo exporter: dynamic batch, height and
width where the exporter keeps them dynamic (`torch.export.Dim.AUTO`; the axes it had to fix are
reported and recorded; `DYNAMIC` says which axes are asked for, `dynamic_axes_for` decides
`'auto'`), the in-graph ops' translations, the metadata a deploy target needs
(class names, the test pipeline's resize and pad, thresholds) in the model's `metadata_props`,
and exporter failures turned into an `ExportError` naming the family and the operation.
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..engine._export import _check_shape, _require_extra
from ..version import __version__
from ._end2end import TEST_CFG, End2EndDetector
from ._ops import translations
from ._settings import ExportError

__all__ = ['export_end2end', 'ExportResult', 'onnx_metadata', 'pipeline_steps', 'run_end2end',
           'check_end2end', 'dynamic_axes_for', 'INPUT_NAME', 'OPSET', 'DYNAMIC']

INPUT_NAME = 'images'
# which input axes are made dynamic; 'auto': see dynamic_axes_for
DYNAMIC = {'all': ('batch', 'height', 'width'), 'batch': ('batch', ), 'none': ()}
OPSET = 18  # RoiAlign half_pixel needs >= 16, GridSample >= 16
_AXES = {0: 'batch', 2: 'height', 3: 'width'}
# test pipeline transforms the deploy runtime (tools/infer_onnx.py) replays, and those it skips
_REPLAYED = ('Resize', 'Pad')
_SKIPPED = ('LoadImageFromFile', 'LoadAnnotations', 'PackDetInputs', 'LoadPanopticAnnotations')


@dataclass
class ExportResult:
    """What `export_end2end` wrote.

    Attributes:
        path: The `.onnx` file.
        outputs: The graph's output names, in order.
        dynamic: The input axes left dynamic (`batch`, `height`, `width`).
        static: The input axes the exporter fixed, with their size.
        metadata: The `metadata_props` written (values are JSON strings).
    """
    path: Path
    outputs: List[str]
    dynamic: List[str]
    static: Dict[str, int]
    metadata: Dict[str, str] = field(default_factory=dict)


def pipeline_steps(cfg: Any) -> Tuple[List[dict], List[str]]:
    """The test pipeline's `Resize` / `Pad` steps (which the deploy runtime replays, with the
    settings it needs) and the names of other transforms it would not replay.

    Args:
        cfg: The detector's config (`model.cfg` of `init_detector`), or None.

    Example:
        >>> pipeline_steps(cfg)
        ([{'type': 'Resize', 'scale': [256, 256], 'keep_ratio': True}], [])
    """
    if cfg is None:
        return [], ['no config: the test pipeline is unknown']
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    while isinstance(dataset.get('dataset'), Mapping):
        dataset = dataset['dataset']
    pipeline = dataset.get('pipeline') or cfg.get('test_pipeline') or []
    steps, others = [], []
    for transform in pipeline:
        kind = str(transform.get('type', '')).split('.')[-1]
        if kind == 'Resize':
            steps.append(dict(type='Resize', scale=_plain(transform.get('scale')),
                              keep_ratio=bool(transform.get('keep_ratio', False)),
                              interpolation=transform.get('interpolation', 'bilinear')))
        elif kind == 'Pad':
            steps.append(dict(type='Pad', size=_plain(transform.get('size')),
                              size_divisor=transform.get('size_divisor'),
                              pad_to_square=bool(transform.get('pad_to_square', False)),
                              pad_val=_plain(transform.get('pad_val', dict(img=0)))))
        elif kind not in _SKIPPED:
            others.append(kind)
    return steps, others


def _plain(value: Any) -> Any:
    """Config values as JSON-able plain data (tuples -> lists, ConfigDict -> dict)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def onnx_metadata(model: End2EndDetector) -> Dict[str, str]:
    """The `metadata_props` of the graph: everything a runtime needs besides the graph.

    Keys (JSON values): `classes`, `family`, `detector`, `input` (layout, dtype, channel
    order), `pipeline` (`pipeline_steps`), `pipeline_skipped`, `pad_size_divisor`, `outputs`,
    `test_cfg` (the thresholds in the graph), `mask_thr_binary` (masks), `config`,
    `producer`.

    Args:
        model: The end-to-end module (its detector's `dataset_meta` and `cfg` are read).
    """
    detector = model.detector
    classes = list((getattr(detector, 'dataset_meta', None) or {}).get('classes') or [])
    cfg = getattr(detector, 'cfg', None)
    steps, skipped = pipeline_steps(cfg)
    meta: Dict[str, Any] = dict(
        classes=classes, family=model.family, detector=type(detector).__name__,
        input=dict(name=INPUT_NAME, layout='NCHW', dtype='uint8', channel_order='bgr',
                   note='the image after the test pipeline (resize, pad), as cv2.imread reads '
                        'it (BGR); normalization and padding to pad_size_divisor are in the '
                        'graph'),
        pipeline=steps, pipeline_skipped=skipped,
        pad_size_divisor=model.preprocess.divisor, outputs=model.output_names,
        test_cfg=_plain(_test_cfgs(detector, model.family)),
        config=Path(cfg.filename).name if cfg is not None and cfg.filename else None,
        producer=f'timm_backbones {__version__}')
    if 'masks' in model.output_names:
        meta['mask_thr_binary'] = detector.roi_head.test_cfg.get('mask_thr_binary', 0.5)
    return {k: json.dumps(v) for k, v in meta.items()}


def _test_cfgs(detector: nn.Module, family: str) -> Dict[str, Any]:
    if family == 'two-stage':
        return {TEST_CFG['rpn']: dict(detector.rpn_head.test_cfg),
                TEST_CFG['rcnn']: dict(detector.roi_head.test_cfg)}
    return {TEST_CFG[family]: dict(detector.bbox_head.test_cfg)}


def dynamic_axes_for(detector: nn.Module) -> str:
    """`'all'`, or `'batch'` for a detector whose timm backbone pads its input inside
    (`pad_divisor > 1`: windowed transformers such as Swin, HRNet): torch.export's symbolic
    shapes through Swin's per-block window padding did not finish in 30 minutes (Swin-T, DINO),
    against 3 minutes with a fixed height and width.

    Example:
        >>> dynamic_axes_for(init_detector('configs/dino-4scale_timm-swin-tiny_8xb2-12e_coco.py'))
        'batch'
    """
    specs = getattr(getattr(detector, 'backbone', None), 'feature_specs', None) or ()
    return 'batch' if any(spec.pad_divisor > 1 for spec in specs) else 'all'


def _dynamic_axes(model: Any) -> Tuple[List[str], Dict[str, int]]:
    """The exported input's dynamic axes and the sizes of the static ones."""
    shape = model.graph.inputs[0].shape
    dynamic, static = [], {}
    for axis, name in _AXES.items():
        size = shape[axis]
        if isinstance(size, int):
            static[name] = size
        else:
            dynamic.append(name)
    return dynamic, static


def _failure(err: Exception, family: str, detector: nn.Module) -> ExportError:
    """An exporter error as one `ExportError` naming the family, backbone and operation: the
    innermost cause's first line (the exporter wraps it in a page of advice) and the first
    operator named anywhere in the chain."""
    chain = [err]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    text = '\n'.join(f'{type(e).__name__}: {e}' for e in chain)
    ops = re.findall(r"(?:aten|torchvision|mmcv|timm_backbones|prims)(?:::|\.)[A-Za-z_0-9.]+",
                     text)
    root = chain[-1]
    first = next((line.strip() for line in str(root).splitlines() if line.strip()), '')
    backbone = getattr(getattr(detector, 'backbone', None), 'model_name',
                       type(getattr(detector, 'backbone', detector)).__name__)
    where = f'{type(detector).__name__} ({family}) with backbone {backbone}'
    operation = f' at {ops[0]}' if ops else ''
    return ExportError(f'{where} could not be exported end to end: torch.onnx (dynamo) '
                       f'failed{operation}: {type(root).__name__}: {first[:300]}. Try a fixed '
                       f'input size (--dynamic none), or export the head tensors with --raw.')


def export_end2end(detector: nn.Module, out: Union[str, Path], shape: Sequence[int],
                   batch: int = 1, dynamic: str = 'auto',
                   opset_version: Optional[int] = None) -> ExportResult:
    """Export a detector end to end (uint8 images -> boxes, scores, labels, num_dets [, masks])
    to ONNX with torch's dynamo exporter; see `End2EndDetector` for the graph's interface.

    Args:
        detector: An mmdet detector in eval mode on the CPU (e.g. `init_detector`); its
            `dataset_meta['classes']` and `cfg` go into the metadata.
        out: The `.onnx` file to write (weights embedded).
        shape: (H, W) of the example input the graph is traced with.
        batch: Batch size of the example input (a dynamic batch is traced with at least 2).
        dynamic: Which input axes to leave dynamic: `'all'` (batch, height, width), `'batch'`,
            `'none'` (exactly `(batch, 3, H, W)`), or `'auto'` (`dynamic_axes_for`). Axes the
            exporter has to fix anyway are reported in the result.
        opset_version: ONNX opset (default `OPSET`).

    Returns:
        An `ExportResult` (outputs, dynamic and static axes, metadata).

    Raises:
        ExportError: The detector's family or a setting cannot be exported end to end, or the
            exporter failed (the message names the family, backbone and operation).

    Example:
        >>> model = init_detector('configs/retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py',
        ...                       'work_dirs/retinanet/epoch_8.pth')
        >>> export_end2end(model, 'retinanet.onnx', (256, 256)).dynamic
        ['batch', 'height', 'width']
    """
    _require_extra('onnx', 'onnxscript')
    shape = _check_shape(shape)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f'batch must be a positive int, got {batch!r}')
    detector = detector.eval()
    model = End2EndDetector(detector).eval()
    if dynamic == 'auto':
        dynamic = dynamic_axes_for(detector)
    if dynamic not in DYNAMIC:
        raise ValueError(f"dynamic must be one of 'auto', {', '.join(map(repr, DYNAMIC))}, got "
                         f'{dynamic!r}')
    dynamic_shapes = ({axis: torch.export.Dim.AUTO if name in DYNAMIC[dynamic] else
                       torch.export.Dim.STATIC for axis, name in _AXES.items()}, )
    # a dynamic batch is traced with 2 images: traced with 1, some models' reshapes keep a
    # literal 1 (PVTv2's attention, DINO-Swin: measured) and fail on larger batches
    traced = max(batch, 2) if 'batch' in DYNAMIC[dynamic] else batch
    program = _export_program(model, detector, traced, shape, dynamic_shapes, opset_version)
    dynamic_axes, static = _dynamic_axes(program.model)
    if 'batch' in static and traced != batch:
        # the exporter fixed the batch at the traced size (DINO with Swin: measured): trace
        # again with the batch asked for, so the graph takes what the caller said it would get
        dynamic_shapes = ({**dynamic_shapes[0], 0: torch.export.Dim.STATIC}, )
        program = _export_program(model, detector, batch, shape, dynamic_shapes, opset_version)
        dynamic_axes, static = _dynamic_axes(program.model)
    metadata = onnx_metadata(model)
    metadata['dynamic_axes'] = json.dumps(dynamic_axes)
    program.model.metadata_props.update(metadata)
    program.save(str(out), external_data=False)
    return ExportResult(path=Path(out), outputs=list(model.output_names), dynamic=dynamic_axes,
                        static=static, metadata=metadata)


def _export_program(model: nn.Module, detector: nn.Module, batch: int, shape: Sequence[int],
                    dynamic_shapes: Tuple[Dict[int, Any]], opset_version: Optional[int]) -> Any:
    """torch.export (non-strict) of `model` on a `(batch, 3, *shape)` uint8 example, then the
    ONNX program; the exporter's errors as one ExportError naming the family and operation."""
    example = torch.randint(0, 256, (batch, 3, *shape), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            # torch.export first, non-strict (what the ONNX exporter tries first): its error is
            # the one to report, and the exporter's fallbacks (dynamo strict, TorchScript) take
            # far longer without succeeding where it failed
            exported = torch.export.export(model, (example, ), dynamic_shapes=dynamic_shapes,
                                           strict=False)
            program = torch.onnx.export(
                exported, (example, ), dynamo=True, input_names=[INPUT_NAME],
                output_names=model.output_names, opset_version=opset_version or OPSET,
                custom_translation_table=translations(), verbose=False)
    except ExportError:
        raise
    except Exception as err:  # the exporter's errors have no common base class
        raise _failure(err, model.family, detector) from err
    if program is None:  # pragma: no cover - torch returns the program for dynamo=True
        raise RuntimeError('torch.onnx.export(dynamo=True) returned no program')
    return program


def run_end2end(path: Union[str, Path], images: Tensor) -> List[Tensor]:
    """Run an end-to-end graph in onnxruntime (CPU) on uint8 `images`; its outputs in order.

    Example:
        >>> boxes, scores, labels, num_dets = run_end2end('retinanet.onnx', images)
    """
    _require_extra('onnxruntime')
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return [torch.from_numpy(o) for o in session.run(None, {INPUT_NAME: images.numpy()})]


def check_end2end(detector: nn.Module, path: Union[str, Path], images: Tensor) -> Dict[str, Any]:
    """Compare a graph in onnxruntime with `End2EndDetector` in PyTorch on uint8 `images`.

    Returns:
        `num_dets` of both, whether they and the labels agree, the largest box difference
        relative to the box coordinates (at least 1 pixel) and the largest score difference.

    Example:
        >>> check_end2end(model, 'retinanet.onnx', images)['labels_equal']
        True
    """
    with torch.no_grad():
        eager = End2EndDetector(detector.eval()).eval()(images)
    exported = run_end2end(path, images)
    counts = exported[3].tolist(), eager[3].tolist()
    report: Dict[str, Any] = dict(num_dets=counts[0], num_dets_eager=counts[1],
                                  counts_equal=counts[0] == counts[1], labels_equal=False,
                                  max_box_rel_diff=float('nan'), max_score_diff=float('nan'))
    if report['counts_equal']:
        keep = torch.arange(exported[0].shape[1])[None] < eager[3][:, None]
        report['labels_equal'] = bool((exported[2][keep] == eager[2][keep]).all())
        boxes = (exported[0][keep] - eager[0][keep]).abs() / eager[0][keep].abs().clamp(min=1)
        report['max_box_rel_diff'] = boxes.max().item() if boxes.numel() else 0.0
        scores = (exported[1][keep] - eager[1][keep]).abs()
        report['max_score_diff'] = scores.max().item() if scores.numel() else 0.0
    return report
