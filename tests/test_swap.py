"""Swapping a config's backbone for a timm model (wiring/_swap.py): levels by stride, derived
fields 'auto', carry-overs and what cannot carry over, the `timm=ARCH` mark resolved by the
registry, `timm-backbones swap`, `tools/train.py --backbone` and mmdet's own tools/train.py with
`--cfg-options model.backbone.timm=ARCH`."""
import copy
import importlib.util
import io
import os
import re
import subprocess
import sys

import pytest
from mmengine.config import Config

from timm_backbones import TimmBackbone, build_detector, resolve_config
from timm_backbones._configs import to_plain
from timm_backbones.cli import main
from timm_backbones.engine import load_config
from timm_backbones.wiring import backbone_strides, swap_backbone, swap_marked
from timm_backbones.wiring._resolve import _input_over_map

from helpers import ROOT, mmdet_config

FASTER = 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
TOOLS = os.path.join(importlib.util.find_spec('mmdet').submodule_search_locations[0], '.mim',
                     'tools')
DEMO = os.path.join(ROOT, 'configs', 'retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py')
# the demo's data and runtime with mmdet's own ResNet-18 (and a torchvision init_cfg), as a
# user's config before the swap
RESNET_DEMO = f"""
_base_ = ['{DEMO}']
model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           pad_size_divisor=32),
    backbone=dict(_delete_=True, type='ResNet', depth=18, num_stages=4, out_indices=(1, 2, 3),
                  frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True,
                  style='pytorch',
                  init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet18')),
    neck=dict(in_channels=[128, 256, 512]),
    bbox_head=dict(anchor_generator=dict(strides=[8, 16, 32, 64])))
"""
SMALL = ['train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=4',
         'test_dataloader.dataset.indices=4', 'train_cfg.max_epochs=1']


def swapped(path, arch, **kwargs):
    return swap_backbone(mmdet_config(path), arch, **kwargs)


def built(cfg):
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.pretrained = False
    return build_detector(resolve_config(cfg))


# ---- levels by stride ----------------------------------------------------------------------------
def test_faster_rcnn_with_convnext_atto():
    # rule: the new backbone feeds the strides the old one fed (ResNet out_indices 0..3 ->
    # strides 4..32 -> convnext_atto's levels of those strides); derived fields become 'auto'
    result = swapped(FASTER, 'convnext_atto')
    model = result.config.model
    assert model.backbone.type == 'TimmBackbone' and model.backbone.model_name == 'convnext_atto'
    assert tuple(model.backbone.out_indices) == (0, 1, 2, 3)
    assert 'depth' not in model.backbone and 'init_cfg' not in model.backbone
    assert model.neck.in_channels == 'auto'
    assert model.data_preprocessor.mean == 'auto' and model.data_preprocessor.std == 'auto'
    assert model.data_preprocessor.pad_size_divisor == 'auto'
    assert 'timm_backbones' in result.config.custom_imports.imports
    resolved = resolve_config(result.config)
    assert resolved.model.neck.in_channels == [40, 80, 160, 320]
    assert isinstance(built(result.config).backbone, TimmBackbone)


def test_faster_rcnn_with_a_plain_vit():
    # rule: a plain model gets a simple pyramid with the strides the old backbone fed
    result = swapped(FASTER, 'vit_tiny_patch16_224')
    backbone = result.config.model.backbone
    assert list(backbone.pyramid_strides) == [4, 8, 16, 32] and 'out_indices' not in backbone
    assert any('plain model' in n for n in result.notes)
    model = built(result.config)
    assert list(model.backbone.out_strides) == [4, 8, 16, 32]


