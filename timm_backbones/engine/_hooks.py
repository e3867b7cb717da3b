"""Training hooks: `LossCurveHook` records the training losses and plots them into the work dir."""
import json
import os
import os.path as osp
from typing import Dict, List, Optional

from mmdet.registry import HOOKS
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log

__all__ = ['LossCurveHook']


@HOOKS.register_module()
class LossCurveHook(Hook):
    """Records every training loss each iteration; writes `loss_curve.png` and `loss_curve.json`.

    The recorded values are the entries of the `train_step` outputs whose name contains `'loss'`
    (mmengine's rule for what is summed into the total): the total `loss` and each component
    (`loss_cls`, `loss_bbox`, ...), indexed by iteration (1-based, counting across epochs). Files
    are (re)written into `runner.work_dir` after every epoch, every `interval` iterations if set,
    and after training; only the main process records and writes, so in a distributed run the
    curves are rank 0's local losses.

    On resume, the points before the resume iteration are not in memory; they are reloaded from an
    existing `loss_curve.json` in the work dir if there is one, else the curves start at the resume
    point.

    The JSON maps each loss name to `{"iter": [...], "value": [...]}`.

    Args:
        interval: Also write the files every this many iterations (0: only after epochs and at the
            end; use it with iteration-based training, which has a single epoch).
        smooth: Window (in iterations) of the moving average drawn over each raw curve (<= 1: none).

    Example:
        >>> custom_hooks = [dict(type='LossCurveHook', interval=200)]
    """
    priority = 'LOW'
    _STEM = 'loss_curve'

    def __init__(self, interval: int = 0, smooth: int = 20) -> None:
        if int(interval) < 0:
            raise ValueError(f'LossCurveHook interval must be >= 0 (0: off), got {interval!r}.')
        self.interval = int(interval)
        self.smooth = int(smooth)
        self.curves: Dict[str, Dict[str, List[float]]] = {}

    def before_train(self, runner) -> None:
        """Starts empty, or with the saved points before the resume iteration."""
        self.curves = {}
        path = osp.join(runner.work_dir, self._STEM + '.json')
        if not (runner.iter > 0 and is_main_process() and osp.isfile(path)):
            return
        with open(path) as f:
            saved = json.load(f)
        for name, curve in saved.items():
            kept = [(i, v) for i, v in zip(curve['iter'], curve['value']) if i <= runner.iter]
            if kept:
                its, values = zip(*kept)
                self.curves[name] = dict(iter=list(its), value=list(values))
        print_log(f'LossCurveHook: resumed the curves from {path} up to iteration {runner.iter}.',
                  logger='current')

    def after_train_iter(self, runner, batch_idx: int, data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        """Records the scalar losses of this iteration."""
        if not outputs or not is_main_process():
            return
        for name, value in outputs.items():
            if 'loss' not in name:
                continue
            if hasattr(value, 'detach'):
                value = value.detach()
            try:
                value = float(value)  # python number or one-element tensor
            except (TypeError, ValueError, RuntimeError):
                continue
            curve = self.curves.setdefault(name, dict(iter=[], value=[]))
            curve['iter'].append(runner.iter + 1)
            curve['value'].append(value)
        if self.interval and (runner.iter + 1) % self.interval == 0:
            self.write(runner.work_dir)

    def after_train_epoch(self, runner) -> None:
        """Writes the files (cheap: one small plot)."""
        if is_main_process():
            self.write(runner.work_dir)

    def after_train(self, runner) -> None:
        """Writes the final files."""
        if is_main_process():
            self.write(runner.work_dir)

    def write(self, work_dir: str) -> None:
        """Writes `loss_curve.json` and `loss_curve.png` into `work_dir` (nothing if no points).

        Args:
            work_dir: Output directory, created if needed.
        """
        if not self.curves:
            return
        os.makedirs(work_dir, exist_ok=True)
        stem = osp.join(work_dir, self._STEM)
        with open(stem + '.json.tmp', 'w') as f:
            json.dump(self.curves, f)
        os.replace(stem + '.json.tmp', stem + '.json')  # readers never see half a file

        import numpy as np
        from matplotlib.figure import Figure  # Agg canvas, no pyplot: no global backend change
        fig = Figure(figsize=(8, 4.5), dpi=100, layout='tight')
        ax = fig.subplots()
        for name, curve in self.curves.items():
            its, values = np.asarray(curve['iter']), np.asarray(curve['value'])
            lw = 2 if name == 'loss' else 1
            if self.smooth > 1 and len(values) >= self.smooth:
                raw, = ax.plot(its, values, alpha=0.25, lw=lw)
                kernel = np.ones(self.smooth) / self.smooth
                ax.plot(its[self.smooth - 1:], np.convolve(values, kernel, mode='valid'),
                        color=raw.get_color(), lw=lw, label=name)
            else:
                ax.plot(its, values, lw=lw, label=name)
        ax.set(xlabel='iteration', ylabel='loss', title='training losses')
        ax.grid(alpha=0.3)
        ax.legend()
        fig.savefig(stem + '.tmp.png')
        os.replace(stem + '.tmp.png', stem + '.png')
