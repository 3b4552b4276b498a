#!/usr/bin/env bash
# Download, on a machine with network access, the Python 3.12 wheels that benchmarks/gpu_check.sh installs on a
# GPU machine without network (it already has torch, torchvision, numpy, Pillow and opencv; torch is never
# reinstalled). The wheels go to .whl/ at the repository root (git-ignored; about 41 MB, so the folder fits a
# 64 MiB upload next to the working tree).
#
#   bash benchmarks/fetch_gpu_wheels.sh            # default set
#   WHEEL_DIR=/path EXTRA_WHEELS="numpy pillow" bash benchmarks/fetch_gpu_wheels.sh
#
# --no-deps: every package is named here, so no dependency (torch!) is pulled in behind our back.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL_DIR=${WHEEL_DIR:-.whl}
# Runtime: PyAV, simplejpeg, h5py, tqdm; tests: pytest (+ its dependencies) and pytest-timeout (pyproject addopts).
PACKAGES=(av simplejpeg h5py tqdm pytest pytest-timeout pluggy iniconfig packaging pygments)
read -r -a EXTRA <<< "${EXTRA_WHEELS:-}"
mkdir -p "$WHEEL_DIR"
python -m pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any -d "$WHEEL_DIR" "${PACKAGES[@]}" "${EXTRA[@]}"
ls -l "$WHEEL_DIR"
du -sh "$WHEEL_DIR"
