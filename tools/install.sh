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
# GPU machines: when torch sees a GPU and nvcc is found (PATH, $CUDA_HOME/bin, /usr/local/cuda),
# mmcv's CUDA ops are built too, for the visible GPUs' compute capabilities, without being asked
# (tools/_install_decide.py decides; the decision and its inputs are part of the stamp).
#
# Env: VENV (default .venv), PYTHON (interpreter for a new venv, default python3),
#      MMCV_WHEEL=/path/to/mmcv-2.1.0-...whl   use a prebuilt wheel (e.g. OpenMMLab's CUDA wheels)
#      FORCE_CUDA=1 | 0                          insist on mmcv's CUDA ops (needs nvcc) | CPU ops
#                                                only (default: CUDA ops when a GPU is usable)
#      TORCH_CUDA_ARCH_LIST                      GPU architectures (default: the visible GPUs')
#      KEEP_TORCH=1                              keep PYTHON's own CUDA torch + torchvision (the
#                                                venv sees PYTHON's site-packages after its own)
#                                                instead of installing the pinned torch
#      TIMM_BACKBONES_CACHE                      where built wheels are cached
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
CONSTRAINTS=requirements/constraints.txt
stamp="$VENV/.timm_backbones-installed"
BASE_PY=${PYTHON:-python3}
KEEP_TORCH=${KEEP_TORCH:-0}
case "$KEEP_TORCH" in 0|1) ;; *) echo "install: error: KEEP_TORCH=$KEEP_TORCH: use 1 (keep" \
  "$BASE_PY's CUDA torch) or 0 (install the pinned torch, the default)" >&2; exit 1;; esac
