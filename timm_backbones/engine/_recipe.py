"""The fastest GPU training recipe that stays correct, as one switch (`tools/train.py --fast`).

`fast_recipe(cfg)` changes a training config in place:

- **bfloat16 autocast**: mmengine's `AmpOptimWrapper(dtype='bfloat16')` around the config's own
  optimizer (its optimizer, `paramwise_cfg`, `clip_grad` and constructor kept). bfloat16 has
  float32's range, so no loss scaling is needed to keep gradients; mmcv's ops without bfloat16
  kernels (RoIAlign, the focal losses, deformable attention, ...) compute in float32 through the
  op wrapper of `_mmcv_layout.py`. On a GPU without bfloat16 (before Ampere) the tool passes
  `dtype='float16'` (with mmengine's dynamic loss scaling).
- **channels-last through the detector**: every `TimmBackbone` is built with
  `channels_last=True`; its maps come out channels-last, so the neck's and heads' convolutions
  run channels-last too, and mmcv's ops read contiguous copies (the layout contract), so RoI
  features are what they are on contiguous maps.
- **cuDNN autotuning**: `env_cfg.cudnn_benchmark=True` (fixed batch shapes per padded size).

Not in it: `torch.compile` (minutes of compilation per input shape, and models it cannot trace)
and FSDP configs (their `strategy` sets its own mixed precision).
"""
from typing import Any, List, MutableMapping

from .._configs import timm_model_name

__all__ = ['fast_recipe', 'FAST_DTYPES']

FAST_DTYPES = ('bfloat16', 'float16')


def _timm_backbones(node: Any, path: str, out: List) -> None:
    if isinstance(node, MutableMapping):
        if timm_model_name(node) is not None:
            out.append((path, node))
        for key, value in node.items():
            _timm_backbones(value, f'{path}.{key}' if path else str(key), out)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _timm_backbones(value, f'{path}[{i}]', out)


def fast_recipe(cfg: MutableMapping, dtype: str = 'bfloat16') -> List[str]:
    """Apply the fast GPU training recipe to a whole config, in place (see the module's
    docstring); returns one line per change.

    Args:
        cfg: A training config (`Config`) with `model` and `optim_wrapper`.
        dtype: 'bfloat16' (Ampere and later) or 'float16'.

    Raises:
        ValueError: `dtype` is neither; the config trains with an FSDP strategy; it has no
            `optim_wrapper`.

    Example:
        >>> cfg = load_config('configs/retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py')
        >>> fast_recipe(cfg)[0]
        "optim_wrapper: AmpOptimWrapper(dtype='bfloat16') around SGD"
    """
    if dtype not in FAST_DTYPES:
        raise ValueError(f'fast_recipe: dtype={dtype!r}; choose from {FAST_DTYPES} '
                         f"('bfloat16' on Ampere and later GPUs, 'float16' before)")
    if cfg.get('strategy') is not None:
        raise ValueError(
            'the fast recipe does not apply to FSDP configs: their strategy '
            f"({cfg['strategy'].get('type', '?')}) sets its own mixed precision "
            '(strategy.mixed_precision); train them as they are.')
    wrapper = cfg.get('optim_wrapper')
    if not isinstance(wrapper, MutableMapping):
        raise ValueError('the fast recipe needs a training config with an optim_wrapper; this '
                         'config has none')
    wrapper['type'] = 'AmpOptimWrapper'
    wrapper['dtype'] = dtype
    wrapper.setdefault('loss_scale', 'dynamic')
    optimizer = wrapper.get('optimizer', {})
    notes = [f"optim_wrapper: AmpOptimWrapper(dtype={dtype!r}) around "
             f"{optimizer.get('type', 'the optimizer') if isinstance(optimizer, dict) else '?'}"]
    found: List = []
    _timm_backbones(cfg.get('model', {}), 'model', found)
    for path, backbone in found:
        backbone['channels_last'] = True
        notes.append(f'{path}.channels_last=True: maps, neck and heads run channels-last')
    if not found:
        notes.append('no TimmBackbone in the model: its memory format is left as it is')
    cfg.setdefault('env_cfg', {})['cudnn_benchmark'] = True
    notes.append('env_cfg.cudnn_benchmark=True')
    return notes
