"""Shared pieces of the annotation JSON generators (kinetics_json, ucf101_json, ...).

The JSON they write: ``{"labels": [...], "database": {video_id: entry}}`` with
``entry = {"subset": "training"|"validation"|"testing", "annotations": {"label": name,
"segment": [begin, end]}}``. Testing entries have no label. The segment is only written when
the converted video exists: ``[1, n_frames + 1]`` for a jpg folder, ``[0, n_frames]`` for an
hdf5 file. A video without a segment is skipped by the dataset, so missing videos are counted
and reported instead of stopping the script.

The generators for data in any layout (folder_json, list_json, ssv2_json, charades_json) add
``entry["video_path"]``: the video's path relative to the video root (``--video_path``), POSIX
separators; see each script for the extra fields it writes.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from datasets.file_types import FILE_READERS
from datasets.layout import CONVERTED_FILE_TYPES, find_video_file
from errors import UserError
from util_scripts.common import atomic_file, check_writable_file

TEST_DIR = "test"  # where the generators expect unlabelled test videos: <video_path>/test/<id>
def read_text(path: Path, *, what: str) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped; line endings kept); UserError if it is missing
    or not UTF-8, naming the line of the first bad byte."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)  # as Excel and Notepad save UTF-8
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the {what} as UTF-8") \
            from None


def read_lines(path: Path, *, what: str) -> list[str]:
    """Non-empty, stripped lines of a text file (any line ending); UserError if it is missing or not UTF-8."""
    return [line.strip() for line in read_text(path, what=what).splitlines() if line.strip()]


def read_csv_rows(path: Path, *, what: str, required: Iterable[str]) -> list[dict[str, str]]:
    """Rows of a CSV file with a header line; UserError if missing, not UTF-8 or a required column is absent."""
    reader = csv.DictReader(io.StringIO(read_text(path, what=what), newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in required if c not in columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} in header {columns}")
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def find_segment(video_path: Path, label_dir: str, video_id: str, video_type: str) -> list[int] | None:
    """[begin, end) frame segment of a converted video, or None if it does not exist (yet).

    UserError when the video exists but cannot be read: a broken conversion should stop the script.
    """
    reader_class = FILE_READERS[video_type]
    location = reader_class.location(Path(video_path, label_dir, video_id))
    if not reader_class.is_stored(location):
        return None
    begin = reader_class.first_frame
    return [begin, begin + reader_class().count_frames(location)]


def make_entry(subset: str, label: str | None, segment: list[int] | None, *, video_path: str | None = None) -> dict:
    """One database entry; testing videos (label None) get annotations without 'label'.

    `video_path`: the entry's own location relative to the video root (written only when given).
    """
    annotations = {} if label is None else {"label": label}
    if segment is not None:
        annotations["segment"] = segment
    entry = {"subset": subset}
    if video_path is not None:
        entry["video_path"] = video_path
    entry["annotations"] = annotations
    return entry


def video_exists(root: Path, rel: str) -> bool:
    """Whether <root>/<rel> is there as a file, a frame folder, or <rel>.<ext> for a common video extension."""
    path = Path(root) / rel
    return path.exists() or find_video_file(path) is not None


def count_missing(root: Path, database: dict, *, desc: str) -> int:
    """How many entries' `video_path` does not exist under `root` (a progress bar for large databases)."""
    entries = list(database.values())
    bar = tqdm(entries, desc=desc, unit="video", mininterval=0.5, disable=len(entries) < 2000)
    return sum(not video_exists(root, e["video_path"]) for e in bar)


def warn_missing(n_missing: int, n_total: int, root: Path) -> None:
    """One stderr line when some listed videos are not under the video root (the dataset will skip them)."""
    if n_missing:
        print(f"warning: {n_missing} of {n_total} videos are not found under {root} (the dataset will skip them)",
              file=sys.stderr)


def build_database(
    videos: Iterable[tuple[str, str, str | None]], *, video_path: Path, video_type: str, desc: str
) -> tuple[dict, int]:
    """Database from (video_id, subset, label-or-None) rows; also returns how many videos were missing.

    Rows are kept in the given order (the dataset, hence the inference output, follows it).
    """
    videos = list(videos)
    database = {}
    for video_id, subset, label in tqdm(videos, desc=desc, unit="video", mininterval=0.5, disable=len(videos) < 2000):
        segment = find_segment(video_path, TEST_DIR if label is None else label, video_id, video_type)
        database[video_id] = make_entry(subset, label, segment)
    # counted over the entries, not the rows: a video listed twice is one entry
    n_missing = sum("segment" not in entry["annotations"] for entry in database.values())
    return database, n_missing


