#!/usr/bin/env bash
# GPU check (issue 14): on a bare CUDA machine without network, install what is missing from .whl/, record the
# machine, run the GPU tests, run the benchmark in the issue's configuration and print its targets vs measured.
#
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR]      # default: $OUT if set, else benchmarks/results/
#
# Before (with network): bash benchmarks/fetch_gpu_wheels.sh   # Python 3.12 wheels into .whl/ (git-ignored)
#
# Everything fits in GPU_CHECK_TOTAL_S (default 480 s): each step runs under `timeout` with what is left of that
# budget, capped by its own share, so a slow step costs only itself. The benchmark runs one part per process
# (model with --compile, loader with --gpu_decode, end to end, inference), each writing its own JSON, so a timeout
# loses one part only; the parts are merged into bench_gpu.json and the issue's targets are printed as a table.
#
# Written to OUTPUT_DIR: gpu_check.log (this script's output), install.log, nvidia-smi.txt, versions.json,
# pytest_gpu.log + pytest_gpu.xml, bench_<part>.log/.json, bench_gpu.json, targets.txt.
#
# Environment knobs (defaults in brackets):
#   GPU_CHECK_TOTAL_S [480]  GPU_CHECK_PYTEST_S [160]  GPU_CHECK_TEST_TIMEOUT_S [150, per test]
#   SKIP_PYTEST=1 / SKIP_BENCH=1         skip a step
#   BENCH_PARTS ["model loader e2e inference"]   BENCH_COMPILE [1]   BENCH_GPU_DECODE [auto]
#   BENCH_DEVICE [cuda]  BENCH_SIZE ["--model resnet --model_depth 50 --batch_size 64 --sample_duration 16
#     --sample_size 112 --workers 4 16"]  BENCH_TIMING ["--warmup 3 --steps 10 --loader_steps 8 --repeats 3"]
#   BENCH_DATA ["--videos_per_class 128 --n_frames 20"]: the benchmark's synthetic photo-like 320x240 JPEG
#     dataset (512 training videos = 8 batches of 64 per epoch; a loader never has more batches in flight than
#     an epoch has), generated on the CPU while the tests run and cached under BENCH_DATA_DIR
#   GPU_CHECK_TINY=1   plumbing dry run on a CPU: tiny benchmark settings on the CPU, no compile
#   WHEEL_DIR [.whl]   PYTHON [python]
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT_DIR=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-python}
WHEEL_DIR=${WHEEL_DIR:-.whl}
TOTAL_S=${GPU_CHECK_TOTAL_S:-480}
START=$(date +%s)
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"

log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
# Seconds a step may take: its cap, or what is left of the total budget (minus a few seconds), whichever is less.
budget() { local cap=$1 left=$(( TOTAL_S - ($(date +%s) - START) - 5 )); echo $(( cap < left ? cap : left )); }
# run_step NAME CAP_S COMMAND...: run under timeout, output to NAME.log, never stop the script.
run_step() {
  local name=$1 cap=$2 secs rc
  shift 2
  secs=$(budget "$cap")
  if (( secs < 15 )); then log "$name: skipped (only ${secs}s of the ${TOTAL_S}s budget left)"; return 99; fi
  log "$name: start (timeout ${secs}s): $*"
  timeout -k 10 "$secs" "$@" > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  if (( rc == 124 || rc == 137 )); then log "$name: TIMED OUT after ${secs}s (see $name.log)"
  else log "$name: exit $rc (see $name.log)"; fi
  tail -n 5 "$OUT_DIR/$name.log" | sed 's/^/    /' | tee -a "$LOG"
  return $rc
}

