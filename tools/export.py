"""Export a detector whose config uses timm backbones to ONNX, end to end by default: uint8
images in, boxes / scores / labels / num_dets (and masks) out, with the data preprocessor, the
head's decoding and NMS (ONNX NonMaxSuppression) inside the graph; K and the thresholds come from
the config's test_cfg. `--raw` exports the head tensors instead (no post-processing, a normalized
float input). Dynamic batch, height and width where the exporter allows (--dynamic; printed).

Needs the `export` extra (`pip install -e '.[export]'`; `make install` installs it).

Examples:
    python tools/export.py configs/retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py \
        work_dirs/retinanet_timm-resnet18_fpn_8e_synthetic-shapes/epoch_8.pth \
        --out retinanet.onnx --check
    python tools/export.py CONFIG CKPT --out raw.onnx --raw --shape 512 512 --check
"""
import argparse
import sys
from typing import Optional, Tuple

import torch
from mmengine.config import DictAction

from timm_backbones.deploy import ExportError, check_end2end, export_end2end, pipeline_steps
from timm_backbones.engine import check_onnx, export_onnx, init_detector


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a detector (timm backbone configs) to '
                                     'ONNX: end to end (default) or its head tensors (--raw)')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file (weights-only loading)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help="input height and width to trace with (default: the test "
                        "pipeline's Resize scale; required with --raw)")
    parser.add_argument('--batch', type=int, default=1,
                        help='batch size of the example input (end to end; the batch axis '
                        'stays dynamic unless --dynamic none)')
    parser.add_argument('--dynamic', choices=('auto', 'all', 'batch', 'none'), default='auto',
                        help='end to end: the input axes left dynamic: all (batch, height, '
                        'width), batch, or none (exactly --batch x 3 x --shape); auto (default): '
                        'all, or batch for backbones that pad their input inside (Swin, HRNet), '
                        'whose dynamic size torch.export does not trace in reasonable time')
    parser.add_argument('--raw', action='store_true',
                        help="export the detector's mode='tensor' forward (head tensors, no "
                        'post-processing) for a (1, 3, H, W) normalized float input')
    parser.add_argument('--opset', type=int, default=None,
                        help='ONNX opset version (default: 18 end to end, the exporter\'s '
                        'with --raw)')
    parser.add_argument('--check', action='store_true',
                        help='run the graph in onnxruntime on a random input and compare it '
                        'with PyTorch')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value (e.g. '
        'model.backbone.model_name=efficientnet_b3)')
    return parser.parse_args()


def default_shape(cfg) -> Optional[Tuple[int, int]]:
    """(H, W) of the test pipeline's Resize scale (w, h), landscape for a keep-ratio scale."""
    for step in pipeline_steps(cfg)[0]:
        scale = step.get('scale') if step['type'] == 'Resize' else None
        if isinstance(scale, (list, tuple)) and len(scale) == 2:
            if step['keep_ratio']:
                return int(min(scale)), int(max(scale))
            return int(scale[1]), int(scale[0])
        if isinstance(scale, int):
            return scale, scale
    return None


def main() -> None:
    args = parse_args()
    model = init_detector(args.config, args.checkpoint, device='cpu',
                          cfg_options=args.cfg_options)
    shape = tuple(args.shape) if args.shape else (None if args.raw else default_shape(model.cfg))
    if shape is None:
        sys.exit('error: --shape H W is required: ' + ('--raw exports a fixed input size'
                 if args.raw else 'the test pipeline has no Resize with a scale to trace with'))
    if args.raw:
        names = export_onnx(model, args.out, shape, opset_version=args.opset)
        print(f'wrote {args.out}: input "inputs" (1, 3, {shape[0]}, {shape[1]}) normalized '
              f'float, {len(names)} head tensors')
        if args.check:
            inputs = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))
            print(f'onnxruntime vs eager: max abs diff {check_onnx(model, args.out, inputs):.3g}')
        return
    try:
        result = export_end2end(model, args.out, shape, batch=args.batch,
                                dynamic=args.dynamic, opset_version=args.opset)
    except ExportError as err:
        sys.exit(f'error: {err}')
    dims = [d if d in result.dynamic else str(result.static[d])
            for d in ('batch', 'height', 'width')]
    classes = len(model.dataset_meta.get('classes') or [])
    print(f'wrote {args.out}: input "images" ({dims[0]}, 3, {dims[1]}, {dims[2]}) uint8 BGR, '
          f'outputs {", ".join(result.outputs)}; dynamic axes: '
          f'{", ".join(result.dynamic) or "none"}; {classes} class names in the metadata')
    if args.check:
        images = torch.randint(0, 256, (args.batch, 3, *shape), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
        report = check_end2end(model, args.out, images)
        print(f"onnxruntime vs PyTorch: num_dets {report['num_dets']} vs "
              f"{report['num_dets_eager']}, labels equal: {report['labels_equal']}, max box "
              f"diff {report['max_box_rel_diff']:.3g} (relative), max score diff "
              f"{report['max_score_diff']:.3g}")


if __name__ == '__main__':
    main()
