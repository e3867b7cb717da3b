"""Decide how `make install` builds mmcv's compiled ops on this machine: CPU ops only, or CPU +
CUDA ops for the GPUs torch sees (tools/install.sh and tools/build_mmcv_wheel.sh ask this one
script, so the two never disagree).

Run with the interpreter of the target environment (torch installed); prints shell assignments
(`NAME='value'`, one a line) for `eval`:

    FORCE_CUDA              1 (build CUDA ops) or 0 (CPU ops only)
    TORCH_CUDA_ARCH_LIST    the GPUs' compute capabilities, e.g. '9.0' ('' on CPU)
    CUDA_HOME               the toolkit whose nvcc builds the ops ('' on CPU)
    CUDA_VISIBLE_DEVICES    '' on CPU only: mmcv's setup.py builds CUDA ops whenever torch sees a
                            GPU, so a CPU build on a GPU machine must hide the GPUs
    MMCV_TORCH_VERSION      torch's full version, local build tag included ('2.11.0+cu130')
    MMCV_VARIANT            'cpu' or 'cuda<nvcc version>-arch<list>' (part of the wheel cache key)
    MMCV_DECISION_REASON    one sentence: why this variant

Rules:
  * FORCE_CUDA=0: CPU ops only.
  * FORCE_CUDA=1: CUDA ops; it is an error (exit 2, the fix named) when nvcc or a CUDA build of
    torch is missing, or when no GPU is visible and TORCH_CUDA_ARCH_LIST is not set.
  * FORCE_CUDA unset (the default): CUDA ops when `torch.cuda.is_available()`, torch is a CUDA
    build and nvcc (PATH, then $CUDA_HOME/bin, then /usr/local/cuda/bin) has torch's CUDA major
    version; otherwise CPU ops, with the reason (and the fix) on stderr.
  * TORCH_CUDA_ARCH_LIST set by the user wins over the visible GPUs' capabilities.

For tests only: `_TIMM_BACKBONES_FAKE_TORCH` (JSON: version, cuda, available, capabilities)
replaces what torch says, so the rules run without torch or a GPU, and
`_TIMM_BACKBONES_DEFAULT_CUDA_HOME` replaces /usr/local/cuda (a machine with a toolkit there can
still test the "no nvcc" rules).
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

__all__ = ['decide', 'main']

FAKE_TORCH_ENV = '_TIMM_BACKBONES_FAKE_TORCH'
DEFAULT_CUDA_HOME_ENV = '_TIMM_BACKBONES_DEFAULT_CUDA_HOME'


class DecisionError(Exception):
    """A combination of settings that cannot build what was asked (the message names the fix)."""


def torch_facts() -> Dict[str, Any]:
    """torch's full version, its CUDA version (None for a CPU build), whether it sees a GPU and
    the visible GPUs' compute capabilities ('major.minor')."""
    fake = os.environ.get(FAKE_TORCH_ENV)
    if fake:
        return json.loads(fake)
    try:
        import torch
    except ImportError as err:
        raise DecisionError(f'torch is not importable with {sys.executable} ({err}); install '
                            'torch first (make install does)') from err
    available = bool(torch.cuda.is_available())
    caps = sorted({'%d.%d' % torch.cuda.get_device_capability(i)
                   for i in range(torch.cuda.device_count())}) if available else []
    return dict(version=torch.__version__, cuda=torch.version.cuda, available=available,
                capabilities=caps)


def find_nvcc(env: Dict[str, str]) -> Optional[str]:
    """nvcc as torch's cpp_extension finds it: PATH, $CUDA_HOME (or $CUDA_PATH)/bin, then
    /usr/local/cuda/bin."""
    found = shutil.which('nvcc', path=env.get('PATH', ''))
    if found:
        return found
    default = env.get(DEFAULT_CUDA_HOME_ENV, '/usr/local/cuda')
    for root in (env.get('CUDA_HOME'), env.get('CUDA_PATH'), default):
        if root and os.access(os.path.join(root, 'bin', 'nvcc'), os.X_OK):
            return os.path.join(root, 'bin', 'nvcc')
    return None


