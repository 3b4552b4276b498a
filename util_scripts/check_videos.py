"""Pre-flight check of video files: decode every video once and flag the ones that will cause trouble.

Usage: ``python -m util_scripts.check_videos PATH_OR_ANNOTATION [--video_path DIR] [--sample_duration 16]
[--n_jobs -1] [--output REPORT.json]``

PATH is a folder (searched recursively for video files, extensions in any letter case), one video file,
or an annotation JSON file whose videos are looked up under ``--video_path`` as ``--file_type video``
does. Each video is decoded completely (in parallel, with a progress bar) and flagged when it is

- unusable: missing, unreadable, with no video stream, or with no decodable frame;
- damaged (packets that fail to decode), truncated (fewer frames or seconds than the container
  announces), rotated (a display matrix: frames are turned upright when read), of variable frame rate,
  with timestamps that cannot number the frames (duplicate or missing pts, pts in decoding order: frames
  are then numbered in the order the decoder shows them), with decoded frames no reader can number (lost),
  or shorter than ``--sample_duration`` frames (clips are then padded by repetition): warnings.

Each video is decoded the way the readers decode it (``datasets.video_files.stream_frames``), so the frame
count is what extraction, ``--file_type video`` and ``--predict`` get.

Flagged videos are printed as a table and every video is written to the JSON report (default: beside the input,
``my_videos_check_videos.json`` for ``my_videos/``, ``kinetics_700_check_videos.json`` for ``kinetics_700.json``).
Exit status:
1 when any video is unusable, 0 otherwise (warnings do not fail), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from datasets.annotations import candidate_paths, load_annotation
from datasets.layout import find_video_file
from datasets.layout import has_video_extension as is_video_file
from datasets.video_files import TRUNCATION_SLACK, is_truncated, scan_video
from errors import UserError
from util_scripts.common import (
    ItemResult,
    VideoItem,
    atomic_file,
    beside_input,
    check_writable_file,
    find_video_files,
    run_cli,
    run_over_videos,
)

UNUSABLE = ("missing", "unreadable", "no_video_stream", "no_decodable_frame")
REPORT_TAIL = "_check_videos.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a folder of videos (recursive), a video file, or an annotation JSON")
    parser.add_argument("--video_path", type=Path, default=None,
                        help="root folder of the videos named by an annotation file (as in training)")
    parser.add_argument("--sample_duration", type=int, default=16,
                        help="frames per clip: shorter videos are flagged (default 16)")
    parser.add_argument("--n_jobs", type=int, default=-1, help="parallel processes (-1: all CPU cores)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"JSON report of every video (default: <path>{REPORT_TAIL} beside the input)")
    return parser


def folder_videos(root: Path) -> list[VideoItem]:
    return [VideoItem(p, p.relative_to(root)) for p in find_video_files(root)]


def annotated_videos(annotation_path: Path, video_root: Path) -> list[VideoItem]:
    """Every video the annotation file names (all subsets), found as `--file_type video` finds them; a
    missing one gets a path that does not exist (it is reported as missing)."""
    data = load_annotation(annotation_path)
    database = data.get("database")
    if not isinstance(database, dict):
        raise UserError(f"annotation file {annotation_path} has no 'database' object")
    dataset = "activitynet" if "taxonomy" in data else "kinetics"
    items = []
    for video_id, entry in database.items():
        if not isinstance(entry, dict):
            continue
        ann = entry.get("annotations")
        label = ann.get("label") if isinstance(ann, dict) and dataset != "activitynet" else None
        candidates = candidate_paths(video_root, video_id, entry, label, dataset=dataset, file_type="video")
        found = next((p for c in candidates if (p := find_video_file(c)) is not None), None)
        items.append(VideoItem(found or candidates[0], Path(video_id)))
    return items


def find_items(path: Path, video_path: Path | None) -> list[VideoItem]:
    if path.is_dir():
        items = folder_videos(path)
        if not items:
            raise UserError(f"no video files under {path}")
        return items
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".json":
        if video_path is None:
            raise UserError("an annotation file needs --video_path (the root folder of its videos)")
        items = annotated_videos(path, video_path)
        if not items:
            raise UserError(f"annotation file {path} names no videos")
        return items
    if not is_video_file(path):
        raise UserError(f"{path} is neither a folder, a video file nor an annotation .json")
    return [VideoItem(path, Path(path.name))]


def check_video(item: VideoItem, *, sample_duration: int, threads: int = 1) -> ItemResult:
    """Decode one video and list what is wrong with it (never raises for a bad file)."""
    if not item.src.is_file():
        return ItemResult(item, "done", details={"path": str(item.src), "kinds": ["missing"],
                                                 "problems": ["missing: no such video file"]})
    scan = scan_video(item.src, threads=threads)
    kinds, problems = assess(asdict(scan), sample_duration=sample_duration)
    return ItemResult(item, "done", n_frames=scan.n_decoded,
                      details={**asdict(scan), "kinds": kinds, "problems": problems})


def assess(scan: dict, *, sample_duration: int) -> tuple[list[str], list[str]]:
    """(kinds, human-readable problems) of one `VideoScan` (as a dict)."""
    if scan["no_video_stream"]:
        return ["no_video_stream"], ["no video stream"]
    if scan["error"]:
        return ["unreadable"], [f"unreadable: {scan['error']}"]
    if scan["n_decoded"] == 0:
        return ["no_decodable_frame"], [f"no decodable frame ({scan['n_frames']} in the container)"]
    found: list[tuple[str, str]] = []
    n, n_decoded = scan["n_frames"], scan["n_decoded"]
    if scan["decode_errors"] or n_decoded < n:
        found.append(("damaged", f"damaged: {scan['decode_errors']} packet(s) failed to decode, "
                                 f"{n_decoded} of {n} frames decoded"))
    if _truncated(scan):
        claimed = f"{scan['claimed_frames']} frames, " if scan["claimed_frames"] else ""
        found.append(("truncated", f"truncated: {n} frames, {scan['duration']:.2f} s of the announced "
                                   f"{claimed}{scan['claimed_duration']:.2f} s"))
    if scan["rotation"]:
        found.append(("rotated", f"rotated {scan['rotation']} degrees (read upright as "
                                 f"{scan['width']}x{scan['height']})"))
    if scan["vfr"]:
        found.append(("vfr", f"variable frame rate (average {scan['fps']:.2f} fps)"))
    if scan["timestamp_fault"]:
        found.append(("timestamps", f"timestamps: {scan['timestamp_fault']}; frames are numbered in the order the "
                                    f"decoder shows them"))
    if scan["unnumbered"]:
        found.append(("lost_frames", f"lost frames: {scan['unnumbered']} decoded frame(s) fit no frame number and "
                                     f"are skipped by every reader"))
    if n_decoded < sample_duration:
        found.append(("short", f"shorter than --sample_duration ({n_decoded} < {sample_duration} frames)"))
    return [k for k, _ in found], [p for _, p in found]


def _truncated(scan: dict) -> bool:
    """Seconds missing from the announced duration; without one, frames missing from the announced count
    (frame counts alone would also flag sparse AVI files, whose announced count includes skipped frames)."""
    if scan["claimed_duration"] > 0:
        return is_truncated(scan["claimed_duration"], scan["duration"], scan["fps"])
    n, claimed_n = scan["n_frames"], scan["claimed_frames"]
    return bool(claimed_n) and claimed_n - n > max(2, TRUNCATION_SLACK * claimed_n)


def _status(kinds: Sequence[str]) -> str:
    if any(k in UNUSABLE for k in kinds):
        return "UNUSABLE"
    return "warning" if kinds else "ok"


def print_table(rows: Sequence[dict], total: int) -> None:
    flagged = [r for r in rows if r["kinds"]]
    if flagged:
        width = min(60, max(len(r["video"]) for r in flagged))
        print(f"{'video':<{width}}  {'status':<8}  {'frames':>7}  problems")
        for r in flagged:
            frames = str(r.get("n_decoded", "-"))
            print(f"{r['video']:<{width}}  {r['status']:<8}  {frames:>7}  {'; '.join(r['problems'])}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "warning", "UNUSABLE")}
    print(f"{total} videos checked: {counts['ok']} ok, {counts['warning']} with warnings, "
          f"{counts['UNUSABLE']} unusable")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sample_duration < 1:
        raise UserError(f"--sample_duration must be at least 1, got {args.sample_duration}")
    items = find_items(args.path, args.video_path)
    output = args.output or beside_input(args.path, REPORT_TAIL)
    check_writable_file(output, what="--output")  # before decoding every video, not after
    worker = functools.partial(check_video, sample_duration=args.sample_duration,
                               threads=0 if args.n_jobs == 1 else 1)  # one process: let FFmpeg use every core
    results = run_over_videos(worker, items, n_jobs=args.n_jobs, desc="check")
    rows = [_row(r) for r in results]
    print_table(rows, len(items))
    report = {"checked": len(rows), "unusable": sum(r["status"] == "UNUSABLE" for r in rows),
              "warnings": sum(r["status"] == "warning" for r in rows), "videos": rows}
    with atomic_file(output) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    print(f"report written to {output}", file=sys.stderr)
    return 1 if report["unusable"] else 0


def _row(result: ItemResult) -> dict:
    details = dict(result.details or {"path": str(result.item.src), "kinds": ["unreadable"],
                                      "problems": [f"unreadable: {result.message}"]})
    return {"video": str(result.item.rel), "status": _status(details["kinds"]), **details}


if __name__ == "__main__":
    run_cli(main)