def test_old_strides_from_out_indices():
    # rule: strides are what the old backbone returns (built on meta): out_indices=(1, 2, 3)
    # is strides 8, 16, 32, and the timm levels follow
    cfg = mmdet_config('retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.backbone.out_indices = (1, 2, 3)
    cfg.model.neck.in_channels = [512, 1024, 2048]
    result = swap_backbone(cfg, 'resnet18', pretrained=False)
    assert tuple(result.config.model.backbone.out_indices) == (2, 3, 4)  # timm: 2, 4, ..32


def test_this_projects_configs():
    # rule: a timm backbone is swapped the same way (its strides from its plan); its options
    # are carried
    for arch, shape in (('convnext_atto', ('out_indices', (1, 2, 3))),
                        ('vit_tiny_patch16_224', ('pyramid_strides', [8, 16, 32]))):
        result = swap_backbone(load_config(DEMO), arch)
        backbone = result.config.model.backbone
        assert backbone.pretrained is False and to_plain(backbone[shape[0]]) == \
            to_plain(shape[1])
        resolve_config(result.config)


@pytest.mark.parametrize('path,strides', [
    ('swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py', (8, 16, 32)),
    ('pvt/retinanet_pvt-t_fpn_1x_coco.py', (4, 8, 16, 32)),
    ('regnet/faster-rcnn_regnetx-3.2GF_fpn_1x_coco.py', (4, 8, 16, 32)),
    ('hrnet/faster-rcnn_hrnetv2p-w18-1x_coco.py', (4, 8, 16, 32)),
    ('rtmdet/rtmdet_tiny_8xb32-300e_coco.py', (8, 16, 32)),
    ('yolof/yolof_r50-c5_8xb8-1x_coco.py', (32,)),
])
def test_backbones_that_are_not_resnet(path, strides):
    # rule: any mmdet backbone tells its strides (built on the meta device), and swaps alike
    cfg = mmdet_config(path)
    assert backbone_strides(cfg.model.backbone) == strides
    result = swap_backbone(cfg, 'convnext_atto', pretrained=False)
    resolve_config(result.config)


# ---- carried over, and not ------------------------------------------------------------------------
def test_carry_overs():
    # rule: frozen_stages, norm_eval and with_cp keep their meaning; SyncBN -> sync_bn=True;
    # norm requires_grad=False -> frozen BN; a torchvision checkpoint -> timm's pretrained=True
    cfg = mmdet_config(FASTER)
    cfg.model.backbone.update(with_cp=True, norm_cfg=dict(type='SyncBN', requires_grad=False))
    result = swap_backbone(cfg, 'convnext_atto')
    backbone = result.config.model.backbone
    assert backbone.frozen_stages == 1 and backbone.norm_eval is True and backbone.with_cp
    assert backbone.sync_bn is True and backbone.frozen_bn is True
    assert backbone.pretrained is True
    assert any('torchvision://resnet50' in n and 'pretrained=True' in n for n in result.notes)
    assert swap_backbone(cfg, 'convnext_atto', pretrained=False).config.model.backbone \
        .pretrained is False


@pytest.mark.parametrize('path,word', [
    ('dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py', '.dcn not carried'),
    ('gcnet/mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco.py', '.plugins not carried'),
    ('faster_rcnn/faster-rcnn_r50-caffe_fpn_1x_coco.py', "style='caffe' not carried"),
])
def test_what_cannot_carry_over_is_said(path, word):
    # rule: DCN, plugins and caffe style are said in one line each; the swap still resolves
    result = swapped(path, 'resnet18', pretrained=False)
    assert sum(word in n for n in result.notes) == 1, result.notes
    resolve_config(result.config)


def test_not_a_feature_pyramid_is_refused():
    # rule: a backbone whose maps do not form a pyramid (stacked hourglasses) is refused
    with pytest.raises(ValueError, match='not a feature pyramid'):
        swapped('cornernet/cornernet_hourglass104_8xb6-210e-mstest_coco.py', 'resnet18')


@pytest.mark.parametrize('path', ['tridentnet/tridentnet_r50-caffe_1x_coco.py',
                                  'faster_rcnn/faster-rcnn_r50-caffe_c4-1x_coco.py'])
def test_c4_shared_head_is_refused(path):
    # rule: a RoI head built from the old backbone's last stage cannot take timm maps: refused
    # with the reason and the FPN config to swap instead (was: a note, then a channel mismatch
    # at resolve time naming a fix that could not work)
    with pytest.raises(ValueError, match=r"roi_head.shared_head \(ResLayer, stage=3\) is a stage "
                                         r"of the old backbone.*faster-rcnn_r50_fpn_1x_coco"):
        swapped(path, 'resnet18')


def test_recursive_feature_pyramid_is_refused():
    # rule: DetectoRS' RFP neck holds a second backbone fed back from the pyramid: refused with
    # the reason (was: "has no level of stride 1", the image it takes as a level)
    with pytest.raises(ValueError, match=r"recursive feature pyramid.*rfp_backbone.*htc_r50_fpn"):
        swapped('detectors/htc_r50-rfp_1x_coco.py', 'resnet18')


# ---- heads fed by the backbone; YOLACT's strides ---------------------------------------------------
def test_mask2former_head_takes_the_backbone_maps():
    # rule: without a neck, heads fed by the backbone get in_channels='auto'
    result = swapped('mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
                     'convnext_atto', pretrained=False)
    assert result.config.model.panoptic_head.in_channels == 'auto'
    assert resolve_config(result.config).model.panoptic_head.in_channels == [40, 80, 160, 320]


def test_yolact_fractional_strides():
    # rule: YOLACT's anchor strides 550/69 ... 550/5 are input / map size for its 550 px
    # input: accepted; another level's fraction is not
    assert _input_over_map(550 / 69, 8) and _input_over_map(550 / 5, 128)
    assert not _input_over_map(550 / 35, 8) and not _input_over_map(4.0, 8)
    resolve_config(swapped('yolact/yolact_r50_1xb8-55e_coco.py', 'resnet18',
                           pretrained=False).config)


# ---- the timm=ARCH mark ------------------------------------------------------------------------
def test_marked_backbone_resolves():
    # rule: a backbone dict with timm=ARCH (e.g. --cfg-options model.backbone.timm=ARCH) is
    # swapped where configs are resolved; options written beside it are the user's
    cfg = mmdet_config(FASTER)
    cfg.merge_from_dict({'model.backbone.timm': 'convnext_atto',
                         'model.backbone.pretrained': False})
    resolved = resolve_config(cfg)
    assert resolved.model.backbone.model_name == 'convnext_atto'
    assert resolved.model.backbone.pretrained is False
    assert resolved.model.neck.in_channels == [40, 80, 160, 320]
    model = dict(backbone=dict(type='ResNet', depth=18, timm='resnet18'))
    assert swap_marked(model) and model['backbone']['type'] == 'TimmBackbone'


# ---- errors --------------------------------------------------------------------------------------
def test_unknown_arch_lists_close_matches():
    with pytest.raises(ValueError, match='convnext_atto'):  # rule: close matches
        swapped(FASTER, 'convnext_ato')


def test_config_without_backbone():
    with pytest.raises(ValueError, match='no backbone to swap'):  # rule: says what it needs
        swap_backbone(Config(dict(model=dict(type='RetinaNet'))), 'resnet18')


# ---- the commands ----------------------------------------------------------------------------------
def test_cli_swap_writes_a_config_that_loads_and_builds(tmp_path):
    # rule: `timm-backbones swap CONFIG ARCH -o OUT.py` writes a config inheriting CONFIG that
    # Config.fromfile loads and that builds
    out = tmp_path / 'faster_convnext.py'
    text = io.StringIO()
    assert main(['swap', f'mmdet::{FASTER}', 'convnext_atto', '--no-pretrained', '-o', str(out)],
                out=text) == 0
    assert 'wrote' in text.getvalue()
    written = out.read_text()
    assert f"_base_ = ['mmdet::{FASTER}']" in written and '_delete_' in written
    cfg = Config.fromfile(str(out))
    assert cfg.model.backbone.model_name == 'convnext_atto' and 'depth' not in cfg.model.backbone
    assert isinstance(build_detector(resolve_config(cfg)).backbone, TimmBackbone)
    assert main(['swap', f'mmdet::{FASTER}', 'convnext_ato'], out=io.StringIO()) == 1


def test_load_config_takes_mmdet_names():
    assert load_config(f'mmdet::{FASTER}').model.type == 'FasterRCNN'


def _run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    proc = subprocess.run([sys.executable, *args], cwd=str(cwd), env=env, capture_output=True,
                          text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{args} failed ({proc.returncode}):\n{out[-6000:]}'
    return out


@pytest.fixture(scope='module')
def resnet_demo(tmp_path_factory):
    cwd = tmp_path_factory.mktemp('swap')
    (cwd / 'resnet_demo.py').write_text(RESNET_DEMO)
    return cwd


def test_train_py_backbone_flag(resnet_demo):
    # rule: tools/train.py CONFIG --backbone ARCH trains the swapped config (cfg-options after
    # the swap address the new backbone)
    out = _run([os.path.join(ROOT, 'tools', 'train.py'), 'resnet_demo.py', '--backbone',
                'convnext_atto', '--work-dir', 'ours', '--cfg-options', *SMALL,
                'model.backbone.pretrained=False'], resnet_demo)
    assert 'swap:' in out and (resnet_demo / 'ours' / 'epoch_1.pth').is_file()
    # tools/test.py CONFIG CKPT --backbone ARCH evaluates that checkpoint with the same swap
    out = _run([os.path.join(ROOT, 'tools', 'test.py'), 'resnet_demo.py', 'ours/epoch_1.pth',
                '--backbone', 'convnext_atto', '--work-dir', 'ours_test', '--cfg-options', *SMALL,
                'model.backbone.pretrained=False'], resnet_demo)
    assert 'swap:' in out and 'Epoch(test) [1/1]' in out
    loaded = re.search(r'loaded (\d+)/(\d+) tensors of the model from ours/epoch_1.pth', out)
    assert loaded and loaded[1] == loaded[2], out[-3000:]  # every tensor of the swapped model


def test_refused_swap_through_the_tools(resnet_demo):
    # rule: a refused swap stops the tool naming the flag, the value and the close matches
    for tool in ('train.py', 'test.py'):
        args = [os.path.join(ROOT, 'tools', tool), 'resnet_demo.py'] + \
            (['missing.pth'] if tool == 'test.py' else []) + ['--backbone', 'convnext_ato']
        proc = subprocess.run([sys.executable, *args], cwd=str(resnet_demo), capture_output=True,
                              text=True, timeout=600, env=dict(os.environ, PYTHONPATH=ROOT))
        assert proc.returncode != 0
        assert '--backbone convnext_ato: ValueError' in proc.stderr and 'convnext_atto' in \
            proc.stderr, proc.stderr[-2000:]


def test_mmdet_train_py_with_cfg_options(resnet_demo):
    # rule: mmdet's own tools/train.py (mmengine's Runner, the registry's resolving build)
    # swaps a backbone marked with --cfg-options model.backbone.timm=ARCH
    out = _run([os.path.join(TOOLS, 'train.py'), 'resnet_demo.py', '--work-dir', 'stock',
                '--cfg-options', *SMALL, 'runner_type=Runner', 'model.backbone.timm=convnext_atto',
                'model.backbone.pretrained=False',
                'custom_imports.imports=[timm_backbones,timm_backbones.data]'], resnet_demo)
    assert (resnet_demo / 'stock' / 'epoch_1.pth').is_file()
    assert 'convnext_atto' in out
