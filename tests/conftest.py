"""Fixtures shared by the test modules (plain helpers live in helpers.py), and the suite's
cleanup: the large files (>= 1 MiB: checkpoints, ONNX models, weight files) a test leaves in its
`tmp_path` are deleted when it passed, and those of the module/session folders
(`tmp_path_factory.mktemp`) at the end of a session without failures. Folders stay (mmengine's
visualizer outlives a test and may still write into its folder), and a failed test keeps
everything. pytest.ini keeps one run's basetemp (`tmp_path_retention_count = 1`)."""
import logging
import os

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


# ---- the demo config, shrunk, trained without interruption (test_resume, test_kill_resume) ------
RESUME_EPOCHS = 3


@pytest.fixture(scope='session')
def resume_demo(tmp_path_factory):
    """The demo config, shrunk: 32 images of 96x96 (4 iterations per epoch), 3 epochs, a
    checkpoint every epoch; validation (2 images) configured but not run
    (`train_cfg.val_interval=1` turns it on). Its dataloader settings stay the demo's.
    Returns (folder, config path)."""
    import os
    from mmengine.config import Config
    from helpers import DEMO_CONFIG
    root = tmp_path_factory.mktemp('resume')
    cfg = Config.fromfile(DEMO_CONFIG)
    loader = cfg.train_dataloader
    # what the resume tests are about: the shipped settings, unchanged
    assert loader.num_workers == 1 and loader.persistent_workers is True
    assert any(t['type'] == 'RandomFlip' for t in loader.dataset.pipeline)
    assert cfg.sample_seeding is True  # from configs/_base_/timm_runtime.py
    synthetic = dict(num_train=32, num_val=2, img_size=(96, 96), obj_size=(16, 48),
                     max_objects=3, seed=0)
    data_root = f'{root}/data/'
    for part in (loader.dataset, cfg.val_dataloader.dataset, cfg.val_evaluator):
        part.data_root = data_root
        part.synthetic = synthetic
    for pipeline in (loader.dataset.pipeline, cfg.val_dataloader.dataset.pipeline):
        for t in pipeline:
            if t['type'] == 'Resize':
                t['scale'] = synthetic['img_size']
    cfg.train_cfg.max_epochs = RESUME_EPOCHS
    cfg.train_cfg.val_interval = 1000
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.default_hooks.checkpoint.update(interval=1, max_keep_ckpts=-1)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.visualization.draw = False
    path = root / 'demo_small.py'
    cfg.dump(str(path))
    assert os.path.isfile(path)
    return root, path


@pytest.fixture(scope='session')
def resume_uninterrupted(resume_demo):
    """The work dir of an uninterrupted run of `resume_demo` (tools/train.py)."""
    from test_resume import train
    root, config = resume_demo
    train(config, root / 'full')
    return root / 'full'


# ---- cleanup ------------------------------------------------------------------------------------
LARGE = 1 << 20  # bytes: files this large of passed tests are deleted


def _delete_large_files(folder):
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                if not os.path.islink(path) and os.path.getsize(path) >= LARGE:
                    os.remove(path)
            except OSError:  # gone already, or still being written by another process
                pass


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f'_report_{report.when}', report)


@pytest.fixture(autouse=True)
def _clean_tmp_path_of_passed_test(request):
    """After a test that passed: its `tmp_path`'s large files deleted (the folder stays)."""
    yield
    item = request.node
    reports = [getattr(item, f'_report_{when}', None) for when in ('setup', 'call')]
    if all(r is not None and r.passed for r in reports) and 'tmp_path' in item.funcargs:
        _delete_large_files(str(item.funcargs['tmp_path']))


@pytest.fixture(scope='session', autouse=True)
def _clean_basetemp_of_passed_session(request, tmp_path_factory):
    """At the end of a session without failures: the large files left anywhere in its basetemp
    (module and session folders) are deleted too."""
    yield
    if request.session.testsfailed == 0:
        _delete_large_files(str(tmp_path_factory.getbasetemp()))