def nvcc_version(nvcc: str) -> str:
    """'13.0' from `nvcc --version` ('... release 13.0, V13.0.88')."""
    try:
        out = subprocess.run([nvcc, '--version'], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise DecisionError(f'{nvcc} --version failed ({err}); fix the CUDA toolkit or set '
                            'FORCE_CUDA=0 for CPU ops only') from err
    match = re.search(r'release (\d+\.\d+)', out)
    if not match:
        raise DecisionError(f'cannot read a version from `{nvcc} --version` (got {out!r}); '
                            'fix the CUDA toolkit or set FORCE_CUDA=0 for CPU ops only')
    return match.group(1)


def decide(env: Dict[str, str], facts: Dict[str, Any]) -> Tuple[Dict[str, str], List[str]]:
    """The build settings for `env` (the environment) and `facts` (`torch_facts()`).

    Returns:
        (settings, warnings): the assignments listed in the module docstring, and messages for
        the user (an automatic choice of CPU ops on a machine with a GPU says why).

    Raises:
        DecisionError: FORCE_CUDA has a value other than 0 or 1, or FORCE_CUDA=1 cannot build.

    Example:
        >>> decide({'FORCE_CUDA': '0'}, dict(version='2.14.1', cuda='13.0', available=True,
        ...                                  capabilities=['9.0']))[0]['MMCV_VARIANT']
        'cpu'
    """
    force = env.get('FORCE_CUDA', '')
    if force not in ('', '0', '1'):
        raise DecisionError(f'FORCE_CUDA={force!r}: use 1 (build CUDA ops), 0 (CPU ops only) or '
                            'leave it unset (CUDA ops when torch sees a GPU and nvcc is found)')
    warnings: List[str] = []
    cpu = dict(FORCE_CUDA='0', TORCH_CUDA_ARCH_LIST='', CUDA_HOME='', CUDA_VISIBLE_DEVICES='',
               MMCV_TORCH_VERSION=facts['version'], MMCV_VARIANT='cpu')
    if force == '0':
        return dict(cpu, MMCV_DECISION_REASON='FORCE_CUDA=0: CPU ops only'), warnings

    def cannot(why: str, fix: str) -> Tuple[Dict[str, str], List[str]]:
        if force == '1':
            raise DecisionError(f'FORCE_CUDA=1 but {why}; {fix}')
        if facts.get('available'):  # a GPU is there: say why it is not used
            warnings.append(f'torch sees a GPU but {why}: building mmcv with CPU ops only '
                            f'(models on CUDA will refuse to run). To build the CUDA ops: {fix}; '
                            'or install a prebuilt CUDA wheel with MMCV_WHEEL=/path/to/mmcv.whl')
        return dict(cpu, MMCV_DECISION_REASON=f'CPU ops only: {why}'), warnings

    if not facts.get('cuda'):
        return cannot(f"torch {facts['version']} is a CPU-only build",
                      'install a CUDA build of torch (the pinned torch is one) or keep one with '
                      'KEEP_TORCH=1')
    if force == '' and not facts.get('available'):
        return dict(cpu, MMCV_DECISION_REASON='CPU ops only: torch sees no GPU'), warnings
    nvcc = find_nvcc(env)
    if nvcc is None:
        return cannot('nvcc is not on PATH, in $CUDA_HOME/bin or in /usr/local/cuda/bin',
                      f"install the CUDA {facts['cuda']} toolkit and put its bin/ on PATH (or "
                      'set CUDA_HOME)')
    version = nvcc_version(nvcc)
    if version.split('.')[0] != str(facts['cuda']).split('.')[0]:
        return cannot(f"{nvcc} is CUDA {version} while torch {facts['version']} was built with "
                      f"CUDA {facts['cuda']}",
                      f"put a CUDA {facts['cuda'].split('.')[0]}.x nvcc first on PATH (or set "
                      'CUDA_HOME)')
    arch = env.get('TORCH_CUDA_ARCH_LIST', '').strip()
    if not arch:
        arch = ';'.join(facts.get('capabilities') or [])
    if not arch:
        raise DecisionError('FORCE_CUDA=1 but no GPU is visible to take compute capabilities '
                            "from; set TORCH_CUDA_ARCH_LIST to the target GPUs' (e.g. "
                            "TORCH_CUDA_ARCH_LIST='8.0;9.0')")
    tag = re.sub(r'[^0-9A-Za-z.+]+', '_', arch.strip())
    return dict(FORCE_CUDA='1', TORCH_CUDA_ARCH_LIST=arch,
                CUDA_HOME=os.path.dirname(os.path.dirname(os.path.realpath(nvcc))),
                MMCV_TORCH_VERSION=facts['version'], MMCV_VARIANT=f'cuda{version}-arch{tag}',
                MMCV_DECISION_REASON=('CUDA ops (FORCE_CUDA=1)' if force == '1' else
                                      'CUDA ops: torch sees a GPU and nvcc is found') +
                f' for compute capability {arch} with {nvcc} (CUDA {version})'), warnings


def main() -> int:
    """Print the decision as shell assignments; exit 2 with the fix on stderr when impossible."""
    try:
        settings, warnings = decide(dict(os.environ), torch_facts())
    except DecisionError as err:
        print(f'install: error: {err}', file=sys.stderr)
        return 2
    for message in warnings:
        print(f'install: warning: {message}', file=sys.stderr)
    for key, value in settings.items():
        print(f'{key}={shlex.quote(value)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
