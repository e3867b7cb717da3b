"""`TimmBackbone`: any timm feature-extraction model as an mmdet backbone. What it will be comes
from its plan (`_plan.py`), its weights from `_weights.py`, freezing from `_freeze.py`, norms from
`_norms.py`, the checks of its other options from `_options.py`.
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.model.weight_init import PretrainedInit, update_init_info
from torch import Tensor, nn

from ._blocks import mark_blocks
from ._freeze import freeze_stages
from ._image_channels import check_image_channels
from ._mmcv_layout import contiguous_mmcv_inputs
from ._names import unwrapped_name
from ._norms import convert_sync_batchnorm, set_norm_eval, to_frozen_bn
from ._options import (check_bool, check_frozen_stages, check_init_cfg, check_pretrained,
                       compile_kwargs, unknown_options_message)
from ._plan import level_specs, plan_backbone
from ._pyramid import SimplePyramid
from ._specs import FeatureSpec, format_specs
from ._timm import create_features, enable_grad_checkpointing
from ._weights import create_pretrained, load_init_checkpoint

__all__ = ['TimmBackbone']


class TimmBackbone(BaseModule):
    """A timm model as an mmdet backbone: `forward` returns NCHW maps of the chosen levels.

    Args:
        model_name: Any `timm.list_models()` architecture or pretrained tag
            (`'resnet50.a1_in1k'`).
        out_indices: Feature levels to return, in this order (negative: from the end). Levels
            are the entries of timm's `feature_info` (e.g. resnet: strides 2, 4, 8, 16, 32; ViT:
            one per block). Default: the last four levels (all, if fewer).
        output_stride: 8, 16 or 32 to dilate the last stages (models with timm dilation
            support), None for the model's own.
        in_channels: Number of image channels (timm's `in_chans`).
        pretrained: False, True (timm's hub weights), or a path to a timm-format weight file,
            loaded into the model before it is wrapped for feature extraction.
        frozen_stages: mmdet's meaning on every family: -1 freezes nothing, 0 the stem, k the
            stem and the first k stages (`requires_grad=False`, kept in eval mode across
            `train()`). The stem is everything before the first level of stride >= 4 (resnet's
            stride-2 level is stem); the stages are the levels from there on (ViT: its blocks).
            timm's resnet50 with frozen_stages=1 freezes what mmdet's ResNet-50 does.
        norm_eval: Keep every normalization layer in eval mode while training.
        frozen_bn: Convert batch norms to timm's frozen BN (fused activations kept).
        sync_bn: Convert batch norms to SyncBatchNorm with timm's converter (BatchNormAct2d
            becomes SyncBatchNormAct, keeping its activation).
        with_cp: Gradient checkpointing through timm's `set_grad_checkpointing`.
        drop_path_rate: Stochastic depth rate (None: timm's default).
        model_kwargs: Any other `timm.create_model` argument.
        input_size: 'any' (default): models built for a fixed size (ViT, Swin, ...) get timm's
            dynamic-size arguments so they take any input size; 'fixed': timm's defaults;
            (height, width): build for that one size (timm's `img_size`). A model that only
            runs at one size gets smaller inputs zero-padded (bottom/right) to that size.
        pyramid: 'auto' (default): plain models whose levels share one stride (ViT, DeiT,
            EVA, ...) get a simple feature pyramid when more than one level is requested (the
            default requests four); 'simple': always; None: never.
        pyramid_strides: Output strides of the pyramid (None: 4, 8, 16, 32; only for models that
            get a pyramid). One source level (the default, the
            last level, as in ViTDet) feeds every stride; n levels feed the n deepest strides,
            in order (e.g. out_indices=(3, 5, 7, 11) -> 4, 8, 16, 32; (-3, -2, -1) -> 8, 16, 32).
            A None entry is a level the neck does not read: the source map is passed through
            unchanged (no parameters); `resolve_config` writes these for necks such as
            RetinaNet's FPN (start_level=1) when the config leaves pyramid_strides out.
        pyramid_channels: None: ViTDet channels (halved per 2x upsampling); an int: every
            pyramid output projected to that many channels (only for models that get a pyramid).
        channels_last: Run in the channels-last memory format: weights are converted once and
            inputs on every call. Outputs have the same NCHW shape and values (up to float
            rounding) in channels-last memory, so a detector's neck and head follow.
        compile: Compile the backbone's forward with `torch.compile` (`nn.Module.compile`, so
            parameter names and checkpoints are unchanged): True for the defaults, or a dict of
            `torch.compile` arguments (e.g. `dict(mode='max-autotune')`). The first call of each
            input size and mode (train/eval) compiles; later calls reuse it.
        init_cfg: mmengine init config, e.g. `dict(type='Pretrained', checkpoint=path,
            prefix='backbone.')` for a backbone or detector checkpoint. `init_weights()` loads it
            verified: loaded/total tensors are logged, and an error shows expected vs found
            names when fewer than half matched.

    Example:
        >>> backbone = TimmBackbone('resnet18', out_indices=(2, 3, 4))
        >>> [o.shape[1] for o in backbone(torch.rand(1, 3, 64, 64))]
        [128, 256, 512]
    """

    def __init__(self,
                 model_name: str,
                 out_indices: Optional[Sequence[int]] = None,
                 output_stride: Optional[int] = None,
                 in_channels: int = 3,
                 pretrained: Union[bool, str] = False,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 frozen_bn: bool = False,
                 sync_bn: bool = False,
                 with_cp: bool = False,
                 drop_path_rate: Optional[float] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None,
                 input_size: Union[str, Sequence[int]] = 'any',
                 pyramid: Optional[str] = 'auto',
                 pyramid_strides: Optional[Sequence[Optional[int]]] = None,
                 pyramid_channels: Optional[int] = None,
                 channels_last: bool = False,
                 compile: Union[bool, Dict[str, Any]] = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
                 **unknown: Any) -> None:
        if unknown:
            raise TypeError(unknown_options_message(list(unknown)))
        super().__init__(init_cfg=check_init_cfg(init_cfg))
        pretrained = check_pretrained(pretrained)
        for name, value in dict(norm_eval=norm_eval, frozen_bn=frozen_bn, sync_bn=sync_bn,
                                with_cp=with_cp, channels_last=channels_last).items():
            check_bool(name, value)
        if frozen_bn and sync_bn:
            raise ValueError('frozen_bn=True and sync_bn=True exclude each other: frozen batch '
                             'norms have no statistics to synchronise. Choose one.')
        compile_args = compile_kwargs(compile)
        self.model_name = model_name
        plan = plan_backbone(model_name, out_indices=out_indices, output_stride=output_stride,
                             in_channels=in_channels, drop_path_rate=drop_path_rate,
                             model_kwargs=model_kwargs, input_size=input_size, pyramid=pyramid,
                             pyramid_strides=pyramid_strides, pyramid_channels=pyramid_channels)
        self.plan = plan
        self.levels = plan.levels
        self.frozen_stages = check_frozen_stages(frozen_stages, self.levels, model_name)
        self.norm_eval = bool(norm_eval)
        self.in_channels = plan.kwargs['in_chans']
        # timm returns levels in level order; forward picks them in out_indices order
        self._order = tuple(plan.timm_indices.index(i) for i in plan.out_indices)
        self.model = create_pretrained(model_name, plan.kwargs, plan.timm_indices, pretrained) \
            if pretrained else create_features(model_name, plan.kwargs, plan.timm_indices)
        self.pyramid = None
        if plan.pyramid_strides:
            sources = [self.levels[i] for i in plan.out_indices]
            self.pyramid = SimplePyramid([s.channels for s in sources],
                                         [s.stride for s in sources], plan.pyramid_strides,
                                         plan.pyramid_channels)
        built = level_specs(self.model.feature_info.info)
        if built != self.levels:
            raise RuntimeError(
                f"timm's feature_info for {model_name!r} differs between the meta-device build "
                f'that planned this backbone and the real build:\nplanned:\n'
                f'{format_specs(self.levels)}\nbuilt:\n{format_specs(built)}\nThis is a bug '
                f'in timm_backbones or timm; please report it with the model name and options.')

        if frozen_bn:
            self.model = to_frozen_bn(self.model)
        if sync_bn:
            self.model = convert_sync_batchnorm(self.model)
        if with_cp:
            enable_grad_checkpointing(self.model, model_name)
        self._frozen_paths: List[str] = []  # modules of frozen stages, kept in eval mode
        if self.frozen_stages >= 0:
            self._frozen_paths = freeze_stages(self.model, self.levels, self.frozen_stages,
                                               max(plan.timm_indices), model_name)
            for m in self.frozen_modules():
                m.eval()
        # the blocks / stages FSDP shards one at a time and activation checkpointing recomputes
        self.block_paths: List[str] = mark_blocks(self.model, self.levels)
        self.channels_last = channels_last
        if channels_last:  # after the converters, which replace modules
            self.to(memory_format=torch.channels_last)
        # channels-last maps (this option, or `detector.to(memory_format=...)`) reach mmcv's
        # compiled ops through the neck: make them read contiguous copies (`_mmcv_layout.py`)
        contiguous_mmcv_inputs()
        # 1- or 4-channel images meet the data preprocessor: a stated meaning or a clear error
        check_image_channels()
        if compile_args is not None:
            self.compile(**compile_args)

    @property
    def feature_specs(self) -> Tuple[FeatureSpec, ...]:
        """Specs of the outputs of `forward`, in output order."""
        return self.plan.specs

    @property
    def out_indices(self) -> Tuple[int, ...]:
        """Absolute timm levels feeding the outputs, in output order."""
        return self.plan.out_indices

    @property
    def out_channels(self) -> List[int]:
        """Channels of each output, in output order."""
        return [s.channels for s in self.feature_specs]

    @property
    def out_strides(self) -> List[int]:
        """Stride of each output, in output order."""
        return [s.stride for s in self.feature_specs]

    def frozen_modules(self) -> List[nn.Module]:
        """The modules of the frozen stages (looked up by path: converters may swap them; under
        FSDP or activation-checkpoint wrappers, the outermost wrapper of each)."""
        modules: Dict[str, nn.Module] = {}
        for path, module in self.model.named_modules():  # wrappers come before what they wrap
            modules.setdefault(unwrapped_name(path), module)
        return [modules[p] for p in self._frozen_paths]

    def init_weights(self) -> None:
        """Apply `init_cfg`. timm's own initialisation and pretrained weights are otherwise kept
        (the feature wrapper has no `init_weights` for mmengine to call).

        `Pretrained` entries (a backbone or, with `prefix='backbone.'`, a detector checkpoint)
        are loaded here rather than by mmengine, last as mmengine does, weights-only (numpy and
        HistoryBuffer allowed, see `checkpoint_loading`) and verified: loaded/total tensors are
        logged, and a `ValueError` shows expected vs found names and the prefix that would
        match when fewer than half of the backbone's tensors matched.
        """
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else \
            [self.init_cfg] if self.init_cfg else []
        pretrained = [c for c in cfgs if c.get('type') in ('Pretrained', PretrainedInit)]
        first = not self.is_init
        init_cfg, self.init_cfg = self.init_cfg, [c for c in cfgs if c not in pretrained] or None
        try:
            super().init_weights()
        finally:
            self.init_cfg = init_cfg
        if first:
            for cfg in pretrained:
                self._load_init_checkpoint(cfg)

    def _load_init_checkpoint(self, cfg: Dict[str, Any]) -> None:
        """Load an `init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)`, verified."""
        load_init_checkpoint(self, cfg, f'TimmBackbone({self.model_name!r})')
        if hasattr(self, '_params_init_info'):
            prefix = f" (prefix={cfg['prefix']!r})" if cfg.get('prefix') else ''
            update_init_info(self, init_info=f"Pretrained: loaded from {cfg['checkpoint']}{prefix}")

    def train(self, mode: bool = True) -> 'TimmBackbone':
        """Switch mode, keeping frozen stages (and norms, with `norm_eval`) in eval mode."""
        super().train(mode)
        if mode:
            for m in self.frozen_modules():
                m.eval()
            if self.norm_eval:
                set_norm_eval(self.model)
        return self

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Feature maps (NCHW) of the requested levels (or pyramid strides), in that order,
        each exactly ceil(input / stride) in size and laid out as `memory_format` says
        (NCHW-contiguous by default, whatever layout timm computed in).

        Inputs are zero-padded bottom/right, as mmdet pads batches, where the model needs it
        (`BackbonePlan.run_size`: sides to a multiple of `exact_divisor`, at which its maps
        are exactly input / stride; `margin` more for models whose maps fall short of the input,
        such as inception's unpadded convolutions; a fixed-size model to its size), and the
        maps of the padding are cropped off again. Outside autocast, maps have the input's dtype
        (blocks may compute in another one: FSDP mixed precision of the blocks only,
        `engine/_fsdp.py`).
        """
        self._check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        hw = (x.shape[-2], x.shape[-1])
        run_hw = self.plan.run_size(hw)
        if run_hw != hw:
            x = F.pad(x, (0, run_hw[1] - hw[1], 0, run_hw[0] - hw[0]))
        feats = self.model(x)
        if any(f.dtype != x.dtype for f in feats) and \
                not torch.is_autocast_enabled(x.device.type):
            # blocks computing in another precision (FSDP mixed precision of the blocks only)
            # hand their maps on in the input's dtype
            feats = [f.to(x.dtype) for f in feats]
        if self.plan.output_format == 'NHWC':
            feats = [f.permute(0, 3, 1, 2) for f in feats]  # laid out below, copied once
        outs = tuple(feats[i] for i in self._order)
        if self.pyramid is not None:
            outs = self.pyramid(outs, hw)
        else:
            outs = tuple(self._crop(o, s.stride, hw) for o, s in zip(outs, self.feature_specs))
        return tuple(o.contiguous(memory_format=self.memory_format) for o in outs)

    @property
    def memory_format(self) -> torch.memory_format:
        """How every output map is laid out in memory (the layout contract): NCHW-contiguous,
        as mmdet's own backbones lay theirs out, or channels-last with `channels_last=True`.
        mmcv's compiled ops read raw memory as NCHW-contiguous whatever the strides (mmcv
        issue #2203), so the default never hands them another layout; with channels-last maps
        the ops' inputs are made contiguous where they are read (`_mmcv_layout.py`)."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _crop(self, out: Tensor, stride: int, hw: Tuple[int, int]) -> Tensor:
        """The map of the input without the maps of the padding: ceil(input / stride) (a view;
        `forward` lays it out)."""
        h, w = math.ceil(hw[0] / stride), math.ceil(hw[1] / stride)
        if out.shape[-2] < h or out.shape[-1] < w:  # the plan promised maps covering the input
            raise RuntimeError(
                f'TimmBackbone({self.model_name!r}): a stride-{stride} map of {out.shape[-2]}x'
                f'{out.shape[-1]} for an input of {hw[0]}x{hw[1]} (run at '
                f'{self.plan.run_size(hw)}), short of {h}x{w}: the planned input padding '
                f'(exact_divisor={self.plan.exact_divisor}, margin={self.plan.margin}) does not '
                f'fit this model. This is a bug in timm_backbones; please report it with the '
                f'model name and the input size.')
        return out[..., :h, :w]

    def _check_input(self, x: Tensor) -> None:
        """An NCHW image batch with `in_channels` channels."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f'TimmBackbone({self.model_name!r}) takes an NCHW image batch (a 4-d '
                             f'tensor), got {getattr(x, "shape", type(x).__name__)}')
        if x.shape[1] != self.in_channels:
            c, want = x.shape[1], self.in_channels
            values = f'{c} value(s) each' if c in (1, 3) else 'one value each'
            color_type = {3: 'color', 1: 'grayscale'}.get(want, 'unchanged')
            raise ValueError(
                f'TimmBackbone({self.model_name!r}) was built for in_channels={want} but got '
                f'images with {c} channel(s) (input shape {tuple(x.shape)}). Set the '
                f"backbone's in_channels={c} (and give the data_preprocessor's mean/std "
                f'{values}), or load the images with {want} channel(s) (e.g. '
                f'LoadImageFromFile(color_type={color_type!r})).')