def check_labels(labels_seen: Iterable[tuple[str, str]], labels: list[str]) -> None:
    """UserError naming the first (label, where) whose label is not in the class list."""
    known = set(labels)
    for label, where in labels_seen:
        if label not in known:
            raise UserError(f"{where}: label '{label}' is not in the class list ({len(labels)} classes)")


def write_annotation_json(dst: Path, labels: list[str], database: dict, *, n_missing: int, video_path: Path) -> None:
    """Write the JSON atomically and print one summary line (plus a warning for missing videos)."""
    dst = Path(dst)
    try:
        with atomic_file(dst) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"labels": labels, "database": database}, f)
    except OSError as e:  # checked before the work where it is long; this catches the rest (a disk filled up)
        raise UserError(f"cannot write {dst}: {e.strerror or e}") from None
    subsets = {}
    for entry in database.values():
        subsets[entry["subset"]] = subsets.get(entry["subset"], 0) + 1
    counts = ", ".join(f"{n} {name}" for name, n in subsets.items())
    print(f"wrote {dst}: {len(labels)} classes, {counts}")
    if n_missing:
        print(
            f"warning: {n_missing} of {len(database)} videos have no converted frames under {video_path} "
            "(no segment written; the dataset will skip them)",
            file=sys.stderr,
        )


def warn_listed_twice(rows: Sequence[tuple[str, str, str | None, str]], *, dst: Path) -> None:
    """One stderr line when (video_id, subset, label, where) rows list a video more than once.

    The database holds one entry per id, so the last listing silently wins (a video of both the train and the
    test list ends up in validation only); the line names an example, preferring one listed in two subsets.
    """
    first: dict[str, tuple[str, str]] = {}
    repeats = []  # (video_id, (subset, where) of its first listing, (subset, where) of a later one)
    for video_id, subset, _, where in rows:
        if video_id in first:
            repeats.append((video_id, first[video_id], (subset, where)))
        else:
            first[video_id] = (subset, where)
    if not repeats:
        return
    n_videos = len({video_id for video_id, _, _ in repeats})
    video_id, (subset_a, where_a), (subset_b, where_b) = max(repeats, key=lambda r: r[1][0] != r[2][0])
    last_subset = next(subset for vid, subset, _, _ in reversed(rows) if vid == video_id)
    print(f"warning: {dst}: {n_videos} {'video is' if n_videos == 1 else 'videos are'} listed more than once, "
          f"e.g. {video_id} for {subset_a} ({where_a}) and for {subset_b} ({where_b}); each is kept once, as its "
          f"last listing says ({last_subset}): remove the extra listings", file=sys.stderr)


def write_split_json(
    dst: Path, labels: list[str], rows: list[tuple[str, str, str | None, str]], *, video_path: Path, video_type: str,
    desc: str
) -> None:
    """The JSON of (video_id, subset, label or None, where) rows of videos converted under ``video_path``.

    Checks every label against the class list, warns about videos listed twice, finds each converted video's
    segment and writes the file.
    """
    check_labels(((label, where) for _, _, label, where in rows if label is not None), labels)
    check_writable_file(dst, what="output file")  # before counting the frames of every video
    warn_listed_twice(rows, dst=dst)
    database, n_missing = build_database(
        [row[:3] for row in rows], video_path=video_path, video_type=video_type, desc=desc
    )
    write_annotation_json(dst, labels, database, n_missing=n_missing, video_path=video_path)


def write_located_json(dst: Path, labels: list[str], database: dict, *, video_path: Path) -> None:
    """The JSON of a database whose entries name their own ``video_path``; warns about videos not found."""
    check_writable_file(dst, what="output file")  # before looking for every video
    n_missing = count_missing(video_path, database, desc="checking videos")
    write_annotation_json(dst, labels, database, n_missing=0, video_path=video_path)
    warn_missing(n_missing, len(database), video_path)


def existing_splits(splits: Iterable[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """The (file, subset) pairs to read: all of them, but a testing file only when it is there (it is optional)."""
    return [(path, subset) for path, subset in splits if subset != "testing" or Path(path).is_file()]


def annotation_tool_parser(description: str, positionals: Sequence[tuple[str, str]], *,
                           video_type: bool = False) -> argparse.ArgumentParser:
    """The command line of an annotation tool: path arguments (name, help) in order, and --video_type for
    tools whose videos are converted frames."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, help_text in positionals:
        parser.add_argument(name, type=Path, help=help_text)
    if video_type:
        add_video_type_argument(parser)
    return parser


def add_video_type_argument(parser) -> None:
    parser.add_argument(
        "--video_type", choices=CONVERTED_FILE_TYPES, default="jpg",
        help="format of the converted videos: jpg folders or hdf5",
    )
