"""`make install` on GPU machines: the mmcv build decision (tools/_install_decide.py) and the wheel
cache key it gives tools/build_mmcv_wheel.sh, with a fake `nvcc` on PATH and torch's answers
faked through `_TIMM_BACKBONES_FAKE_TORCH` (no torch import, no GPU, no build)."""
import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DECIDE = os.path.join(ROOT, 'tools', '_install_decide.py')
BUILD = os.path.join(ROOT, 'tools', 'build_mmcv_wheel.sh')
GPU_TORCH = dict(version='2.14.1+cu130', cuda='13.0', available=True, capabilities=['9.0'])
NO_GPU_TORCH = dict(GPU_TORCH, available=False, capabilities=[])
CPU_TORCH = dict(version='2.14.1+cpu', cuda=None, available=False, capabilities=[])
PY_TAG = f'cp{sys.version_info[0]}{sys.version_info[1]}'


@pytest.fixture
def fake_nvcc(tmp_path):
    """A folder holding an `nvcc` that reports CUDA 13.0."""
    folder = tmp_path / 'cuda' / 'bin'
    folder.mkdir(parents=True)
    nvcc = folder / 'nvcc'
    nvcc.write_text('#!/bin/sh\necho "Cuda compilation tools, release 13.0, V13.0.88"\n')
    nvcc.chmod(0o755)
    return folder


