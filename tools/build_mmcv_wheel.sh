#!/usr/bin/env bash
# Build mmcv (with its compiled ops, `mmcv._ext`) as a wheel once, and keep it in a cache outside
# the repository, keyed by the mmcv, torch and Python versions and the CPU/CUDA variant.
#
# Why a script: mmcv 2.1.0 is published only as a source archive, and its setup.py cannot build
# against torch 2.14 as it is:
#   * it imports `pkg_resources`, which setuptools >= 81 (required by torch 2.14) no longer ships;
#     we swap that import for the standard library's `importlib.metadata` + `packaging`;
#   * it forces `-std=c++17`, while torch 2.14's headers require C++20; we raise it to C++20.
# The build itself is mmcv's own (`pip wheel --no-build-isolation`), against the torch already
# installed in the target environment, so the ops match that torch's ABI.
#
# CPU or CUDA ops: tools/_install_decide.py decides (CUDA ops when torch sees a GPU and nvcc is
# found, for the visible GPUs' compute capabilities; FORCE_CUDA=0/1 overrides). The cache key
# holds torch's full version with its local build tag (2.11.0+cu130) and the variant
# (cpu, or cuda<nvcc version>-arch<TORCH_CUDA_ARCH_LIST>), so a CPU wheel is never reused where
# CUDA ops are wanted, nor a wheel built against another torch build.
#
# Usage:   tools/build_mmcv_wheel.sh PYTHON        (prints the cached wheel's path on stdout)
# Env:     FORCE_CUDA=1|0  insist on CUDA ops (needs nvcc) / CPU ops only; unset: decided
#          TORCH_CUDA_ARCH_LIST   GPU architectures to build for (default: the visible GPUs')
#          MAX_JOBS=N      parallel compile jobs (default: number of cores)
#          TIMM_BACKBONES_CACHE   cache root (default: ~/.cache/timm_backbones)
# A first CPU build compiles 77 C++ files: about 30 CPU-minutes.
set -euo pipefail

PY=${1:?usage: $0 PYTHON}
MMCV_VERSION=2.1.0
MMCV_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f
MMCV_URL=${MMCV_SDIST_URL:-https://files.pythonhosted.org/packages/a7/19/f97f0fd4d432113a232e75f965335be6b7bb6557ae9faf8051e9a012cadd/mmcv-${MMCV_VERSION}.tar.gz}
CACHE=${TIMM_BACKBONES_CACHE:-$HOME/.cache/timm_backbones}

die() { echo "build_mmcv_wheel: error: $*" >&2; exit 1; }
log() { echo "build_mmcv_wheel: $*" >&2; }

decision=$("$PY" "$(dirname "$0")/_install_decide.py") || die "cannot decide how to build (above)"
eval "$decision"
export FORCE_CUDA TORCH_CUDA_ARCH_LIST
if [ "$FORCE_CUDA" = 1 ]; then export CUDA_HOME; else export CUDA_VISIBLE_DEVICES; fi
variant=$MMCV_VARIANT
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
key="mmcv${MMCV_VERSION}-torch${MMCV_TORCH_VERSION}-${py_tag}-${variant}"
log "$MMCV_DECISION_REASON (cache key $key)"
dest="$CACHE/wheels/$key"

# 1. Cache hit: nothing to do. A CPU wheel cached by an earlier version of this script, under
#    the key without torch's local build tag (mmcv2.1.0-torch2.14.1-cp311-cpu), is a CPU wheel
#    too: reused for the CPU variant only.
cached=$(ls "$dest"/mmcv-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$cached" ] && [ "$variant" = cpu ]; then
  legacy="$CACHE/wheels/mmcv${MMCV_VERSION}-torch${MMCV_TORCH_VERSION%%+*}-${py_tag}-cpu"
  cached=$(ls "$legacy"/mmcv-*.whl 2>/dev/null | head -n 1 || true)
fi
if [ -n "$cached" ]; then
  log "using cached wheel $cached"
  echo "$cached"; exit 0
fi

# 2. Fetch and verify the source archive (pinned by hash).
work=$(mktemp -d "${TMPDIR:-/tmp}/mmcv-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "downloading mmcv ${MMCV_VERSION} source"
"$PY" - "$MMCV_URL" "$work/mmcv.tar.gz" <<'PYEOF' || die "could not download $MMCV_URL (set MMCV_SDIST_URL to a mirror, or MMCV_WHEEL to a prebuilt wheel)"
import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
PYEOF
echo "$MMCV_SHA256  $work/mmcv.tar.gz" | sha256sum -c --quiet - \
  || die "sha256 mismatch for the mmcv source archive (expected $MMCV_SHA256)"
tar -xzf "$work/mmcv.tar.gz" -C "$work"
src="$work/mmcv-${MMCV_VERSION}"

# 3. Patch setup.py (see the header for why); fail if the expected text is not there.
grep -q '^from pkg_resources import DistributionNotFound, get_distribution, parse_version$' "$src/setup.py" \
  || die "mmcv setup.py does not look like ${MMCV_VERSION}'s; refusing to patch it"
"$PY" - "$src/setup.py" <<'PYEOF'
import sys
path = sys.argv[1]
text = open(path).read()
shim = (
    "from importlib.metadata import PackageNotFoundError as DistributionNotFound\n"
    "from importlib.metadata import distribution as get_distribution\n"
    "from packaging.version import parse as parse_version\n")
text = text.replace(
    "from pkg_resources import DistributionNotFound, get_distribution, parse_version\n", shim)
text = text.replace("-std=c++17", "-std=c++20")
open(path, "w").write(text)
PYEOF

# 4. Build with mmcv's own setup.py against the installed torch.
export MMCV_WITH_OPS=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
log "compiling mmcv ${MMCV_VERSION} ops ($variant, MAX_JOBS=$MAX_JOBS); this takes about 30 CPU-minutes"
"$PY" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" "$src" >&2 \
  || die "the mmcv build failed (see the compiler output above)"
wheel=$(ls "$work"/dist/mmcv-*.whl 2>/dev/null | head -n 1)
[ -n "$wheel" ] || die "the build produced no wheel"
"$PY" -c 'import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(not any(n.startswith("mmcv/_ext") for n in names))' "$wheel" \
  || die "the built wheel has no compiled ops (mmcv/_ext); is torch installed in $PY's environment?"

# 5. Publish to the cache atomically: a killed build never leaves a partial wheel behind.
mkdir -p "$CACHE/wheels"
stage=$(mktemp -d "$CACHE/wheels/.partial.XXXXXX")
chmod 755 "$stage"
cp "$wheel" "$stage/"
mv -T "$stage" "$dest" 2>/dev/null || rm -rf "$stage"   # lost a race: another build published
cached=$(ls "$dest"/mmcv-*.whl | head -n 1)
log "cached $cached"
echo "$cached"
