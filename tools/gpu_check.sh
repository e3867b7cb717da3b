#!/usr/bin/env bash
# The GPU checks of timm_backbones in two stages, for a CUDA machine that reaches no package
# registry (docs/_gpu_readme_snippet.md; GPU_FACTS.md): everything it lacks travels in the
# git-ignored .gpu/ folder (wheels in .gpu/wheels, mmcv's source archive .gpu/mmcv-2.1.0.tar.gz).
#
#   bash tools/gpu_check.sh build        # mmcv 2.1.0 with CUDA ops -> .gpu/cache (399 s on an H200)
#   bash tools/gpu_check.sh test [bench] # wheels -> /tmp/site, pytest -m gpu tests/test_gpu.py
#                                        # (bench: then tools/benchmark.py --only gpu --quick)
#
# Results go to $OUT (or .gpu/out): pytest's log and JUnit XML, gpu_results.json (every number the
# tests measured), the benchmark's markdown and JSON, the machine's versions.
# Env: TEST_BUDGET_S (default 330: the pytest run is stopped after it), TORCH_CUDA_ARCH_LIST
#      (default 9.0, the H200), MAX_JOBS (default 15), PYTHON (default python3); for a dry run
#      elsewhere: TIMM_BACKBONES_CACHE (default .gpu/cache), GPU_WHEELS (default .gpu/wheels).
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: $0 build | test [bench]}
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/.gpu/out}
SITE=/tmp/site
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
export TIMM_BACKBONES_CACHE=${TIMM_BACKBONES_CACHE:-$PWD/.gpu/cache}
WHEELS=${GPU_WHEELS:-$PWD/.gpu/wheels}
log() { echo "gpu_check: $*" >&2; }
die() { echo "gpu_check: error: $*" >&2; exit 1; }

versions() {
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    nvcc --version | tail -n 2 || true
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))'
  } > "$OUT/versions_$stage.txt" 2>&1
  cat "$OUT/versions_$stage.txt" >&2
}

case "$stage" in
build)
  versions
  archive=$PWD/.gpu/mmcv-2.1.0.tar.gz
  [ -f "$archive" ] || die "$archive is missing: carry .gpu (see docs/_gpu_readme_snippet.md)"
  start=$(date +%s)
  wheel=$(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-15} \
          MMCV_SDIST_URL=file://$archive bash tools/build_mmcv_wheel.sh "$PY" 2> "$OUT/build.log")
  rc=$?
  tail -n 30 "$OUT/build.log" >&2
  [ $rc = 0 ] || die "the mmcv build failed (rc $rc; $OUT/build.log)"
  echo "$wheel" > .gpu/mmcv_wheel_path
  log "built $wheel in $(( $(date +%s) - start ))s"
  ;;
test)
  versions
  wheel=$(ls "$TIMM_BACKBONES_CACHE"/wheels/*cuda*/mmcv-*.whl 2>/dev/null | head -n 1)
  [ -n "$wheel" ] || die "no CUDA mmcv wheel in $TIMM_BACKBONES_CACHE: run the build stage \
first, on this machine, and this stage within 30 s of it (the machine keeps .gpu/cache only while warm)"
  rm -rf "$SITE"
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$SITE" \
    $(ls "$WHEELS"/*.whl | grep -v '/setuptools-') "$wheel" || die "installing the wheels failed"
  if ! "$PY" -c 'import pkg_resources' 2>/dev/null; then  # mmengine's mmdet:: lookup needs it
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$SITE" \
      "$WHEELS"/setuptools-*.whl || die "installing setuptools failed"
  fi
  export PYTHONPATH=$SITE:$PWD
  "$PY" -c 'import mmcv, mmdet, mmengine, timm, timm_backbones
from mmcv.ops import get_compiling_cuda_version as v, RoIAlign, nms
print("mmcv", mmcv.__version__, "CUDA ops", v(), "mmdet", mmdet.__version__, "timm",
      timm.__version__)' 2>&1 | tee -a "$OUT/versions_test.txt" || die "the stack does not import"
  export GPU_RESULTS_DIR=$OUT
  deadline=$(( $(date +%s) + ${TEST_BUDGET_S:-330} ))
  # the demo data once, before parallel runs read it (tests/test_layout_effect.py, the AMP demo)
  "$PY" -c "from timm_backbones.data import make_synthetic_coco as m
m('data/synthetic_shapes/', num_train=400, num_val=100, img_size=(256, 256), seed=0)" \
    || die "generating the demo data failed"
  start=$(date +%s)
  # the layout contract's effect (slow tests: two trainings on the demo data) beside the GPU tests
  ( timeout $(( deadline - $(date +%s) )) "$PY" -m pytest -m slow tests/test_layout_effect.py \
      -q -s -p no:cacheprovider --timeout 600 > "$OUT/effect.log" 2>&1 ) &
  effect=$!
  # pytest-xdist ships on the GPU image: the GPU tests in parallel processes
  nproc_x=$("$PY" -c 'import xdist' 2>/dev/null && echo "-n 6" || true)
  timeout $(( deadline - $(date +%s) )) "$PY" -m pytest -m gpu tests/test_gpu.py \
    tests/test_mmcv_layout.py -q -rA -p no:cacheprovider --timeout 300 $nproc_x \
    > "$OUT/pytest.log" 2>&1
  rc=$?
  tail -n 40 "$OUT/pytest.log" >&2
  wait $effect; erc=$?
  tail -n 15 "$OUT/effect.log" >&2
  log "pytest: rc $rc, effect: rc $erc, in $(( $(date +%s) - start ))s"
  left=$(( ${BENCH_DEADLINE:-0} - $(date +%s) ))
  if [ "${2:-}" = bench ] && [ "$left" -gt 60 ]; then
    timeout "$left" "$PY" tools/benchmark.py --device cuda --only gpu --quick \
      --markdown "$OUT/benchmarks_gpu.md" --json "$OUT/benchmarks_gpu.json" 2>&1 \
      | tail -n 60 | tee "$OUT/benchmark.log"
  fi
  [ $rc = 0 ] && [ $erc = 0 ]
  rc=$?
  exit $rc
  ;;
*) die "unknown stage '$stage': use build or test";;
esac
