"""What `tools/train.py` and `tools/test.py` share: the `--backbone ARCH` flag and the config they
run (loaded, its backbone swapped, `--cfg-options` merged after the swap)."""
import argparse
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from mmengine.config import Config

from ..wiring import swap_backbone
from ._api import load_config

__all__ = ['add_backbone_argument', 'tool_config']


def add_backbone_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--backbone ARCH` to a tool's argument parser."""
    parser.add_argument(
        '--backbone', metavar='ARCH',
        help="replace the config's backbone by the timm model ARCH (levels matched by stride, "
        "derived fields 'auto', frozen_stages/norm_eval/with_cp/SyncBN carried over); "
        "--cfg-options apply after the swap (e.g. model.backbone.pretrained=False)")


def tool_config(path: Union[str, Path], backbone: Optional[str] = None,
                cfg_options: Optional[Mapping[str, Any]] = None,
                log: Callable[[str], Any] = print) -> Config:
    """The config a tool runs: `load_config(path)`, its backbone swapped for the timm model
    `backbone` (`swap_backbone`; each note logged as 'swap: ...'), then `cfg_options` merged.

    Args:
        path: A config file or an `mmdet::` name.
        backbone: A timm architecture, or None to keep the config's backbone.
        cfg_options: `--cfg-options`, merged after the swap.
        log: Where the swap's notes go.

    Raises:
        SystemExit: The swap is refused; the message names `--backbone ARCH` and the reason.

    Example:
        >>> cfg = tool_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 'resnet18',
        ...                   {'model.backbone.pretrained': False})
    """
    cfg = load_config(path)  # a syntax error names the file and line
    if backbone is not None:
        try:
            swapped = swap_backbone(cfg, backbone)
        except (ValueError, TypeError) as err:
            raise SystemExit(f'--backbone {backbone}: {type(err).__name__}: {err}') from err
        cfg = swapped.config
        for line in swapped.notes:
            log(f'swap: {line}')
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    return cfg
