"""What both timm runners do, in one place: `TimmBackboneRunner` (mmengine's `Runner`, DDP) and
`TimmBackboneFlexibleRunner` (mmengine's `FlexibleRunner`, strategies such as FSDP) mix in
`TimmRunnerMixin`:

- `from_cfg` resolves the config (`resolve_config`) and, with `sample_seeding=True`, seeds each
  training sample's augmentation (`_seeding.py`) before anything is built;
- checkpoints are read weights-only (`checkpoint_loading`; a file that is no checkpoint says so)
  and verified against the model before its weights are replaced (loaded/total backbone tensors
  logged, an error with expected vs found names when too few match, `_weights.py`);
- checkpoints are written in tensors and plain containers (`to_plain_checkpoint`), with the
  optimizer state in one form whichever strategy wrote it (`_optim_state.py`), and resuming
  turns it into what the run's optimizer loads, so FSDP and DDP runs resume from each other's
  checkpoints;
- checkpoints and `last_checkpoint` are written atomically (temporary name, fsync, rename: a
  kill at any byte leaves the previous state or the new one; a full disk stops the run naming
  the file and the free space), and `--resume` continues from the newest complete checkpoint
  when `last_checkpoint` is empty or names a missing or truncated file, saying so
  (`_atomic.py`);
- `init_cpu_process_group`: `--launcher pytorch` without CUDA uses gloo.
"""
import contextlib
import datetime
import os
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch
import torch.distributed as torch_dist
from mmengine.config import Config, ConfigDict
from mmengine.dist import is_distributed
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn

from .._checkpoint import (check_checkpoint_file, checkpoint_loading, from_plain_checkpoint,
                           to_plain_checkpoint)
from .._names import unwrapped_name
from .._weights import verify_detector_checkpoint
from ..wiring import resolve_config
from ._atomic import (atomic_checkpoint, atomic_pointer_writes, check_resume_file,
                      removals_after_saves, resume_source)
from ._optim_state import resume_state, saved_state
from .._configs import type_name
from ._seeding import per_sample_seed_dataloader

__all__ = ['TimmRunnerMixin', 'prepare_config', 'with_sample_seeding', 'init_cpu_process_group',
           'cpu_launch']


def prepare_config(cfg: Union[Config, ConfigDict, dict]) -> Union[Config, ConfigDict, dict]:
    """A resolved copy of `cfg` (`resolve_config`), with per-sample augmentation seeding on its
    train dataloader when it sets `sample_seeding=True`.

    Example:
        >>> runner = Runner.from_cfg(prepare_config(Config.fromfile(path)))
    """
    return with_sample_seeding(resolve_config(cfg))


def with_sample_seeding(cfg: Union[Config, ConfigDict, dict]) -> Union[Config, ConfigDict, dict]:
    """`cfg` (modified) with per-sample augmentation seeding on its train dataloader, and the
    main process's generators seeded per training iteration (`IterationSeedHook`), when it
    sets `sample_seeding=True` (`per_sample_seed_dataloader`).

    Example:
        >>> with_sample_seeding(Config(dict(sample_seeding=True, train_dataloader=loader)))
    """
    seeding = cfg.get('sample_seeding', False)
    if not isinstance(seeding, bool):
        raise TypeError(f'sample_seeding must be True or False, got {seeding!r}')
    if seeding and cfg.get('train_dataloader') is not None:
        cfg['train_dataloader'] = per_sample_seed_dataloader(cfg['train_dataloader'])
        hooks = list(cfg.get('custom_hooks') or [])
        if not any(type_name(h) == 'IterationSeedHook' for h in hooks):
            cfg['custom_hooks'] = hooks + [dict(type='IterationSeedHook')]
    return cfg


def cpu_launch(launcher: Optional[str]) -> bool:
    """Whether this is a `--launcher pytorch` run on a machine without CUDA (gloo on CPUs)."""
    return launcher == 'pytorch' and not torch.cuda.is_available()


def init_cpu_process_group(dist_cfg: Mapping[str, Any]) -> None:
    """The process group of a torchrun-launched CPU job: gloo, whatever the config names (nccl
    needs CUDA); nothing if one exists already.

    Args:
        dist_cfg: The config's `env_cfg.dist_cfg` (`backend`, `timeout` in seconds, ...).

    Example:
        >>> if cpu_launch(launcher): init_cpu_process_group(cfg.env_cfg.get('dist_cfg', {}))
    """
    if is_distributed():
        return
    dist_cfg = dict(dist_cfg)
    backend = dist_cfg.pop('backend', 'gloo')
    if backend != 'gloo':
        print_log(f"no CUDA device: using the 'gloo' process group backend instead of "
                  f'{backend!r}', logger='current')
    timeout = dist_cfg.pop('timeout', None)
    if timeout is not None:
        dist_cfg['timeout'] = datetime.timedelta(seconds=timeout)
    torch_dist.init_process_group(backend='gloo', **dist_cfg)


