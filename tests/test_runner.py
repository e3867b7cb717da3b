"""TimmBackboneRunner and the API around it: SyncBN conversions keep timm's fused activations (both
the backbone's `sync_bn` option and the runner's `sync_bn='torch'`), frozen stages survive them,
configs are resolved before building, checkpoints load weights-only, `init_detector`."""
import copy
import pickle

import pytest
import torch
import torch.distributed as torch_dist
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.model import convert_sync_batchnorm as mmengine_convert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from timm.layers import BatchNormAct2d, SyncBatchNormAct
from torch import nn

from timm_backbones import (TimmBackbone, TimmBackboneRunner, build_detector, init_detector,
                            resolve_config)
from helpers import free_port
from timm_backbones._checkpoint import checkpoint_loading
from timm_backbones._norms import convert_sync_batchnorm, revert_sync_batchnorm

register_all_modules()

SYNC_MODELS = ['efficientnet_b0', 'mobilenetv3_large_100']  # BatchNormAct2d everywhere
X = torch.rand(2, 3, 96, 128)


def detector_cfg(name, **backbone):
    """A small RetinaNet on a timm backbone; channels and strides left to resolve_config."""
    return dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor=32),
        backbone=dict(type='TimmBackbone', model_name=name, out_indices=(2, 3, 4), **backbone),
        neck=dict(type='FPN', in_channels='auto', out_channels=32, num_outs=3),
        bbox_head=dict(
            type='RetinaHead', num_classes=2, in_channels=32, feat_channels=32, stacked_convs=1,
            anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                  scales_per_octave=1, ratios=[1.0], strides='auto'),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                            target_stds=[1.0, 1.0, 1.0, 1.0]),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25),
            loss_bbox=dict(type='L1Loss')),
        test_cfg=dict(nms_pre=100, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                      max_per_img=10))


def randomize_norms(model):
    """Non-trivial batch-norm statistics and affine parameters (fresh ones are near identity)."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model


def build(name, **backbone):
    model = MODELS.build(resolve_config(detector_cfg(name, **backbone)))
    return randomize_norms(model).eval()


def outputs(model, x=X):
    with torch.no_grad():
        return model.eval()._forward(x)  # mode='tensor': head outputs of every level


def assert_same(a, b):
    flat_a, flat_b = _flatten(a), _flatten(b)
    assert len(flat_a) == len(flat_b)
    for u, v in zip(flat_a, flat_b):
        assert torch.equal(u, v), (u - v).abs().max()


def _flatten(x):
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in x for t in _flatten(item)]


def norm_types(model):
    return {type(m).__name__ for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}


@pytest.fixture
def dist_env(monkeypatch):
    """A one-process `--launcher pytorch` environment (gloo, set up by the runner on CPUs)."""
    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    yield
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@MODEL_WRAPPERS.register_module()
class PassThroughWrapper(nn.Module):
    """A model wrapper that only holds the model: DistributedDataParallel refuses SyncBatchNorm
    on CPUs, so the tests of the runner's conversions use this one under a launcher."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def make_runner(tmp_path, model, launcher='none', **cfg):
    if launcher != 'none':
        cfg['model_wrapper_cfg'] = dict(type='PassThroughWrapper')
    return TimmBackboneRunner(model=model, work_dir=str(tmp_path), launcher=launcher,
                              default_scope='mmdet', cfg=dict(cfg))


# ------------------------------------------------------------------------------------------------
# SyncBN: why the runner converts itself

def test_mmengine_converter_drops_timm_activations():
    # the rule the runner exists for: mmengine's (torch's) converter turns BatchNormAct2d into a
    # plain SyncBatchNorm whose forward skips the fused activation
    model = build('efficientnet_b0')
    converted = mmengine_convert_sync_batchnorm(copy.deepcopy(model), 'torch')
    assert 'SyncBatchNormAct' not in norm_types(converted)
    with torch.no_grad():
        ref = model.backbone(X)
        bad = converted.eval().backbone(X)
    assert not torch.allclose(ref[-1], bad[-1], atol=1e-3)


# ------------------------------------------------------------------------------------------------
# SyncBN, path 1: the runner's sync_bn='torch' (distributed launcher)