# 1. Install what is missing (import name:distribution), never touching torch (--no-deps, no index).
install_missing() {
  local pairs=(av:av simplejpeg:simplejpeg h5py:h5py tqdm:tqdm pytest:pytest pytest_timeout:pytest-timeout
               pluggy:pluggy iniconfig:iniconfig packaging:packaging pygments:pygments numpy:numpy PIL:pillow)
  local missing=() pair
  for pair in "${pairs[@]}" ${GPU_CHECK_EXTRA_PACKAGES:-}; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
  done
  if (( ${#missing[@]} == 0 )); then log "install: nothing missing"; return 0; fi
  if [[ ! -d $WHEEL_DIR ]]; then log "install: missing ${missing[*]} but no $WHEEL_DIR/ (run fetch_gpu_wheels.sh)"
    return 1; fi
  run_step install 90 "$PY" -m pip install --no-index --find-links "$WHEEL_DIR" --no-deps "${missing[@]}"
}

# 2. The machine and the versions of everything that matters for the numbers.
record_environment() {
  if command -v nvidia-smi > /dev/null; then
    timeout 30 nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1
    timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit,mig.mode.current \
      --format=csv >> "$OUT_DIR/nvidia-smi.txt" 2>&1
  else
    echo "nvidia-smi not found" > "$OUT_DIR/nvidia-smi.txt"
  fi
  timeout 60 "$PY" - "$OUT_DIR/versions.json" << 'EOF' 2>&1 | tee -a "$LOG"
import importlib, json, os, platform, shutil, subprocess, sys
info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "c_compiler": shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")}  # triton builds need one
for name in ("torch", "torchvision", "triton", "cv2", "av", "simplejpeg", "h5py", "numpy", "PIL", "tqdm", "pytest"):
    try:
        info[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as e:  # noqa: BLE001 - record why, keep going
        info[name] = f"unavailable ({type(e).__name__}: {e})"[:200]
try:
    import torch
    info.update(cuda_available=torch.cuda.is_available(), torch_cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), devices=[torch.cuda.get_device_name(i)
                                                               for i in range(torch.cuda.device_count())])
except Exception as e:  # noqa: BLE001
    info["torch_error"] = str(e)[:200]
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info))
EOF
}

# 3. The GPU tests.
run_pytest() {
  # -v: every test's verdict is in the log as it happens, even if the step times out
  run_step pytest_gpu "${GPU_CHECK_PYTEST_S:-160}" "$PY" -m pytest -m gpu -v -ra -p no:cacheprovider \
    --continue-on-collection-errors --timeout "${GPU_CHECK_TEST_TIMEOUT_S:-150}" --junitxml "$OUT_DIR/pytest_gpu.xml"
}

# 4. The benchmark, one part per process; the model part is retried without --compile if compiling fails.
MODULE=util_scripts.benchmark
DEVICE=${BENCH_DEVICE:-cuda} COMPILE=${BENCH_COMPILE:-1} GPU_DECODE=${BENCH_GPU_DECODE:-auto}
SIZE=${BENCH_SIZE:---model resnet --model_depth 50 --batch_size 64 --sample_duration 16 --sample_size 112 \
--workers 4 16}
TIMING=${BENCH_TIMING:---warmup 3 --steps 10 --loader_steps 8 --repeats 3}
DATA=${BENCH_DATA:---videos_per_class 128 --n_frames 20}
DATA_DIR=${BENCH_DATA_DIR:-${TMPDIR:-/tmp}/3dcnn_benchmark}
if [[ ${GPU_CHECK_TINY:-0} == 1 ]]; then
  DEVICE=cpu COMPILE=0
  SIZE="--model resnet --model_depth 10 --batch_size 2 --sample_duration 4 --sample_size 32 --workers 1 2"
  TIMING="--warmup 1 --steps 1 --loader_steps 2 --repeats 2"
  DATA="--videos_per_class 2 --n_frames 8"
fi

# The benchmark's dataset, written in the background while the tests run (a throw-away CPU run of a tiny
# model on the same data options fills the cache; the real runs then find it ready).
PREP_PID=
start_data_prep() {
  # shellcheck disable=SC2086  # word splitting of the option string is intended
  timeout -k 10 "$(budget 300)" "$PY" -m "$MODULE" --device cpu --parts model --model_depth 10 --batch_size 2 \
    --sample_duration 4 --sample_size 32 --steps 1 --warmup 0 --repeats 1 $DATA --data_dir "$DATA_DIR" \
    --output "$OUT_DIR/data_prep.json.tmp" > "$OUT_DIR/data_prep.log" 2>&1 &
  PREP_PID=$!
  log "data_prep: generating the benchmark dataset in the background (pid $PREP_PID, see data_prep.log)"
}

wait_data_prep() {
  [[ -n $PREP_PID ]] || return 0
  local rc timing
  wait "$PREP_PID"
  rc=$?
  timing=$(grep -o '"prepare_s": [0-9.]*' "$OUT_DIR/data_prep.json.tmp" 2>/dev/null || echo "no timing")
  log "data_prep: exit $rc ($timing)"
  rm -f "$OUT_DIR/data_prep.json.tmp"
}

run_bench() {
  local parts part flags rc
  local module=$MODULE device=$DEVICE compile=$COMPILE gpu_decode=$GPU_DECODE size=$SIZE timing=$TIMING data=$DATA
  read -r -a parts <<< "${BENCH_PARTS:-model loader e2e inference}"
  # cap per part: model (dataset generation + compilation) > end to end > inference > loader
  declare -A caps=([model]=150 [loader]=60 [e2e]=70 [inference]=50)
  rm -f "$OUT_DIR"/bench_*.json
  for part in "${parts[@]}"; do
    # shellcheck disable=SC2206  # word splitting of the flag strings is intended
    flags=(--device "$device" --parts "$part" $size $timing $data --gpu_decode "$gpu_decode"
           --data_dir "$DATA_DIR" --output "$OUT_DIR/bench_$part.json")
    if [[ $part == model && $compile == 1 ]]; then
      run_step "bench_$part" "${caps[$part]}" "$PY" -m "$module" "${flags[@]}" --compile
      rc=$?
      if (( rc != 0 && rc != 124 && rc != 137 && rc != 99 )); then
        log "bench_model: --compile failed (exit $rc); measuring eager only"
        run_step "bench_${part}_eager" 90 "$PY" -m "$module" "${flags[@]}"
      fi
    else
      run_step "bench_$part" "${caps[$part]:-90}" "$PY" -m "$module" "${flags[@]}"
    fi
  done
}

# 5. Merge the parts and print the issue's targets against what was measured.
summarize() {
  timeout 60 "$PY" - "$OUT_DIR" << 'EOF' 2>&1 | tee "$OUT_DIR/targets.txt" | tee -a "$LOG"
import glob, importlib, json, os, sys
out = sys.argv[1]
report_lib = importlib.import_module("benchmarks.report")
reports = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "bench_*.json")))
           if not p.endswith("bench_gpu.json")]
