"""Build the HMDB-51 annotation JSONs (one per official split) from the split files.

Usage: ``python -m util_scripts.hmdb51_json SPLIT_DIR VIDEO_PATH DST_DIR [--video_type jpg]``

``SPLIT_DIR`` holds the official ``<class>_test_split<K>.txt`` files ("<video>.avi <id>" lines;
id 1 = training, 2 = testing, used as validation, 0 = not in this split). For every split K
present, writes ``DST_DIR/hmdb51_K.json``; labels are the sorted class names.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from errors import UserError
from util_scripts.annotations import annotation_tool_parser, read_lines, write_split_json
from util_scripts.common import run_cli

SPLIT_FILE = re.compile(r"^(?P<label>.+)_test_split(?P<split>[123])\.txt$")
SUBSET_OF_ID = {"1": "training", "2": "validation", "0": None}


def find_split_files(dir_path: Path) -> dict[int, dict[str, Path]]:
    """{split: {label: file}} of the split files in ``dir_path``."""
    if not dir_path.is_dir():
        raise UserError(f"HMDB-51 split folder not found: {dir_path}")
    splits: dict[int, dict[str, Path]] = {}
    for path in sorted(dir_path.iterdir()):
        match = SPLIT_FILE.match(path.name)
        if match:
            splits.setdefault(int(match["split"]), {})[match["label"]] = path
    if not splits:
        raise UserError(f"no '<class>_test_split<K>.txt' files in {dir_path}")
    return splits


def read_split_file(path: Path, label: str) -> list[tuple[str, str, str, str]]:
    """(video_id, subset, label, where) of the videos of one class file that belong to the split."""
    rows = []
    for line_no, line in enumerate(read_lines(path, what="HMDB-51 split file"), start=1):
        parts = line.split()
        if len(parts) != 2 or parts[1] not in SUBSET_OF_ID:
            raise UserError(f"{path}:{line_no}: expected '<video>.avi <0|1|2>', got {line!r}")
        if SUBSET_OF_ID[parts[1]] is not None:
            rows.append((parts[0].split(".")[0], SUBSET_OF_ID[parts[1]], label, f"{path}:{line_no}"))
    return rows


def build_parser() -> argparse.ArgumentParser:
    return annotation_tool_parser(__doc__.splitlines()[0], [
        ("dir_path", "folder of the <class>_test_split<K>.txt files"),
        ("video_path", "root of the converted videos (<class>/<video>)"),
        ("dst_dir_path", "output FOLDER for hmdb51_K.json")], video_type=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    splits = find_split_files(args.dir_path)
    labels = sorted({label for files in splits.values() for label in files})
    for k, files in sorted(splits.items()):
        missing = sorted(set(labels) - set(files))
        if missing:
            raise UserError(f"split {k} lacks the file(s) of class(es) {', '.join(missing[:5])} in {args.dir_path}")
        rows = [row for label in labels for row in read_split_file(files[label], label)]
        rows.sort(key=lambda row: row[1] != "training")  # training first, then validation (stable)
        dst = args.dst_dir_path / f"hmdb51_{k}.json"
        write_split_json(dst, labels, rows, video_path=args.video_path, video_type=args.video_type, desc=f"split {k}")
    return 0


if __name__ == "__main__":
    run_cli(main)
