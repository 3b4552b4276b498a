"""The `main` part of the benchmark: `python main.py` training end to end, as a user runs it, in a child process.

What main.py's own log says is what is measured:
- steady-state clips/s: main.py logs a progress line every --log_interval batches ("train epoch 1 [i/n] ...",
  after the device has finished those batches: the line reads the running loss back). Each line is timed as it
  arrives here; the rate is the clips between the first line past a quarter of the epoch (workers busy, cuDNN
  autotuned, the model compiled) and the last one, over the time between them. The epoch is made long enough for
  that (the synthetic videos listed again and again, `long_epoch_annotation`): as many batches as the loader
  keeps in flight at least, so the window is fed at the loader's own pace, not from batches prepared while the
  model was still starting.
- time to first optimiser step: its "first optimiser step done ..." line (since the process started, with the time
  spent waiting for data, which the target leaves out).
- the data-wait share and clips/s of the whole epoch, from its end-of-epoch line (start-up included), and with
  --compile the compile time and cache use it logs (whether the graphs came from the shared compile cache).

Variants (VARIANTS): 'fast' (eager) and 'fast_compile' (--compile) read the benchmark's JPEG frames; 'fast_video'
(eager; the benchmark's `main_video` part) reads the same training videos as mp4 files with `--file_type video`:
their training copy by util_scripts.prepare_videos (`prepared_video_copy`), made from camera-style H.264 files.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.video_loader import encode_camera_video, run_tool
from datasets.layout import FRAME_GLOB

PROGRESS = re.compile(r"train epoch 1 \[(\d+)/(\d+)\] ")
EPOCH = re.compile(r"train epoch 1: .*\(([\d.]+) clips/s, data wait (\d+)%\)")
COMPILED = re.compile(r"compiled in ([\d.]+) s: (.*) \(cache ")
FIRST_STEP = re.compile(r"first optimiser step done ([\d.]+) s after the process started \(([\d.]+) s of it waiting "
                        r"for data, ([\d.]+) s without\)")
STEADY_FROM = 0.25  # the steady-state window starts after this share of the epoch's batches
LINES_PER_EPOCH = 12  # progress lines wanted in the epoch (main.py's default --log_interval 10 at most)
ROOT = Path(__file__).resolve().parents[1]
CAMERA_GOP = 250  # keyframe interval of the camera-style files the prepared copy is made from
VARIANTS = {"fast": dict(compile_model=False, file_type="jpg"),  # variant -> how main.py runs and what it reads
            "fast_compile": dict(compile_model=True, file_type="jpg"),
            "fast_video": dict(compile_model=False, file_type="video")}


@dataclass(frozen=True)
class Progress:
    """One progress line of main.py's first epoch: when it arrived (seconds, any origin), batches done, of how many."""

    seconds: float
    batch: int
    of: int


def progress_lines(timed: list[tuple[float, str]]) -> list[Progress]:
    """The progress lines of main.py's first training epoch among (arrival seconds, line) pairs."""
    return [Progress(t, int(m[1]), int(m[2])) for t, line in timed if (m := PROGRESS.search(line))]


def steady_state(lines: list[Progress], batch_size: int) -> dict | None:
    """clips/s from the first line past STEADY_FROM of the epoch to the last line (None without two such lines)."""
    start = next((x for x in lines if x.batch >= STEADY_FROM * x.of), None)
    if start is None or start.batch >= lines[-1].batch or lines[-1].seconds <= start.seconds:
        return None
    end = lines[-1]
    return {"clips_per_s": round((end.batch - start.batch) * batch_size / (end.seconds - start.seconds), 2),
            "window_batches": [start.batch, end.batch], "window_s": round(end.seconds - start.seconds, 3),
            "epoch_batches": end.of}


def first_step(log: str) -> dict | None:
    """main.py's time to its first optimiser step: total, waiting for data, and without that."""
    m = FIRST_STEP.search(log)
    if m is None:
        return None
    return {"first_step_s": float(m[1]), "first_step_data_wait_s": float(m[2]),
            "first_step_without_data_s": float(m[3])}


def epoch_summary(log: str) -> dict:
    """clips/s and data-wait share of the whole first epoch, as main.py reports them, and the compile seconds and
    cache lookups it logged (keys left out where main.py logged nothing of the kind)."""
    out = {}
    if m := EPOCH.search(log):
        out.update(epoch_clips_per_s=float(m[1]), epoch_data_wait_share=int(m[2]) / 100)
    if m := COMPILED.search(log):
        out.update(compile_s=float(m[1]), compile_cache=m[2])
    return out