if not reports:
    sys.exit("no benchmark results to summarize")
merged = {k: v for k, v in reports[0].items() if k not in ("parts", "targets")}
merged["parts"] = {name: part for r in reports for name, part in r["parts"].items()}
merged["elapsed_s"] = sum(r.get("elapsed_s", 0) for r in reports)
merged["targets"] = report_lib.summarize_targets(merged)
json.dump(merged, open(os.path.join(out, "bench_gpu.json"), "w"), indent=2)
print(report_lib.format_table(merged))
s = merged["settings"]
print(f"\nsettings: {s['model']}-{s['model_depth']}, {s['sample_duration']}x{s['sample_size']}x{s['sample_size']}, "
      f"batch {s['batch_size']}, workers {s['workers']}, compile {s['compile']}, device {merged['device']}")
expected = [("model_fast_vs_fp32", "model only, best fast (compile) vs fp32 eager", ">= 1.8"),
            ("peak_memory_fast_over_fp32", "peak memory, bf16 over fp32", "<= 0.6")]
expected += [(f"loader_per_worker_{w}w", f"loader clips/s per worker, {w} workers, vs original", ">= 2.0")
             for w in s["workers"]]
expected += [("e2e_over_model_only", "end to end over model only", ">= 0.9"),
             ("e2e_fast_vs_original", "end to end vs original-style", ">= 3.0")]
rows = [("target", "goal", "measured", "verdict")]
for key, label, goal in expected:
    t = merged["targets"].get(key)
    rows.append((label, goal, "-" if t is None else f"{t['value']:.2f}",
                 "not measured" if t is None else ("met" if t["met"] else "NOT met")))
widths = [max(len(r[i]) for r in rows) for i in range(4)]
print("\nissue 14 targets:")
for r in rows:
    print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
print(f"\nwrote {os.path.join(out, 'bench_gpu.json')}")
EOF
}

log "output: $OUT_DIR (budget ${TOTAL_S}s, python $(command -v "$PY"))"
install_missing
record_environment
if [[ ${SKIP_BENCH:-0} != 1 ]]; then start_data_prep; fi
if [[ ${SKIP_PYTEST:-0} != 1 ]]; then run_pytest; fi
if [[ ${SKIP_BENCH:-0} != 1 ]]; then wait_data_prep; run_bench; summarize; fi
log "done in $(( $(date +%s) - START ))s"
