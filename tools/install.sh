#!/usr/bin/env bash
# Install the pinned stack into the project's virtual environment (.venv by default):
# torch + torchvision, mmcv with its compiled ops (built once, cached outside the repo),
# mmengine, mmdet, timm, the test tools, the ONNX export extra (onnx, onnxscript, onnxruntime),
# mmsegmentation (timm_backbones.seg) and this package (editable).
#
# Idempotent: when the environment already matches requirements/constraints.txt and setup.py
# (recorded in a stamp file), it returns at once. If any step fails, the stamp is not written and
# the environment is reported incomplete; the next run resumes from where it stopped.
#
# Env: VENV (default .venv), PYTHON (interpreter for a new venv, default python3),
#      MMCV_WHEEL=/path/to/mmcv-2.1.0-...whl   use a prebuilt wheel (e.g. OpenMMLab's CUDA wheels)
#      FORCE_CUDA=1                              build mmcv's CUDA ops (needs nvcc)
#      TIMM_BACKBONES_CACHE                      where built wheels are cached
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
CONSTRAINTS=requirements/constraints.txt
stamp="$VENV/.timm_backbones-installed"
want=$(cat "$CONSTRAINTS" requirements/*.in setup.py tools/install.sh tools/build_mmcv_wheel.sh \
       | sha256sum | cut -c1-16)-${MMCV_WHEEL:-}-${FORCE_CUDA:-0}

log() { echo "install: $*" >&2; }
die() { echo "install: error: $*" >&2; exit 1; }

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$PY" ]; then
  exit 0    # already installed, same pins
fi
rm -f "$stamp"
trap '[ -f "$stamp" ] || echo "install: incomplete; rerun make install to resume" >&2' EXIT

start=$(date +%s)
# 1. The virtual environment.
[ -x "$PY" ] || { log "creating $VENV"; "${PYTHON:-python3}" -m venv "$VENV"; }
pip_install() { "$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" "$@"; }

# 2. torch first: mmcv's ops are compiled against it.
log "installing torch, torchvision and build tools"
pip_install -r requirements/torch.in

# 3. mmcv with compiled ops: a given wheel, else the cached build (built on first use).
if [ -n "${MMCV_WHEEL:-}" ]; then
  [ -f "$MMCV_WHEEL" ] || die "MMCV_WHEEL=$MMCV_WHEEL does not exist"
  wheel=$MMCV_WHEEL
else
  wheel=$(bash tools/build_mmcv_wheel.sh "$PY")
fi
log "installing mmcv from $wheel"
"$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" "$wheel"

# 4. The rest of the stack and this package.
log "installing mmengine, mmdet, mmsegmentation, timm, test tools and the export extra"
pip_install -r requirements/runtime.in -r requirements/export.in
"$PY" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .

# 5. Prove the stack imports (compiled ops included) before declaring success.
"$PY" -c "import mmdet.models, mmcv.ops, timm, timm_backbones; from mmcv.ops import nms, RoIAlign
import onnx, onnxscript, onnxruntime; import mmseg.models" \
  || die "the installed stack does not import"
echo "$want" > "$stamp"
log "done in $(( $(date +%s) - start ))s"
