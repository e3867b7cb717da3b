"""`TimmBackboneRunner`: the mmengine `Runner` for configs with timm backbones.

It owns what happens between a config and a training or testing loop that plain mmengine gets
wrong for timm models:

- The config is resolved (`resolve_config`) before anything is built, so `'auto'` channel and
  stride fields work with mmdet's own `tools/train.py` / `tools/test.py` (config:
  `runner_type='mmdet.TimmBackboneRunner'`), and the config dumped to the work dir is the resolved
  one.
- SyncBN keeps timm's fused activations (`_norms.py`).
- Checkpoints are written in tensors and plain containers (`to_plain_checkpoint`), so any
  weights-only reader loads them (mmdet's `DetInferencer(weights=...)` before any plugin is
  imported); they load weights-only, and `load_from` reports how many backbone tensors it
  loaded (an error when too few matched, `_weights.py`). Their optimizer state carries
  parameter names, so FSDP runs (`TimmBackboneFlexibleRunner`) resume from them and this
  runner resumes from theirs.
- With `sample_seeding=True` (set by `configs/_base_/timm_runtime.py`) the training dataloader
  seeds each sample's augmentation from (seed, epoch, sample index) (`engine/_seeding.py`): resume
  is exact and results do not depend on the number of workers.
- Distributed runs without CUDA (`--launcher pytorch` on CPUs) use the gloo backend and plain
  CPU `DistributedDataParallel`.

Resolution, seeding, checkpoint reading and writing and gloo are shared with the FlexibleRunner
counterpart (`_runner_common.py`).
"""
import copy
import os
from typing import Any, Dict, Optional, Union

from mmdet.registry import RUNNERS
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import Runner
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .._norms import check_sync_bn_device, convert_sync_batchnorm, revert_sync_batchnorm
from ._cuda_check import check_mmcv_cuda_ops
from ._runner_common import TimmRunnerMixin, cpu_launch, init_cpu_process_group

__all__ = ['TimmBackboneRunner']


@RUNNERS.register_module()
class TimmBackboneRunner(TimmRunnerMixin, Runner):
    """mmengine `Runner` that resolves timm backbone configs, keeps timm's fused norm + act
    layers under SyncBN, loads checkpoints weights-only and runs distributed on CPUs.

    Select it in a config with `runner_type='mmdet.TimmBackboneRunner'` (the package's
    `configs/_base_/timm_runtime.py` does), so that mmdet's own `tools/train.py` and
    `tools/test.py` use it: the scope prefix is needed because mmdet's train.py looks it up in
    mmengine's root registry before any default scope is set. This package's tools use it for
    every config.

    Differences from `Runner`:
        - `from_cfg` resolves the config (`resolve_config`: `'auto'` channels and strides are
          filled from the timm backbone, wrong explicit values fail) before anything is built;
          model dicts passed directly are resolved when the registry builds them (as on every
          route, see `engine/_api.py`).
        - `wrap_model`: without a distributed launcher, sync norms are reverted (timm's
          `SyncBatchNormAct` to `BatchNormAct2d`, activation kept); with one, `sync_bn='torch'`
          or `'mmcv'` converts batch norms with `convert_sync_batchnorm` (timm's converter for
          batch norms with a fused activation). Without CUDA the model is wrapped in CPU
          `DistributedDataParallel` (`device_ids=None`), which refuses sync norms: a
          `ValueError` then says which option to drop.
        - `setup_env`: with `launcher='pytorch'` and no CUDA, the process group uses gloo
          (mmengine would call `torch.cuda.set_device` and use nccl).
        - `load_checkpoint` / `resume` load weights-only (see `checkpoint_loading`), verified
          before the weights are replaced; checkpoints are written in tensors and plain
          containers only (`to_plain_checkpoint`), with the optimizer state's parameter names
          (`_optim_state.py`). These, `from_cfg` and gloo are `TimmRunnerMixin`'s, shared
          with `TimmBackboneFlexibleRunner`.

    Example:
        >>> cfg = Config.fromfile('configs/retinanet_timm-pvt-v2-b2_fpn_1x_coco.py')
        >>> cfg.work_dir = 'work_dirs/retinanet'
        >>> TimmBackboneRunner.from_cfg(cfg).train()
    """

    def setup_env(self, env_cfg: Dict) -> None:
        """mmengine's `setup_env`; with `launcher='pytorch'` and no CUDA, gloo on CPUs."""
        if self.distributed and cpu_launch(self.launcher):
            init_cpu_process_group(env_cfg.get('dist_cfg', {}))
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg: Optional[Dict],
                   model: nn.Module) -> Union[DistributedDataParallel, nn.Module]:
        """mmengine's `wrap_model`, with SyncBN conversions that keep timm's fused activations
        and CPU `DistributedDataParallel`.

        Args:
            model_wrapper_cfg: Config of the wrapper (None: `MMDistributedDataParallel`).
            model: The model.
        """
        check_mmcv_cuda_ops(get_device())  # mmcv without CUDA ops: say so before an op fails
        if is_model_wrapper(model) or not self.distributed:
            if not is_model_wrapper(model):
                model = revert_sync_batchnorm(model)  # before mmengine's, which drops acts
            return super().wrap_model(model_wrapper_cfg, model)
        # mirrors mmengine 0.10's Runner.wrap_model (distributed branch)
        device = get_device()
        model = model.to(device)
        sync_bn = self.cfg.get('sync_bn', None)
        if sync_bn is not None:
            model = convert_sync_batchnorm(model, sync_bn)
            print_log(f"sync_bn={sync_bn!r}: batch norms converted to SyncBatchNorm (timm's "
                      f'fused norm + act layers to SyncBatchNormAct)', logger='current')
        device_ids = None if device == 'cpu' else [int(os.environ['LOCAL_RANK'])]
        if model_wrapper_cfg is None:
            check_sync_bn_device(model, device)
            return MMDistributedDataParallel(
                module=model, device_ids=device_ids, broadcast_buffers=False,
                find_unused_parameters=self.cfg.get('find_unused_parameters', False))
        wrapper_cfg = copy.deepcopy(model_wrapper_cfg)
        wrapper_cfg.setdefault('type', 'MMDistributedDataParallel')
        wrapper_type = MODEL_WRAPPERS.get(wrapper_cfg.get('type'))
        default_args: Dict[str, Any] = dict(module=model)
        if isinstance(wrapper_type, type) and issubclass(wrapper_type, DistributedDataParallel):
            check_sync_bn_device(model, device)
            default_args['device_ids'] = device_ids
        return MODEL_WRAPPERS.build(wrapper_cfg, default_args=default_args)
