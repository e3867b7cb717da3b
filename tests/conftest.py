"""Fixtures shared by the test modules (plain helpers live in helpers.py)."""
import logging

import numpy as np
import pytest
import timm
import torch
from mmengine.logging import HistoryBuffer, MMLogger


@pytest.fixture(scope='session', autouse=True)
def two_threads():
    """Two intra-op threads for every test (the machine's cores), whatever torch would pick;
    restored at the end. Modules that need fewer use `one_thread`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread for the module: on a shared, busy 2-core machine two threads stall
    each other (one efficientnet_b0 forward measured 4 s with 2 threads, 0.04 s with 1).
    Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Weight files of every kind a user may hand over."""
    root = tmp_path_factory.mktemp('weights')
    timm_model = timm.create_model('resnet18')
    from timm_backbones import TimmBackbone
    donor = TimmBackbone('resnet18')
    paths = {}

    def save(name, data):
        paths[name] = str(root / name)
        torch.save(data, paths[name])

    save('timm.pth', timm_model.state_dict())
    save('backbone.pth', donor.state_dict())
    save('detector_plain.pth', {'state_dict': {f'backbone.{k}': v
                                               for k, v in donor.state_dict().items()}})
    # as mmengine's runner writes it: numpy and HistoryBuffer beside the tensors
    save('detector.pth', {'state_dict': {f'backbone.{k}': v for k, v in donor.state_dict().items()},
                          'message_hub': {'log_scalars': {'loss': HistoryBuffer([1.0], [1])}},
                          'meta': {'seed': np.int64(0)}})
    save('half.pth', {k: v for i, (k, v) in enumerate(timm_model.state_dict().items()) if i % 3})
    save('other.pth', {'encoder.weight': torch.zeros(3, 3)})
    for name, text in (('page.pth', '<!DOCTYPE html>\n<html><body>Not Found</body></html>'),
                       ('notes.pth', 'not weights\n'), ('empty.pth', ''),
                       ('lfs.pth', 'version https://git-lfs.github.com/spec/v1\noid sha256:ab\n')):
        paths[name] = str(root / name)
        (root / name).write_text(text)
    from safetensors.torch import save_file
    paths['timm.safetensors'] = str(root / 'timm.safetensors')
    save_file(timm_model.state_dict(), paths['timm.safetensors'])
    return paths, timm_model, donor


@pytest.fixture
def log_lines():
    """Lines logged on mmengine's current logger during the test."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture(scope='session')
def demo(tmp_path_factory):
    """The demo RetinaNet (random weights, spread class scores) saved as a checkpoint and
    exported end to end by tools/export.py, once per session: (model, checkpoint, onnx file,
    the tool's stdout). Used by the export, OnnxDetector and infer_onnx tests."""
    from helpers import demo_export
    return demo_export(tmp_path_factory.mktemp('demo'))
