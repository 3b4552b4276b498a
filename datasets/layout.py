"""The on-disk data layout: every name, extension and key the data files have, in one place.

Everything that reads or writes data (the datasets, predict, the util_scripts converters and
annotation generators, the benchmarks) asks this module instead of spelling the layout itself.

- Datasets and subsets: `DATASETS` (`FLAT_DATASETS` keep videos directly under the root,
  `MULTI_LABEL_DATASETS` list several actions per video); `SUBSET_NAMES` maps the short flag values (train/val/test)
  to the names of the annotation files (training/validation/testing), `subset_name` accepts both.
- Stored videos (the `--file_type` values; each one's reader in datasets.file_types decides its location,
  numbering and frame count): 'jpg' is a folder ``<base>/image_00001.jpg ...`` (1-based frame numbers),
  'hdf5' a file ``<base>.hdf5`` whose dataset 'video' holds one encoded JPEG per frame (0-based; optical
  flow: 'video_u' and 'video_v'), 'video' the raw file ``<base>.<ext>`` (0-based decoded frames).
  ``<base>`` is ``<root>/<label>/<video id>`` (see datasets.annotations).
- Raw video files: `VIDEO_EXTENSIONS`, matched in any letter case (cameras write ``.MP4``/``.MOV``)
  by `has_video_extension` and `VideoFileFinder`; `RAW_VIDEO_EXTENSION` is the one extension the
  frame/HDF5 extraction scripts take per dataset by default (the original scripts' filter; their
  --video_extensions takes others too).
"""

from __future__ import annotations

import os
from pathlib import Path

DATASETS = ("kinetics", "activitynet", "ucf101", "hmdb51", "mit", "ssv2", "charades")
# videos directly under the root (<root>/<id>), not in class folders; the others: <root>/<label>/<id>
FLAT_DATASETS = ("activitynet", "ssv2", "charades")
# several actions per video (annotations.actions): trained multi-label (--multi_label)
MULTI_LABEL_DATASETS = ("charades",)
SUBSET_NAMES = {"train": "training", "val": "validation", "test": "testing"}
ANNOTATION_SUBSETS = tuple(SUBSET_NAMES.values())

CONVERTED_FILE_TYPES = ("jpg", "hdf5")  # what util_scripts' converters write and the JSON generators count

FRAME_GLOB = "image_*.jpg"
HDF5_SUFFIX = ".hdf5"
HDF5_FRAMES_KEY = "video"
HDF5_FLOW_KEYS = ("video_u", "video_v")

# Probed in this order when several files share a name; all lower case, matched case-insensitively.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
RAW_VIDEO_EXTENSION = {"kinetics": ".mp4", "activitynet": ".mp4", "ucf101": ".avi", "hmdb51": ".avi", "mit": ".mp4",
                       "ssv2": ".webm", "charades": ".mp4"}


def subset_name(subset: str) -> str:
    """'train' -> 'training', 'val' -> 'validation', 'test' -> 'testing'; full names (and others) unchanged."""
    return SUBSET_NAMES.get(subset, subset)


def frame_name(index: int) -> str:
    """File name of frame `index` (1-based) in a jpg video folder: image_00001.jpg, ..."""
    return f"image_{index:05d}.jpg"


def frame_path(video_dir: Path | str, index: int) -> Path:
    return Path(video_dir) / frame_name(index)


def has_video_extension(path: Path | str, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> bool:
    """Whether the name of `path` ends in one of `extensions` (lower case), in any letter case."""
    return Path(path).suffix.lower() in extensions


class VideoFileFinder:
    """Finds the video file of a base path: `base` itself, else <base>.<ext> for an ext of VIDEO_EXTENSIONS
    in any letter case (the first in that order when several exist). Lists each folder once, so finding
    every video of a dataset costs one directory listing per folder."""

    def __init__(self):
        self._folders: dict[Path, dict[str, Path]] = {}

    def find(self, base: Path | str) -> Path | None:
        base = Path(base)
        if base.is_file():
            return base
        if base.parent not in self._folders:
            self._folders[base.parent] = _videos_by_stem(base.parent)
        return self._folders[base.parent].get(base.name)


def _videos_by_stem(folder: Path) -> dict[str, Path]:
    try:
        entries = [e for e in os.scandir(folder) if has_video_extension(e.name) and e.is_file()]
    except OSError:
        return {}
    entries.sort(key=lambda e: (VIDEO_EXTENSIONS.index(os.path.splitext(e.name)[1].lower()), e.name))
    found: dict[str, Path] = {}
    for e in entries:
        found.setdefault(os.path.splitext(e.name)[0], folder / e.name)
    return found


def find_video_file(base: Path | str) -> Path | None:
    """The video file of one base path (see `VideoFileFinder`; use one finder for many lookups)."""
    return VideoFileFinder().find(base)
