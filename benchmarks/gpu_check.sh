#!/usr/bin/env bash
# GPU check: on a bare CUDA machine without network, install what is missing from .whl/, record the machine, run
# the GPU tests, run the benchmark in the issues' configuration and print every target against what was measured.
#
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR]      # default: $OUT if set, else benchmarks/results/
#
# Before (with network): bash benchmarks/fetch_gpu_wheels.sh   # Python 3.12 wheels into .whl/ (git-ignored)
#
# Everything fits in GPU_CHECK_TOTAL_S (default 300 s): each step runs under `timeout` with what is left of that
# budget, capped by its own share, so a slow step costs only itself. The benchmark runs one part per process, each
# writing its own JSON, so a timeout loses one part only; the parts are merged into bench_gpu.json and every target
# is printed with its goal, the value measured and met / NOT met (or not measured) in targets.txt. Parts, in order:
#   model         model only: fp32 eager, bf16 + channels_last_3d, and compiled (retried eager if compiling fails)
#   main          `python main.py` training, eager: steady-state clips/s, time to first optimiser step
#   main_video    the same with --file_type video on the dataset's training videos as a prepare_videos mp4 copy
#   main_compile  the same with --compile (its graphs come from the model part through the shared compile cache)
#   predict       `main.py --predict` on a 60-s 1080p H.264 video made on the machine: s of video/s, peak RSS
#   e2e           train_one_epoch fed by the fast loader vs the original-style loader
#   inference     sliding-window inference, original vs fast
#   loader        loader only, 4 and 16 workers, original vs fast (and nvjpeg when torchvision is there)
# The dataset, the main parts' long epoch, main_video's mp4 copy, the predict video and its checkpoint are written
# in the background while the tests run (`python -m util_scripts.benchmark --prepare`).
#
# Written to OUTPUT_DIR: gpu_check.log (this script's output), install.log, nvidia-smi.txt, versions.json,
# pytest_gpu.log + pytest_gpu.xml, data_prep*.log, bench_<part>.log/.json, bench_gpu.json, targets.txt.
#
# Environment knobs (defaults in brackets):
#   GPU_CHECK_TOTAL_S [300]  GPU_CHECK_PYTEST_S [60]  GPU_CHECK_TEST_TIMEOUT_S [50, per test]
#   SKIP_PYTEST=1 / SKIP_BENCH=1         skip a step
#   BENCH_PARTS ["model main main_video main_compile predict e2e inference loader"]  BENCH_COMPILE [1]
#   BENCH_GPU_DECODE [auto]
#   BENCH_DEVICE [cuda]  BENCH_SIZE ["--model resnet --model_depth 50 --batch_size 64 --sample_duration 16
#     --sample_size 112 --workers 4 16"]  BENCH_TIMING ["--warmup 3 --steps 10 --loader_steps 4 --repeats 2"]
#   BENCH_DATA ["--videos_per_class 128 --n_frames 20"]: the benchmark's synthetic photo-like 320x240 JPEG
#     dataset (512 training videos = 8 batches of 64 per epoch; a loader never has more batches in flight than
#     an epoch has), cached under BENCH_DATA_DIR [${TMPDIR:-/tmp}/3dcnn_benchmark]
#   BENCH_EPOCH_VIDEOS [4096]: clips in the main parts' epoch (64 batches of 64: as many as 16 workers keep in
#     flight, so the steady-state window, from batch 16 on, is fed at the loader's own pace)
#   BENCH_PREDICT_SECONDS [60]: length of the predict part's 1080p video
#   TORCHINDUCTOR_CACHE_DIR [BENCH_DATA_DIR/inductor_cache]: the compile cache every part and main.py run share
#   GPU_CHECK_TINY=1   dry run on a CPU: every part at tiny sizes on the CPU, no compile (minutes on 2 cores)
#   WHEEL_DIR [.whl]   PYTHON [python, else python3]
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT_DIR=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-$(command -v python || command -v python3)}  # bare machines may have only python3
WHEEL_DIR=${WHEEL_DIR:-.whl}
TOTAL_S=${GPU_CHECK_TOTAL_S:-300}
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
  run_step pytest_gpu "${GPU_CHECK_PYTEST_S:-60}" "$PY" -m pytest -m gpu -v -ra -p no:cacheprovider \
    --continue-on-collection-errors --timeout "${GPU_CHECK_TEST_TIMEOUT_S:-50}" --junitxml "$OUT_DIR/pytest_gpu.xml"
}

# 4. The benchmark, one part per process; the model part is retried without --compile if compiling fails.
MODULE=util_scripts.benchmark
DEVICE=${BENCH_DEVICE:-cuda} COMPILE=${BENCH_COMPILE:-1} GPU_DECODE=${BENCH_GPU_DECODE:-auto}
SIZE=${BENCH_SIZE:---model resnet --model_depth 50 --batch_size 64 --sample_duration 16 --sample_size 112 \
--workers 4 16}
TIMING=${BENCH_TIMING:---warmup 3 --steps 10 --loader_steps 4 --repeats 2}
DATA=${BENCH_DATA:---videos_per_class 128 --n_frames 20}
EPOCH_VIDEOS=${BENCH_EPOCH_VIDEOS:-4096}
PREDICT_SECONDS=${BENCH_PREDICT_SECONDS:-60}
DATA_DIR=${BENCH_DATA_DIR:-${TMPDIR:-/tmp}/3dcnn_benchmark}
if [[ ${GPU_CHECK_TINY:-0} == 1 ]]; then
  DEVICE=cpu COMPILE=0
  SIZE="--model resnet --model_depth 10 --batch_size 2 --sample_duration 4 --sample_size 32 --workers 1 2"
  TIMING="--warmup 1 --steps 1 --loader_steps 2 --repeats 2"
  DATA="--videos_per_class 2 --n_frames 8"
  EPOCH_VIDEOS=24 PREDICT_SECONDS=2
