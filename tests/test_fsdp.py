"""`engine/_fsdp.py`: the FSDP policies for timm backbones, by name from mmengine's registry, on
the small ViTDet-style Mask R-CNN of the shipped FSDP config, in one gloo process: each block is
one FSDP unit and checkpointed once, layer decay gives the plain model's groups, frozen stages
stay frozen, timm's own `with_cp` and bfloat16 blocks work under FSDP. (Training on two
processes, FSDP against one process: `test_flexible_runner.py`.)"""
import copy

import pytest
import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.model.wrappers import MMFullyShardedDataParallel
from mmengine.optim import build_optim_wrapper
from mmengine.registry import FUNCTIONS, DefaultScope, init_default_scope
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper, apply_activation_checkpointing)
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from helpers import free_port, small_fsdp_config
from test_configs import one_image_batch
from timm_backbones import build_detector
from timm_backbones._blocks import is_block
from timm_backbones._names import unwrapped_name
from timm_backbones.engine import TimmBlockWrapPolicy, timm_block_check_fn
from timm_backbones.engine._fsdp import block_mixed_precision

BLOCKS = [f'backbone.model.model.blocks.{i}' for i in range(12)]


@pytest.fixture(scope='module')
def process_group():
    """One gloo process (FSDP needs a process group; the units live on the CPU)."""
    torch_dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0,
                                  world_size=1)
    yield
    torch_dist.destroy_process_group()


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
    return Config.fromfile(small_fsdp_config(tmp_path_factory.mktemp('fsdp')))


def detector(cfg, **backbone):
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.update(backbone)
    torch.manual_seed(0)
    return build_detector(cfg)


def wrap(model, policy='timm_block_wrap_policy', check_fn='timm_block_check_fn'):
    """What mmengine's FSDPStrategy does with the shipped config's names: MMFSDP with the wrap
    policy looked up by name, then activation checkpointing with the check_fn by name."""
    fsdp = MMFullyShardedDataParallel(model, auto_wrap_policy=policy, device_id='cpu')
    if check_fn:
        with FUNCTIONS.switch_scope_and_registry(None):
            apply_activation_checkpointing(fsdp, check_fn=FUNCTIONS.get(check_fn))
    return fsdp


def loss(model, cfg_model):
    data = one_image_batch(cfg_model, with_mask=True)
    losses = model(**data, mode='loss')
    return cfg_model.parse_losses(losses)[0]


def test_policies_are_registered_by_name():
    # rule: a config names them; mmengine looks them up with or without mmdet's default scope
    for scope in (None, 'mmdet'):
        with DefaultScope.overwrite_default_scope(scope):
            with FUNCTIONS.switch_scope_and_registry(None) as registry:
                assert isinstance(registry.get('timm_block_wrap_policy'), TimmBlockWrapPolicy)
                assert registry.get('timm_block_check_fn') is timm_block_check_fn


def test_units_are_the_blocks_checkpointed_once(process_group, cfg):
    model = wrap(detector(cfg))
    units = [unwrapped_name(n) for n, m in model.named_modules()
             if isinstance(m, FSDP) and n]
    assert units == BLOCKS  # the root holds the rest: stem, pyramid, neck, heads
    checkpointed = [(n, m) for n, m in model.named_modules() if isinstance(m, CheckpointWrapper)]
    assert [unwrapped_name(n) for n, _ in checkpointed] == BLOCKS
    assert all(is_block(m._checkpoint_wrapped_module) for _, m in checkpointed)
    assert all(isinstance(m._fsdp_wrapped_module, CheckpointWrapper)  # FSDP(ckpt(block))
               for n, m in model.named_modules() if isinstance(m, FSDP) and n)


def test_layer_decay_groups_equal_the_plain_models(process_group, cfg):
    # rule: under FSDP (blocks sharded, checkpoint-wrapped) every parameter gets the lr and
    # weight decay it gets in the plain model
    plain = detector(cfg)
    fsdp = wrap(copy.deepcopy(plain))
    init_default_scope('mmdet')

    def groups(model):
        names = {id(p): unwrapped_name(n) for n, p in model.named_parameters()}
        optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper)).optimizer
        return {names[id(p)]: (g['lr'], g['weight_decay'])
                for g in optim.param_groups for p in g['params']}

    expected = groups(plain)
    # blocks 1..11 (the stem and blocks.0 are frozen: not optimized) and the heads' base lr
    assert len({lr for lr, _ in expected.values()}) == 12
    assert groups(fsdp) == expected


