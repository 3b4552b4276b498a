"""Add each video's frame rate to the official ActivityNet JSON.

Usage: ``python -m util_scripts.add_fps_into_activitynet_json VIDEO_DIR JSON_PATH [DST_JSON_PATH]``

For every ``VIDEO_DIR/v_<id>.mp4`` (sorted), sets ``database[<id>]['fps']`` to the stream's
average frame rate rounded to 2 decimals (the value ``ffprobe`` prints, e.g. 29.97), read
with PyAV. Writes DST_JSON_PATH (default: overwrite JSON_PATH) atomically. Unreadable videos
and videos absent from the JSON are reported; the exit code is 1 if a video was unreadable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import av
from tqdm import tqdm

from datasets.annotations import load_annotation
from datasets.layout import RAW_VIDEO_EXTENSION, has_video_extension
from errors import UserError
from util_scripts.common import atomic_file, run_cli


def read_fps(path: Path) -> float:
    """Average frame rate of the first video stream, rounded to 2 decimals."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        rate = container.streams.video[0].average_rate or container.streams.video[0].guessed_rate
        if not rate:
            raise ValueError("unknown frame rate")
        return round(float(rate), 2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video_dir", type=Path, help="folder of the v_<id>.mp4 videos")
    parser.add_argument("json_path", type=Path, help="official ActivityNet JSON")
    parser.add_argument("dst_json_path", type=Path, nargs="?", help="output JSON (default: overwrite json_path)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = load_annotation(args.json_path)  # UserError when missing, not JSON or without 'database'
    if not args.video_dir.is_dir():
        raise UserError(f"video folder not found: {args.video_dir}")
    ext = RAW_VIDEO_EXTENSION["activitynet"]
    videos = sorted(p for p in args.video_dir.iterdir()
                    if p.is_file() and has_video_extension(p, (ext,)) and not p.name.startswith("."))
    failed, unknown, n_set = [], [], 0
    for path in tqdm(videos, desc="fps", unit="video", mininterval=0.5):
        video_id = path.stem[2:] if path.stem.startswith("v_") else path.stem
        if video_id not in data["database"]:
            unknown.append(path.name)
            continue
        try:
            data["database"][video_id]["fps"] = read_fps(path)
            n_set += 1
        except Exception as e:  # report every unreadable video, keep going
            failed.append(f"{path}: {type(e).__name__}: {e}")
    dst = args.dst_json_path or args.json_path
    with atomic_file(dst) as tmp:
        tmp.write_text(json.dumps(data), encoding="utf-8")
    print(f"wrote {dst}: fps set for {n_set} of {len(videos)} videos")
    if unknown:
        print(f"warning: {len(unknown)} videos are not in the JSON, e.g. {unknown[0]}", file=sys.stderr)
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
