"""Test (and evaluate) a detector whose config uses timm backbones (mmdet 3.3's tools/test.py,
resolved), from a checkpoint or from an end-to-end ONNX graph of tools/export.py.

Same arguments as mmdet's tools/test.py. Configs are built by their `runner_type`, or by
`TimmBackboneRunner` if they set none; the checkpoint is loaded weights-only. A `.onnx` model
runs in onnxruntime over the config's test set (`timm_backbones.deploy.OnnxDetector`), with the
config's evaluator and printout; boxes (and masks) are mapped back to the original images as
mmdet maps them. Distributed: tools/dist_test.sh. `--backbone ARCH` swaps the config's backbone
for the timm model ARCH first, as tools/train.py does.

Example:
    python tools/test.py configs/retinanet_timm-pvt-v2-b2_fpn_1x_coco.py \
        work_dirs/r/epoch_12.pth --out results.pkl
    python tools/test.py configs/retinanet_timm-pvt-v2-b2_fpn_1x_coco.py retinanet.onnx
"""
import argparse
import os
import os.path as osp
import warnings
from copy import deepcopy

from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmdet.registry import RUNNERS
from mmengine import ConfigDict
from mmengine.config import DictAction

from timm_backbones import TimmBackboneRunner  # the import registers the package's modules
from timm_backbones.deploy import onnx_test_config  # registers OnnxDetector
from timm_backbones.engine import add_backbone_argument, tool_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and eval) a detector with a timm '
                                     'backbone')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file, or an end-to-end .onnx graph of '
                        'tools/export.py (evaluated in onnxruntime)')
    parser.add_argument(
        '--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument(
        '--out', type=str, help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. If specified, it will be '
        'automatically saved to the work_dir/timestamp/show_dir')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
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
    parser.add_argument('--tta', action='store_true')
    # torch.distributed.launch passes --local-rank (torch >= 2.0), older versions --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main() -> None:
    args = parse_args()

    cfg = tool_config(args.config, args.backbone, args.cfg_options)
    cfg.launcher = args.launcher

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        name = osp.splitext(osp.basename(args.config))[0]
        if args.backbone is not None:
            name += f'_timm-{args.backbone}'
        cfg.work_dir = osp.join('./work_dirs', name)

    if args.checkpoint.endswith('.onnx'):
        if args.tta:
            raise ValueError('--tta needs the PyTorch model (it merges augmented predictions '
                             'before NMS); an exported .onnx graph has NMS inside. Test the '
                             'checkpoint with --tta instead.')
        cfg = onnx_test_config(cfg, args.checkpoint)
    else:
        cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)

    if args.tta:
        if 'tta_model' not in cfg:
            warnings.warn('Cannot find ``tta_model`` in config, we will set it as default.')
            cfg.tta_model = dict(
                type='DetTTAModel',
                tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        if 'tta_pipeline' not in cfg:
            warnings.warn('Cannot find ``tta_pipeline`` in config, we will set it as default.')
            test_data_cfg = cfg.test_dataloader.dataset
            while 'dataset' in test_data_cfg:
                test_data_cfg = test_data_cfg['dataset']
            cfg.tta_pipeline = deepcopy(test_data_cfg.pipeline)
            flip_tta = dict(
                type='TestTimeAug',
                transforms=[
                    [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                    [dict(type='PackDetInputs',
                          meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                     'scale_factor', 'flip', 'flip_direction'))],
                ])
            cfg.tta_pipeline[-1] = flip_tta
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline

    if 'runner_type' not in cfg:
        runner = TimmBackboneRunner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)

    # add `DumpResults` dummy metric
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must name a .pkl or .pickle file, got {args.out!r}')
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))

    runner.test()


if __name__ == '__main__':
    main()