class TimmRunnerMixin:
    """The behaviour both timm runners add to mmengine's (see the module docstring). Put it
    first among the bases: `class R(TimmRunnerMixin, Runner)`.

    Runners override `_load_target` where the model they hold cannot say what a checkpoint
    must contain (an FSDP model's parameters are shards) and `_loads_optimizer_by_name` where
    their optimizer state is keyed by parameter name (FSDP).
    """
    _loads_optimizer_by_name = False
    _reading: Optional[Tuple[str, bool]] = None  # (file, resuming) while a checkpoint is read

    @classmethod
    def from_cfg(cls, cfg: Union[Config, ConfigDict, dict]) -> Any:
        """Build the runner from a config, after resolving its `'auto'` fields (and wrapping
        its train dataloader for per-sample seeding with `sample_seeding=True`).

        Args:
            cfg: The whole config (as for mmengine's `from_cfg`); it is not modified.
        """
        return super().from_cfg(prepare_config(cfg))  # type: ignore[misc]

    @contextlib.contextmanager
    def _read(self, filename: str, resuming: bool) -> Iterator[None]:
        option = '--resume' if resuming else 'load_from (tools/test.py: CHECKPOINT)'
        if resuming:
            check_resume_file(filename, option)
        check_checkpoint_file(filename, option=option, safetensors=False)
        outer, self._reading = self._reading, self._reading or (str(filename), resuming)
        try:
            with checkpoint_loading(filename):
                yield
        finally:
            self._reading = outer

    def load_checkpoint(self, filename: str, *args: Any, **kwargs: Any) -> Any:
        """mmengine's `load_checkpoint` (`load_from`, `tools/test.py`'s checkpoint, resume),
        weights-only (see `checkpoint_loading`) and verified before the model's weights are
        replaced: loaded/total backbone tensors are logged, a file that is no checkpoint says
        so, and a `ValueError` shows expected vs found names when fewer than half of the
        backbone's tensors match."""
        with self._read(filename, resuming=False):
            return super().load_checkpoint(filename, *args, **kwargs)  # type: ignore[misc]

    def resume(self, filename: str, *args: Any, **kwargs: Any) -> None:
        """mmengine's `resume`, weights-only and verified (as `load_checkpoint`); the optimizer
        state is matched to this run's optimizer by parameter name (`resume_state`)."""
        with self._read(filename, resuming=True):
            super().resume(filename, *args, **kwargs)  # type: ignore[misc]

    def load_or_resume(self) -> None:
        """mmengine's `load_or_resume`; an automatic `--resume` continues from `resume_source`:
        the checkpoint `last_checkpoint` names when it is complete, else the newest complete one
        in the work dir (logged), else from scratch (logged)."""
        if getattr(self, '_has_loaded', False) is False and self._resume is True and \
                self._load_from is None:  # type: ignore[attr-defined]
            found = resume_source(self.work_dir)  # type: ignore[attr-defined]
            if found is None:
                self._resume = False
            self._load_from = found
        super().load_or_resume()  # type: ignore[misc]

    def save_checkpoint(self, out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
        """mmengine's `save_checkpoint`, written atomically (`atomic_checkpoint`): to a
        temporary name in `out_dir`, synced, then renamed to `filename`. A full disk stops the
        run with a `CheckpointWriteError` naming the file and the free space."""
        if '://' in str(out_dir) or '://' in str(filename):  # remote backends: as mmengine does
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)  # type: ignore
        final = os.path.join(str(out_dir), filename)
        with atomic_checkpoint(final) as tmp:
            # rank 0 writes the file (other ranks have no temporary file to rename)
            super().save_checkpoint(out_dir, os.path.relpath(tmp, str(out_dir)), *args,
                                    **kwargs)  # type: ignore[misc]

    def call_hook(self, fn_name: str, **kwargs: Any) -> None:
        """mmengine's `call_hook`. A checkpoint just read is turned back from its plain form
        and verified before the hooks see it (`after_load_checkpoint`); one about to be written
        is turned into tensors and plain containers after every hook's
        `before_save_checkpoint`. Hooks write `last_checkpoint` atomically
        (`atomic_pointer_writes`), and delete old checkpoints only after the new one and the
        pointer are written (`removals_after_saves`)."""
        if fn_name == 'after_load_checkpoint':
            self._after_read(kwargs['checkpoint'])
        with atomic_pointer_writes(), removals_after_saves(self.hooks):  # type: ignore
            super().call_hook(fn_name, **kwargs)  # type: ignore[misc]
        if fn_name == 'before_save_checkpoint':
            checkpoint = to_plain_checkpoint(kwargs['checkpoint'])
            if 'optimizer' in checkpoint and self._optimizer() is not None:
                checkpoint['optimizer'] = saved_state(checkpoint['optimizer'], self._optimizer(),
                                                      self._parameter_names())

    def _after_read(self, checkpoint: Dict[str, Any]) -> None:
        from_plain_checkpoint(checkpoint)
        if self._reading is None:  # read by some other route: nothing to say about the file
            return
        filename, resuming = self._reading
        verify_detector_checkpoint(self._load_target(), checkpoint, filename)
        if resuming and 'optimizer' in checkpoint and self._optimizer() is not None:
            checkpoint['optimizer'] = resume_state(
                checkpoint['optimizer'], self._optimizer(), self._parameter_names(),
                by_name=self._loads_optimizer_by_name, filename=filename)

    def _unwrapped_model(self) -> nn.Module:
        model = self.model  # type: ignore[attr-defined]
        return model.module if is_model_wrapper(model) else model

    def _load_target(self) -> Union[nn.Module, Mapping[str, torch.Tensor]]:
        """What a checkpoint is verified against: the model, or its state (names, shapes)."""
        return self._unwrapped_model()

    def _optimizer(self) -> Optional[torch.optim.Optimizer]:
        wrapper = getattr(self, 'optim_wrapper', None)
        optimizer = getattr(wrapper, 'optimizer', None)
        return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None

    def _parameter_names(self) -> Dict[int, str]:
        """id(parameter) -> its name in the model without wrappers (FSDP's names too)."""
        return {id(p): unwrapped_name(n) for n, p in self._unwrapped_model().named_parameters()}