fi
# One compile cache for every part and main.py run: the graphs the model part compiles are loaded by the others.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$DATA_DIR/inductor_cache}
read -r -a PARTS <<< "${BENCH_PARTS:-model main main_video main_compile predict e2e inference loader}"
# Seconds each part may take at most (the shared budget may leave less): compiling (model, main_compile) costs most.
declare -A CAPS=([model]=75 [main]=40 [main_video]=40 [main_compile]=60 [predict]=35 [e2e]=35 [inference]=25
                 [loader]=35)

# The benchmark's data, written in the background while the tests run: the JPEG dataset (with the main parts' long
# epoch and main_video's prepared mp4 copy) in one process, the predict part's video and checkpoint in another; the
# parts then find them ready.
PREP_PIDS=()
start_data_prep() {
  local common
  # shellcheck disable=SC2206  # word splitting of the option strings is intended
  common=(--prepare --device cpu $SIZE $DATA --epoch_videos "$EPOCH_VIDEOS" --predict_sizes 1080p
          --predict_seconds "$PREDICT_SECONDS" --data_dir "$DATA_DIR")
  timeout -k 10 "$(budget 200)" "$PY" -m "$MODULE" --parts model main main_video "${common[@]}" \
    > "$OUT_DIR/data_prep.log" 2>&1 &
  PREP_PIDS+=($!)
  if [[ " ${PARTS[*]} " == *" predict "* ]]; then
    timeout -k 10 "$(budget 200)" "$PY" -m "$MODULE" --parts predict "${common[@]}" \
      > "$OUT_DIR/data_prep_predict.log" 2>&1 &
    PREP_PIDS+=($!)
  fi
  log "data_prep: writing the benchmark's data in the background (pids ${PREP_PIDS[*]}, see data_prep*.log)"
}

wait_data_prep() {
  local pid rc
  for pid in "${PREP_PIDS[@]}"; do
    wait "$pid"
    rc=$?
    log "data_prep: pid $pid exit $rc"
  done
  cat "$OUT_DIR"/data_prep*.log 2>/dev/null | grep -E '^(dataset|predict):' | sed 's/^/    /' | tee -a "$LOG"
}

run_bench() {
  local part flags rc
  rm -f "$OUT_DIR"/bench_*.json
  for part in "${PARTS[@]}"; do
    # shellcheck disable=SC2206  # word splitting of the flag strings is intended
    flags=(--device "$DEVICE" $SIZE $TIMING $DATA --gpu_decode "$GPU_DECODE" --epoch_videos "$EPOCH_VIDEOS"
           --predict_sizes 1080p --predict_seconds "$PREDICT_SECONDS" --data_dir "$DATA_DIR"
           --output "$OUT_DIR/bench_$part.json")
    case $part in
      model)
        if [[ $COMPILE == 1 ]]; then
          run_step bench_model "${CAPS[model]}" "$PY" -m "$MODULE" --parts model "${flags[@]}" --compile
          rc=$?
          if (( rc != 0 && rc != 124 && rc != 137 && rc != 99 )); then
            log "bench_model: --compile failed (exit $rc); measuring eager only"
            run_step bench_model_eager 60 "$PY" -m "$MODULE" --parts model "${flags[@]}"
          fi
        else
          run_step bench_model "${CAPS[model]}" "$PY" -m "$MODULE" --parts model "${flags[@]}"
        fi ;;
      main_compile)
        if [[ $COMPILE == 1 ]]; then
          run_step bench_main_compile "${CAPS[main_compile]}" "$PY" -m "$MODULE" --parts main "${flags[@]}" \
            --compile --variants fast_compile
        else
          log "bench_main_compile: skipped (compiling is off)"
        fi ;;
      *)
        run_step "bench_$part" "${CAPS[$part]:-60}" "$PY" -m "$MODULE" --parts "$part" "${flags[@]}" ;;
    esac
  done
}

# 5. Merge the parts (variant by variant: main and main_compile both fill parts.main) and print the targets.
summarize() {
  timeout 60 "$PY" - "$OUT_DIR" << 'EOF' 2>&1 | tee "$OUT_DIR/targets.txt" | tee -a "$LOG"
import glob, importlib, json, os, sys
out = sys.argv[1]
report_lib = importlib.import_module("benchmarks.report")
reports = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "bench_*.json")))
           if not p.endswith("bench_gpu.json")]
if not reports:
    sys.exit("no benchmark results to summarize")
merged = report_lib.merge_reports(reports)
json.dump(merged, open(os.path.join(out, "bench_gpu.json"), "w"), indent=2)
print(report_lib.format_table(merged))
s = merged["settings"]
print(f"\nsettings: {s['model']}-{s['model_depth']}, {s['sample_duration']}x{s['sample_size']}x{s['sample_size']}, "
      f"batch {s['batch_size']}, workers {s['workers']}, device {merged['device']}")
print("\ntargets:")
print(report_lib.format_targets(merged))
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
