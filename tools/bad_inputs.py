"""A battery of plausible user mistakes, counted: how many give a clear error.

Each case makes one mistake (a backbone option, a weight file, a neck, synthetic data options, a
config file through the tools) and names what a clear error must say (a regular expression:
the bad option or value and what it is about). A case is
  clear     an exception whose message matches,
  vague     an exception that does not (a crash inside timm/torch, a misleading hint),
  accepted  no exception at all (the mistake passes silently).
Runs against whatever `timm_backbones` is importable, so the same battery measures a branch
before and after a change (PYTHONPATH=<checkout> .venv/bin/python tools/bad_inputs.py).

Example:
    nice -n 10 .venv/bin/python tools/bad_inputs.py --verbose
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from typing import Callable, List, Tuple

import numpy as np
import torch

torch.set_num_threads(1)

import timm  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.logging import HistoryBuffer  # noqa: E402

import timm_backbones  # noqa: E402,F401
from timm_backbones import (TimmBackbone, feature_specs, init_detector,  # noqa: E402
                            make_synthetic_coco, resolve_config)

# the checkout whose package is imported (configs and tools come from the same one)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(timm_backbones.__file__)))
TMP = tempfile.mkdtemp(prefix='bad_inputs_')
CASES: List[Tuple[str, Callable[[], object], str]] = []


def case(name: str, fn: Callable[[], object], clear: str) -> None:
    CASES.append((name, fn, clear))


def tb(*args, **kwargs):
    return TimmBackbone(*args, **kwargs)


def train_step(backbone, x=None):
    """One training forward/backward (errors that only show there)."""
    backbone.train()
    outs = backbone(torch.rand(2, 3, 64, 64) if x is None else x)
    sum(o.float().mean() for o in outs).backward()
    return outs


def init(backbone):
    backbone.init_weights()
    return backbone


# ---- weight files ------------------------------------------------------------------------------
def _file(name, data=None, text=None):
    path = os.path.join(TMP, name)
    if text is not None:
        with open(path, 'w') as f:
            f.write(text)
    else:
        torch.save(data, path)
    return path


_timm_sd = timm.create_model('resnet18').state_dict()
_backbone_sd = TimmBackbone('resnet18').state_dict()
TIMM_SD = _file('resnet18_timm.pth', _timm_sd)
R50_SD = _file('resnet50_timm.pth', timm.create_model('resnet50').state_dict())
BACKBONE_SD = _file('backbone.pth', _backbone_sd)
DETECTOR = _file('detector.pth', {
    'state_dict': {f'backbone.{k}': v for k, v in _backbone_sd.items()},
    'message_hub': {'log_scalars': {'loss': HistoryBuffer([1.0], [1])}},
    'meta': {'seed': np.int64(0)}})
DETECTOR_PLAIN = _file('detector_plain.pth', {
    'state_dict': {f'backbone.{k}': v for k, v in _backbone_sd.items()}})
OTHER = _file('other.pth', {'encoder.weight': torch.zeros(3, 3)})
HTML = _file('page.pth', text='<!DOCTYPE html><html><body>404 Not Found</body></html>')
TEXT = _file('notes.pth', text='these are not weights\n')
EMPTY = _file('empty.pth', text='')
SYNTAX = _file('broken_config.py', text="model = dict(type='RetinaNet'\nx = 1\n")
DATA = os.path.join(TMP, 'data')

R18 = 'resnet18'
VIT = 'vit_tiny_patch16_224'

# ---- TimmBackbone options ----------------------------------------------------------------------
case('model_name typo', lambda: tb('resnet5O'), 'resnet50')
case('model_name not a str', lambda: tb(50), 'model_name')
case('model_name unknown tag', lambda: tb('resnet18.nope'), 'tag')
case('model_name empty', lambda: tb(''), 'model_name')
case('out_indices out of range', lambda: tb(R18, out_indices=(1, 5)), 'out_indices.*range')
case('out_indices an int', lambda: tb(R18, out_indices=3), 'out_indices')
case('out_indices empty', lambda: tb(R18, out_indices=()), 'out_indices')
case('out_indices duplicate', lambda: tb(R18, out_indices=(4, -1)), 'twice')
case('out_indices strings', lambda: tb(R18, out_indices=('a',)), 'out_indices')
case('out_indices floats', lambda: tb(R18, out_indices=(1.0, 2.0)), 'out_indices')
case('out_indices a str', lambda: tb(R18, out_indices='123'), 'out_indices')
case('output_stride 12', lambda: tb(R18, output_stride=12), 'output_stride')
case('output_stride str', lambda: tb(R18, output_stride='16'), 'output_stride')
case('output_stride float', lambda: tb(R18, output_stride=16.0), 'output_stride')
case('output_stride on vit', lambda: tb(VIT, output_stride=8), 'output_stride')
case('output_stride on dla34', lambda: tb('dla34', output_stride=16), 'output_stride')
case('in_channels 0', lambda: tb(R18, in_channels=0), 'in_channels')
case('in_channels str', lambda: tb(R18, in_channels='3'), 'in_channels')
case('in_channels bool', lambda: tb(R18, in_channels=True), 'in_channels')
case('in_channels float', lambda: tb(R18, in_channels=3.0), 'in_channels')
case('pretrained missing file', lambda: tb(R18, pretrained='/nonexistent/w.pth'), 'no such file')
case('pretrained an int', lambda: tb(R18, pretrained=1), 'pretrained')
case('pretrained None', lambda: tb(R18, pretrained=None), 'pretrained')
case('pretrained empty str', lambda: tb(R18, pretrained=''), 'pretrained')
case('pretrained html page', lambda: tb(R18, pretrained=HTML), 'not a PyTorch checkpoint')
case('pretrained text file', lambda: tb(R18, pretrained=TEXT), 'not a PyTorch checkpoint')
case('pretrained empty file', lambda: tb(R18, pretrained=EMPTY), 'not a PyTorch checkpoint')
case('pretrained detector ckpt (mmengine)', lambda: tb(R18, pretrained=DETECTOR),
     'detector checkpoint.*init_cfg')
case('pretrained detector ckpt (plain)', lambda: tb(R18, pretrained=DETECTOR_PLAIN),
     "detector checkpoint.*init_cfg|prefix='backbone")
case('pretrained other architecture', lambda: tb(R18, pretrained=R50_SD), r'(?s)resnet18.*size')
case('pretrained unrelated weights', lambda: tb(R18, pretrained=OTHER), 'loaded 0/')
case('pretrained TimmBackbone state dict', lambda: tb(R18, pretrained=BACKBONE_SD),
     "'model\\.'|init_cfg")
case('frozen_stages too big', lambda: tb(R18, frozen_stages=7), 'frozen_stages')
case('frozen_stages str', lambda: tb(R18, frozen_stages='1'), 'frozen_stages')
case('frozen_stages -2', lambda: tb(R18, frozen_stages=-2), 'frozen_stages')
case('frozen_stages bool', lambda: tb(R18, frozen_stages=True), 'frozen_stages')
case('frozen_stages hrnet', lambda: tb('hrnet_w18_small', frozen_stages=2), 'frozen_stages')
case("norm_eval 'False'", lambda: tb(R18, norm_eval='False'), 'norm_eval')
case("norm_eval 'True'", lambda: tb(R18, norm_eval='True'), 'norm_eval')
case('norm_eval 1', lambda: tb(R18, norm_eval=1), 'norm_eval')
case('norm_eval None', lambda: tb(R18, norm_eval=None), 'norm_eval')
case("with_cp 'False'", lambda: tb(R18, with_cp='False'), 'with_cp')
case('with_cp 1', lambda: tb(R18, with_cp=1), 'with_cp')
case("frozen_bn 'yes'", lambda: tb(R18, frozen_bn='yes'), 'frozen_bn')
case("sync_bn 'False'", lambda: tb(R18, sync_bn='False'), 'sync_bn')
case('frozen_bn and sync_bn', lambda: tb(R18, frozen_bn=True, sync_bn=True), 'exclude')
case('with_cp on xception41', lambda: tb('xception41', with_cp=True), 'with_cp')
case('with_cp on hrnet', lambda: tb('hrnet_w18_small', with_cp=True), 'with_cp')
case('drop_path_rate 2.0', lambda: train_step(tb('convnext_atto', drop_path_rate=2.0)),
     'drop_path_rate')
case('drop_path_rate 1.0', lambda: train_step(tb('convnext_atto', drop_path_rate=1.0)),
     'drop_path_rate')
case('drop_path_rate -0.1', lambda: train_step(tb('convnext_atto', drop_path_rate=-0.1)),
     'drop_path_rate')
case("drop_path_rate '0.1'", lambda: tb('convnext_atto', drop_path_rate='0.1'),
     'drop_path_rate must')
case('drop_path_rate bool', lambda: tb('convnext_atto', drop_path_rate=True), 'drop_path_rate')
case("model_kwargs 'drop_rate=0.1'", lambda: tb(R18, model_kwargs='drop_rate=0.1'),
     'model_kwargs.*dict')
case('model_kwargs a list', lambda: tb(R18, model_kwargs=['drop_rate']), 'model_kwargs.*dict')
case('model_kwargs in_chans', lambda: tb(R18, model_kwargs=dict(in_chans=1)), 'in_channels')
case('model_kwargs features_only', lambda: tb(R18, model_kwargs=dict(features_only=False)),
     'features_only')
case('model_kwargs pretrained', lambda: tb(R18, model_kwargs=dict(pretrained=True)),
     "'pretrained'")
case('model_kwargs output_stride', lambda: tb(R18, model_kwargs=dict(output_stride=16)),
     'output_stride')
case('model_kwargs drop_path_rate', lambda: tb(R18, model_kwargs=dict(drop_path_rate=0.1)),
     'drop_path_rate')
case('model_kwargs unknown argument', lambda: tb(R18, model_kwargs=dict(bogus_arg=1)),
     'bogus_arg')
case('input_size with model_kwargs img_size',
     lambda: tb(VIT, input_size=(256, 256), model_kwargs=dict(img_size=224)),
     'input_size.*img_size|img_size.*input_size')
case("input_size 'fixed' with dynamic_img_size",
     lambda: tb(VIT, input_size='fixed', model_kwargs=dict(dynamic_img_size=True)),
     'input_size.*dynamic_img_size')
case("input_size 'big'", lambda: tb(VIT, input_size='big'), 'input_size')
case('input_size one value', lambda: tb(VIT, input_size=(256,)), 'input_size')
case('input_size zero', lambda: tb(VIT, input_size=(0, 256)), 'input_size')
case('input_size floats', lambda: tb(VIT, input_size=(256.0, 256.0)), 'input_size')
case('input_size non-square on nest', lambda: tb('nest_tiny', input_size=(256, 320)),
     'input_size')
case("pyramid 'yes'", lambda: tb(VIT, pyramid='yes'), 'pyramid')
case('pyramid True', lambda: tb(VIT, pyramid=True), 'pyramid')
case("pyramid 'simple' on resnet", lambda: tb(R18, pyramid='simple'), 'hierarchical')
case('pyramid_strides on resnet', lambda: tb(R18, pyramid_strides=(8, 16, 32)),
     'pyramid_strides')
case('pyramid_channels on resnet', lambda: tb(R18, pyramid_channels=256), 'pyramid_channels')
case('pyramid_strides with pyramid=None', lambda: tb(VIT, pyramid=None,
                                                     pyramid_strides=(8, 16, 32)),
     'pyramid_strides')
case('pyramid_strides decreasing', lambda: tb(VIT, pyramid_strides=(16, 8)), 'pyramid_strides')
case('pyramid_strides an int', lambda: tb(VIT, pyramid_strides=16), 'pyramid_strides')
case('pyramid_strides zero', lambda: tb(VIT, pyramid_strides=(0, 8)), 'pyramid_strides')
case('pyramid_channels 0', lambda: tb(VIT, pyramid_channels=0), 'pyramid_channels')
case("pyramid_channels '256'", lambda: tb(VIT, pyramid_channels='256'), 'pyramid_channels')
case('pyramid_channels True', lambda: tb(VIT, pyramid_channels=True), 'pyramid_channels')
case('unknown option', lambda: tb(R18, out_indice=(1, 2)), 'out_indices')
case('unknown option in a config', lambda: feature_specs(dict(type='timm.resnet18',
                                                              norm_evl=True)), 'norm_eval')
case('timm.<arch> with model_name',
     lambda: MODELS.build(dict(type='timm.resnet18', model_name='resnet50')), 'model')
case('init_cfg a str', lambda: tb(R18, init_cfg=TIMM_SD), 'init_cfg')
case('init_cfg Pretrained without checkpoint', lambda: init(tb(R18, init_cfg=dict(
    type='Pretrained'))), 'checkpoint')
case('init_cfg Pretrained with a timm state dict', lambda: init(tb(R18, init_cfg=dict(
    type='Pretrained', checkpoint=TIMM_SD))), 'pretrained=')
case('init_cfg Pretrained detector ckpt without prefix', lambda: init(tb(R18, init_cfg=dict(
    type='Pretrained', checkpoint=DETECTOR))), "backbone\\.")
case('init_cfg Pretrained detector ckpt wrong prefix', lambda: init(tb(R18, init_cfg=dict(
    type='Pretrained', checkpoint=DETECTOR, prefix='neck.'))), 'prefix')
case('init_cfg Pretrained html page', lambda: init(tb(R18, init_cfg=dict(
    type='Pretrained', checkpoint=HTML))), 'not a PyTorch checkpoint')
case('init_cfg Pretrained missing file', lambda: init(tb(R18, init_cfg=dict(
    type='Pretrained', checkpoint='/nonexistent/x.pth'))), 'x.pth')
case('init_cfg Pretrained other architecture', lambda: init(tb(R18, init_cfg=dict(
    type='Pretrained', checkpoint=R50_SD))), 'expected|matched')
case('1-channel images into a 3-channel backbone',
     lambda: tb(R18)(torch.rand(1, 1, 64, 64)), 'in_channels')
case('3-channel images into in_channels=1',
     lambda: tb(R18, in_channels=1)(torch.rand(1, 3, 64, 64)), 'in_channels')
case('3-d input', lambda: tb(R18)(torch.rand(3, 64, 64)), '4|NCHW')
case("input larger than input_size='fixed'",
     lambda: tb(VIT, input_size='fixed')(torch.rand(1, 3, 256, 256)), 'only runs at')


# ---- detectors: wiring and checkpoints ---------------------------------------------------------
def retinanet(backbone=None, **changes):
    cfg = Config.fromfile(os.path.join(ROOT, 'configs',
                                       'retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py'))
    if backbone:
        cfg.model.backbone.update(backbone)
    cfg.merge_from_dict(changes)
    return cfg


case('FPN levels in decreasing stride order',
     lambda: resolve_config(retinanet(dict(out_indices=(4, 3, 2)))), 'stride order|increasing')
case('ChannelMapper levels in decreasing stride order', lambda: resolve_config(retinanet(
    dict(out_indices=(4, 3, 2)), **{'model.neck': dict(
        _delete_=True, type='ChannelMapper', in_channels='auto', out_channels=128)})),
    'stride order|increasing')
case('FPN in_channels wrong', lambda: resolve_config(retinanet(**{
    'model.neck.in_channels': [1, 2, 3]})), 'in_channels')
case('FPN num_outs too few', lambda: resolve_config(retinanet(**{'model.neck.num_outs': 2})),
     'num_outs')
case('FPN start_level out of range', lambda: resolve_config(retinanet(**{
    'model.neck.start_level': 5})), 'start_level')
case('anchor strides wrong', lambda: resolve_config(retinanet(**{
    'model.bbox_head.anchor_generator.strides': [4, 8, 16, 32]})), 'strides')
case("pad_size_divisor '32'", lambda: resolve_config(retinanet(**{
    'model.data_preprocessor.pad_size_divisor': '32'})), "pad_size_divisor.*(int|str)")
case('in_channels=4 with 3-value mean/std', lambda: resolve_config(retinanet(dict(
    in_channels=4))), 'mean|std')
case('RGBA image into a bgr_to_rgb preprocessor', lambda: init_detector(retinanet()).
     data_preprocessor(dict(inputs=[torch.zeros(4, 64, 64, dtype=torch.uint8)]), False),
     '4 channel.*bgr_to_rgb')
case('init_detector with a timm state dict',
     lambda: init_detector(retinanet(), TIMM_SD), 'backbone')
case('init_detector with a backbone state dict',
     lambda: init_detector(retinanet(), BACKBONE_SD), "backbone\\.")
case('init_detector with an html page',
     lambda: init_detector(retinanet(), HTML), 'not a PyTorch checkpoint')
case('init_detector with an empty file',
     lambda: init_detector(retinanet(), EMPTY), 'not a PyTorch checkpoint')


def tool(script, *args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', script), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])


case('config syntax error (tools/train.py)',
     lambda: tool('train.py', SYNTAX, '--work-dir', TMP), 'broken_config.py.*line|line.*broken_config.py')
case('config syntax error (tools/test.py)',
     lambda: tool('test.py', SYNTAX, TIMM_SD, '--work-dir', TMP),
     'broken_config.py.*line|line.*broken_config.py')


# ---- synthetic data ----------------------------------------------------------------------------
_roots = iter(range(10 ** 6))


def synthetic(**options):
    """A fresh directory each time (small unless the case sets the option)."""
    options = dict(dict(num_train=2, num_val=1, img_size=(64, 64), obj_size=(16, 32)), **options)
    return make_synthetic_coco(os.path.join(DATA, str(next(_roots))), **options)


def synthetic_dataset(synthetic_options, data_root=DATA + '/ds'):
    from timm_backbones import SyntheticShapesDataset
    return SyntheticShapesDataset(data_root=data_root, synthetic=synthetic_options,
                                  ann_file='annotations/instances_train.json',
                                  data_prefix=dict(img='train/'), pipeline=[])


case("num_train 'ten'", lambda: synthetic(num_train='ten'), 'num_train')
case('num_train 0', lambda: synthetic(num_train=0), 'num_train')
case('num_train True', lambda: synthetic(num_train=True), 'num_train')
case('num_train 2.5', lambda: synthetic(num_train=2.5), 'num_train')
case('img_size 256', lambda: synthetic(img_size=256), 'img_size')
case('img_size too small', lambda: synthetic(img_size=(16, 16)), 'img_size')
case("img_size '256x256'", lambda: synthetic(img_size='256x256'), 'img_size')
case('obj_size larger than the image', lambda: synthetic(obj_size=(16, 96)), 'obj_size')
case('max_objects 0', lambda: synthetic(max_objects=0), 'max_objects')
case("seed '0'", lambda: synthetic(seed='0'), 'seed')
case('seed -1', lambda: synthetic(seed=-1), 'seed')
case("synthetic 'small'", lambda: synthetic_dataset('small'), 'synthetic')
case('synthetic unknown option', lambda: synthetic_dataset(dict(num_images=10)), 'num_images')
case('synthetic without data_root', lambda: synthetic_dataset(None, data_root=''), 'data_root')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--verbose', action='store_true', help='print every case')
    parser.add_argument('-k', help='only cases whose name contains this')
    args = parser.parse_args()
    counts = {'clear': 0, 'vague': 0, 'accepted': 0}
    for name, fn, clear in CASES:
        if args.k and args.k not in name:
            continue
        try:
            fn()
            outcome, message = 'accepted', ''
        except Exception as err:  # noqa: BLE001 - the point is to look at any error
            message = f'{type(err).__name__}: {err}'
            outcome = 'clear' if re.search(clear, message, re.S) else 'vague'
        counts[outcome] += 1
        if args.verbose or outcome != 'clear':
            short = textwrap.shorten(message, 300)
            print(f'{outcome:8s} {name}: {short}', flush=True)
    total = sum(counts.values())
    print(f"\n{counts['clear']} of {total} give a clear error ({counts['vague']} vague, "
          f"{counts['accepted']} accepted silently)")


if __name__ == '__main__':
    main()
