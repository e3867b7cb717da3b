"""Train a detector whose config uses timm backbones (mmdet 3.3's tools/train.py, resolved).

Same arguments as mmdet's tools/train.py. Configs are built by their `runner_type`, or by
`TimmBackboneRunner` if they set none, so `'auto'` channels and strides are filled from the timm
backbone before anything is built. Distributed: tools/dist_train.sh.

`--backbone ARCH` swaps the config's backbone for the timm model ARCH first (any mmdet config,
by path or `mmdet::` name; `timm_backbones.wiring.swap_backbone`). `--fast` trains with the fast
GPU recipe (`timm_backbones.engine.fast_recipe`: bfloat16 autocast, channels-last, cuDNN
autotuning).

Example:
    python tools/train.py configs/retinanet_timm-pvt-v2-b2_fpn_1x_coco.py --work-dir work_dirs/r
    python tools/train.py mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py --backbone convnext_tiny
    python tools/train.py configs/mask-rcnn_timm-convnext-tiny_fpn_1x_coco.py --fast
"""
import argparse
import os
import os.path as osp

from mmdet.registry import RUNNERS
from mmengine.config import DictAction

from timm_backbones import TimmBackboneRunner  # the import registers the package's modules
from timm_backbones.engine import add_backbone_argument, fast_recipe, tool_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector with a timm backbone')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic-mixed-precision training')
    precision.add_argument(
        '--fast', action='store_true', default=False,
        help='the fast GPU recipe (timm_backbones.engine.fast_recipe): bfloat16 autocast '
        '(float16 on GPUs without bfloat16), channels-last backbone, neck and heads, cuDNN '
        'autotuning; --cfg-options apply after it')
    parser.add_argument(
        '--auto-scale-lr', action='store_true', help='enable automatically scaling LR.')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='If specify checkpoint path, resume from it, while if not specify, try to auto '
        'resume from the latest checkpoint in the work directory.')
    add_backbone_argument(parser)
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format '
        'will be merged into config file. If the value to be overwritten is a list, it should '
        'be like key="[a,b]" or key=a,b It also allows nested list/tuple values, e.g. '
        'key="[(a,b),(c,d)]" Note that the quotation marks are necessary and that no white '
        'space is allowed.')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0), older versions --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if args.fast and not _has_cuda():
        parser.error('--fast is a GPU recipe (bfloat16 autocast, channels-last, cuDNN '
                     'autotuning) and needs a CUDA device; this machine has none: run without '
                     '--fast.')
    if args.amp and not _has_amp_device():
        parser.error('--amp needs a CUDA, NPU, MLU or MUSA device (mmengine\'s AmpOptimWrapper '
                     'supports no other); this machine has none: run without --amp.')
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _has_amp_device() -> bool:
    from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                                 is_npu_available)
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def main() -> None:
    args = parse_args()

    cfg = tool_config(args.config, args.backbone)
    if args.fast:
        import torch
        dtype = 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
        for line in fast_recipe(cfg, dtype):
            print(f'fast: {line}')
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        name = osp.splitext(osp.basename(args.config))[0]
        if args.backbone is not None:
            name += f'_timm-{args.backbone}'
        cfg.work_dir = osp.join('./work_dirs', name)

    if args.amp is True:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and 'enable' in cfg.auto_scale_lr and \
                'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise RuntimeError('Can not find "auto_scale_lr" or "auto_scale_lr.enable" or '
                               '"auto_scale_lr.base_batch_size" in your configuration file.')

    # resume is determined in this priority: resume from > auto_resume
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if 'runner_type' not in cfg:
        runner = TimmBackboneRunner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)

    runner.train()


if __name__ == '__main__':
    main()
