#!/usr/bin/env bash
# One call on a GPU machine, under 8 minutes: install what it lacks from carried wheels, build the
# C++ extension, run the GPU parity tests, then the benchmarks, and write the pytest-benchmark JSON
# files and the report (report.md, report.png) to the output folder.
#
#   bash benchmarks/gpu_run.sh [OUT_DIR]      # default: $OUT, else out/gpu
#
# Expects /work/shared/wheels copied to .whl/ (DeepSpeed and its missing dependencies; see
# /work/shared/wheels/README.md). Every phase has its own timeout (SIGINT first, so pytest still
# writes the JSON of what it measured) and all share a budget counted from the start
# (GPU_RUN_BUDGET seconds, 400 by default), so a hang in one phase still leaves the others'
# results. Results to commit go under benchmarks/results/<device>/ (benchmarks/results/README.md).
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-out/gpu}}
mkdir -p "$OUT_DIR"
START=$(date +%s)
BUDGET=${GPU_RUN_BUDGET:-400}

log() { echo "[gpu_run +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT_DIR/gpu_run.log"; }

# phase NAME CAP_SECONDS CMD...: run CMD with min(CAP, budget left) seconds, log to OUT/NAME.log.
phase() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 15 )); then log "SKIP $name: the ${BUDGET}s budget is spent"; return 0; fi
  log "START $name (timeout ${limit}s)"
  timeout -s INT -k 20 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  log "END $name rc=$rc$( (( rc == 124 || rc == 137 )) && echo ' (TIMED OUT)')"
  tail -n 30 "$OUT_DIR/$name.log"
  return 0
}

# 1. Wheels DeepSpeed needs (the benchmarks themselves do not import it).
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >> "$OUT_DIR/install.log" 2>&1 && log "wheels installed" \
    || log "wheel install FAILED (see install.log)"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
else
  log "no .whl/ folder: DeepSpeed is not installed (GPU tests that need it will skip or fail)"
fi

# 2. The package and its C++ extension: an editable install; without setuptools, the package
#    from the source tree and the extension via c++.
build_fallback() {
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  if ls csrc/*.cpp > /dev/null 2>&1; then
    local suffix
    suffix=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
    c++ -O3 -shared -fPIC -std=c++17 -pthread -Icsrc $(python3 -m pybind11 --includes) \
      csrc/*.cpp -o "lxmert_fast/_featstore$suffix" >> "$OUT_DIR/build.log" 2>&1
  fi
}
log "START build"
if [ "${GPU_RUN_SKIP_BUILD:-0}" = 1 ]; then
  log "END build: skipped (GPU_RUN_SKIP_BUILD=1, the package is installed)"
elif timeout 150 python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    > "$OUT_DIR/build.log" 2>&1; then
  log "END build: editable install"
else
  log "editable install failed (see build.log); building in place"
  build_fallback && log "END build: in-place fallback" || log "build FAILED (see build.log)"
fi
python3 - <<'EOF' 2>&1 | tee "$OUT_DIR/device.json"
import json
from benchmarks.common import device_info
print(json.dumps(device_info(), indent=1))
EOF
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1

# 3. GPU parity tests, then the benchmarks (one JSON per phase so a timeout loses only its own).
phase parity 90 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider
BENCH=(python3 -m pytest -q -rs -p no:cacheprovider --benchmark-only --benchmark-columns=min,median,mean,rounds)
phase bench_train 150 "${BENCH[@]}" benchmarks/test_model_bench.py -k pretrain \
  --benchmark-json "$OUT_DIR/bench_train.json"
phase bench_launch 120 "${BENCH[@]}" benchmarks/test_launch_cost_bench.py \
  --benchmark-json "$OUT_DIR/bench_launch.json"
phase bench_kernels 60 "${BENCH[@]}" benchmarks/test_kernels_bench.py \
  --benchmark-json "$OUT_DIR/bench_kernels.json"
phase bench_infer 60 "${BENCH[@]}" benchmarks/test_model_bench.py -k inference \
  --benchmark-json "$OUT_DIR/bench_infer.json"
phase bench_data 120 "${BENCH[@]}" benchmarks/test_data_bench.py -k gpu_step \
  --benchmark-json "$OUT_DIR/bench_data.json"
if [ -f benchmarks/test_features_bench.py ]; then
  phase bench_features 30 "${BENCH[@]}" benchmarks/test_features_bench.py \
    --benchmark-json "$OUT_DIR/bench_features.json"
fi

# 4. The report over whatever JSON the phases left (outside the budget: it takes seconds).
JSONS=$(ls "$OUT_DIR"/bench_*.json 2> /dev/null)
if [ -n "$JSONS" ]; then
  timeout 30 python3 -m benchmarks.report $JSONS --out "$OUT_DIR" > "$OUT_DIR/report.log" 2>&1
  log "report rc=$?"; cat "$OUT_DIR/report.log"
else
  log "no benchmark JSON was written"
fi
log "done"
