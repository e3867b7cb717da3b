"""Building detectors from configs with timm backbones, on every route.

- `install_resolving_build(registry)`: the registry's `build` resolves detector configs
  (`resolve_config`) before building them. Installed on mmengine's and mmdet's `MODELS` when the
  package is imported, so every entry point that builds `MODELS.build(cfg.model)` (mmdet's
  `init_detector`, `DetInferencer`, `tools/analysis_tools/get_flops.py`, `benchmark.py`,
  mmengine's runners) builds the same resolved model as `TimmBackboneRunner`, and a wrong
  explicit value fails with the same error, with nothing but the configs' `custom_imports`.
- `build_detector` (resolve, build, `init_weights()`) and `init_detector` (mmdet's
  `init_detector` with weights-only, verified checkpoint loading and SyncBN reverted without
  losing timm's fused activations), for scripts.
"""
import copy
import functools
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from mmdet.registry import DATASETS
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.config import Config, ConfigDict
from mmengine.logging import MMLogger
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import Registry, init_default_scope
from torch import nn

from .._norms import revert_sync_batchnorm
from .._configs import timm_model_name
from .._weights import load_detector_checkpoint
from ..wiring import config_file, has_timm_backbone, resolve_config
from ._cuda_check import check_mmcv_cuda_ops

__all__ = ['build_detector', 'init_detector', 'load_config', 'install_resolving_build']