def long_epoch_annotation(annotation_path: Path, epoch_videos: int) -> Path:
    """An annotation file beside `annotation_path` listing its training videos again and again (each copy names
    its frames' folder, `video_path`) up to `epoch_videos`, and no other subset; written once."""
    path = annotation_path.with_name(f"{annotation_path.stem}_epoch{epoch_videos}.json")
    if path.is_file():
        return path
    data = json.loads(annotation_path.read_text())
    training = [(vid, entry) for vid, entry in data["database"].items() if entry["subset"] == "training"]
    database = {}
    for k in range(epoch_videos):
        vid, entry = training[k % len(training)]
        database[f"{vid}_copy{k // len(training)}"] = {**entry, "video_path": f"{entry['annotations']['label']}/{vid}"}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"labels": data["labels"], "database": database}))
    tmp.replace(path)
    return path


def prepared_video_copy(video_path: Path, annotation_path: Path) -> Path:
    """The training videos of the benchmark's JPEG dataset (frames under `video_path`) as a prepared video set: each
    one encoded as a camera stores video, then `python -m util_scripts.prepare_videos` (its defaults: short side
    128, a keyframe every 16 frames) into the returned folder at the same relative paths (label/id.mp4), so the
    annotation files of the frames list the copy too. Written once beside the frames (each step skips what exists)."""
    camera, prepared = video_path.parent / "camera_mp4", video_path.parent / "prepared_mp4"
    for vid, entry in json.loads(annotation_path.read_text())["database"].items():
        label = entry["annotations"]["label"]
        target = camera / label / f"{vid}.mp4"
        if entry["subset"] == "training" and not target.is_file():
            frames = [np.asarray(Image.open(p).convert("RGB"))
                      for p in sorted((video_path / label / vid).glob(FRAME_GLOB))]
            encode_camera_video(target, frames, (frames[0].shape[1], frames[0].shape[0]), gop=CAMERA_GOP)
    run_tool("prepare_videos", camera, prepared)
    return prepared


def epoch_batches(args) -> int:
    """Batches in the main part's epoch (--epoch_videos, rounded down to whole batches)."""
    return max(2, args.epoch_videos // args.batch_size)


def main_argv(args, *, video_path: Path, annotation_path: Path, result_path: Path, n_classes: int,
              compile_model: bool, file_type: str = "jpg") -> list[str]:
    """main.py's command line: one long training epoch of the benchmark's model, no validation, no checkpoint."""
    batches = epoch_batches(args)
    argv = ["--video_path", str(video_path), "--annotation_path", str(annotation_path), "--dataset", args.dataset,
            "--result_path", str(result_path), "--model", args.model, "--model_depth", str(args.model_depth),
            "--n_classes", str(n_classes), "--batch_size", str(args.batch_size), "--sample_size",
            str(args.sample_size), "--sample_duration", str(args.sample_duration), "--n_threads",
            str(args.e2e_workers), "--n_epochs", "1", "--no_val", "--checkpoint", "1000", "--checkpoint_minutes", "0",
            "--log_interval", str(max(1, min(10, batches // LINES_PER_EPOCH)))]
    if args.device == "cpu":
        argv.append("--no_cuda")
    if compile_model:
        argv.append("--compile")
    if file_type != "jpg":
        argv += ["--file_type", file_type]
    return argv


def run_main(argv: list[str], *, batch_size: int) -> dict:
    """One main.py run in a child process, its output lines timed as they arrive: steady state, time to first step,
    epoch summary (RuntimeError if it fails)."""
    proc = subprocess.Popen([sys.executable, "main.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    timed = [(time.perf_counter(), line) for line in proc.stdout]  # main.py's log flushes every line
    proc.wait()
    log = "".join(line for _, line in timed)
    if proc.returncode != 0:
        raise RuntimeError(f"main.py failed (exit {proc.returncode}): {log[-2000:]}")
    steady = steady_state(progress_lines(timed), batch_size)
    if steady is None:
        raise RuntimeError(f"main.py logged too few progress lines for a steady state: {log[-2000:]}")
    return {**steady, **(first_step(log) or {}), **epoch_summary(log),
            "compile_fell_back": "--compile failed" in log}


def main_part(args, *, video_path: Path, annotation_path: Path, n_classes: int, variants: list[str]) -> dict:
    """main.py end to end per variant (VARIANTS), with the project's defaults for the device; each run in a fresh
    result folder (removed afterwards)."""
    annotation = long_epoch_annotation(annotation_path, epoch_batches(args) * args.batch_size)
    out = {}
    for variant in variants:
        how = VARIANTS[variant]
        source = prepared_video_copy(video_path, annotation_path) if how["file_type"] == "video" else video_path
        print(f"  main.py {variant} ({epoch_batches(args)} batches, {args.e2e_workers} workers) ...", flush=True)
        args.data_dir.mkdir(parents=True, exist_ok=True)
        result_path = Path(tempfile.mkdtemp(prefix=f"main_{variant}_", dir=args.data_dir))
        try:
            argv = main_argv(args, video_path=source, annotation_path=annotation, n_classes=n_classes,
                             result_path=result_path, **how)
            out[variant] = {**run_main(argv, batch_size=args.batch_size), "workers": args.e2e_workers}
        finally:
            shutil.rmtree(result_path, ignore_errors=True)
    return out
