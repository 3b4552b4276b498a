"""The interface of a file-type reader: everything that differs between `--file_type` values, in one class.

One subclass per file type (datasets.readers: `JpegDirReader`, `Hdf5Reader`; datasets.video_files:
`VideoFileReader`), registered by name in `datasets.file_types.FILE_READERS`; nothing else in the project
asks which file type it has. A subclass must be constructible without arguments.

What a reader decides:
- where a video lives: `location(base)` turns ``<root>/<label>/<id>`` into the stored path, `find` picks
  the first existing candidate, `is_stored` tells a converter's output apart from something else;
- numbering: `first_frame` (the number of a video's first frame) and `count_frames`;
- where frame counts and timings come from: the annotation's frame segments, or (`probes_frames`) the
  file itself, with `fps` and a cache kept per annotation file (`for_annotation_file`, `save_cache`);
- what it can hold: `holds_flow` (optical flow for ``--input_type flow``), `channels`;
- reading: `fetch(path, indices)` -> per index encoded JPEG bytes, a (u, v) pair of them, an
  av.VideoFrame or an (H, W, 3) uint8 array (datasets.readers.decode_frame decodes all of them), or None;
- what the folder tools (util_scripts.folder_json) need: `videos_in`, `problem`, `stored_as`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path


class FileReader(ABC):
    """Reads the videos of one file type; the defaults suit a type stored at its base path, 0-based."""

    first_frame = 0  # number of a video's first frame in the annotation segments and in `fetch`
    channels = 3  # of a decoded frame: 3 (RGB), 2 (flow u, v)
    holds_flow = False  # can store optical flow (--input_type flow)
    probes_frames = False  # frame count and timing are probed from the file; annotation frame segments are ignored
    stored_as = "videos"  # how one says a collection of them, in messages ("frame folders", "video files")

    @classmethod
    def for_annotation_file(cls, annotation_path: Path, *, flow: bool = False) -> FileReader:
        """The reader of the videos one annotation file lists (a reader that probes keeps its cache beside it).
        `flow` is only asked of readers that hold flow."""
        return cls()

    @classmethod
    def location(cls, base: Path) -> Path:
        """Where the video `base` (<root>/<label>/<id>, no extension) is stored."""
        return Path(base)

    @classmethod
    def is_stored(cls, path: Path) -> bool:
        """Whether `path` holds a stored video of this type (a converter's output is there)."""
        return Path(path).exists()

    def find(self, candidates: Sequence[Path]) -> Path | None:
        """The first of the candidate locations that exists, else None."""
        return next((p for p in candidates if p.exists()), None)

    @abstractmethod
    def count_frames(self, path: Path) -> int:
        """Frames of the video at `path`; UserError naming the file when it cannot be read."""

    def fps(self, path: Path) -> float | None:
        """Frames per second the file itself states, None when it states none."""
        return None

    def save_cache(self) -> None:  # noqa: B027 - an optional hook: most readers keep nothing
        """Keep what reading an annotation file's videos learned (a probing reader's cache); nothing by default."""

    @abstractmethod
    def fetch(self, path: Path, indices: Sequence[int]) -> list:
        """One entry per index: the frame (see the module docstring) or None when it is missing.
        Raises errors.ReadError when the file cannot be opened at all; never for a missing frame."""

    @classmethod
    def videos_in(cls, folder: Path, filenames: Sequence[str]) -> list[Path]:
        """The videos of this type that a folder listing shows: the folder itself when it is one video,
        else those of its files that are videos (util_scripts.folder_json walks a tree with it)."""
        raise NotImplementedError(f"{cls.__name__} cannot find its videos in a folder tree")

    def problem(self, path: Path) -> str | None:
        """Why the video at `path` cannot be used, or None (checked before it goes into an annotation file)."""
        raise NotImplementedError(f"{type(self).__name__} cannot check a video")
