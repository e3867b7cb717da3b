"""`TimmBackboneFlexibleRunner`: mmengine's `FlexibleRunner` (training through a strategy:
`FSDPStrategy`, `DDPStrategy`, `SingleDeviceStrategy`, ...) for configs with timm backbones, the
counterpart of `TimmBackboneRunner` for models that do not fit one DDP replica per GPU.

What it shares with `TimmBackboneRunner` (`_runner_common.py`): the config is resolved and
training samples seeded before anything is built, checkpoints are read weights-only and verified,
written plain, and their optimizer state is matched by parameter name when resuming, so FSDP and
DDP runs resume from each other's checkpoints; `--launcher pytorch` without CUDA uses gloo.

What it adds for the strategies:
- FSDP (`FSDPStrategy`): checkpoints must be full state dicts (`state_dict_cfg='full'`, which
  mmdet's `init_detector`, `tools/test.py` and DDP runs load; mmengine's default, 'local',
  writes one shard per rank); without CUDA the FSDP units live on the CPU (`device_id='cpu'`);
  `skip_init_weights=True` is refused (timm initialises and loads its pretrained weights while
  the backbone is built, so they would be lost). Wrap and checkpoint policies for timm models:
  `engine/_fsdp.py`; `auto_wrap_policy=dict(type='timm_block_wrap_policy', mixed_precision=...)`
  becomes its `TimmBlockWrapPolicy` (mmengine would turn the dict into a function call).
- DDP (`DDPStrategy`): `sync_bn` converts with timm's converter (keeping the fused activations
  of `BatchNormAct2d`, which mmengine's drops); without CUDA, CPU `DistributedDataParallel`.
- One process (`SingleDeviceStrategy`): sync norms are reverted keeping timm's activations.
The model is built (by the strategy) before the strategy prepares it, to apply these.
"""
import copy
from typing import Any, Dict, Mapping, Optional, Union

import torch
from mmdet.registry import RUNNERS
from mmengine._strategy import BaseStrategy, DDPStrategy, FSDPStrategy
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.registry import STRATEGIES
from mmengine.runner import FlexibleRunner
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp import StateDictType

from .._norms import check_sync_bn_device, convert_sync_batchnorm, revert_sync_batchnorm
from ._cuda_check import check_mmcv_cuda_ops
from ._fsdp import resolve_wrap_policy
from ._runner_common import TimmRunnerMixin, cpu_launch, init_cpu_process_group

__all__ = ['TimmBackboneFlexibleRunner']


