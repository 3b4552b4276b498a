"""Build the Something-Something v2 annotation JSON from the official annotation files.

Usage: ``python -m util_scripts.ssv2_json ANNOTATION_DIR VIDEO_DIR OUT.json``

``ANNOTATION_DIR`` holds ``something-something-v2-labels.json`` ({"Template name": "index"}) and
``something-something-v2-train.json`` / ``-validation.json`` / ``-test.json`` (lists of {"id",
"template": "Putting [something] on [something]", ...}; test entries have only "id"; the test file
is optional). The class is the template without its brackets ("Putting something on something"),
classes are in labels.json's index order; train -> training, validation -> validation, test ->
testing (no label). Videos: ``VIDEO_DIR/<id>.webm`` (or any common extension, or a frame folder
``<id>/``); each entry's ``video_path`` is ``<id>``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from errors import UserError
from util_scripts.annotations import annotation_tool_parser, existing_splits, make_entry, write_located_json
from util_scripts.common import run_cli

PREFIX = "something-something-v2-"
SUBSET_FILES = (("train", "training"), ("validation", "validation"), ("test", "testing"))


def load_json(path: Path, what: str):
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def read_labels(path: Path) -> list[str]:
    """Class names ordered by their index in labels.json."""
    data = load_json(path, "SSv2 labels file")
    try:
        by_index = {int(index): name for name, index in data.items()}
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{path}: expected {{\"Template name\": \"index\", ...}}") from None
    if sorted(by_index) != list(range(len(data))):
        raise UserError(f"{path}: the indices are not 0..{len(data) - 1}, each once")
    return [by_index[i] for i in range(len(by_index))]


def template_class(template: str) -> str:
    """'Putting [something] on [something]' -> 'Putting something on something' (the labels.json name)."""
    return template.replace("[", "").replace("]", "")


def read_subset(path: Path, subset: str, known: set[str]) -> list[tuple[str, str | None]]:
    """(video id, class or None) of a train/validation/test file, in file order."""
    data = load_json(path, f"SSv2 {subset} file")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of {{\"id\": ..., \"template\": ...}} objects")
    rows = []
    for n, item in enumerate(data):
        if not isinstance(item, dict) or "id" not in item:
            raise UserError(f"{path}: item {n} has no 'id'")
        label = None
        if subset != "testing":
            if "template" not in item:
                raise UserError(f"{path}: video {item['id']} has no 'template'")
            label = template_class(item["template"])
            if label not in known:
                raise UserError(f"{path}: video {item['id']} has template {item['template']!r}, "
                                "which is not in the labels file")
        rows.append((str(item["id"]), label))
    return rows


def build_parser() -> argparse.ArgumentParser:
    return annotation_tool_parser(__doc__, [
        ("annotation_dir", f"folder of the official {PREFIX}*.json files"),
        ("video_path", "folder of the videos <id>.webm (main.py's --video_path)"),
        ("dst_path", "output annotation JSON")])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels = read_labels(args.annotation_dir / f"{PREFIX}labels.json")
    database = {}
    # The test list is optional: training needs only train and validation.
    subset_files = [(args.annotation_dir / f"{PREFIX}{name}.json", subset) for name, subset in SUBSET_FILES]
    for path, subset in existing_splits(subset_files):
        for video_id, label in read_subset(path, subset, set(labels)):
            if video_id in database:
                raise UserError(f"{path}: video {video_id} is listed twice")
            database[video_id] = make_entry(subset, label, None, video_path=video_id)
    write_located_json(args.dst_path, labels, database, video_path=args.video_path)
    return 0


if __name__ == "__main__":
    run_cli(main)