@pytest.mark.parametrize('name', SYNC_MODELS)
def test_runner_sync_bn_keeps_outputs(name, tmp_path, dist_env):
    model = build(name)
    ref = copy.deepcopy(model)
    runner = make_runner(tmp_path, model, launcher='pytorch', sync_bn='torch')
    assert torch_dist.get_backend() == 'gloo'  # no CUDA: the runner chose gloo over nccl
    wrapped = runner.model
    types = norm_types(wrapped)
    assert 'SyncBatchNormAct' in types and 'BatchNormAct2d' not in types
    # plain batch norms (the backbone's non-fused ones, if any) became SyncBatchNorm
    assert types <= {'SyncBatchNormAct', 'SyncBatchNorm'}
    assert_same(outputs(ref), outputs(wrapped.module))


def test_cpu_ddp_without_sync_bn(tmp_path, dist_env):
    # CPU DistributedDataParallel (device_ids=None) for models without sync norms
    runner = TimmBackboneRunner(model=build('resnet18'), work_dir=str(tmp_path),
                                launcher='pytorch', default_scope='mmdet')
    assert type(runner.model).__name__ == 'MMDistributedDataParallel'


def test_cpu_ddp_with_sync_bn_says_what_to_drop(tmp_path, dist_env):
    with pytest.raises(ValueError, match='sync_bn=False'):  # DDP refuses SyncBN on CPUs
        TimmBackboneRunner(model=build('efficientnet_b0'), work_dir=str(tmp_path),
                           launcher='pytorch', default_scope='mmdet', cfg=dict(sync_bn='torch'))


def test_convert_sync_batchnorm_mmcv_implementation(dist_env):
    # sync_bn='mmcv': fused norm + act layers still go through timm (torch SyncBatchNormAct),
    # plain batch norms become mmcv's SyncBatchNorm (which needs a process group to exist)
    from mmcv.ops import SyncBatchNorm as MMCVSyncBatchNorm
    torch_dist.init_process_group('gloo')
    model = nn.Sequential(TimmBackbone('efficientnet_b0', out_indices=(2,)), nn.BatchNorm2d(40))
    converted = convert_sync_batchnorm(model, 'mmcv')
    assert isinstance(converted[0].model.bn1, SyncBatchNormAct)
    assert isinstance(converted[1], MMCVSyncBatchNorm)
    with pytest.raises(ValueError, match='torch'):  # sync_bn must be 'torch' or 'mmcv'
        convert_sync_batchnorm(model, 'apex')


# ------------------------------------------------------------------------------------------------
# SyncBN, path 2: the backbone's own sync_bn=True

@pytest.mark.parametrize('name', SYNC_MODELS)
def test_backbone_sync_bn_option_keeps_outputs(name, tmp_path, dist_env):
    ref = build(name)
    model = build(name, sync_bn=True)
    model.load_state_dict(ref.state_dict())  # same names: SyncBatchNormAct is a drop-in
    assert 'SyncBatchNormAct' in norm_types(model) and 'BatchNormAct2d' not in norm_types(model)
    assert_same(outputs(ref), outputs(model))
    # under a distributed launcher the runner leaves the sync norms as they are
    runner = make_runner(tmp_path, model, launcher='pytorch')
    assert 'SyncBatchNormAct' in norm_types(runner.model)
    assert_same(outputs(ref), outputs(runner.model.module))


@pytest.mark.parametrize('name', SYNC_MODELS)
def test_backbone_sync_bn_reverted_without_launcher(name, tmp_path):
    # without a launcher the runner reverts sync norms, keeping the activations (mmengine's own
    # revert would make them BatchNormXd without the activation)
    ref = build(name)
    model = build(name, sync_bn=True)
    model.load_state_dict(ref.state_dict())
    runner = make_runner(tmp_path, model)
    types = norm_types(runner.model)
    assert 'BatchNormAct2d' in types and not any('Sync' in t for t in types)
    assert_same(outputs(ref), outputs(runner.model))