# What the mmcv build decision depends on, read without importing torch (so that an installed
# environment is recognised in well under a second): the settings, the nvcc found, the GPU
# device nodes and the torch distribution in the environment.
want_key() {
  local nvcc_path torch_dist inputs
  nvcc_path=$(command -v nvcc || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/nvcc 2>/dev/null || true)
  torch_dist=$([ -x "$PY" ] && "$PY" -c 'import importlib.metadata as m
print(m.version("torch"))' 2>/dev/null || true)
  inputs="force=${FORCE_CUDA:-auto};arch=${TORCH_CUDA_ARCH_LIST:-};keep=$KEEP_TORCH;nvcc=$nvcc_path"
  inputs+=";gpus=$(ls /dev/nvidia[0-9]* 2>/dev/null | tr '\n' ,)"
  inputs+=";visible=${CUDA_VISIBLE_DEVICES-all}"
  inputs+=";torch=$torch_dist"
  local files
  files=$(cat requirements/constraints.txt requirements/*.in setup.py tools/install.sh \
          tools/build_mmcv_wheel.sh tools/_install_decide.py | sha256sum | cut -c1-16)
  echo "$files-${MMCV_WHEEL:-}-$(echo "$inputs" | sha256sum | cut -c1-16)"
}
want=$(want_key)

log() { echo "install: $*" >&2; }
die() { echo "install: error: $*" >&2; exit 1; }

if [ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$want" ] && [ -x "$PY" ]; then
  exit 0    # already installed, same pins, same mmcv build decision
fi
rm -f "$stamp"
trap '[ -f "$stamp" ] || echo "install: incomplete; rerun make install to resume" >&2' EXIT

start=$(date +%s)
# 1. The virtual environment (KEEP_TORCH=1: one that also sees $BASE_PY's torch + torchvision).
torch_in=requirements/torch.in
[ -x "$PY" ] || { log "creating $VENV"; "$BASE_PY" -m venv "$VENV"; }
if [ "$KEEP_TORCH" = 1 ]; then
  "$BASE_PY" -c 'import sys, torch, torchvision; sys.exit(0 if torch.version.cuda else 3)' \
    || die "KEEP_TORCH=1 keeps the CUDA torch of $BASE_PY, but it has no CUDA build of torch and \
torchvision; point PYTHON= at an interpreter that has them, or drop KEEP_TORCH for the pinned torch"
  version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
  [ "$(version "$PY")" = "$(version "$BASE_PY")" ] || die "$VENV is Python $(version "$PY"), \
$BASE_PY is $(version "$BASE_PY"): KEEP_TORCH=1 needs the same; remove $VENV and rerun"
  # a .pth file puts $BASE_PY's site-packages after the venv's own (the venv's packages win);
  # unlike --system-site-packages it also works when $BASE_PY is itself a venv
  base_site=$("$BASE_PY" -c 'import sysconfig; p = sysconfig.get_paths()
print("\n".join(dict.fromkeys([p["purelib"], p["platlib"]])))')
  venv_site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$base_site" > "$venv_site/_timm_backbones_kept_torch.pth"
  if [ -d "$venv_site/torch" ]; then  # a pinned torch installed earlier would shadow the kept one
    log "removing the venv's own torch and torchvision (KEEP_TORCH=1)"
    "$PY" -m pip uninstall --disable-pip-version-check -q -y torch torchvision
  fi
  # pins without torch/torchvision (the kept ones satisfy timm, mmdet and mmengine as they are)
  grep -viE '^(torch|torchvision)==' requirements/constraints.txt > "$VENV/.constraints-kept-torch"
  grep -viE '^(torch|torchvision)([^a-z_-]|$)' requirements/torch.in > "$VENV/.torch-kept.in"
  CONSTRAINTS="$VENV/.constraints-kept-torch"; torch_in="$VENV/.torch-kept.in"
else
  venv_site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -f "$venv_site/_timm_backbones_kept_torch.pth"  # left by an earlier KEEP_TORCH=1
fi
pip_install() { "$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" "$@"; }

# 2. torch first: mmcv's ops are compiled against it (KEEP_TORCH=1: only the build tools).
if [ "$KEEP_TORCH" = 1 ]; then
  log "keeping $("$PY" -c 'import torch; print("torch", torch.__version__)') from $BASE_PY;" \
      "installing the build tools"
else
  log "installing torch, torchvision and build tools"
fi
pip_install -r "$torch_in"

# The mmcv build decision (CPU or CUDA ops), with torch installed; build_mmcv_wheel.sh takes
# the same decision from the same script. Read as DECIDED_*: the user's settings stay as given.
decision=$("$PY" tools/_install_decide.py) || die "cannot decide how to build mmcv (above)"
eval "$(sed 's/^/DECIDED_/' <<< "$decision")"
log "mmcv: $DECIDED_MMCV_DECISION_REASON"

# 3. mmcv with compiled ops: a given wheel, else the cached build (built on first use).
if [ -n "${MMCV_WHEEL:-}" ]; then
  [ -f "$MMCV_WHEEL" ] || die "MMCV_WHEEL=$MMCV_WHEEL does not exist"
  wheel=$MMCV_WHEEL
  log "MMCV_WHEEL given: not building mmcv (the decision above is not applied to it)"
else
  wheel=$(bash tools/build_mmcv_wheel.sh "$PY")
fi
log "installing mmcv from $wheel"
# forced: the same version may be installed from another build (CPU / CUDA ops), which pip
# would keep; its dependencies come with step 4 (mmengine, opencv-python)
"$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" --no-deps --force-reinstall \
  "$wheel"

# 4. The rest of the stack and this package.
log "installing mmengine, mmdet, mmsegmentation, timm, test tools and the export extra"
pip_install -r requirements/runtime.in -r requirements/export.in
"$PY" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .

# 5. Prove the stack imports (compiled ops included) before declaring success.
"$PY" -c "import mmdet.models, mmcv.ops, timm, timm_backbones; from mmcv.ops import nms, RoIAlign
import onnx, onnxscript, onnxruntime; import mmseg.models" \
  || die "the installed stack does not import"
cuda_ops=$("$PY" -c 'from mmcv.ops import get_compiling_cuda_version as v; print(v())')
if [ "$DECIDED_FORCE_CUDA" = 1 ] && [ "$cuda_ops" = "not available" ]; then
  msg="the installed mmcv has no CUDA ops though they were wanted ($DECIDED_MMCV_DECISION_REASON)"
  [ -n "${MMCV_WHEEL:-}" ] && log "warning: $msg; MMCV_WHEEL=$MMCV_WHEEL is a CPU build" \
    || die "$msg; remove the cached wheel of this key and rerun, or set FORCE_CUDA=0"
fi
log "mmcv CUDA ops: $cuda_ops"
want=$(want_key)  # torch is installed now: its version is one of the inputs
printf '%s\nmmcv: %s torch%s %s (CUDA ops: %s)\n' "$want" "$DECIDED_MMCV_VARIANT" \
  "$DECIDED_MMCV_TORCH_VERSION" "${MMCV_WHEEL:-built}" "$cuda_ops" > "$stamp"
log "done in $(( $(date +%s) - start ))s"