def environment(torch_facts, path_dirs=(), **settings):
    """A clean environment: PATH without any real nvcc, no CUDA_HOME, torch's answers faked."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('FORCE_CUDA', 'TORCH_CUDA_ARCH_LIST', 'CUDA_HOME', 'CUDA_PATH')}
    env['PATH'] = os.pathsep.join([str(d) for d in path_dirs] + ['/usr/bin', '/bin'])
    env['_TIMM_BACKBONES_FAKE_TORCH'] = json.dumps(torch_facts)
    env['_TIMM_BACKBONES_DEFAULT_CUDA_HOME'] = '/nonexistent/cuda'  # not the machine's toolkit
    env.update(settings)
    return env


def decide(env):
    """(exit status, {NAME: value} printed, stderr) of the decision script."""
    proc = subprocess.run([sys.executable, DECIDE], env=env, capture_output=True, text=True,
                          timeout=60)
    values = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition('=')
        values[key] = shlex.split(value)[0] if value else ''
    return proc.returncode, values, proc.stderr


# ---- the decision ------------------------------------------------------------------------------
def test_gpu_and_nvcc_build_cuda_ops_unasked(fake_nvcc):
    # torch sees a GPU and nvcc is on PATH: CUDA ops for the GPUs' compute capability
    rc, out, _ = decide(environment(dict(GPU_TORCH, capabilities=['8.6', '9.0']), [fake_nvcc]))
    assert rc == 0
    assert out['FORCE_CUDA'] == '1'
    assert out['TORCH_CUDA_ARCH_LIST'] == '8.6;9.0'
    assert out['MMCV_VARIANT'] == 'cuda13.0-arch8.6_9.0'
    assert out['MMCV_TORCH_VERSION'] == '2.14.1+cu130'  # the local build tag is kept
    assert out['CUDA_HOME'] == str(fake_nvcc.parent.resolve())


def test_nvcc_found_through_cuda_home(fake_nvcc):
    # nvcc in $CUDA_HOME/bin counts like nvcc on PATH (torch's cpp_extension finds it there)
    rc, out, _ = decide(environment(GPU_TORCH, CUDA_HOME=str(fake_nvcc.parent)))
    assert rc == 0 and out['FORCE_CUDA'] == '1'


def test_user_arch_list_wins(fake_nvcc):
    # TORCH_CUDA_ARCH_LIST set by the user replaces the visible GPUs' capabilities
    rc, out, _ = decide(environment(GPU_TORCH, [fake_nvcc], TORCH_CUDA_ARCH_LIST='8.0;9.0+PTX'))
    assert rc == 0 and out['TORCH_CUDA_ARCH_LIST'] == '8.0;9.0+PTX'
    assert out['MMCV_VARIANT'] == 'cuda13.0-arch8.0_9.0+PTX'


def test_force_cuda_0_builds_cpu_ops_and_hides_the_gpus(fake_nvcc):
    # FORCE_CUDA=0: CPU ops even with a GPU and nvcc; mmcv's setup.py builds CUDA ops whenever
    # torch sees a GPU, so the build must hide them
    rc, out, _ = decide(environment(GPU_TORCH, [fake_nvcc], FORCE_CUDA='0'))
    assert rc == 0
    assert (out['FORCE_CUDA'], out['MMCV_VARIANT']) == ('0', 'cpu')
    assert out['CUDA_VISIBLE_DEVICES'] == ''


def test_no_gpu_builds_cpu_ops_quietly(fake_nvcc):
    # a CUDA torch on a machine without a GPU (the development machines): CPU ops, no warning
    rc, out, err = decide(environment(NO_GPU_TORCH, [fake_nvcc]))
    assert rc == 0 and out['MMCV_VARIANT'] == 'cpu' and 'warning' not in err


def test_gpu_without_nvcc_warns_and_builds_cpu_ops():
    # a GPU but no nvcc: CPU ops, and the user is told why and how to get CUDA ops
    rc, out, err = decide(environment(GPU_TORCH))
    assert rc == 0 and out['MMCV_VARIANT'] == 'cpu'
    assert 'nvcc is not on PATH' in err and 'MMCV_WHEEL' in err


def test_force_cuda_1_without_nvcc_is_an_error():
    # FORCE_CUDA=1 asks for CUDA ops: no nvcc is an error naming the fix, not a CPU build
    rc, out, err = decide(environment(GPU_TORCH, FORCE_CUDA='1'))
    assert rc == 2 and out == {}
    assert 'FORCE_CUDA=1' in err and 'CUDA_HOME' in err


def test_cpu_only_torch_builds_cpu_ops(fake_nvcc):
    # torch without CUDA cannot load CUDA ops: CPU ops (FORCE_CUDA=1: an error)
    assert decide(environment(CPU_TORCH, [fake_nvcc]))[1]['MMCV_VARIANT'] == 'cpu'
    rc, _, err = decide(environment(CPU_TORCH, [fake_nvcc], FORCE_CUDA='1'))
    assert rc == 2 and 'CPU-only build' in err


def test_nvcc_major_version_must_match_torch(fake_nvcc):
    # torch's cpp_extension refuses an nvcc of another CUDA major version: CPU ops and a warning
    rc, out, err = decide(environment(dict(GPU_TORCH, cuda='12.8'), [fake_nvcc]))
    assert rc == 0 and out['MMCV_VARIANT'] == 'cpu'
    assert 'CUDA 13.0' in err and 'CUDA 12.8' in err


def test_force_cuda_1_without_gpu_needs_an_arch_list(fake_nvcc):
    # building for GPUs that are not there: the architectures must be named
    rc, _, err = decide(environment(NO_GPU_TORCH, [fake_nvcc], FORCE_CUDA='1'))
    assert rc == 2 and 'TORCH_CUDA_ARCH_LIST' in err
    rc, out, _ = decide(environment(NO_GPU_TORCH, [fake_nvcc], FORCE_CUDA='1',
                                    TORCH_CUDA_ARCH_LIST='9.0'))
    assert rc == 0 and out['MMCV_VARIANT'] == 'cuda13.0-arch9.0'


def test_bad_force_cuda_value():
    # FORCE_CUDA takes 0 or 1: anything else names the value and the choices
    rc, _, err = decide(environment(GPU_TORCH, FORCE_CUDA='yes'))
    assert rc == 2 and "'yes'" in err and '0 (CPU ops only)' in err


# ---- the wheel cache key -----------------------------------------------------------------------
def build(env, cache):
    """tools/build_mmcv_wheel.sh with `env`; the source URL points nowhere, so a cache miss fails
    at the download (no build)."""
    env = dict(env, TIMM_BACKBONES_CACHE=str(cache), MMCV_SDIST_URL='file:///nonexistent.tar.gz')
    return subprocess.run(['bash', BUILD, sys.executable], env=env, capture_output=True,
                          text=True, timeout=120)


def cached_wheel(cache, key):
    folder = cache / 'wheels' / key
    folder.mkdir(parents=True)
    wheel = folder / f'mmcv-2.1.0-{PY_TAG}-{PY_TAG}-linux_x86_64.whl'
    wheel.write_bytes(b'')
    return wheel


def test_cuda_machine_never_reuses_a_cpu_wheel(tmp_path, fake_nvcc):
    # a CPU wheel of the same mmcv and torch is cached; on a GPU machine with nvcc the key is the
    # CUDA one (torch's full version, CUDA version, architectures), so the CPU wheel is not used
    cached_wheel(tmp_path, f'mmcv2.1.0-torch2.14.1+cu130-{PY_TAG}-cpu')
    proc = build(environment(GPU_TORCH, [fake_nvcc]), tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert f'mmcv2.1.0-torch2.14.1+cu130-{PY_TAG}-cuda13.0-arch9.0' in proc.stderr
    assert 'could not download' in proc.stderr


def test_cache_hit_per_variant(tmp_path, fake_nvcc):
    # each variant finds its own wheel; FORCE_CUDA=0 on the GPU machine takes the CPU one
    cpu = cached_wheel(tmp_path, f'mmcv2.1.0-torch2.14.1+cu130-{PY_TAG}-cpu')
    cuda = cached_wheel(tmp_path, f'mmcv2.1.0-torch2.14.1+cu130-{PY_TAG}-cuda13.0-arch9.0')
    proc = build(environment(GPU_TORCH, [fake_nvcc]), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(cuda)
    proc = build(environment(GPU_TORCH, [fake_nvcc], FORCE_CUDA='0'), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(cpu)


def test_key_holds_torch_local_build_tag(tmp_path):
    # two torch builds of one version (+cpu, +cu130) are two keys
    cached_wheel(tmp_path, f'mmcv2.1.0-torch2.14.1+cu130-{PY_TAG}-cpu')
    proc = build(environment(dict(CPU_TORCH)), tmp_path)
    assert proc.returncode != 0
    assert f'mmcv2.1.0-torch2.14.1+cpu-{PY_TAG}-cpu' in proc.stderr


def test_decision_error_stops_the_build(tmp_path):
    # an impossible FORCE_CUDA=1 fails before any download, with the decision's message
    proc = build(environment(CPU_TORCH, FORCE_CUDA='1'), tmp_path)
    assert proc.returncode != 0
    assert 'CPU-only build' in proc.stderr and 'downloading' not in proc.stderr


def test_cpu_wheel_under_the_earlier_key_is_reused_for_cpu_only(tmp_path, fake_nvcc):
    # wheels cached before the key held torch's local tag (torch2.14.1-...-cpu) are CPU wheels:
    # reused for CPU ops, never for CUDA ops
    legacy = cached_wheel(tmp_path, f'mmcv2.1.0-torch2.14.1-{PY_TAG}-cpu')
    proc = build(environment(NO_GPU_TORCH), tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == str(legacy), proc.stderr
    proc = build(environment(GPU_TORCH, [fake_nvcc]), tmp_path)
    assert proc.returncode != 0 and 'could not download' in proc.stderr


# ---- KEEP_TORCH=1: a GPU image's own torch -------------------------------------------------------
INSTALL = os.path.join(ROOT, 'tools', 'install.sh')


def install(tmp_path, **settings):
    env = {k: v for k, v in os.environ.items() if k not in ('VENV', 'PYTHON', 'KEEP_TORCH')}
    env.update(VENV=str(tmp_path / 'venv'), **settings)
    return subprocess.run(['bash', INSTALL], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)


def test_keep_torch_bad_value(tmp_path):
    proc = install(tmp_path, KEEP_TORCH='yes')
    assert proc.returncode != 0
    assert 'KEEP_TORCH=yes: use 1' in proc.stderr and not (tmp_path / 'venv').exists()


def test_keep_torch_needs_a_cuda_torch(tmp_path):
    # an interpreter without torch: refused naming PYTHON= and the default
    bare = tmp_path / 'bare'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(bare)], check=True)
    proc = install(tmp_path, KEEP_TORCH='1', PYTHON=str(bare / 'bin' / 'python'))
    assert proc.returncode != 0
    assert 'has no CUDA build of torch' in proc.stderr and 'PYTHON=' in proc.stderr


@pytest.mark.slow
def test_keep_torch_keeps_the_interpreters_torch(tmp_path):
    # the project's venv holds the pinned CUDA torch (+cu130): a new venv made from it with
    # KEEP_TORCH=1 uses that torch (not a copy), and mmcv's ops load against it
    import torch
    if not torch.version.cuda:
        pytest.skip('the running torch is a CPU build: KEEP_TORCH=1 keeps CUDA builds only')
    proc = install(tmp_path, KEEP_TORCH='1', PYTHON=sys.executable)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'keeping torch' in proc.stderr
    py = str(tmp_path / 'venv' / 'bin' / 'python')
    out = subprocess.run([py, '-c', 'import torch, mmcv.ops, mmdet, timm_backbones; '
                          'print(torch.__file__); print(torch.__version__)'],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    where, version = out.stdout.split()
    assert where == torch.__file__ and version == torch.__version__
    assert not list((tmp_path / 'venv' / 'lib').glob('python*/site-packages/torch'))
