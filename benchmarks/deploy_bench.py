"""The `deploy` part of the benchmark: inference speed of a 3D ResNet in eager PyTorch and in ONNX Runtime.

For each depth of --deploy_depths and each batch of --deploy_batches: clips/s and the latency of one batch
(median and 90th percentile over --repeats timed calls, at least 5) of
- ``eager``: the PyTorch model (eval, inference mode), as main.py runs it on the device;
- ``ort_fp32``: its ONNX export optimised by ONNX Runtime (engine.onnx_export.optimize; 'all' at load);
- ``ort_int8``: the static int8 quantisation (engine.onnx_export.export_int8), calibrated on a few random clips:
  random weights and inputs are enough for speed (the accuracy change is measured by util_scripts.export_model on
  real clips);
- ``ort_fp32_cuda``: the fp32 graph on ONNX Runtime's CUDA provider, when the device is CUDA and onnxruntime-gpu
  provides it.
The runtimes are timed in turns (one call of each, then again), so load from other processes on a shared machine
hits them alike; every runtime uses torch's intra-op thread count.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.onnx_export import export_int8, export_onnx, optimize
from engine.onnx_model import OnnxModel, ort_session
from models import build_model

N_CLASSES = 400  # Kinetics' head, as the released models have
CALIBRATION_CLIPS = 4


def deploy_part(args) -> dict:
    """{'resnet-D FxS': {'batch B': {runtime: {clips_per_s, latency_ms_median, latency_ms_p90, ...}}}}."""
    device = torch.device(args.device)
    shape = (3, args.deploy_frames, args.deploy_size, args.deploy_size)
    out = {}
    for depth in args.deploy_depths:
        name = f"resnet-{depth} {args.deploy_frames}x{args.deploy_size}"
        print(f"  deploy {name} ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            runtimes = build_runtimes(depth, shape, Path(tmp), device)
            out[name] = {f"batch {b}": time_runtimes(runtimes, (b, *shape), device, calls=max(args.repeats, 5))
                         for b in args.deploy_batches}
    return out


def build_runtimes(depth: int, shape: tuple[int, ...], folder: Path,
                   device: torch.device) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The runtimes of one model with seeded random weights: eager, ONNX Runtime fp32 and int8 (see the docstring)."""
    torch.manual_seed(0)
    model = build_model("resnet", depth, n_classes=N_CLASSES).eval()
    plain = export_onnx(model, torch.randn(1, *shape), folder / "model.onnx")
    description = {"export": "benchmark"}  # the files are timed, never given to main.py
    fp32 = optimize(plain, folder / "model_optimized.onnx", description)
    calibration = [torch.randn(1, *shape, generator=torch.Generator().manual_seed(k)).numpy()
                   for k in range(CALIBRATION_CLIPS)]
    int8 = export_int8(model, torch.randn(1, *shape), folder / "model_int8.onnx", calibration, description)
    runtimes = {"eager": model.to(device),
                "ort_fp32": OnnxModel(ort_session(fp32), source=fp32),
                "ort_int8": OnnxModel(ort_session(int8), source=int8)}
    if device.type == "cuda":
        cuda = OnnxModel(ort_session(fp32, cuda=True), source=fp32)
        if "CUDAExecutionProvider" in cuda.session.get_providers():
            runtimes["ort_fp32_cuda"] = cuda
    return runtimes


def time_runtimes(runtimes: dict, batch_shape: tuple[int, ...], device: torch.device, *, calls: int) -> dict:
    """Latency of ``calls`` timed calls per runtime, in turns, after one untimed warm-up call each."""
    x = torch.randn(batch_shape, generator=torch.Generator().manual_seed(1))
    inputs = {name: x.to(device) if name == "eager" else x for name in runtimes}
    seconds = {name: [] for name in runtimes}
    with torch.inference_mode():
        for turn in range(calls + 1):
            for name, run in runtimes.items():
                start = time.perf_counter()
                run(inputs[name])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if turn:  # the first turn warms up (allocations, kernel choice)
                    seconds[name].append(time.perf_counter() - start)
    return {name: _latency(times, batch_shape[0]) for name, times in seconds.items()}


def _latency(times: list[float], batch: int) -> dict:
    ordered = sorted(times)
    median = statistics.median(ordered)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"clips_per_s": batch / median, "latency_ms_median": 1000 * median, "latency_ms_p90": 1000 * p90,
            "calls": len(times), "threads": torch.get_num_threads()}

