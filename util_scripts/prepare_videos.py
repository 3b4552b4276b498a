"""Make a training copy of a video set in one command: small, upright, constant-rate H.264 with frequent keyframes.

Usage: ``python -m util_scripts.prepare_videos SRC DST [--short_side 128] [--keyframe_interval 16] [--fps F]
[--crf 23] [--n_jobs -1]``

Every video file under SRC (recursively; any video extension in any letter case; hidden files skipped) is
written to DST at the same relative path with the extension ``.mp4``, so the annotation file of SRC serves DST:

- H.264 in yuv420p, audio dropped;
- upright: the rotation of phone videos is applied to the pixels (nothing left in the display matrix);
- scaled so that the short side is --short_side pixels (aspect kept, the long side rounded to an even number);
- at a constant frame rate: --fps, or by default the source's own nominal rate (every frame of a constant-rate
  video is kept, frame i of the copy is frame i of the source; a variable-rate video is resampled to its average
  rate, frames repeated or dropped by their times, as ``ffmpeg -vf fps`` does);
- a keyframe every --keyframe_interval frames, so that a clip is reached by decoding at most that many frames
  before it (cameras and YouTube store one every 250 frames or so).

``main.py --file_type video``, ``--predict`` and ``check_videos`` read the copy like any video folder.

DST/manifest.json records the settings and, for every prepared video, its source, frame count, frame rate, size,
bytes and the SHA-256 of the output file. Each video is written under a hidden temporary name and renamed when
complete, and the manifest is rewritten as videos finish, so an interruption (Ctrl-C) loses no finished video and
a rerun skips the videos the manifest lists. Videos that cannot be decoded are listed at the end and in the
manifest ('failed') and skipped: exit status 1 then (0 when every video is prepared, 2 for bad arguments).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av

from datasets.video_files import probe_video
from errors import UserError
from util_scripts.common import (
    ItemResult,
    VideoItem,
    atomic_file,
    check_one_video_per_output,
    find_video_files,
    iter_frames,
    remove_all_partials,
    remove_partials,
    resolve_n_jobs,
    run_cli,
    run_over_videos,
)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
OUTPUT_SUFFIX = ".mp4"
MANIFEST_WRITE_INTERVAL_S = 2.0  # the manifest is rewritten at most this often while videos finish (and at the end)
MAX_RATE_DENOMINATOR = 1001  # nominal rates are ratios like 30000/1001: a float rate is read back as one


@dataclass(frozen=True)
class CopySettings:
    """What makes a training copy; stored in the manifest, and a rerun into the same DST must use the same."""

    short_side: int = 128
    keyframe_interval: int = 16
    fps: float | None = None  # None: each source's nominal rate
    crf: int = 23
    codec: str = "h264"
    pix_fmt: str = "yuv420p"
    # No B-frame is a reference for others: the reader leaves every B-frame before a clip undecoded, which made
    # clips about 5 % faster to read for 2 % more bytes.
    x264_params: str = "b-pyramid=none"
    # CAVLC instead of CABAC, no deblocking filter, no weighted prediction: clips read about 13 % faster for about
    # 16 % more bytes (still a twentieth of JPEG frames of the same size); the copy is read many times, written once.
    tune: str = "fastdecode"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="folder of the source videos (searched recursively)")
    parser.add_argument("dst", type=Path, help="folder of the copy (created if missing; not inside SRC)")
    parser.add_argument("--short_side", type=int, default=128,
                        help="pixels of the shorter side, even (default 128: room for 112-pixel crops)")
    parser.add_argument("--keyframe_interval", type=int, default=16,
                        help="frames from one keyframe to the next (default 16: a 16-frame clip decodes at most 15 "
                             "frames before it)")
    parser.add_argument("--fps", type=float, default=None,
                        help="constant output frame rate (default: each source's own nominal rate)")
    parser.add_argument("--crf", type=int, default=23, help="H.264 quality, 0-51, lower is better (default 23)")
    parser.add_argument("--n_jobs", type=int, default=-1, help="parallel processes over videos (-1: all CPU cores)")
    return parser


def check_args(args) -> None:
    if args.short_side < 2 or args.short_side % 2:
        raise UserError(f"--short_side must be an even number of pixels (H.264 in yuv420p), got {args.short_side}")
    if args.keyframe_interval < 1:
        raise UserError(f"--keyframe_interval must be at least 1, got {args.keyframe_interval}")
    if args.fps is not None and args.fps <= 0:
        raise UserError(f"--fps must be positive, got {args.fps}")
    if not 0 <= args.crf <= 51:
        raise UserError(f"--crf must be in 0..51, got {args.crf}")
    if not args.src.is_dir():
        raise UserError(f"SRC {args.src} is not a folder of videos")
    src, dst = args.src.resolve(), args.dst.resolve()
    if dst == src or src in dst.parents:
        raise UserError(f"DST {args.dst} must not be SRC or inside it (the copy would be taken for sources)")


def find_items(src: Path) -> list[VideoItem]:
    """Every video under SRC; `rel` is its path relative to SRC without the extension (the copy's name)."""
    items = [VideoItem(p, p.relative_to(src).with_suffix("")) for p in find_video_files(src)]
    if not items:
        raise UserError(f"no video files under {src}")
    check_one_video_per_output(items)
    return items


def output_path(dst_root: Path, item: VideoItem) -> Path:
    return dst_root / item.rel.parent / (item.rel.name + OUTPUT_SUFFIX)


def output_name(item: VideoItem) -> str:
    """The manifest's key of a video: its output path relative to DST, with '/' separators."""
    return (item.rel.parent / (item.rel.name + OUTPUT_SUFFIX)).as_posix()


def source_name(item: VideoItem) -> str:
    """The source's path relative to SRC, with '/' separators."""
    return (item.rel.parent / (item.rel.name + item.src.suffix)).as_posix()


def frame_rate(fps: float) -> Fraction:
    """The exact rate a nominal float rate stands for (29.97002997 -> 30000/1001)."""
    return Fraction(fps).limit_denominator(MAX_RATE_DENOMINATOR)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_copy(src: Path, dst: Path, settings: CopySettings, *, rate: Fraction, resample: bool,
               threads: int) -> tuple[int, tuple[int, int]]:
    """Encode the upright, scaled (and, with `resample`, rate-converted) frames of `src` into the .mp4 `dst`:
    (frames written, (width, height)). `threads`: decoder and encoder threads (0: as many as FFmpeg likes)."""
    frames = iter_frames(src, size=settings.short_side, fps=rate if resample else -1, threads=threads, multiple=2)
    n, size = 0, (0, 0)
    with av.open(str(dst), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = None
        for image in frames:
            if stream is None:
                size = image.size
                stream = _h264_stream(container, size, rate, settings, threads)
            frame = av.VideoFrame.from_image(image)
            frame.pts, frame.time_base = n, 1 / rate
            container.mux(stream.encode(frame))
            n += 1
        if stream is not None:
            container.mux(stream.encode())
    return n, size


def _h264_stream(container, size: tuple[int, int], rate: Fraction, settings: CopySettings, threads: int):
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height = size
    stream.pix_fmt = settings.pix_fmt
    stream.codec_context.time_base = 1 / rate
    stream.codec_context.thread_count = threads
    interval = str(settings.keyframe_interval)
    # A keyframe exactly every K frames: no scene-cut keyframes in between, no longer groups.
    stream.options = {"crf": str(settings.crf), "g": interval, "keyint_min": interval, "sc_threshold": "0",
                      "tune": settings.tune, "x264-params": settings.x264_params}
    return stream


def prepare_video(item: VideoItem, *, dst_root: Path, settings: CopySettings, threads: int) -> ItemResult:
    """Write the copy of one video atomically and describe it for the manifest. An output already there (finished
    by an interrupted run just before it could be recorded: outputs appear only complete) is described, not
    written again."""
    final = output_path(dst_root, item)
    if final.is_file():
        meta = probe_video(final)
        entry = _entry(item, final, n_frames=meta.n_frames, fps=meta.fps, size=(meta.width, meta.height),
                       source_frames=None, resampled=None)
        return ItemResult(item, "skipped", n_frames=meta.n_frames, details=entry)
    remove_partials(final)
    meta = probe_video(item.src)
    resample = settings.fps is not None or meta.vfr
    rate = frame_rate(settings.fps or meta.fps)
    with atomic_file(final) as tmp:
        n, size = write_copy(item.src, tmp, settings, rate=rate, resample=resample, threads=threads)
        if n == 0:
            raise ValueError("no frame could be decoded")
        entry = _entry(item, tmp, n_frames=n, fps=float(rate), size=size, source_frames=meta.n_frames,
                       resampled=resample)
    return ItemResult(item, "done", n_frames=n, details=entry)


def _entry(item: VideoItem, path: Path, *, n_frames: int, fps: float, size: tuple[int, int],
           source_frames: int | None, resampled: bool | None) -> dict:
    return {"source": source_name(item), "source_bytes": item.src.stat().st_size, "n_frames": n_frames,
            "fps": round(fps, 6), "width": size[0], "height": size[1], "bytes": path.stat().st_size,
            "sha256": sha256_of(path), "source_frames": source_frames, "resampled": resampled}


class Manifest:
    """DST/manifest.json: the settings and the prepared videos, rewritten atomically while videos finish."""

    def __init__(self, dst_root: Path, settings: CopySettings):
        self.path = dst_root / MANIFEST_NAME
        self.settings = settings
        self.videos: dict[str, dict] = {}
        self.failed: dict[str, str] = {}
        self._written = 0.0
        if self.path.is_file():
            self._read_back()

    def _read_back(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            stored, videos = data["settings"], data["videos"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{self.path} cannot be read ({e}); move it away to prepare {self.path.parent} anew") \
                from None
        if stored != asdict(self.settings):
            changed = ", ".join(f"{k} {stored.get(k)} (now {v})" for k, v in asdict(self.settings).items()
                                if stored.get(k) != v)
            raise UserError(f"{self.path.parent} holds a copy made with other settings: {changed}; give the same "
                            f"settings, or another DST")
        self.videos = videos

    def is_prepared(self, item: VideoItem, dst_root: Path) -> bool:
        """Listed, still on disk at the recorded size, and made from a source of the recorded size."""
        entry = self.videos.get(output_name(item))
        if entry is None:
            return False
        final = output_path(dst_root, item)
        return (final.is_file() and final.stat().st_size == entry["bytes"]
                and item.src.stat().st_size == entry["source_bytes"])

    def record(self, result: ItemResult) -> None:
        name = output_name(result.item)
        if result.status == "failed":
            self.videos.pop(name, None)
            self.failed[source_name(result.item)] = result.message
        elif result.details is not None:
            self.videos[name] = result.details
            self.failed.pop(source_name(result.item), None)
        if time.monotonic() - self._written >= MANIFEST_WRITE_INTERVAL_S:
            self.write()

    def write(self) -> None:
        data = {"version": MANIFEST_VERSION, "settings": asdict(self.settings),
                "videos": dict(sorted(self.videos.items())), "failed": dict(sorted(self.failed.items()))}
        with atomic_file(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=1))
        self._written = time.monotonic()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    settings = CopySettings(short_side=args.short_side, keyframe_interval=args.keyframe_interval, fps=args.fps,
                            crf=args.crf)
    items = find_items(args.src)
    manifest = Manifest(args.dst, settings)
    manifest.write()  # the settings first: a rerun with others is refused even if nothing finished
    todo = [item for item in items if not manifest.is_prepared(item, args.dst)]
    for item in todo:
        if output_name(item) in manifest.videos:  # listed, but its source or its copy changed since: made again
            output_path(args.dst, item).unlink(missing_ok=True)
    n_jobs = resolve_n_jobs(args.n_jobs)
    worker = functools.partial(prepare_video, dst_root=args.dst, settings=settings,
                               threads=0 if n_jobs == 1 else 1)  # one process: let FFmpeg use every core
    try:
        results = run_over_videos(worker, todo, n_jobs=n_jobs, desc="prepare", on_result=manifest.record)
    except KeyboardInterrupt:
        manifest.write()
        remove_all_partials(args.dst)
        print(f"\ninterrupted: {len(manifest.videos)} prepared videos are recorded in {manifest.path}; "
              f"run the same command again to prepare the rest", file=sys.stderr)
        return 130
    manifest.write()
    return _summarize(results, n_listed=len(items) - len(todo), manifest=manifest)


def _summarize(results: Sequence[ItemResult], *, n_listed: int, manifest: Manifest) -> int:
    done = sum(r.status == "done" for r in results)
    found = sum(r.status == "skipped" for r in results)
    failed = [r for r in results if r.status == "failed"]
    total = len(results) + n_listed
    print(f"prepared {done} videos into {manifest.path.parent} ({n_listed + found} already there, "
          f"{len(failed)} failed, of {total}); manifest: {manifest.path}")
    if failed:
        print(f"{len(failed)} videos could not be prepared and were skipped (rerun to retry only these):",
              file=sys.stderr)
        for r in failed:
            print(f"  {r.item.src}: {r.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
