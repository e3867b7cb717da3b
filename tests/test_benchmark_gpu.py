"""tools/benchmark.py's command line for the GPU section (`--device cuda`, `--dtype`,
`--channels-last`, `--compile`, `--only gpu`): bad combinations exit at once with a message
naming the value and the fix (checked on the CPU; the section itself runs in `make test-gpu`'s
device script)."""
import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tool():
    spec = importlib.util.spec_from_file_location(
        '_benchmark_tool', os.path.join(ROOT, 'tools', 'benchmark.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refused(tool, capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        tool.parse_args(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_cuda_without_gpu_is_refused(tool, capsys):
    # --device cuda on a machine where torch sees no GPU: said at once, with the fix
    err = refused(tool, capsys, '--device', 'cuda', '--only', 'gpu', '--quick')
    assert 'torch.cuda.is_available() is False' in err and '--device cpu' in err


def test_gpu_section_needs_cuda(tool, capsys):
    # the gpu section is not run on the CPU
    err = refused(tool, capsys, '--only', 'gpu')
    assert "--device is 'cpu'" in err and 'add --device cuda' in err


def test_gpu_options_need_the_gpu_section(tool, capsys):
    # --dtype / --channels-last / --compile set the gpu section's models: alone they do nothing
    err = refused(tool, capsys, '--dtype', 'bf16', '--channels-last')
    assert '--dtype bf16 --channels-last' in err and 'add --only gpu' in err


def test_bad_values(tool, capsys):
    # dtype and device: the allowed values are named
    assert "invalid choice: 'fp64'" in refused(tool, capsys, '--dtype', 'fp64')
    assert "'gpu0' is not a device" in refused(tool, capsys, '--device', 'gpu0')


def test_gpu_section_is_on_request(tool):
    # the default run (all CPU sections) does not include the gpu section
    args = tool.parse_args([])
    assert 'gpu' not in args.only and args.dtype == 'fp32'
    assert not args.channels_last and not args.compile