def test_frozen_stages_stay_frozen(process_group, cfg):
    # rule: frozen_stages=1 (the stem and blocks.0) keeps its meaning in FSDP units
    model = wrap(detector(cfg))
    backbone = model.module.backbone
    frozen = {unwrapped_name(n) for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n in frozen if n.startswith(('backbone.model.model.blocks.0.',
                                                         'backbone.model.model.patch_embed.'))} \
        | {'backbone.model.model.cls_token', 'backbone.model.model.pos_embed'}
    assert len(frozen) == 16
    model.train()
    paths = backbone._frozen_paths  # the stem's modules and blocks.0, found through wrappers
    assert paths[-1] == 'model.blocks.0' and len(backbone.frozen_modules()) == len(paths)
    assert not any(m.training for m in backbone.frozen_modules())
    assert not backbone.model.model.blocks[0].training and backbone.model.model.blocks[1].training
    # (that training leaves them unchanged: test_flexible_runner.py, two processes)


def test_timm_with_cp_under_fsdp(process_group, cfg):
    # rule: the backbone's own with_cp (timm's set_grad_checkpointing) computes the same loss
    # and gradients under FSDP as the plain model without it
    plain = detector(cfg)
    with_cp = detector(cfg, with_cp=True)
    with_cp.load_state_dict(plain.state_dict())
    model = wrap(with_cp, check_fn=None)
    expected = loss(plain, plain)
    expected.backward()
    got = loss(model, model.module)
    got.backward()
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    with FSDP.summon_full_params(model, with_grads=True):
        mine = {unwrapped_name(n): p.grad for n, p in model.named_parameters()
                if p.grad is not None and p.requires_grad}  # FSDP shows frozen ones' too
    assert mine.keys() == grads.keys() and len(grads) > 100
    for name, grad in grads.items():
        assert torch.allclose(mine[name], grad, rtol=1e-4, atol=1e-6), name


def test_blocks_in_bfloat16(process_group, cfg):
    # rule: mixed precision of the policy applies to the blocks only; the backbone hands fp32
    # maps to the pyramid, neck and heads (mmcv's RoIAlign has no bfloat16 kernel on GPUs)
    policy = TimmBlockWrapPolicy(mixed_precision=dict(param_dtype='bfloat16'))
    model = wrap(detector(cfg), policy=policy, check_fn=None)
    seen = {}

    def record(name):
        def hook(module, args):
            first = args[0][0] if isinstance(args[0], (tuple, list)) else args[0]  # neck: maps
            seen.setdefault(unwrapped_name(name), first.dtype)
        return hook

    for name, module in model.named_modules():
        if is_block(module) or name.endswith('backbone') or name.endswith('neck'):
            module.register_forward_pre_hook(record(name))
    total = loss(model, model.module)
    total.backward()
    assert torch.isfinite(total)
    assert {seen[b] for b in BLOCKS} == {torch.bfloat16}  # inputs cast by FSDP
    assert seen['neck'] == torch.float32 and seen['backbone'] == torch.float32


def test_policy_dict_needs_the_flexible_runner(process_group, cfg):
    # mmengine turns auto_wrap_policy=dict(type=..., **kw) into partial(policy, **kw): a
    # function call FSDP cannot pass FSDP arguments through; it says what to use instead
    policy = dict(type='timm_block_wrap_policy', mixed_precision=dict(param_dtype='bfloat16'))
    with pytest.raises(TypeError, match=r"got \['mixed_precision'\].*"
                                        r"TimmBackboneFlexibleRunner"):
        wrap(detector(cfg), policy=policy, check_fn=None)


def test_block_mixed_precision_bad_input():
    assert block_mixed_precision(dict(param_dtype='bfloat16')).reduce_dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"param_dtype='bf16' is not a torch floating-point "
                                         r"dtype; use e.g. 'bfloat16'"):
        block_mixed_precision(dict(param_dtype='bf16'))
    with pytest.raises(ValueError, match='needs param_dtype'):
        block_mixed_precision(dict(reduce_dtype='float32'))
    with pytest.raises(TypeError, match=r"unknown mixed_precision keys \['dtype'\]"):
        block_mixed_precision(dict(dtype='bfloat16'))
