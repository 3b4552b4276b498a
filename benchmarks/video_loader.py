"""The `video_loader` part of the benchmark: clips/s of one loader worker reading training clips from JPEG frames,
from mp4 files as cameras and YouTube write them, and from their prepared copy, each against a naive PyAV reader.

Sources, made once under --data_dir from photo-like frames (`benchmarks.data.photo_like_arrays`):
- camera_WxH: --videos_per_size H.264 videos for each of --video_sizes, --video_seconds long at 30 fps, a
  keyframe every --video_gop frames (250, as cameras and YouTube store video), B-frames, libx264 'veryfast';
- prepared_S: `python -m util_scripts.prepare_videos` of the first camera set, short side S (--video_short_side);
- jpg_S: `python -m util_scripts.generate_video_jpgs` of the first camera set, short side S for each of
  --video_jpg_sizes (default: the prepared copy's, and 240, that tool's default).
The tools run as a user runs them, and skip what an earlier run finished.

Readers of a 16x112x112 training clip (random resized crop, flip) per item:
- fast: the project's training dataset (`datasets.factory.build_dataset`, --file_type jpg or video);
- naive: PyAV decodes from the start of the video (one decoder thread), turns every frame into a full-size RGB
  array (`frame.to_ndarray`), stops after the clip's last frame, then crops and resizes the clip's frames with PIL.
Both draw the same clips (`datasets.video_dataset.draw_item`).

Per worker: the items are computed in this process one after the other, the videos taken in turn (consecutive
clips never come from one video, as in a shuffled epoch of a large dataset), at least --video_clips items and
MIN_WINDOW_S seconds per window; the median of --repeats windows is reported, as clips per second of wall time
and per second of this process's CPU time (what one worker on a core of its own delivers: on a shared machine the
wall time also counts the other processes; the ratios and targets use the CPU time). Decoding is CPU work on a
GPU machine too.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from benchmarks.data import photo_like_arrays
from benchmarks.reference_loader import reference_geometry
from datasets import factory
from datasets.layout import has_video_extension
from datasets.video_dataset import draw_item
from datasets.video_files import parse_frame_size
from errors import UserError
from opts import parse_opts

ROOT = Path(__file__).resolve().parents[1]
FPS = 30
CAMERA_ENCODER = {"preset": "veryfast", "crf": "20"}  # High profile, CABAC, B-frames: what phones and YouTube store
CLASS = "clip"  # the one label of the benchmark's annotation files
MIN_WINDOW_S = 0.5  # a timed window lasts at least this long (fast sources would otherwise time a few ms)
DATA_VERSION = 3  # bump when the camera videos or the prepared copy change, so cached sets are made again


@dataclass(frozen=True)
class Source:
    """Videos one reader reads: `file_type` 'jpg' or 'video', listed by a kinetics-style annotation file."""

    name: str
    file_type: str
    video_path: Path
    annotation_path: Path
    made_from: str  # the camera set it was made from (its own name for a camera set)



def write_camera_video(path: Path, size: tuple[int, int], *, seconds: float, gop: int, seed: int) -> None:
    """One H.264 .mp4 of photo-like frames with a keyframe every `gop` frames (and none between)."""
    encode_camera_video(path, photo_like_arrays(np.random.default_rng(seed), max(1, round(seconds * FPS)), size),
                        size, gop=gop)


def encode_camera_video(path: Path, frames: Iterable[np.ndarray], size: tuple[int, int], *, gop: int) -> None:
    """RGB uint8 `frames` of `size` as an H.264 .mp4 the way a camera writes it (CAMERA_ENCODER), a keyframe every
    `gop` frames; written under a temporary name first, so an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {**CAMERA_ENCODER, "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    tmp.replace(path)


def camera_set(data_dir: Path, size: tuple[int, int], *, n_videos: int, seconds: float, gop: int) -> Source:
    """The camera videos of one size (written when missing) and their annotation file (written last)."""
    name = f"camera_{size[0]}x{size[1]}"
    folder = data_dir / f"video_loader_v{DATA_VERSION}" / f"{name}_{n_videos}x{seconds:g}s_gop{gop}"
    video_path, annotation = folder / "videos", folder / "kinetics.json"
    if not annotation.is_file():
        for k in range(n_videos):
            path = video_path / CLASS / f"v{k}.mp4"
            if not path.is_file():
                write_camera_video(path, size, seconds=seconds, gop=gop, seed=1000 * size[0] + k)
        database = {f"v{k}": {"subset": "training", "annotations": {"label": CLASS}} for k in range(n_videos)}
        tmp = annotation.with_suffix(".tmp")
        tmp.write_text(json.dumps({"labels": [CLASS], "database": database}))
        tmp.replace(annotation)
    return Source(name, "video", video_path, annotation, name)


def derived_sources(camera: Source, *, short_side: int, jpg_sizes: list[int]) -> list[Source]:
    """The prepared copy and the JPEG frames of a camera set, made by the project's tools (which skip what exists)."""
    folder = camera.video_path.parent
    prepared = folder / f"prepared_{short_side}"
    run_tool("prepare_videos", camera.video_path, prepared, "--short_side", short_side)
    sources = [Source(f"prepared_{short_side}", "video", prepared, camera.annotation_path, camera.name)]
    for size in jpg_sizes:
        frames = folder / f"jpg_{size}"
        run_tool("generate_video_jpgs", camera.video_path, frames, "kinetics", "--size", size)
        sources.append(Source(f"jpg_{size}", "jpg", frames, camera.annotation_path, camera.name))
    return sources


def run_tool(name: str, *args) -> None:
    """`python -m util_scripts.NAME ARGS` as a user runs it; UserError with its last line when it fails."""
    proc = subprocess.run([sys.executable, "-m", f"util_scripts.{name}", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"util_scripts.{name} failed while making the benchmark's data: {last}")


def disk_bytes(folder: Path) -> int:
    """Bytes of the frames or video files under `folder` (not the manifest or annotation files)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*")
               if p.is_file() and (p.suffix.lower() == ".jpg" or has_video_extension(p)))


def naive_frames(path: Path, indices: list[int]) -> list[Image.Image]:
    """The clip's frames as a naive PyAV reader gets them: decode from the start, every frame to full-size RGB."""
    wanted, last, kept = set(indices), max(indices), {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one decoder thread per worker, as the fast reader
        for i, frame in enumerate(container.decode(stream)):
            rgb = frame.to_ndarray(format="rgb24")
            if i in wanted:
                kept[i] = Image.fromarray(rgb)
            if i >= last:
                break
    return [kept[i] for i in indices]


class NaiveVideoClips(Dataset):
    """Training clips of video files through `naive_frames`: uint8 (T, H, W, C), the fast dataset's clips."""

    def __init__(self, fast):
        self.records, self.temporal, self.seed = fast.records, fast.temporal, fast.seed
        self.spatial = fast.loader.spatial

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        record, rng, clips = draw_item(self.records, self.temporal, self.seed, key)
        frames = naive_frames(record.path, clips[0])
        params = self.spatial.sample(*frames[0].size, rng)
        return np.stack([np.asarray(reference_geometry(f, params, self.spatial.crop)) for f in frames])


def fast_dataset(source: Source, args, result_dir: Path):
    """The project's training dataset of a source, as main.py builds it."""
    opt = parse_opts(["--video_path", str(source.video_path), "--annotation_path", str(source.annotation_path),
                      "--file_type", source.file_type, "--dataset", "kinetics", "--n_classes", "1", "--sample_size",
                      str(args.sample_size), "--sample_duration", str(args.video_clip_duration), "--result_path",
                      str(result_dir), "--no_cuda"])
    return factory.build_dataset(opt, "train")


def clips_per_s(dataset, *, clips: int, repeats: int) -> dict:
    """Items of `dataset` per second of wall time and of CPU time in this process, the videos in turn: medians
    and every window."""
    n = len(dataset)
    keys = ((k % n, k // n) for k in itertools.count())  # (index, epoch): every epoch its own crops
    dataset[next(keys)]  # first use: opening, caches
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu, done = time.perf_counter(), time.process_time(), 0
        while done < clips or time.perf_counter() - start < MIN_WINDOW_S:
            dataset[next(keys)]
            done += 1
        wall.append(done / (time.perf_counter() - start))
        cpu.append(done / max(time.process_time() - start_cpu, 1e-9))
    return {"clips_per_cpu_s": statistics.median(cpu), "clips_per_cpu_s_repeats": [round(r, 2) for r in cpu],
            "clips_per_s": statistics.median(wall), "clips_per_s_repeats": [round(r, 2) for r in wall]}


def video_loader_part(args) -> dict:
    """Every source: disk bytes, fast and (video files) naive clips/s per worker, and the ratios."""
    sizes = [parse_frame_size(s, flag="--video_sizes", example="340x256") for s in args.video_sizes]
    cameras = [camera_set(args.data_dir, size, n_videos=args.videos_per_size, seconds=args.video_seconds,
                          gop=args.video_gop) for size in sizes]
    sources = [*derived_sources(cameras[0], short_side=args.video_short_side, jpg_sizes=args.video_jpg_sizes),
               *cameras]
    result_dir = args.data_dir / "results"
    out = {}
    for source in sources:
        print(f"  video_loader {source.name} ...", flush=True)
        fast = fast_dataset(source, args, result_dir)
        size = disk_bytes(source.video_path)
        entry = {"file_type": source.file_type, "made_from": source.made_from, "videos": len(fast),
                 "disk_bytes": size, "kbit_per_s": round(size * 8 / 1000 / (len(fast) * args.video_seconds)),
                 "fast": clips_per_s(fast, clips=args.video_clips, repeats=args.repeats)}
        if source.file_type == "video":
            entry["naive"] = clips_per_s(NaiveVideoClips(fast), clips=args.video_clips, repeats=args.repeats)
        out[source.name] = entry
    for entry in out.values():  # per CPU second: what one worker on a core of its own delivers
        fast = entry["fast"]["clips_per_cpu_s"]
        entry["fast_over_source_naive"] = round(fast / out[entry["made_from"]]["naive"]["clips_per_cpu_s"], 2)
        if "naive" in entry:
            entry["fast_over_naive"] = round(fast / entry["naive"]["clips_per_cpu_s"], 2)
    prepared = out[f"prepared_{args.video_short_side}"]["fast"]["clips_per_cpu_s"]
    return {"clip": [args.video_clip_duration, args.sample_size, args.sample_size],
            "prepared": f"prepared_{args.video_short_side}", "same_size_jpg": f"jpg_{args.video_short_side}",
            "prepared_over_jpg": {name: round(prepared / entry["fast"]["clips_per_cpu_s"], 2)
                                  for name, entry in out.items() if entry["file_type"] == "jpg"},
            "sources": out}
