"""Measure model, loader, end-to-end training and inference speed, original-style vs the fast defaults.

Usage: ``python -m util_scripts.benchmark [--device auto|cpu|cuda] [--parts model loader e2e inference main
main_video predict video_loader deploy] [--workers 4 16] [--compile]
[--model resnet --model_depth 50 --batch_size 64 ...] [--output FILE.json]``

Without --video_path/--annotation_path it writes (once, cached under --data_dir) a synthetic
dataset of photo-like 320x240 JPEG frames. Each part runs both variants in the same process:
'original' (fp32 eager + per-frame PIL/float loader) and 'fast' (uint8 loader, device-side
normalisation, bf16 + channels_last_3d + cudnn.benchmark on CUDA), plus 'fast_compile' with
--compile. Prints a table and writes JSON with the median clips/s over --repeats windows.
Defaults depend on the device: small on the CPU (about a minute on 2 cores), the issue's
configuration (resnet-50, 16x112x112, batch 64, 4 and 16 workers) on CUDA.
The 'predict' part (only when named in --parts) runs ``main.py --predict`` on synthetic 1080p and 4K
H.264 videos of --predict_seconds in a child process: seconds of video per second and peak RSS.
The 'main' part (only when named) runs ``python main.py`` training for one epoch of --epoch_videos clips,
eager and with --compile: steady-state clips/s and time to first optimiser step from main.py's own log.
The 'main_video' part (only when named) runs the same eager epoch with ``--file_type video`` on the dataset's
training videos as mp4, in their util_scripts.prepare_videos copy (made once, from camera-style H.264 files).
--variants limits the variants measured (e.g. ``--parts main --compile --variants fast_compile``);
--prepare only writes the data the named parts need (the dataset, main_video's prepared mp4 copy, the predict part's
checkpoint and videos).
Compiled graphs are cached in TORCHINDUCTOR_CACHE_DIR (default: <data_dir>/inductor_cache) for every part and
main.py run, so a graph compiled once is loaded by the next process, as in a user's second run.
The 'video_loader' part (only when named) measures the clips/s of one loader worker for training clips
(--video_clip_duration x --sample_size^2) from JPEG frames, from mp4 as cameras write it (a keyframe every
--video_gop frames, --video_sizes) and from its prepared copy (util_scripts.prepare_videos), each against a naive
PyAV reader, plus the disk each takes (benchmarks.video_loader); about a minute on 2 CPU cores with the defaults
(more the first time, when the videos are made).
The 'deploy' part (only when named) times inference of ResNets (--deploy_depths, clips of --deploy_frames x
--deploy_size^2, batches --deploy_batches) in eager PyTorch and ONNX Runtime fp32 and int8 (benchmarks.deploy_bench):
clips/s and median/p90 latency per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import parts as bench_parts
from benchmarks.data import SyntheticSpec, bench_opts, make_synthetic_dataset, mean_frame_bytes
from benchmarks.deploy_bench import deploy_part
from benchmarks.gpu_decode import nvjpeg_available
from benchmarks.main_bench import epoch_batches, long_epoch_annotation, main_part, prepared_video_copy
from benchmarks.predict_bench import predict_part, prepare_predict
from benchmarks.report import format_table, summarize_targets
from benchmarks.video_loader import video_loader_part
from datasets import factory as dataset
from datasets.layout import SUBSET_NAMES
from engine.compiled import CACHE_ENV
from errors import UserError
from util_scripts.common import run_cli

PARTS = ("model", "loader", "e2e", "inference", "main", "main_video", "predict", "video_loader", "deploy")
# main, main_video, predict, video_loader, deploy: only when asked for (main.py runs, videos, ONNX exports)
DEFAULT_PARTS = ("model", "loader", "e2e", "inference")
VARIANTS = ("original", "fast", "fast_compile")
DEFAULTS = {  # device type -> defaults of the size options
    "cpu": dict(model_depth=10, batch_size=4, sample_duration=8, sample_size=112, workers=[1, 2], steps=2,
                loader_steps=12, warmup=1, repeats=3, videos_per_class=4, n_frames=24, predict_seconds=2.0,
                epoch_videos=48),
    "cuda": dict(model_depth=50, batch_size=64, sample_duration=16, sample_size=112, workers=[4, 16], steps=20,
                 loader_steps=20, warmup=5, repeats=3, videos_per_class=64, n_frames=48, predict_seconds=10.0,
                 epoch_videos=4096),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m util_scripts.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--parts", nargs="+", default=list(DEFAULT_PARTS), choices=PARTS,
                   help=f"what to measure (default: {' '.join(DEFAULT_PARTS)}; 'predict' and 'video_loader' only "
                        "when named)")
    p.add_argument("--model", default="resnet")
    p.add_argument("--model_depth", type=int, help="default: 10 on the CPU, 50 on CUDA")
    p.add_argument("--batch_size", type=int, help="clips per step (default: 4 CPU, 64 CUDA)")
    p.add_argument("--sample_size", type=int, help="crop side (default 112)")
    p.add_argument("--sample_duration", type=int, help="frames per clip (default: 8 CPU, 16 CUDA)")
    p.add_argument("--workers", type=int, nargs="+", help="loader-only worker counts (default: 1 2 CPU, 4 16 CUDA)")
    p.add_argument("--e2e_workers", type=int, help="workers for end to end and inference (default: the largest)")
    p.add_argument("--steps", type=int, help="batches per timed window (model, end to end)")
    p.add_argument("--loader_steps", type=int, help="batches per timed window of the loader-only part")
    p.add_argument("--warmup", type=int, help="batches before timing (worker start-up, autotuning, compile)")
    p.add_argument("--repeats", type=int, help="timed windows per measurement (the median is reported)")
    p.add_argument("--compile", action="store_true", help="also measure the fast variant under torch.compile")
    p.add_argument("--variants", nargs="+", choices=VARIANTS,
                   help="measure only these variants in the model, e2e, inference and main parts (default: all)")
    p.add_argument("--gpu_decode", default="auto", choices=("auto", "on", "off"),
                   help="loader-only with nvjpeg decode (CUDA + torchvision); auto: when available")
    p.add_argument("--video_path", type=Path, help="jpg frame dataset root (default: generate a synthetic one)")
    p.add_argument("--annotation_path", type=Path)
    p.add_argument("--dataset", default="kinetics")
    p.add_argument("--inference_subset", default="val", choices=tuple(SUBSET_NAMES))
    p.add_argument("--data_dir", type=Path, default=Path(tempfile.gettempdir()) / "3dcnn_benchmark",
                   help="where the synthetic dataset is cached")
    p.add_argument("--videos_per_class", type=int, help="synthetic training videos per class (4 classes)")
    p.add_argument("--n_frames", type=int, help="frames per synthetic video")
    p.add_argument("--predict_seconds", type=float,
                   help="length of the synthetic videos of the predict part (default: 2 CPU, 10 CUDA)")
    p.add_argument("--predict_sizes", nargs="+", default=["1080p", "4k"], choices=("1080p", "4k"),
                   help="frame sizes of the predict part")
    p.add_argument("--epoch_videos", type=int,
                   help="clips in the main part's training epoch (the synthetic videos listed again and again; "
                        "default: 48 CPU, 4096 CUDA): many more batches than the loader keeps in flight")
    p.add_argument("--prepare", action="store_true",
                   help="only write the data the named parts need (cached under --data_dir), then stop")
    v = p.add_argument_group("video_loader part")
    v.add_argument("--video_sizes", nargs="+", default=["340x256", "1280x720"], metavar="WxH",
                   help="frame sizes of the camera-style mp4 sets (default: 340x256 1280x720); the first is also "
                        "prepared and extracted to JPEG frames")
    v.add_argument("--videos_per_size", type=int, default=3, help="videos per camera set (default 3)")
    v.add_argument("--video_seconds", type=float, default=10.0, help="length of each video at 30 fps (default 10)")
    v.add_argument("--video_gop", type=int, default=250, help="frames between keyframes of the camera-style mp4 "
                                                               "(default 250, as cameras and YouTube write)")
    v.add_argument("--video_short_side", type=int, default=128, help="short side of the prepared copy (default 128)")
    v.add_argument("--video_jpg_sizes", type=int, nargs="+",
                   help="short sides of the JPEG frames (default: the prepared copy's and 240, generate_video_jpgs')")
    v.add_argument("--video_clip_duration", type=int, default=16, help="frames per training clip (default 16)")
    v.add_argument("--video_clips", type=int, default=32,
                   help="clips per timed window at least (default 32: a camera file's clip costs more the further it "
                        "lies from its keyframe, so windows of 8 clips varied by a quarter)")
    d = p.add_argument_group("deploy part")
    d.add_argument("--deploy_depths", type=int, nargs="+", default=[18, 50], help="ResNet depths (default 18 50)")
    d.add_argument("--deploy_batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    d.add_argument("--deploy_frames", type=int, default=16, help="frames per clip (default 16)")
    d.add_argument("--deploy_size", type=int, default=112, help="clip height and width (default 112)")
    p.add_argument("--output", type=Path, default=None,
                   help="JSON results file (default: benchmark.json in --data_dir, not the current directory)")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Pick the device and fill unset size options with that device's defaults."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if (args.video_path is None) != (args.annotation_path is None):
        raise UserError("give both --video_path and --annotation_path, or neither (synthetic dataset)")
    args.e2e_workers = args.e2e_workers if args.e2e_workers is not None else max(args.workers)
    args.output = args.output or args.data_dir / "benchmark.json"
    if args.video_jpg_sizes is None:
        args.video_jpg_sizes = list(dict.fromkeys([args.video_short_side, 240]))
    return args


def _data(args) -> tuple[Path, Path, dict]:
    if args.video_path is not None:
        return args.video_path, args.annotation_path, {"source": str(args.video_path)}
    spec = SyntheticSpec(train_per_class=args.videos_per_class, val_per_class=max(1, args.videos_per_class // 4),
                         n_frames=args.n_frames)
    start = time.perf_counter()
    video_path, annotation_path = make_synthetic_dataset(args.data_dir, spec)
    info = {"source": "synthetic", "path": str(video_path), "videos": spec.n_classes * (spec.train_per_class +
            spec.val_per_class), "frames_per_video": spec.n_frames, "frame_size": list(spec.size),
            "prepare_s": round(time.perf_counter() - start, 1)}
    return video_path, annotation_path, info


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores visible)"


class Runner:
    """Builds the options of each configuration and runs the parts, collecting a results dict."""

    def __init__(self, args: argparse.Namespace, video_path: Path, annotation_path: Path):
        self.args, self.device = args, torch.device(args.device)
        self.paths = dict(video_path=video_path, annotation_path=annotation_path,
                          result_path=args.data_dir / "results", device=args.device)
        probe = bench_opts(args, workers=0, fast=True, compile_model=False, n_classes=1, **self.paths)
        self.n_classes = len(dataset.get_class_names(probe))
        self.variants = [v for v in ("original", "fast") + (("fast_compile",) if args.compile else ())
                         if args.variants is None or v in args.variants]
        self.window = dict(warmup=args.warmup, steps=args.steps, repeats=args.repeats)
        self.loader_window = dict(self.window, steps=args.loader_steps)

    def opts(self, variant: str, workers: int):
        return bench_opts(self.args, workers=workers, fast=variant != "original",
                          compile_model=variant == "fast_compile", n_classes=self.n_classes, **self.paths)

    def _each(self, fn, workers: int, variants=None, **kw) -> dict:
        out = {}
        for v in variants or self.variants:
            print(f"  {fn.__name__} {v} (workers {workers}) ...", flush=True)
            out[v] = fn(self.opts(v, workers), self.device, fast=v != "original", **kw).as_dict()
        return out

    def run(self) -> dict:
        parts, args = {}, self.args
        if "model" in args.parts:
            parts["model"] = self._each(bench_parts.model_only, 0, **self.window)
        if "loader" in args.parts:
            both, gpu = ["original", "fast"], self._gpu_decode()
            parts["loader"] = {str(w): self._each(bench_parts.loader_only, w, both, **self.loader_window)
                               for w in args.workers}
            if gpu:
                run = bench_parts.loader_gpu_decode
                parts["loader_gpu_decode"] = {str(w): run(self.opts("fast", w), self.device, **self.loader_window)
                                              .as_dict() for w in args.workers}
        if "e2e" in args.parts:
            parts["e2e"] = self._each(bench_parts.end_to_end, args.e2e_workers, **self.window)
        if "inference" in args.parts:
            parts["inference"] = self._each(bench_parts.inference, args.e2e_workers, repeats=args.repeats)
        main_variants = ([v for v in self.variants if v != "original"] if "main" in args.parts else []) + (
            ["fast_video"] if "main_video" in args.parts else [])
        if main_variants:
            parts["main"] = main_part(args, video_path=self.paths["video_path"],
                                      annotation_path=self.paths["annotation_path"], n_classes=self.n_classes,
                                      variants=main_variants)
        if "predict" in args.parts:
            parts["predict"] = predict_part(args, args.data_dir)
        if "video_loader" in args.parts:
            parts["video_loader"] = video_loader_part(args)
        if "deploy" in args.parts:
            parts["deploy"] = deploy_part(args)
        return parts

    def _gpu_decode(self) -> bool:
        if self.args.gpu_decode == "off":
            return False

        ok = nvjpeg_available(self.device)
        if not ok and self.args.gpu_decode == "on":
            raise UserError("--gpu_decode on needs a CUDA device and an importable torchvision (nvjpeg)")
        return ok


def prepare(args) -> None:
    """Write what the named parts read, so that their timed runs find it ready (gpu_check.sh runs this in the
    background while the tests run): the synthetic dataset (and the main part's long epoch of it), the predict
    part's checkpoint and videos."""
    if set(args.parts) - {"predict"}:
        start = time.perf_counter()
        video_path, annotation_path, _ = _data(args)
        if {"main", "main_video"} & set(args.parts):
            long_epoch_annotation(annotation_path, epoch_batches(args) * args.batch_size)
        if "main_video" in args.parts:
            prepared_video_copy(video_path, annotation_path)
        print(f"dataset: {annotation_path.parent} in {time.perf_counter() - start:.1f} s")
    if "predict" in args.parts:
        start = time.perf_counter()
        checkpoint, videos = prepare_predict(args, args.data_dir)
        print(f"predict: {checkpoint.name}, {', '.join(v.name for v in videos.values())} in "
              f"{time.perf_counter() - start:.1f} s")


def main(argv=None) -> int:
    args = resolve_args(build_parser().parse_args(argv))
    if args.device == "cuda":  # the original enabled cudnn autotuning too, so both variants get it
        torch.backends.cudnn.benchmark = True
    # One compile cache for the parts and the main.py runs (children inherit it; main.py keeps a folder set here).
    os.environ.setdefault(CACHE_ENV, str(Path(args.data_dir).resolve() / "inductor_cache"))
    if args.prepare:
        prepare(args)
        return 0
    video_path, annotation_path, data_info = _data(args)
    data_info["mean_frame_bytes"] = round(mean_frame_bytes(video_path))
    runner = Runner(args, video_path, annotation_path)
    start = time.perf_counter()
    parts = runner.run()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"device": device_name(runner.device), "torch": torch.__version__, "cpu_count": os.cpu_count(),
              "settings": settings, "data": data_info, "parts": parts, "elapsed_s": round(time.perf_counter() - start)}
    report["targets"] = summarize_targets(report)
    print(format_table(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
