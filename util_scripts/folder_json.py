"""Build an annotation JSON from a folder of class folders, with a stratified train/validation split.

Usage: ``python -m util_scripts.folder_json ROOT OUT.json [--val_fraction 0.2] [--seed 0] [--file_type video]``

``ROOT/<class>/.../<video>``: the first folder level is the class; videos may sit in nested folders
and have any common extension in any case (.mp4, .MOV, .webm, ...). With ``--file_type jpg`` a video
is a folder of frames ``image_00001.jpg ...`` instead. Every video is opened (PyAV for files, the
first frame for folders); unreadable ones are listed and left out (exit status 1 then).
Each entry carries its path relative to ROOT, so
``main.py --video_path ROOT --annotation_path OUT.json --file_type video`` trains on it directly.
Entry ids are those relative paths; classes are the class folders' names, sorted (a class folder without a
readable video is no class: a warning names it).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from datasets.file_types import FILE_READERS
from errors import UserError
from util_scripts.annotations import make_entry, write_annotation_json
from util_scripts.common import run_cli

FILE_TYPES = ("video", "jpg")  # of datasets.file_types: the readers that find their videos in a tree and check them
N_CHECK_THREADS = 4  # PyAV decodes outside the GIL: a few threads keep the check of many files short


def _visible(name: str) -> bool:
    return not name.startswith(".")


def scan_tree(root: Path, file_type: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(class, path relative to root) of every video under root's class folders, sorted; plus stray paths.

    Stray paths: videos directly in ROOT, outside any class folder (they cannot get a class).
    """
    reader_class = FILE_READERS[file_type]
    items, stray = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        here = Path(dirpath)
        for video in reader_class.videos_in(here, filenames):
            if video == root:
                continue  # ROOT holds the class folders: it is no video itself
            if video == here:
                dirnames[:] = []  # a frame folder is one video: do not look inside it for more
            rel = video.relative_to(root)
            if len(rel.parts) == 1:
                stray.append(rel.as_posix())
            else:
                items.append((rel.parts[0], rel.as_posix()))
    return sorted(items, key=lambda item: item[1]), stray


def class_folders(root: Path, stray: list[str]) -> list[str]:
    """The visible folders directly in ROOT that are not videos themselves (a frame folder in ROOT is stray)."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and _visible(d.name) and d.name not in stray)


def warn_classes_left_out(root: Path, labels: list[str], stray: list[str], *, file_type: str, dst: Path) -> None:
    """One stderr line naming the class folders that give no class: empty, or holding only unreadable videos.

    A class folder dropped without a word leaves a model with fewer outputs than the folders the user sees.
    """
    left_out = [name for name in class_folders(root, stray) if name not in labels]
    if left_out:
        what = FILE_READERS[file_type].stored_as
        print(f"warning: {len(left_out)} class folder{'s' if len(left_out) > 1 else ''} of {root} hold no readable "
              f"{what} and {'are' if len(left_out) > 1 else 'is'} left out of the classes: {', '.join(left_out)}; "
              f"put videos into them or remove them ({dst} has {len(labels)} classes)", file=sys.stderr)


def check_readable(root: Path, rels: list[str], file_type: str) -> list[str | None]:
    """The problem of each video (None when readable), with a progress bar."""
    check = FILE_READERS[file_type]().problem
    with ThreadPoolExecutor(N_CHECK_THREADS) as pool:
        results = pool.map(lambda rel: check(root / rel), rels)
        return list(tqdm(results, total=len(rels), desc="checking videos", unit="video", mininterval=0.5,
                         disable=len(rels) < 50))


def split_by_class(items: list[tuple[str, str]], val_fraction: float, seed: int) -> dict[str, str]:
    """Path -> subset: per class, round(n * fraction) random items (at least 1 when n >= 2, never all) validate."""
    rng = random.Random(seed)
    by_class: dict[str, list[str]] = {}
    for label, rel in items:
        by_class.setdefault(label, []).append(rel)
    subset = {}
    for label in sorted(by_class):
        rels = sorted(by_class[label])
        n_val = 0
        if val_fraction > 0 and len(rels) >= 2:
            n_val = min(max(1, round(len(rels) * val_fraction)), len(rels) - 1)
        chosen = set(rng.sample(rels, n_val))
        subset.update({rel: "validation" if rel in chosen else "training" for rel in rels})
    return subset


def build_database(root: Path, items: list[tuple[str, str]], subsets: dict[str, str], file_type: str) -> dict:
    """Entries with the frame segment of each video, unless its reader probes frames itself when training."""
    reader = FILE_READERS[file_type]()
    database = {}
    for label, rel in items:
        segment = None
        if not reader.probes_frames:
            segment = [reader.first_frame, reader.first_frame + reader.count_frames(root / rel)]
        database[rel] = make_entry(subsets[rel], label, segment, video_path=rel)
    return database


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="folder of class folders (ROOT/<class>/.../<video>)")
    parser.add_argument("dst_path", type=Path, help="output annotation JSON")
    parser.add_argument("--val_fraction", type=float, default=0.2,
                        help="share of each class's videos put in the validation subset (0: none; default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the split (default 0)")
    parser.add_argument("--file_type", choices=FILE_TYPES, default="video",
                        help="video: video files (default); jpg: frame folders of image_00001.jpg ...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val_fraction must be in [0, 1), got {args.val_fraction}")
    if not args.root.is_dir():
        raise UserError(f"ROOT {args.root} is not a directory")
    found, stray = scan_tree(args.root, args.file_type)
    if stray:
        print(f"warning: {len(stray)} videos directly in {args.root} have no class folder and are left out "
              f"(e.g. {stray[0]})", file=sys.stderr)
    problems = check_readable(args.root, [rel for _, rel in found], args.file_type)
    unreadable = [(rel, p) for (_, rel), p in zip(found, problems) if p is not None]
    for rel, problem in unreadable:
        print(f"unreadable: {rel}: {problem}", file=sys.stderr)
    items = [item for item, p in zip(found, problems) if p is None]
    if not items:
        what = FILE_READERS[args.file_type].stored_as
        raise UserError(f"no readable {what} found in {args.root}/<class>/ (found {len(found)}, "
                        f"{len(unreadable)} unreadable)")
    labels = sorted({label for label, _ in items})
    subsets = split_by_class(items, args.val_fraction, args.seed)
    database = build_database(args.root, items, subsets, args.file_type)
    write_annotation_json(args.dst_path, labels, database, n_missing=0, video_path=args.root)
    warn_classes_left_out(args.root, labels, stray, file_type=args.file_type, dst=args.dst_path)
    if unreadable:
        print(f"warning: {len(unreadable)} unreadable videos were left out", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
