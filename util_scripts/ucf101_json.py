"""Build the UCF-101 annotation JSONs (one per official split) from the split files.

Usage: ``python -m util_scripts.ucf101_json SPLIT_DIR VIDEO_PATH DST_DIR [--video_type jpg]``

``SPLIT_DIR`` holds ``classInd.txt`` ("<index> <Class>" lines) and ``trainlist0K.txt`` /
``testlist0K.txt`` ("<Class>/v_<Class>_gXX_cYY.avi [index]" lines). For every split K whose
two lists exist, writes ``DST_DIR/ucf101_0K.json``: train list -> training, test list ->
validation, labels in classInd order, segments from ``VIDEO_PATH/<Class>/<video>``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from datasets.annotations import check_unique_names
from errors import UserError
from util_scripts.annotations import (
    annotation_tool_parser,
    read_lines,
    write_split_json,
)
from util_scripts.common import run_cli

SPLITS = (1, 2, 3)


def read_class_index(path: Path) -> list[str]:
    """Class names of classInd.txt in file order."""
    labels = []
    for line_no, line in enumerate(read_lines(path, what="UCF-101 class index"), start=1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise UserError(f"{path}:{line_no}: expected '<index> <ClassName>', got {line!r}")
        labels.append(parts[1])
    check_unique_names(labels, where=str(path))
    return labels


def read_list(path: Path, subset: str) -> list[tuple[str, str, str, str]]:
    """(video_id, subset, label, where) of a train/test list."""
    rows = []
    for line_no, line in enumerate(read_lines(path, what=f"UCF-101 {subset} list"), start=1):
        name = line.split()[0]
        if "/" not in name:
            raise UserError(f"{path}:{line_no}: expected '<Class>/<video>.avi', got {line!r}")
        label, file_name = name.rsplit("/", 1)
        rows.append((file_name.split(".")[0], subset, label, f"{path}:{line_no}"))
    return rows


def build_parser() -> argparse.ArgumentParser:
    return annotation_tool_parser(__doc__.splitlines()[0], [
        ("dir_path", "folder of classInd.txt, trainlist0K.txt, testlist0K.txt"),
        ("video_path", "root of the converted videos (<Class>/<video>)"),
        ("dst_path", "output FOLDER for ucf101_0K.json")], video_type=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels = read_class_index(args.dir_path / "classInd.txt")
    splits = [k for k in SPLITS if all((args.dir_path / f"{n}list0{k}.txt").is_file() for n in ("train", "test"))]
    if not splits:
        raise UserError(f"no split found in {args.dir_path}: expected trainlist01.txt and testlist01.txt (or 02, 03)")
    for k in splits:
        rows = read_list(args.dir_path / f"trainlist0{k}.txt", "training")
        rows += read_list(args.dir_path / f"testlist0{k}.txt", "validation")
        dst = args.dst_path / f"ucf101_0{k}.json"
        write_split_json(dst, labels, rows, video_path=args.video_path, video_type=args.video_type, desc=f"split {k}")
    return 0


if __name__ == "__main__":
    run_cli(main)
