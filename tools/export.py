"""Export a detector whose config uses timm backbones to ONNX: its `mode='tensor'` forward
(backbone + neck + head raw outputs, no post-processing) for a `(1, 3, H, W)` normalized input,
with torch's dynamo exporter. The graph's outputs are the flat list of the tensor outputs in
order (RetinaNet: the class scores of every level, then the box regressions of every level).

Needs the `export` extra (`pip install -e '.[export]'`; `make install` installs it).

Example:
    python tools/export.py configs/retinanet_timm-pvt-v2-b2_fpn_1x_coco.py work_dirs/r/epoch_12.pth \
        --out retinanet.onnx --shape 512 512 --check
"""
import argparse

import torch
from mmengine.config import DictAction

from timm_backbones.engine import check_onnx, export_onnx, init_detector


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export a detector's mode='tensor' forward "
                                     '(timm backbone configs) to ONNX')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file (weights-only loading)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
                        help='input height and width')
    parser.add_argument('--opset', type=int, default=None,
                        help="ONNX opset version (default: the exporter's)")
    parser.add_argument('--check', action='store_true',
                        help='run the graph in onnxruntime on a random input and print the '
                        'largest difference to eager PyTorch')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value (e.g. '
        'model.backbone.model_name=efficientnet_b3)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model = init_detector(args.config, args.checkpoint, device='cpu',
                          cfg_options=args.cfg_options)
    names = export_onnx(model, args.out, tuple(args.shape), opset_version=args.opset)
    print(f'wrote {args.out}: input "inputs" (1, 3, {args.shape[0]}, {args.shape[1]}), '
          f'{len(names)} outputs')
    if args.check:
        inputs = torch.randn(1, 3, *args.shape, generator=torch.Generator().manual_seed(0))
        diff = check_onnx(model, args.out, inputs)
        print(f'onnxruntime vs eager: max abs diff {diff:.3g}')


if __name__ == '__main__':
    main()
