"""mmseg's own entry points on the segmentation demo config, as users run them, with nothing but
the config's `custom_imports`: the tools shipped in the mmseg wheel (`mmseg/.mim/tools/train.py`,
`test.py`) as subprocesses, and `MMSegInferencer` in a fresh process (config + weights, and the
weights alone: the config read from the checkpoint before any plugin is imported).

The demo config runs with its own settings (workers, persistent workers, pipelines); the dataset
(`indices`), the iterations and the batch size are cut with `--cfg-options`, as a user trying the
tools would. Its data is generated in a temporary working directory.
"""
import os
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config

from helpers import MMSEG, ROOT
from test_stock_tools import run

TOOLS = os.path.join(MMSEG, '.mim', 'tools')
DEMO = os.path.join(ROOT, 'configs', 'seg',
                    'upernet_timm-resnet18_1xb8-400it_synthetic-shapes-256x256.py')
SMALL = ['train_dataloader.dataset.indices=8', 'val_dataloader.dataset.indices=2',
         'test_dataloader.dataset.indices=2', 'train_dataloader.batch_size=2']


def tool(path, *args, cwd):
    return run([sys.executable, os.path.join(TOOLS, path), *args], cwd)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """mmseg's own tools/train.py on the demo config: 2 iterations, evaluated after them."""
    cwd = tmp_path_factory.mktemp('seg_stock')
    out = tool('train.py', DEMO, '--work-dir', 'work', '--cfg-options', *SMALL,
               'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
               'default_hooks.checkpoint.interval=2', cwd=cwd)
    assert 'mIoU' in out
    checkpoint = cwd / 'work' / 'iter_2.pth'
    dumped = cwd / 'work' / os.path.basename(DEMO)
    assert checkpoint.is_file() and dumped.is_file()
    return cwd, str(checkpoint), str(dumped)


def test_training_writes_plain_checkpoints_and_the_resolved_config(trained):
    # rule: the runner (the config's runner_type) resolved the config before building, dumped
    # the resolved one, and wrote a checkpoint any weights-only reader loads
    _, checkpoint, dumped = trained
    assert torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint) == []
    cfg = Config.fromfile(dumped)
    assert "'auto'" not in cfg.pretty_text
    assert cfg.model.decode_head.in_channels == [64, 128, 256, 512]


def test_mmseg_test_tool(trained):
    # rule: mmseg's tools/test.py (a plain mmengine Runner: mmseg's registry resolves the model)
    # evaluates the checkpoint and paints predicted masks
    cwd, checkpoint, _ = trained
    out = tool('test.py', DEMO, checkpoint, '--work-dir', 'test', '--show-dir', 'painted',
               '--cfg-options', *SMALL, 'default_hooks.visualization.interval=1', cwd=cwd)
    assert 'mIoU' in out and 'background' in out
    painted = [f for _, _, files in os.walk(cwd / 'painted') for f in files
               if f.endswith('.png')]
    assert len(painted) == 2  # ground truth and prediction of each test image


def test_mmseg_inferencer_with_the_config_and_with_the_checkpoint_alone(trained):
    # rule: MMSegInferencer(model=config, weights=ckpt) and MMSegInferencer(weights=ckpt) (the
    # config read from the checkpoint, in a process where nothing imported the plugin before)
    # build the same resolved segmentor and predict the same masks
    cwd, checkpoint, _ = trained
    out = run([sys.executable, '-c', textwrap.dedent(f"""
        import sys
        import numpy as np
        import torch
        from mmseg.apis import MMSegInferencer
        assert 'timm_backbones' not in sys.modules
        image = np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)
        alone = MMSegInferencer(model=None, weights={checkpoint!r}, device='cpu')
        first = alone(image, return_datasamples=True).pred_sem_seg.data
        assert type(alone.model.backbone).__name__ == 'TimmBackbone'
        assert alone.model.dataset_meta['classes'][0] == 'background'
        both = MMSegInferencer(model={DEMO!r}, weights={checkpoint!r}, device='cpu')
        second = both(image, out_dir='vis', return_datasamples=True).pred_sem_seg.data
        assert torch.equal(first, second), 'the two ways disagree'
        print('mask', tuple(first.shape))
        """)], cwd)
    assert 'mask (1, 200, 240)' in out
    assert os.listdir(cwd / 'vis' / 'vis')  # the picture with the mask
