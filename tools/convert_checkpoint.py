"""Convert a detector checkpoint between an mmdet native backbone and its TimmBackbone twin.

Only the backbone's keys in `state_dict` are renamed (`backbone.layer1.0.conv1.weight` <->
`backbone.model.layer1.0.conv1.weight`); tensors, `meta`, optimizer state and every other entry
are written back unchanged, so converting there and back gives the same checkpoint. Input: an
mmengine checkpoint (`{'state_dict': ..., 'meta': ..., ...}`) or a bare state dict.

The architecture comes from `--arch` (a timm model name such as `resnet50`, `resnet50d`,
`resnext101_32x4d`, `regnetx_032`, `resnest50d`, `cspnext_tiny`, `tf_efficientnet_b3`, or a
config file whose `model.backbone` is used: HRNet's twin needs one, with
`model_kwargs=dict(feature_location='')`), else from
the config mmengine stored in the checkpoint (`meta['cfg']`). The config in `meta` is not
rewritten: build the twin's detector from your own config (see `timm_backbones.convert.twin_config`).

Examples:
    python tools/convert_checkpoint.py faster_rcnn_r50.pth faster_rcnn_timm.pth --to timm
    python tools/convert_checkpoint.py timm.pth native.pth --to mmdet --arch resnet50
"""
import argparse
import os
import sys
from typing import Any, Dict, Mapping, Optional, Union

import torch
from mmengine.config import Config

from timm_backbones.convert import convert_state_dict


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Convert a detector checkpoint between an mmdet '
                                     'native backbone (ResNet, ResNetV1d, ResNeXt, RegNet, '
                                     'ResNeSt, CSPNeXt, HRNet, EfficientNet) and its '
                                     'TimmBackbone twin')
    parser.add_argument('input', help='checkpoint to read (mmengine format or a bare state dict)')
    parser.add_argument('output', help='checkpoint to write')
    parser.add_argument('--to', required=True, choices=('timm', 'mmdet'),
                        help='timm: native backbone keys -> TimmBackbone keys; mmdet: back')
    parser.add_argument('--arch', default=None,
                        help='timm model name (resnet50, resnext101_32x4d, regnetx_032, ...) or '
                        "a config file whose model.backbone is used (default: the checkpoint's "
                        "meta['cfg'])")
    parser.add_argument('--prefix', default='backbone.',
                        help="where the backbone's keys sit in the state dict (default: "
                        "'backbone.'; '' for a bare backbone)")
    return parser.parse_args(argv)


def load(path: str) -> Any:
    """The checkpoint at `path` (weights-only: tensors and plain containers)."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001 (report which file and why)
        raise SystemExit(f'Cannot read {path!r} as a weights-only checkpoint: {err}') from err


def arch_from(arg: Optional[str], checkpoint: Mapping) -> Union[str, Dict[str, Any]]:
    """The backbone architecture: `--arch` (a timm name or a config file), else the config the
    checkpoint carries."""
    if arg is not None:
        if arg.endswith('.py'):
            if not os.path.isfile(arg):
                raise SystemExit(f'--arch {arg!r}: no such config file.')
            return Config.fromfile(arg).model.backbone.to_dict()
        return arg
    text = checkpoint.get('meta', {}).get('cfg') if isinstance(checkpoint.get('meta'), dict) \
        else None
    if not isinstance(text, str):
        raise SystemExit("The checkpoint carries no config (meta['cfg']) to read the backbone "
                         'from: pass --arch (a timm model name such as resnet50, or the config '
                         'file the checkpoint was trained with).')
    return Config.fromstring(text, file_format='.py').model.backbone.to_dict()


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    checkpoint = load(args.input)
    if not isinstance(checkpoint, dict):
        raise SystemExit(f'{args.input!r} holds a {type(checkpoint).__name__}, not a checkpoint '
                         'dict or a state dict.')
    wrapped = isinstance(checkpoint.get('state_dict'), dict)
    state_dict = checkpoint['state_dict'] if wrapped else checkpoint
    arch = arch_from(args.arch, checkpoint if wrapped else {})
    try:
        converted = convert_state_dict(state_dict, to=args.to, arch=arch, prefix=args.prefix)
    except (KeyError, ValueError, TypeError) as err:
        raise SystemExit(f'{args.input}: {err.args[0] if err.args else err}') from err
    if wrapped:
        checkpoint = dict(checkpoint)
        checkpoint['state_dict'] = converted
    else:
        checkpoint = converted
    torch.save(checkpoint, args.output)
    renamed = sum(1 for key in state_dict if key.startswith(args.prefix))
    print(f'{args.output}: {renamed} backbone tensors renamed for {args.to}, '
          f'{len(state_dict) - renamed} other entries unchanged')
    return 0


if __name__ == '__main__':
    sys.exit(main())