@RUNNERS.register_module()
class TimmBackboneFlexibleRunner(TimmRunnerMixin, FlexibleRunner):
    """mmengine `FlexibleRunner` for timm backbone configs: FSDP training of backbones too large
    for a DDP replica per GPU (ViT-L/H, EVA-02-L, ...), with everything `TimmBackboneRunner`
    does (see the module docstring).

    Select it in a config, with a strategy, so that mmdet's own `tools/train.py` and
    `tools/test.py` use it (this package's `tools/train.py` too):

        runner_type = 'mmdet.TimmBackboneFlexibleRunner'
        strategy = dict(
            type='FSDPStrategy',
            model_wrapper=dict(auto_wrap_policy='timm_block_wrap_policy'),
            activation_checkpointing=dict(check_fn='timm_block_check_fn'),
            state_dict_cfg='full')

    `tools/dist_train.sh CONFIG N` launches it (N processes; without CUDA, CPU processes over
    gloo). FSDP needs a launcher (one process works: `tools/dist_train.sh CONFIG 1`).

    Example:
        >>> cfg = Config.fromfile(
        ...     'configs/mask-rcnn_timm-vit-large-p16-mae_fpn_fsdp-layer-decay-1x_coco.py')
        >>> TimmBackboneFlexibleRunner.from_cfg(cfg).train()   # under torchrun
    """
    _expected_state: Optional[Dict[str, torch.Tensor]] = None
    _sync_bn: Optional[str] = None
    _optimizer_to_load: Any = None

    def build_strategy(self, strategy: Optional[Union[BaseStrategy, Dict]] = None,
                       launcher: str = 'none', randomness: Optional[dict] = None,
                       env_cfg: dict = dict(dist_cfg=dict(backend='nccl')),
                       experiment_name: Optional[str] = None,
                       log_level: Optional[str] = None) -> BaseStrategy:
        """mmengine's `build_strategy`, after checking the strategy config and adapting it to
        timm models and to CPUs (see the module docstring); the config is not modified."""
        if not isinstance(strategy, BaseStrategy):
            if strategy is None:
                strategy = dict(type='SingleDeviceStrategy' if launcher == 'none'
                                else 'DDPStrategy')
            strategy = copy.deepcopy(dict(strategy))
            kind = _strategy_class(strategy)
            if issubclass(kind, FSDPStrategy):
                self._check_fsdp(strategy, launcher)
                wrapper = dict(strategy.get('model_wrapper') or {})
                if 'auto_wrap_policy' in wrapper:
                    wrapper['auto_wrap_policy'] = resolve_wrap_policy(wrapper['auto_wrap_policy'])
                if cpu_launch(launcher):
                    wrapper.setdefault('device_id', 'cpu')
                    strategy['state_dict_cfg'] = _cpu_full_state_dict_cfg()
                strategy['model_wrapper'] = wrapper
            elif issubclass(kind, DDPStrategy):
                self._sync_bn = strategy.pop('sync_bn', None)  # converted here, timm's way
                if cpu_launch(launcher):
                    wrapper = dict(strategy.get('model_wrapper') or dict(
                        type='MMDistributedDataParallel', broadcast_buffers=False))
                    wrapper.setdefault('device_ids', None)
                    strategy['model_wrapper'] = wrapper
        if cpu_launch(launcher):
            init_cpu_process_group((env_cfg or {}).get('dist_cfg', {}))
        return super().build_strategy(strategy, launcher=launcher, randomness=randomness,
                                      env_cfg=env_cfg, experiment_name=experiment_name,
                                      log_level=log_level)

    def _check_fsdp(self, strategy: Mapping[str, Any], launcher: str) -> None:
        if launcher == 'none':
            raise ValueError(
                "strategy=dict(type='FSDPStrategy') needs a distributed launcher: run "
                'tools/dist_train.sh CONFIG N / tools/dist_test.sh CONFIG CKPT N (N processes, '
                "1 works too), or mmdet's tools with --launcher pytorch under torchrun. To "
                'evaluate or train without FSDP in one process, add --cfg-options '
                'runner_type=mmdet.TimmBackboneRunner (its checkpoints load either way).')
        cfg = strategy.get('state_dict_cfg', 'local')
        kind = cfg.get('state_dict_type', 'LOCAL_STATE_DICT') if isinstance(cfg, Mapping) \
            else cfg
        if kind not in ('full', 'FULL_STATE_DICT', StateDictType.FULL_STATE_DICT):
            raise ValueError(
                f"FSDPStrategy: state_dict_cfg={cfg!r} writes one checkpoint shard per rank, "
                f"which init_detector, tools/test.py and DDP runs cannot load. Set "
                f"strategy.state_dict_cfg='full' (full state dicts, gathered on rank 0).")
        if strategy.get('skip_init_weights', False):
            raise ValueError(
                'FSDPStrategy: skip_init_weights=True builds the model without weights, but timm '
                'initialises the backbone (and loads its pretrained weights) while it is built, '
                'so they would be lost. Remove skip_init_weights (load a checkpoint with '
                'load_from=...).')

    def _build_model(self) -> None:
        """Build the model with the strategy (once), so timm-aware norm conversions apply
        before the strategy wraps it, and record the names and shapes checkpoints are checked
        against (FSDP shards the parameters)."""
        if isinstance(self.model, nn.Module):
            return
        check_mmcv_cuda_ops(get_device())  # mmcv without CUDA ops: say so before an op fails
        model = self.strategy.build_model(self.model)
        if not self.distributed:
            model = revert_sync_batchnorm(model)  # before mmengine's, which drops timm's acts
        elif not isinstance(self.strategy, FSDPStrategy):
            if self._sync_bn is not None:
                model = convert_sync_batchnorm(model, self._sync_bn)
                print_log(f"sync_bn={self._sync_bn!r}: batch norms converted to SyncBatchNorm "
                          f"(timm's fused norm + act layers to SyncBatchNormAct)",
                          logger='current')
            check_sync_bn_device(model, get_device())
        self._expected_state = {k: torch.empty(v.shape, dtype=v.dtype, device='meta')
                                for k, v in model.state_dict().items()}
        self.model = model

    def train(self) -> nn.Module:
        """mmengine's `train`, on the model built by `_build_model`."""
        self._build_model()
        return super().train()

    def val(self) -> dict:
        """mmengine's `val`, on the model built by `_build_model`."""
        self._build_model()
        return super().val()

    def test(self) -> dict:
        """mmengine's `test`, on the model built by `_build_model`."""
        self._build_model()
        return super().test()

    def resume(self, filename: str, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True, map_location: Any = 'default') -> None:
        """mmengine's `resume` (weights-only and verified, see `TimmRunnerMixin`). Under FSDP the
        optimizer state is loaded here: mmengine 0.10.7 calls `FSDP.optim_state_dict_to_load`
        with the argument order of torch < 2.1, which torch 2.x rejects."""
        fsdp = resume_optimizer and isinstance(self.strategy, FSDPStrategy)
        self._optimizer_to_load = None
        super().resume(filename, resume_optimizer=resume_optimizer and not fsdp,
                       resume_param_scheduler=resume_param_scheduler, map_location=map_location)
        if fsdp:
            state = self._optimizer_to_load
            if not isinstance(state, Mapping) or 'param_groups' not in state:
                raise ValueError(f'cannot resume the optimizer from {filename!r}: it has no '
                                 f'optimizer state. Start from its weights only (load_from=... '
                                 f'without --resume).')
            loaded = FSDP.optim_state_dict_to_load(self.model, self.optim_wrapper.optimizer,
                                                   dict(state))
            extra = {k: v for k, v in state.items() if k not in ('state', 'param_groups')}
            self.optim_wrapper.load_state_dict(dict(loaded, **extra))  # e.g. AMP's loss_scaler

    def _after_read(self, checkpoint: Dict[str, Any]) -> None:
        super()._after_read(checkpoint)
        self._optimizer_to_load = checkpoint.get('optimizer')

    @property
    def _loads_optimizer_by_name(self) -> bool:  # type: ignore[override]
        return isinstance(self.strategy, FSDPStrategy)

    def _load_target(self) -> Union[nn.Module, Mapping[str, torch.Tensor]]:
        return self._expected_state if self._expected_state is not None else \
            super()._load_target()


def _cpu_full_state_dict_cfg() -> Dict[str, Any]:
    """`state_dict_cfg='full'` for FSDP units on the CPU: full state dicts on rank 0, without
    `offload_to_cpu`. torch's FSDP gathers every optimizer state of a unit into one reused buffer
    and copies it out only by offloading (`.cpu()`), which is no copy on the CPU: with it, every
    state of the checkpoint (`exp_avg`, ...) would hold the last one gathered (`exp_avg_sq`)."""
    return dict(
        state_dict_type='FULL_STATE_DICT',
        state_dict_config=dict(type='FullStateDictConfig', rank0_only=True, offload_to_cpu=False),
        optim_state_dict_config=dict(type='FullOptimStateDictConfig', rank0_only=True,
                                     offload_to_cpu=False))


def _strategy_class(strategy: Mapping[str, Any]) -> type:
    kind = strategy.get('type')
    cls = STRATEGIES.get(kind) if isinstance(kind, str) else kind
    if not isinstance(cls, type):
        raise ValueError(f'strategy type {kind!r} is not a registered mmengine strategy; use one '
                         f'of {sorted(STRATEGIES.module_dict)}.')
    return cls
