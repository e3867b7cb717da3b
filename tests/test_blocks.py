"""`_blocks.py`: the blocks / stages of a timm feature extractor, found from the model (its
`feature_info` levels and the stacks they sit in), marked when a TimmBackbone is built, and
recognised one module at a time, wrappers excluded."""
import copy

import pytest
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from timm_backbones import TimmBackbone
from timm_backbones._blocks import BLOCK_FLAG, block_paths, is_block

# what each model's blocks are, written out (the expectation must not come from the code)
EXPECTED = {
    'vit_tiny_patch16_224': [f'model.blocks.{i}' for i in range(12)],  # one level per block
    'resnet18': ['layer1', 'layer2', 'layer3', 'layer4'],  # the stages; the stem is not one
    'convnext_atto': [f'stages_{i}' for i in range(4)],  # FeatureListNet flattens stages.i
    # levels are blocks.0, 1, 2, 4, 6: the rest of the `blocks` stack (3, 5) belongs too
    'efficientnet_b0': [f'blocks.{i}' for i in range(7)],
    'swin_tiny_patch4_window7_224': [f'layers_{i}' for i in range(4)],  # NHWC stages
}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_blocks_are_found_from_the_model(name):
    backbone = TimmBackbone(name)
    assert backbone.block_paths == EXPECTED[name]
    assert block_paths(backbone.model, backbone.levels) == EXPECTED[name]
    marked = [p for p, m in backbone.model.named_modules() if is_block(m)]
    assert marked == EXPECTED[name]  # marked when built, nothing else


def test_pruned_levels_are_no_blocks():
    # rule: blocks after the last requested level are pruned by timm: nothing to wrap
    backbone = TimmBackbone('vit_tiny_patch16_224', out_indices=(3,), pyramid=None)
    assert backbone.block_paths == [f'model.blocks.{i}' for i in range(4)]


def test_wrappers_are_not_blocks():
    # rule: FSDP and checkpoint wrappers forward unknown attributes to what they wrap; the
    # wrapper itself is no block (else the check_fn would checkpoint the block twice)
    backbone = TimmBackbone('vit_tiny_patch16_224')
    block = backbone.model.model.blocks[0]
    wrapped = checkpoint_wrapper(block)
    assert getattr(wrapped, BLOCK_FLAG) is True  # forwarded by the wrapper ...
    assert not is_block(wrapped) and is_block(block)  # ... but only the block is one


def test_marks_survive_copies():
    # EMA hooks and mmengine copy models: the copy's blocks are blocks
    backbone = copy.deepcopy(TimmBackbone('resnet18'))
    assert is_block(backbone.model.layer3) and not is_block(backbone.model.conv1)
    assert not is_block(nn.Linear(2, 2))