def test_revert_sync_batchnorm_keeps_act_and_drop_modules():
    backbone = TimmBackbone('efficientnet_b0', out_indices=(2,), sync_bn=True)
    sync = backbone.model.bn1
    reverted = revert_sync_batchnorm(backbone)
    bn = reverted.model.bn1
    assert isinstance(bn, BatchNormAct2d) and not isinstance(bn, nn.SyncBatchNorm)
    assert bn.act is sync.act and bn.drop is sync.drop
    assert bn.weight is sync.weight and bn.running_mean is sync.running_mean  # shared, not copied


# ------------------------------------------------------------------------------------------------
# Frozen stages survive the conversions

def _check_stem_frozen(model):
    model.train()
    stem_bn = model.backbone.model.bn1  # efficientnet's stem norm: a frozen module itself
    assert not stem_bn.training  # TimmBackbone.train() keeps the replaced module in eval mode
    assert not any(p.requires_grad for p in stem_bn.parameters())
    assert model.backbone.model.blocks[-1].training  # unfrozen stages train


def test_frozen_stages_survive_runner_sync_bn(tmp_path, dist_env):
    # frozen_stages=1: the stem (with the stride-2 level) and the first stage; the stem's
    # BatchNormAct2d is replaced by the runner
    model = build('efficientnet_b0', frozen_stages=1)
    runner = make_runner(tmp_path, model, launcher='pytorch', sync_bn='torch')
    assert isinstance(runner.model.module.backbone.model.bn1, SyncBatchNormAct)
    _check_stem_frozen(runner.model.module)


def test_frozen_stages_survive_revert(tmp_path):
    model = build('efficientnet_b0', frozen_stages=1, sync_bn=True)
    runner = make_runner(tmp_path, model)
    assert type(runner.model.backbone.model.bn1) is BatchNormAct2d
    _check_stem_frozen(runner.model)


# ------------------------------------------------------------------------------------------------
# Configs are resolved before anything is built

def runner_cfg(tmp_path, **extra):
    return Config(dict(model=detector_cfg('resnet18'), work_dir=str(tmp_path),
                       default_scope='mmdet', **extra))


def test_from_cfg_resolves(tmp_path):
    cfg = runner_cfg(tmp_path)
    runner = TimmBackboneRunner.from_cfg(cfg)
    assert runner.cfg.model.neck.in_channels == [128, 256, 512]  # the config the runner dumps
    assert runner.cfg.model.bbox_head.anchor_generator.strides == [8, 16, 32]
    assert runner.model.neck.lateral_convs[0].conv.in_channels == 128
    assert cfg.model.neck.in_channels == 'auto'  # the caller's config is left alone


def test_build_model_resolves_model_dicts(tmp_path):
    runner = TimmBackboneRunner(model=detector_cfg('resnet18'), work_dir=str(tmp_path),
                                default_scope='mmdet')
    assert runner.model.neck.lateral_convs[0].conv.in_channels == 128


def test_runner_type_selects_the_runner(tmp_path):
    # mmdet's tools/train.py builds runner_type from mmengine's root registry, tools/test.py from
    # mmdet's; the shared base config's scoped name works in both, whatever the default scope
    from mmdet.registry import RUNNERS as MMDET_RUNNERS
    from mmengine.registry import RUNNERS
    runner_type = Config.fromfile('configs/_base_/timm_runtime.py').runner_type
    assert RUNNERS.get(runner_type) is TimmBackboneRunner
    assert MMDET_RUNNERS.get(runner_type) is TimmBackboneRunner
    runner = RUNNERS.build(runner_cfg(tmp_path, runner_type=runner_type))
    assert type(runner) is TimmBackboneRunner


def test_from_cfg_reports_wrong_channels(tmp_path):
    cfg = runner_cfg(tmp_path)
    cfg.model.neck.in_channels = [256, 512, 1024]
    with pytest.raises(ValueError, match="'auto'"):  # explicit mismatching values fail early
        TimmBackboneRunner.from_cfg(cfg)


# ------------------------------------------------------------------------------------------------
# Weights-only checkpoints, init_detector

