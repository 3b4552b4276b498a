"""Build the annotation JSON of Kinetics-400/600/700 from the official CSV files.

Usage: ``python -m util_scripts.kinetics_json CSV_DIR N_CLASSES VIDEO_PATH VIDEO_TYPE DST_JSON``

Reads ``CSV_DIR/kinetics-<N>_train.csv``, ``..._val.csv`` and, if present, ``..._test.csv``
(columns label, youtube_id, time_start, time_end; the test file has no label). Video ids are
``<youtube_id>_<time_start:06d>_<time_end:06d>``; labels are the training labels in order of
first appearance. A segment is written for every video found under
``VIDEO_PATH/<label or test>/<id>`` (jpg folder) or ``.../<id>.hdf5``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from datasets.layout import CONVERTED_FILE_TYPES, SUBSET_NAMES
from errors import UserError
from util_scripts.annotations import existing_splits, read_csv_rows, write_split_json
from util_scripts.common import run_cli

ID_COLUMNS = ("youtube_id", "time_start", "time_end")


def video_id(row: dict[str, str], where: str) -> str:
    """``<youtube_id>_<start:06d>_<end:06d>``, the name the downloaded clips carry."""
    try:
        start, end = (int(float(row[c])) for c in ("time_start", "time_end"))
    except ValueError:
        raise UserError(
            f"{where}: time_start/time_end must be numbers, got {row['time_start']!r}, {row['time_end']!r}"
        ) from None
    if not row["youtube_id"]:
        raise UserError(f"{where}: empty youtube_id")
    return f"{row['youtube_id']}_{start:06d}_{end:06d}"


def read_split(csv_path: Path, subset: str) -> list[tuple[str, str, str | None, str]]:
    """(video_id, subset, label or None, where) rows of one split file."""
    labelled = subset != "testing"
    required = (("label",) if labelled else ()) + ID_COLUMNS
    rows = read_csv_rows(csv_path, what=f"Kinetics {subset} CSV", required=required)
    out = []
    for line_no, row in enumerate(rows, start=2):
        where = f"{csv_path}:{line_no}"
        label = (row.get("label") or None) if labelled else None
        if labelled and label is None:
            raise UserError(f"{where}: empty label in a {subset} row")
        out.append((video_id(row, where), subset, label, where))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir_path", type=Path, help="folder of the kinetics-<N>_{train,val,test}.csv files")
    parser.add_argument("n_classes", type=int, choices=(400, 600, 700), help="Kinetics version")
    parser.add_argument("video_path", type=Path, help="root of the converted videos (<label>/<id>)")
    parser.add_argument("video_type", choices=CONVERTED_FILE_TYPES, help="jpg folders or hdf5 files")
    parser.add_argument("dst_path", type=Path, help="output JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix = args.dir_path / f"kinetics-{args.n_classes}"
    csv_files = [(Path(f"{prefix}_{split}.csv"), subset) for split, subset in SUBSET_NAMES.items()]
    rows = [row for csv_path, subset in existing_splits(csv_files) for row in read_split(csv_path, subset)]
    labels = list(dict.fromkeys(label for _, subset, label, _ in rows if subset == "training"))
    write_split_json(
        args.dst_path, labels, rows, video_path=args.video_path, video_type=args.video_type, desc="kinetics"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
