"""`--file_type video`: frames decoded straight from video files with PyAV, seeking to each clip.

- `VideoMetaCache`: frame count and fps of every video, probed once and kept in a JSON file
  beside the annotation file (invalidated when a video's size or mtime changes).
- `VideoFileReader.fetch(path, indices)`: decoded frames (0-based frame numbers) as
  `av.VideoFrame`s; the clip loader converts them to RGB at the reduced size the crop needs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SEEK_GAP_FRAMES = 48  # wanted frames further apart than this are reached by a new seek, not by decoding through


@dataclass(frozen=True)
class VideoMeta:
    n_frames: int
    fps: float
    width: int
    height: int


def probe_video(path: Path) -> VideoMeta:
    """Frame count (container metadata, else counted by demuxing packets without decoding) and fps."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        n = stream.frames
        if not n:
            n = sum(1 for p in container.demux(stream) if p.size > 0)
        return VideoMeta(int(n), fps, stream.codec_context.width, stream.codec_context.height)


class VideoMetaCache:
    """Probe results of video files, remembered in a JSON file (best effort: an unwritable place is fine)."""

    def __init__(self, cache_path: Path | None):
        self.cache_path = cache_path
        self._entries: dict[str, dict] = {}
        self._dirty = False
        if cache_path is not None and cache_path.is_file():
            try:
                self._entries = json.loads(cache_path.read_text())
            except (OSError, ValueError):
                self._entries = {}

    def get(self, path: Path) -> VideoMeta | None:
        """Metadata of `path`, probing it when unknown or changed; None when it cannot be opened."""
        try:
            st = path.stat()
        except OSError:
            return None
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns]
        entry = self._entries.get(key)
        if entry is not None and entry.get("stamp") == stamp:
            return VideoMeta(**entry["meta"])
        try:
            meta = probe_video(path)
        except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
            logger.warning("cannot open video %s: %s", path, e)
            return None
        self._entries[key] = {"stamp": stamp, "meta": asdict(meta)}
        self._dirty = True
        return meta

    def save(self) -> None:
        if not self._dirty or self.cache_path is None:
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".video_meta.")
            with os.fdopen(fd, "w") as f:
                json.dump(self._entries, f)
            os.replace(tmp, self.cache_path)
            self._dirty = False
        except OSError as e:
            logger.info("video metadata cache not written (%s); it will be probed again next time", e)


def _runs(indices: Sequence[int]) -> list[list[int]]:
    """Sorted unique indices split where the gap is large enough to make a new seek worthwhile."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i - runs[-1][-1] <= SEEK_GAP_FRAMES:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


class VideoFileReader:
    """Decoded frames of a video file for 0-based frame indices (None for frames past the end)."""

    channels = 3

    def fetch(self, path: Path, indices: Sequence[int]):
        import av

        from datasets.readers import ReadError

        found: dict[int, object] = {}
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_count = 1  # one decode thread per DataLoader worker
                for run in _runs(indices):
                    found.update(_decode_run(container, stream, run))
        except (av.error.FFmpegError, OSError, IndexError) as e:
            if not found:
                raise ReadError(f"cannot decode {path}: {e}") from None
        return [found.get(i) for i in indices]


def _decode_run(container, stream, run: list[int]) -> dict[int, object]:
    """Seek to the keyframe before run[0], then decode forward until run[-1]; frame numbers from timestamps."""
    fps = float(stream.average_rate or stream.guessed_rate or 25)
    tb = float(stream.time_base)
    start = stream.start_time or 0
    target = start + int(math.floor(run[0] / fps / tb))
    container.seek(max(start, target), stream=stream, backward=True, any_frame=False)
    wanted, out = set(run), {}
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        index = round((frame.pts - start) * tb * fps)
        if index in wanted:
            out[index] = frame
        if index >= run[-1]:
            break
    return out
