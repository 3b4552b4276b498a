"""The `predict` part of the benchmark: `main.py --predict` on synthetic 1080p and 4K H.264 videos (`write_video`).

Each measurement runs in a child process (`python -m benchmarks.predict_bench CHILD_ARGS`), which times the
prediction itself (after imports) and reports its own peak resident memory, so the numbers are those of a
user's `--predict` run: seconds of video per second of wall time, and peak RSS in GB.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import torch

import main
from checkpoint import make_checkpoint, save_checkpoint
from models import factory as model_lib
from opts import opts_to_plain, parse_opts

SIZES = {"1080p": (1920, 1080), "4k": (3840, 2160)}
FPS = 25


def write_video(path: Path, seconds: float, size: tuple[int, int]) -> Path:
    """A synthetic H.264 video, written once and cached: FFmpeg's testsrc2 pattern (moving shapes, gradients,
    text) encoded by libx264's veryfast preset with B-frames, about 8 Mb/s at 1080p, as camera footage has (a flat
    gradient would decode twice as fast and flatter the decoder)."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.mp4")
    width, height = size
    graph = av.filter.Graph()
    source = graph.add("testsrc2", f"size={width}x{height}:rate={FPS}:duration={seconds:g}")
    to_yuv, sink = graph.add("format", "pix_fmts=yuv420p"), graph.add("buffersink")
    source.link_to(to_yuv)
    to_yuv.link_to(sink)
    graph.configure()
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(2 * FPS)}
        for k in range(round(seconds * FPS)):
            frame = sink.pull()
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    tmp.replace(path)
    return path


def write_checkpoint(path: Path, args) -> Path:
    """A checkpoint of the benchmark's model (random weights, 5 classes) in main.py's format, written once."""
    if path.is_file():
        return path
    opt = parse_opts(["--model", args.model, "--model_depth", str(args.model_depth), "--sample_size",
                      str(args.sample_size), "--sample_duration", str(args.sample_duration), "--inference_stride",
                      str(args.sample_duration), "--n_classes", "5", "--result_path", str(path.parent), "--no_cuda"])
    torch.manual_seed(0)
    net = model_lib.generate_model(opt)
    payload = make_checkpoint(epoch=1, arch=opt.arch, state_dict=net.state_dict(), class_names=list("abcde"),
                              model_kwargs=model_lib.model_kwargs_from_opts(opt), options=opts_to_plain(opt))
    return save_checkpoint(path, payload)


def measure(video: Path, checkpoint: Path, out: Path, *, device: str, batch_size: int, threads: int) -> dict:
    """Run one prediction in a child process; its wall time (after imports) and peak RSS."""
    argv = ["--predict", str(video), "--resume_path", str(checkpoint), "--result_path", str(out),
            "--inference_batch_size", str(batch_size), "--n_threads", str(threads)]
    if device == "cpu":
        argv.append("--no_cuda")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.predict_bench", *argv], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"--predict failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_predict(args, data_dir: Path) -> tuple[Path, dict[str, Path]]:
    """The checkpoint and the video of each size in `args.predict_sizes` (written once, then reused)."""
    folder = data_dir / "predict"
    checkpoint = write_checkpoint(
        folder / f"{args.model}-{args.model_depth}_{args.sample_duration}x{args.sample_size}.pth", args)
    videos = {name: write_video(folder / f"{name}_{args.predict_seconds:g}s_testsrc2.mp4", args.predict_seconds,
                                SIZES[name]) for name in args.predict_sizes}
    return checkpoint, videos


def predict_part(args, data_dir: Path) -> dict:
    """seconds of video per second and peak RSS of `--predict` per size in `args.predict_sizes`."""
    checkpoint, videos = prepare_predict(args, data_dir)
    out = {}
    for name, video in videos.items():
        print(f"  predict {name} ({args.predict_seconds:g} s) ...", flush=True)
        # A fresh result folder: one holding this video's predictions already would skip it.
        result_dir = Path(tempfile.mkdtemp(prefix=f"out_{name}_", dir=data_dir / "predict"))
        try:
            result = measure(video, checkpoint, result_dir, device=args.device, batch_size=args.batch_size,
                             threads=args.e2e_workers)
        finally:
            shutil.rmtree(result_dir, ignore_errors=True)
        out[name] = {"video_seconds": args.predict_seconds, "frame_size": list(SIZES[name]),
                     "video_s_per_s": round(args.predict_seconds / result["elapsed_s"], 3),
                     "elapsed_s": round(result["elapsed_s"], 2), "peak_rss_gb": round(result["peak_rss_gb"], 3)}
    return out


def _child(argv: list[str]) -> int:
    start = time.perf_counter()
    code = main.main(argv)
    elapsed = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"code": code, "elapsed_s": elapsed, "peak_rss_gb": peak_kb / 2**20}))
    return code


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
