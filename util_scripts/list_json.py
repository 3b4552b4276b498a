"""Build an annotation JSON from train/validation list files of "path label [start end]" lines.

Usage: ``python -m util_scripts.list_json TRAIN_LIST VAL_LIST ROOT OUT.json [--class_names FILE]``

Each line: a video path relative to ROOT (a file, or a frame folder), its label, and optionally the
start and end of a segment in seconds; columns separated by commas (then a path may hold spaces) or
by white space. The label is a class name, or with ``--class_names FILE`` (one name per line) also a
0-based index into that file. Blank lines and ``#`` comments are skipped, and so is a CSV header as
the first line. Classes: the ``--class_names`` file in its order, else the labels seen, sorted
(numerically when all are numbers). Entry ids are the paths (``<path>#t=<start>,<end>`` for segments).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets.annotations import check_unique_names
from errors import UserError
from util_scripts.annotations import (
    annotation_tool_parser,
    make_entry,
    read_lines,
    read_text,
    write_located_json,
)
from util_scripts.common import run_cli

# first column names that mark a CSV header line
HEADER_NAMES = {"path", "video", "video_path", "filename", "file", "name", "id", "video_id", "clip", "filepath"}


@dataclass(frozen=True)
class ListItem:
    path: str
    label: str  # as written: a name or an index
    segment: tuple[float, float] | None
    where: str  # file:line


def _fields(line: str) -> list[str]:
    return [f.strip() for f in line.split(",")] if "," in line else line.split()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_header(fields: list[str]) -> bool:
    """A first line naming columns: a usual column name first, or words where the seconds go."""
    return fields[0].lower() in HEADER_NAMES or any(not _is_number(f) for f in fields[2:4])


def parse_line(fields: list[str], where: str) -> ListItem:
    if len(fields) not in (2, 4) or not all(fields):
        raise UserError(f"{where}: expected 'path label' or 'path label start end', got {', '.join(fields)!r}")
    path, label = fields[0], fields[1]
    segment = None
    if len(fields) == 4:
        try:
            start, end = float(fields[2]), float(fields[3])
        except ValueError:
            raise UserError(f"{where}: start and end must be seconds, got {fields[2]!r} {fields[3]!r}") from None
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
            raise UserError(f"{where}: segment needs 0 <= start < end seconds, got {start:g} {end:g}")
        segment = (start, end)
    return ListItem(path, label, segment, where)


def read_list(path: Path) -> list[ListItem]:
    """Items of a list file, in file order."""
    lines = read_text(path, what="list file").splitlines()
    items, first = [], True
    for line_no, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = _fields(line)
        if first and _is_header(fields):
            first = False
            continue
        first = False
        items.append(parse_line(fields, f"{path}:{line_no}"))
    return items


def resolve_labels(items: list[ListItem], class_names: list[str] | None) -> tuple[list[str], list[str]]:
    """(class list, label name of each item); UserError naming file:line for an unknown index or name."""
    if class_names is None:
        seen = {item.label for item in items}
        numeric = all(label.isdigit() for label in seen)
        return sorted(seen, key=int if numeric else str), [item.label for item in items]
    known = set(class_names)
    names = []
    for item in items:
        if item.label in known:
            names.append(item.label)
        elif item.label.isdigit() and int(item.label) < len(class_names):
            names.append(class_names[int(item.label)])
        else:
            raise UserError(f"{item.where}: label {item.label!r} is neither a class name nor an index "
                            f"0..{len(class_names) - 1} of the --class_names file")
    return class_names, names


def entry_id(item: ListItem) -> str:
    return item.path if item.segment is None else f"{item.path}#t={item.segment[0]:g},{item.segment[1]:g}"


def build_database(rows: list[tuple[ListItem, str, str]]) -> dict:
    """Database of (item, subset, label name) rows; UserError for an entry listed twice."""
    database, where = {}, {}
    for item, subset, label in rows:
        key = entry_id(item)
        if key in database:
            raise UserError(f"{item.where}: {key!r} is listed twice (also at {where[key]})")
        entry = make_entry(subset, label, None, video_path=item.path)
        if item.segment is not None:
            entry["annotations"]["segment_seconds"] = list(item.segment)
        database[key], where[key] = entry, item.where
    return database


def read_class_names(path: Path) -> list[str]:
    names = read_lines(path, what="class names file")
    check_unique_names(names, where=str(path))
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = annotation_tool_parser(__doc__, [
        ("train_list", "list file of the training videos"), ("val_list", "list file of the validation videos"),
        ("root", "folder the list paths are relative to (main.py's --video_path)"),
        ("dst_path", "output annotation JSON")])
    parser.add_argument("--class_names", type=Path, default=None,
                        help="class names, one a line: fixes the class order and lets labels be 0-based indices")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    class_names = read_class_names(args.class_names) if args.class_names is not None else None
    train, val = read_list(args.train_list), read_list(args.val_list)
    if not train:
        raise UserError(f"{args.train_list}: no entries")
    labels, names = resolve_labels(train + val, class_names)
    subsets = ["training"] * len(train) + ["validation"] * len(val)
    database = build_database(list(zip(train + val, subsets, names)))
    write_located_json(args.dst_path, labels, database, video_path=args.root)
    return 0


if __name__ == "__main__":
    run_cli(main)
