"""Fixtures shared by the test modules (plain helpers live in helpers.py)."""
import pytest
import torch


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread for the module: on a shared, busy 2-core machine two threads stall
    each other (one efficientnet_b0 forward measured 4 s with 2 threads, 0.04 s with 1).
    Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def demo(tmp_path_factory):
    """The demo RetinaNet (random weights, spread class scores) saved as a checkpoint and
    exported end to end by tools/export.py, once per session: (model, checkpoint, onnx file,
    the tool's stdout). Used by the export, OnnxDetector and infer_onnx tests."""
    from helpers import demo_export
    return demo_export(tmp_path_factory.mktemp('demo'))
