"""Build the Moments in Time annotation JSON from the official category and CSV files.

Usage: ``python -m util_scripts.mit_json DIR VIDEO_PATH DST_JSON [--video_type jpg]``

``DIR`` holds ``moments_categories.txt`` ("<label>,<index>" lines), ``trainingSet.csv`` and
``validationSet.csv`` ("<label>/<file>.mp4,<label>,..." rows, no header) and optionally
``testingSet.csv`` ("<file>.mp4" rows). Video ids are the file stems; segments come from
``VIDEO_PATH/<label>/<id>`` (test videos: ``VIDEO_PATH/test/<id>``).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from datasets.annotations import check_unique_names
from errors import UserError
from util_scripts.annotations import (
    annotation_tool_parser,
    existing_splits,
    read_lines,
    write_split_json,
)
from util_scripts.common import run_cli

SPLITS = (("trainingSet.csv", "training"), ("validationSet.csv", "validation"), ("testingSet.csv", "testing"))


def read_categories(path: Path) -> list[str]:
    """Labels in file order (first comma-separated column)."""
    labels = [line.split(",")[0].strip() for line in read_lines(path, what="Moments in Time category file")]
    check_unique_names(labels, where=str(path))
    return labels


def read_split(path: Path, subset: str) -> list[tuple[str, str, str | None, str]]:
    """(video_id, subset, label or None, where) rows of one split CSV."""
    read_lines(path, what=f"Moments in Time {subset} CSV")  # clear error if missing
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or not row[0].strip():
                continue
            where = f"{path}:{line_no}"
            label = None
            if subset != "testing":
                if len(row) < 2 or not row[1].strip():
                    raise UserError(f"{where}: expected '<label>/<file>.mp4,<label>,...', got {','.join(row)!r}")
                label = row[1].strip()
            rows.append((PurePosixPath(row[0].strip()).stem, subset, label, where))
    return rows


def build_parser() -> argparse.ArgumentParser:
    return annotation_tool_parser(__doc__.splitlines()[0], [
        ("dir_path", "folder of moments_categories.txt and the split CSVs"),
        ("video_path", "root of the converted videos (<label>/<id>)"),
        ("dst_path", "output JSON file")], video_type=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels = read_categories(args.dir_path / "moments_categories.txt")
    split_files = [(args.dir_path / file_name, subset) for file_name, subset in SPLITS]
    rows = [row for path, subset in existing_splits(split_files) for row in read_split(path, subset)]
    write_split_json(args.dst_path, labels, rows, video_path=args.video_path, video_type=args.video_type, desc="mit")
    return 0


if __name__ == "__main__":
    run_cli(main)
