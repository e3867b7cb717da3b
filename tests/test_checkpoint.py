"""Checkpoint files: files that are no checkpoint say so (also inside the weights-only loading
context), the formats are recognised, and the runner's plain checkpoints round-trip the message
hub. Weight files are made here (random models saved; `files` in conftest.py)."""
import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub

from helpers import unsafe_globals
from timm_backbones._checkpoint import (check_checkpoint_file, checkpoint_kind, checkpoint_loading,
                                        from_plain_checkpoint, read_checkpoint,
                                        to_plain_checkpoint)


# ---- files that are no checkpoint --------------------------------------------------------------

@pytest.mark.parametrize('name, looks', [('page.pth', 'HTML page'), ('notes.pth', 'starts with'),
                                         ('empty.pth', 'empty'), ('lfs.pth', 'Git LFS')])
def test_not_a_checkpoint_says_so(files, name, looks):
    paths = files[0]
    with pytest.raises(ValueError, match=f'is not a PyTorch checkpoint.*{looks}'):
        check_checkpoint_file(paths[name])
    # the weights-only loading context says so too, instead of advice about trusting the file
    with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
        with checkpoint_loading(paths[name]):
            torch.load(paths[name])


def test_checkpoint_formats_recognised(files):
    paths = files[0]
    assert checkpoint_kind(paths['timm.pth']) == 'zip'
    assert checkpoint_kind(paths['timm.safetensors']) == 'safetensors'
    legacy = paths['timm.pth'] + '.legacy'
    torch.save({'a': torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    assert checkpoint_kind(legacy) == 'pickle'
    assert torch.equal(read_checkpoint(legacy)['a'], torch.ones(1))
    assert checkpoint_kind('https://example.com/w.pth') is None  # left to its loader


# ---- plain checkpoints -------------------------------------------------------------------------

def test_plain_checkpoint_round_trips_the_message_hub(tmp_path):
    # rule: the runner's checkpoints hold tensors and plain containers only (any weights-only
    # reader loads them), and resuming gets the same message hub back
    hub = MessageHub.get_instance('plain-checkpoint-test')
    for value in (1.5, 0.5, 0.25):
        hub.update_scalar('train/loss', value)
    hub.update_info('iter', np.int64(3))
    checkpoint = {'message_hub': hub.state_dict(), 'meta': {'epoch': 1}}
    path = str(tmp_path / 'plain.pth')
    torch.save(to_plain_checkpoint(checkpoint), path)
    assert unsafe_globals(path) == []
    loaded = from_plain_checkpoint(torch.load(path, weights_only=True))
    restored = MessageHub.get_instance('plain-checkpoint-restored')
    restored.load_state_dict(loaded['message_hub'])
    before, after = hub.get_scalar('train/loss'), restored.get_scalar('train/loss')
    assert np.array_equal(before.data[0], after.data[0])
    assert np.array_equal(before.data[1], after.data[1])
    assert after.mean() == before.mean() and after.current() == 0.25
    assert restored.get_info('iter') == 3


def test_plugin_import_allows_what_mmengine_writes(tmp_path):
    # rule: with the package imported, a checkpoint written by plain mmengine (HistoryBuffer,
    # numpy) loads with torch's weights-only default, and nothing else is allowed
    import timm_backbones  # noqa: F401
    hub = MessageHub.get_instance('mmengine-checkpoint-test')
    hub.update_scalar('loss', 1.0)
    path = str(tmp_path / 'mmengine.pth')
    torch.save({'message_hub': hub.state_dict(), 'meta': {'seed': np.int64(0)}}, path)
    assert torch.load(path)['meta']['seed'] == 0  # weights_only=True is torch's default
    torch.save({'bad': print}, str(tmp_path / 'bad.pth'))
    with pytest.raises(Exception, match='Weights only load failed'):
        torch.load(str(tmp_path / 'bad.pth'))