def save_checkpoint(model, path, **extra):
    """A checkpoint as mmengine writes it: meta with dataset_meta, a message hub with
    HistoryBuffers (numpy arrays, statistics methods pickled through getattr)."""
    buffer = HistoryBuffer()
    buffer.update(1.5)
    torch.save(dict(meta=dict(dataset_meta=dict(classes=('a', 'b')), seed=0, iter=4),
                    state_dict=model.state_dict(),
                    message_hub=dict(log_scalars={'train/loss': buffer}), **extra), path)


def write_config(tmp_path):
    path = tmp_path / 'cfg.py'
    Config(dict(model=detector_cfg('resnet18', pretrained=True), default_scope='mmdet',
                custom_imports=dict(imports=['timm_backbones.data']),
                test_dataloader=dict(dataset=dict(type='SyntheticShapesDataset')))).dump(path)
    return str(path)


def test_init_detector(tmp_path):
    # pretrained=True in the config: never downloaded (the checkpoint replaces the weights)
    config = write_config(tmp_path)
    model = randomize_norms(build('resnet18'))
    save_checkpoint(model, tmp_path / 'ckpt.pth')
    loaded = init_detector(config, str(tmp_path / 'ckpt.pth'))
    assert not loaded.training and loaded.cfg.model.neck.in_channels == [128, 256, 512]
    assert loaded.cfg.model.backbone.pretrained is False
    assert loaded.dataset_meta['classes'] == ('a', 'b')
    assert_same(outputs(model), outputs(loaded))


def test_init_detector_without_checkpoint_takes_classes_from_config(tmp_path):
    model = init_detector(Config.fromfile(write_config(tmp_path)))
    assert model.dataset_meta['classes'][0] == 'circle'  # SyntheticShapesDataset.METAINFO


def test_init_detector_keeps_timm_activations(tmp_path):
    # mmdet's init_detector reverts SyncBN with mmengine's converter (activations lost)
    cfg = Config.fromfile(write_config(tmp_path))
    cfg.model.backbone.update(model_name='efficientnet_b0', sync_bn=True)
    model = init_detector(cfg)
    assert 'BatchNormAct2d' in norm_types(model) and 'SyncBatchNormAct' not in norm_types(model)


class _NotAllowed:
    pass


class _GetattrEscape:
    def __reduce__(self):  # pickled as builtins.getattr(HistoryBuffer, '__init__')
        return getattr, (HistoryBuffer, '__init__')


@pytest.mark.parametrize('extra', [dict(other=_NotAllowed()), dict(other=_GetattrEscape())],
                         ids=['unknown-class', 'getattr-beyond-history-buffer'])
def test_checkpoint_outside_allow_list_says_how_to_proceed(tmp_path, extra):
    model = build('resnet18')
    save_checkpoint(model, tmp_path / 'ckpt.pth', **extra)
    with pytest.raises(RuntimeError, match='TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD') as info:
        init_detector(write_config(tmp_path), str(tmp_path / 'ckpt.pth'))
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    if 'unknown' in str(extra):
        assert '_NotAllowed' in str(info.value)  # names the type to allow if trusted


def test_checkpoint_loading_allows_what_mmengine_writes(tmp_path):
    save_checkpoint(build('resnet18'), tmp_path / 'ckpt.pth')
    with checkpoint_loading(str(tmp_path / 'ckpt.pth')):
        ckpt = torch.load(tmp_path / 'ckpt.pth')  # weights_only=True (torch's default)
    buffer = ckpt['message_hub']['log_scalars']['train/loss']
    assert buffer.mean() == 1.5
    # with the plugin imported, what mmengine writes is allowed process-wide (mmdet's own APIs
    # call torch.load themselves), and nothing else (see test_checkpoint.py)
    assert torch.load(tmp_path / 'ckpt.pth')['message_hub']['log_scalars']['train/loss'].mean() \
        == 1.5


def test_build_detector_takes_whole_configs_and_model_dicts():
    whole = build_detector(Config(dict(model=detector_cfg('resnet18'))))
    alone = build_detector(detector_cfg('resnet18'))
    assert whole.neck.lateral_convs[0].conv.in_channels == 128
    assert alone.neck.lateral_convs[0].conv.in_channels == 128
    with pytest.raises(TypeError):  # a config or a dict, nothing else
        build_detector('configs/x.py')
