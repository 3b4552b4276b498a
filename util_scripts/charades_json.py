"""Build the Charades (v1) multi-label annotation JSON from the official CSV files.

Usage: ``python -m util_scripts.charades_json CHARADES_DIR VIDEO_DIR OUT.json``

``CHARADES_DIR`` holds ``Charades_v1_classes.txt`` ("c000 Holding some clothes" lines) and
``Charades_v1_train.csv`` / ``Charades_v1_test.csv`` (columns id, ..., actions, length; actions =
"c092 11.90 21.20;c147 0.00 12.60", possibly empty). Train -> training; test -> validation (the
Charades test set is its labelled evaluation set). Every entry keeps all its actions with their
spans in seconds (``annotations.actions``), the video's ``duration`` in seconds (from ``length``),
and a primary ``annotations.label`` for single-label readers: its longest action (the first listed
of equal ones). A video without actions has ``actions: []`` and no label. Videos:
``VIDEO_DIR/<id>.mp4`` (or a frame folder ``<id>/``); each entry's ``video_path`` is ``<id>``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from datasets.annotations import check_unique_names
from errors import UserError
from util_scripts.annotations import annotation_tool_parser, make_entry, read_csv_rows, read_lines, write_located_json
from util_scripts.common import run_cli

CSV_SUBSETS = (("Charades_v1_train.csv", "training"), ("Charades_v1_test.csv", "validation"))
CLASSES_FILE = "Charades_v1_classes.txt"


def read_classes(path: Path) -> dict[str, str]:
    """Class code ('c000') -> name, in file order."""
    pairs = []
    for line_no, line in enumerate(read_lines(path, what="Charades class list"), start=1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise UserError(f"{path}:{line_no}: expected '<code> <class name>', got {line!r}")
        pairs.append((parts[0], parts[1]))
    for column in zip(*pairs):  # a code or a name twice would merge two classes
        check_unique_names(list(column), where=str(path))
    return dict(pairs)


def parse_actions(text: str, classes: dict[str, str], where: str) -> list[dict]:
    """'c092 11.90 21.20;c147 0.00 12.60' -> [{"label": name, "segment_seconds": [11.9, 21.2]}, ...]."""
    actions = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        fields = part.split()
        try:
            code, start, end = fields[0], float(fields[1]), float(fields[2])
        except (IndexError, ValueError):
            raise UserError(f"{where}: expected actions like 'c092 11.90 21.20;...', got {part!r}") from None
        if code not in classes or len(fields) != 3:
            raise UserError(f"{where}: unknown action class {code!r} in {part!r}")
        actions.append({"label": classes[code], "segment_seconds": [start, end]})
    return actions


def primary_label(actions: list[dict]) -> str | None:
    """The longest action's class (the first of equally long ones); None without actions."""
    if not actions:
        return None
    return max(actions, key=lambda a: a["segment_seconds"][1] - a["segment_seconds"][0])["label"]


def read_subset(path: Path, subset: str, classes: dict[str, str]) -> dict[str, dict]:
    database = {}
    rows = read_csv_rows(path, what="Charades CSV", required=("id", "actions", "length"))
    for row_no, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path}:{row_no}"
        video_id = row["id"]
        if not video_id or video_id in database:
            raise UserError(f"{where}: {'empty' if not video_id else 'repeated'} id {video_id!r}")
        try:
            duration = float(row["length"])
        except ValueError:
            raise UserError(f"{where}: length {row['length']!r} is not seconds") from None
        actions = parse_actions(row["actions"], classes, where)
        entry = make_entry(subset, primary_label(actions), None, video_path=video_id)
        entry["duration"] = duration
        entry["annotations"]["actions"] = actions
        database[video_id] = entry
    return database


def build_parser() -> argparse.ArgumentParser:
    return annotation_tool_parser(__doc__, [
        ("charades_dir", "folder of Charades_v1_{train,test}.csv and _classes.txt"),
        ("video_path", "folder of the videos <id>.mp4 (main.py's --video_path)"),
        ("dst_path", "output annotation JSON")])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    classes = read_classes(args.charades_dir / CLASSES_FILE)
    database = {}
    for name, subset in CSV_SUBSETS:
        part = read_subset(args.charades_dir / name, subset, classes)
        twice = next((video_id for video_id in part if video_id in database), None)
        if twice is not None:
            raise UserError(f"video {twice} is in both Charades CSV files")
        database.update(part)
    write_located_json(args.dst_path, list(classes.values()), database, video_path=args.video_path)
    n_empty = sum(not entry["annotations"]["actions"] for entry in database.values())
    if n_empty:
        print(f"note: {n_empty} videos have no action (no 'label'; a single-label reader gives them -1)")
    return 0


if __name__ == "__main__":
    run_cli(main)