def _resolving(build_func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(build_func)
    def build(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(cfg, (Config, Mapping)) and has_timm_backbone(cfg):
            cfg = resolve_config(cfg)
        return build_func(cfg, *args, **kwargs)
    build.resolves_timm_backbones = True  # type: ignore[attr-defined]
    return build


def install_resolving_build(registry: Registry) -> None:
    """Make `registry.build` resolve configs of models with timm backbones (`resolve_config`)
    before building them; other configs build as before. Idempotent.

    mmengine registries build through their `build_func`, which a registry takes from its parent
    when it is created: mmengine's root `MODELS` and mmdet's `MODELS` get this when the package is
    imported; a downstream package's registry (e.g. mmseg's) can be given it the same way.

    Args:
        registry: A models registry.

    Example:
        >>> install_resolving_build(mmdet.registry.MODELS)
        >>> detector = MODELS.build(Config.fromfile(path).model)  # 'auto' fields filled
    """
    if not getattr(registry.build_func, 'resolves_timm_backbones', False):
        registry.build_func = _resolving(registry.build_func)


for _registry in (ROOT_MODELS, MMDET_MODELS):
    install_resolving_build(_registry)

ConfigType = Union[str, Path, Config]


def load_config(path: Union[str, Path]) -> Config:
    """`Config.fromfile`, with a syntax error in the file (or a base it inherits) reported
    with the file's name and line; mmengine parses the source without one (`<unknown>`).
    `package::name` loads the config shipped in an installed package
    (`mmdet::retinanet/retinanet_r50_fpn_1x_coco.py`; mmengine takes those only in `_base_`).

    Args:
        path: The config file, or `package::name`.

    Example:
        >>> cfg = load_config('configs/retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py')
    """
    if '::' in str(path):
        path = config_file(path)
    try:
        return Config.fromfile(str(path))
    except SyntaxError as err:
        where = err.filename if err.filename and err.filename != '<unknown>' else str(path)
        raise SyntaxError(f'{err.msg} (in the config file {where}, line {err.lineno})',
                          (where, err.lineno, err.offset, err.text)) from err


def build_detector(cfg: Union[Config, Mapping], init_weights: bool = True) -> nn.Module:
    """Resolve a config (`'auto'` channels and strides from its timm backbone), build its model
    and initialize it (`init_weights()`, as a training runner does: mmdet creates some parameters
    uninitialized, e.g. DETR's `level_embed`; timm backbones keep their `pretrained` weights,
    loaded while they are built, and load their `init_cfg` checkpoints).

    Args:
        cfg: A whole config (`Config`, or a dict with a `model` key) or a model config dict.
        init_weights: False leaves the weights as built (some uninitialized), e.g. to load a
            checkpoint over them.

    Returns:
        The model, in training mode as built.

    Example:
        >>> cfg = Config.fromfile('configs/retinanet_timm-pvt-v2-b2_fpn_1x_coco.py')
        >>> cfg.model.backbone.pretrained = False
        >>> detector = build_detector(cfg)
    """
    if not isinstance(cfg, (Config, Mapping)):
        raise TypeError(f'build_detector takes a Config or a config dict, got {type(cfg).__name__}')
    whole = 'model' in cfg and 'type' not in cfg
    resolved = resolve_config(cfg)
    scope = resolved.get('default_scope', 'mmdet') if whole else 'mmdet'
    if scope is not None:
        init_default_scope(scope)
    model = MMDET_MODELS.build(resolved['model'] if whole else resolved)
    if init_weights:
        _init_weights_quietly(model)
    return model


def _init_weights_quietly(model: nn.Module) -> None:
    """`model.init_weights()`. Outside a runner (no log file) mmengine logs one INFO record per
    parameter ("Initialized by ..."); scripts get warnings only."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def init_detector(config: ConfigType, checkpoint: Optional[str] = None, device: str = 'cpu',
                  cfg_options: Optional[dict] = None) -> nn.Module:
    """A detector ready for inference: mmdet's `init_detector` for configs with timm backbones.

    The config is resolved, timm backbones are built without their `pretrained` weights (the
    checkpoint replaces them; like mmdet, which drops the backbone's `init_cfg`), without a
    checkpoint the model is initialized (`init_weights()`), sync norms are
    reverted to batch norms keeping timm's fused activations, and the checkpoint is loaded
    weights-only (see `checkpoint_loading`: a file holding other objects fails with a message
    saying how to proceed) and verified: loaded/total backbone tensors are logged, and a
    `ValueError` shows expected vs found names when fewer than half matched.

    Args:
        config: Config file path or `Config` (not modified).
        checkpoint: Checkpoint file or URL; None: initialized weights (random, timm's init).
        device: Device to put the model on.
        cfg_options: Overrides merged into the config first (as `--cfg-options`).

    Returns:
        The model in eval mode, with `model.cfg` (the resolved config) and `model.dataset_meta`
        (from the checkpoint's meta, else from the config's test dataset class and `metainfo`).

    Example:
        >>> model = init_detector('configs/retinanet_timm-pvt-v2-b2_fpn_1x_coco.py',
        ...                       'work_dirs/retinanet/epoch_12.pth')
        >>> result = mmdet.apis.inference_detector(model, 'demo.jpg')
    """
    if isinstance(config, (str, Path)):
        cfg = load_config(config)
    elif isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        raise TypeError(f'config must be a file path or a Config, got {type(config).__name__}')
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    _without_pretrained(cfg)
    cfg = resolve_config(cfg)
    model = revert_sync_batchnorm(build_detector(cfg, init_weights=checkpoint is None))
    meta: dict = {}
    if checkpoint is not None:
        meta = load_detector_checkpoint(model, checkpoint).get('meta', {})
    if 'dataset_meta' in meta:
        model.dataset_meta = {k.lower(): v for k, v in meta['dataset_meta'].items()}
    else:
        model.dataset_meta = _config_dataset_meta(cfg)
    model.cfg = cfg
    check_mmcv_cuda_ops(device)  # mmcv without CUDA ops: say so, not inside the first op
    model.to(device)
    model.eval()
    return model


def _without_pretrained(node: Any) -> None:
    """Set `pretrained=False` on every timm backbone config (in place)."""
    if isinstance(node, (Config, Mapping)):
        backbone = node.get('backbone')
        if isinstance(backbone, Mapping) and timm_model_name(backbone) is not None:
            backbone['pretrained'] = False
        for value in node.values():
            _without_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _without_pretrained(value)


def _config_dataset_meta(cfg: Config) -> dict:
    """Class names (and palette) of the config's test dataset, without building it (building may
    read or generate data)."""
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    while isinstance(dataset.get('dataset'), Mapping):  # dataset wrappers
        dataset = dataset['dataset']
    meta: dict = {}
    kind = dataset.get('type')
    cls = DATASETS.get(kind) if isinstance(kind, str) else kind
    if cls is not None:
        meta.update(copy.deepcopy(getattr(cls, 'METAINFO', {})))
    meta.update(copy.deepcopy(dict(dataset.get('metainfo') or {})))
    if 'classes' not in meta:
        warnings.warn('no dataset_meta in the checkpoint and no class names in the config; '
                      'model.dataset_meta has no classes.')
    return {k: (v.to_dict() if isinstance(v, ConfigDict) else v) for k, v in meta.items()}
