"""TimmBackbone's options: their names (`OPTIONS`; `SHAPE_OPTIONS` change its outputs and are
planned, the others concern weights and training) and the checks of the non-shape ones, each
raising with the bad value, what is allowed and the fix. Shape options are checked where they are
planned (`_plan.py`, `_timm.timm_kwargs`).
"""
import difflib
import os
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
from mmengine.model.weight_init import PretrainedInit

from ._freeze import first_stage
from ._specs import FeatureSpec, format_specs

__all__ = ['OPTIONS', 'SHAPE_OPTIONS', 'unknown_options_message', 'check_bool', 'check_init_cfg',
           'check_frozen_stages', 'check_pretrained', 'compile_kwargs']

# TimmBackbone options that change its outputs, and those that do not (weights, training).
SHAPE_OPTIONS = ('out_indices', 'output_stride', 'in_channels', 'drop_path_rate',
                  'model_kwargs', 'input_size', 'pyramid', 'pyramid_strides', 'pyramid_channels')
_OTHER_OPTIONS = ('pretrained', 'frozen_stages', 'norm_eval', 'frozen_bn', 'sync_bn', 'with_cp',
                  'channels_last', 'compile', 'init_cfg')
OPTIONS = ('model_name',) + SHAPE_OPTIONS + _OTHER_OPTIONS  # every TimmBackbone option


def unknown_options_message(unknown: Sequence[str]) -> str:
    """The TypeError text for options TimmBackbone does not have, with close matches."""
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, OPTIONS, n=1)
        parts.append(f'{key!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
    return (f'TimmBackbone got unknown option(s) {", ".join(parts)}. Its options: '
            f'{", ".join(OPTIONS)}; other timm.create_model arguments go in '
            f'model_kwargs=dict(...).')


def check_pretrained(pretrained: Any) -> Union[bool, str]:
    """`pretrained` as False, True or a file path (`os.PathLike` accepted)."""
    if isinstance(pretrained, os.PathLike):
        pretrained = os.fspath(pretrained)
    if not isinstance(pretrained, (bool, str)) or pretrained == '':
        raise TypeError(f'pretrained must be False, True or a file path, got {pretrained!r}')
    return pretrained


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        hint = ' (a string: write True or False without quotes)' if isinstance(value, str) else ''
        raise TypeError(f'{name} must be True or False, got {value!r}{hint}')


def check_init_cfg(init_cfg: Any) -> Any:
    """None, a dict or a list of dicts, each with a `type`; `Pretrained` needs a `checkpoint`."""
    if init_cfg is None:
        return None
    cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    for cfg in cfgs:
        if not isinstance(cfg, dict) or 'type' not in cfg:
            raise TypeError(f'init_cfg must be a dict with a type (or a list of them), e.g. '
                            f"dict(type='Pretrained', checkpoint=path); got {init_cfg!r}")
        if cfg['type'] in ('Pretrained', PretrainedInit) and \
                not isinstance(cfg.get('checkpoint'), (str, os.PathLike)):
            raise TypeError(f"init_cfg type='Pretrained' needs checkpoint=<file path or URL>, "
                            f'got {cfg!r}')
    return init_cfg


def check_frozen_stages(frozen_stages: int, levels: Sequence[FeatureSpec],
                         model_name: str) -> int:
    start = first_stage(levels)
    n = len(levels) - start
    if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) or \
            not -1 <= frozen_stages <= n:
        stages = format_specs(levels[start:], range(1, n + 1))
        stem = (f'levels {list(range(start))} (stride < 4) are part of the stem, '
                if start else '')
        raise ValueError(
            f'frozen_stages={frozen_stages!r} out of range for {model_name!r}: use -1 (nothing), '
            f'0 (the stem) or 1..{n} (the stem and that many stages). Stages are counted as in '
            f'mmdet: {stem}stage k is the level listed as k below.\nStages:\n{stages}')
    return frozen_stages


_COMPILE_ARGS = ('fullgraph', 'dynamic', 'backend', 'mode', 'options', 'disable')


def compile_kwargs(compile: Union[bool, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """`torch.compile` arguments for TimmBackbone's `compile` option (None: do not compile)."""
    if compile is False:
        return None
    if compile is True:
        return {}
    if isinstance(compile, dict):
        unknown = [k for k in compile if k not in _COMPILE_ARGS]
        if unknown:
            raise TypeError(f'compile={compile!r}: unknown torch.compile argument(s) {unknown}; '
                            f'allowed: {", ".join(_COMPILE_ARGS)}.')
        return dict(compile)
    raise TypeError(f'compile must be False, True or a dict of torch.compile arguments (e.g. '
                    f"dict(mode='max-autotune')), got {compile!r}")
