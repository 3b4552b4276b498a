"""Turn a record + frame indices into a uint8 clip (T, H, W, C), repairing and counting bad frames.

A missing or corrupt frame is replaced by the nearest good frame of the clip; when no frame of a
clip can be read (empty directory, truncated HDF5, all frames corrupt) the clip is black. Every
problem is counted in a `DataProblems` and warned about once per video id.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from PIL import Image

from datasets.annotations import VideoRecord
from datasets.problems import DataProblems
from datasets.readers import ReadError, decode_frame, frame_size
from spatial_transforms import ClipParams, SpatialTransform, flip_clip, transform_frame

DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
DRAFT_MIN_FACTOR = 2  # only decode smaller when at least a 2x DCT downscale is possible


class ClipLoader:
    """Reads frames with `reader`, transforms them with one `ClipParams` per call, returns uint8 clips.

    Args:
        reader: a frame reader (datasets.readers); its `channels` is 3 (RGB) or 2 (flow u, v).
        spatial: the split's `SpatialTransform`.
        problems: where bad data is counted.
        draft: decode JPEGs at a reduced size when the crop allows (faster, tiny resampling differences).
    """

    def __init__(self, reader, spatial: SpatialTransform, problems: DataProblems, *, draft: bool = True):
        self.reader = reader
        self.spatial = spatial
        self.problems = problems
        self.draft = draft

    def load(self, record: VideoRecord, clips: Sequence[Sequence[int]], rng: random.Random | None) -> list[np.ndarray]:
        """uint8 (T, H, W, C) arrays, one per index list in `clips`, sharing one spatial sample."""
        wanted = sorted({i for clip in clips for i in clip})
        encoded = self._fetch(record, wanted)
        if encoded is None:  # the file could not be opened at all (already counted)
            return [self._black(len(c)) for c in clips]
        params, min_size = self._params(encoded.values(), rng)
        if params is None:
            self.problems.record("unreadable_videos", record.video_id, detail=str(record.path))
            return [self._black(len(c)) for c in clips]
        frames = self._decode_all(record, encoded, params, min_size)
        if not any(f is not None for f in frames.values()):
            self.problems.record("unreadable_videos", record.video_id, detail=str(record.path))
            return [self._black(len(c), params) for c in clips]
        _fill_from_neighbours(frames, wanted)
        out = [np.stack([frames[i] for i in clip]) for clip in clips]
        return [flip_clip(c) for c in out] if params.flip else out

    def _fetch(self, record: VideoRecord, wanted: list[int]) -> dict[int, object] | None:
        try:
            encoded = dict(zip(wanted, self.reader.fetch(record.path, wanted)))
        except ReadError as e:
            self.problems.record("unreadable_videos", record.video_id, detail=str(e))
            return None
        n_missing = sum(e is None for e in encoded.values())
        if 0 < n_missing < len(wanted):
            self.problems.record("missing_frames", record.video_id, n_missing, detail=str(record.path))
        return encoded

    def _params(self, encoded, rng: random.Random | None) -> tuple[ClipParams | None, tuple[int, int] | None]:
        """Clip parameters from the first frame with a readable header, and the reduced decode size (or None)."""
        for data in encoded:
            if data is None:
                continue
            try:
                width, height = frame_size(data[0] if isinstance(data, tuple) else data)
            except DECODE_ERRORS:
                continue  # a corrupt frame; it is counted when decoding
            params = self.spatial.sample(width, height, rng)
            need = params.decode_size(width, height)
            small = self.draft and need[0] * DRAFT_MIN_FACTOR <= width and need[1] * DRAFT_MIN_FACTOR <= height
            return params, need if small else None
        return None, None

    def _decode_all(self, record: VideoRecord, encoded: dict, params: ClipParams,
                    min_size: tuple[int, int] | None) -> dict[int, np.ndarray | None]:
        frames: dict[int, np.ndarray | None] = {}
        n_corrupt = 0
        for i, data in encoded.items():
            frames[i] = None if data is None else _decode(data, params, min_size)
            n_corrupt += data is not None and frames[i] is None
        if n_corrupt:
            self.problems.record("corrupt_frames", record.video_id, n_corrupt, detail=str(record.path))
        return frames

    def _black(self, length: int, params: ClipParams | None = None) -> np.ndarray:
        width, height = params.out_size if params else (self.spatial.size, self.spatial.size)
        return np.zeros((length, height, width, self.reader.channels), dtype=np.uint8)


def _fill_from_neighbours(frames: dict[int, np.ndarray | None], order: list[int]) -> None:
    """Replace each None by the nearest good frame in `order` (the earlier one on ties)."""
    good = [k for k, i in enumerate(order) if frames[i] is not None]
    for k, i in enumerate(order):
        if frames[i] is None:
            nearest = min(good, key=lambda g: (abs(g - k), g))
            frames[i] = frames[order[nearest]]


def _decode(data, params: ClipParams, min_size: tuple[int, int] | None) -> np.ndarray | None:
    """Decoded and transformed frame (H, W, C) uint8, or None when the bytes are corrupt."""
    try:
        if isinstance(data, tuple):  # flow: (u, v) grayscale planes -> 2 channels
            planes = [np.asarray(transform_frame(decode_frame(d, gray=True, min_size=min_size), params)) for d in data]
            return np.stack(planes, axis=-1)
        return np.asarray(transform_frame(decode_frame(data, min_size=min_size), params))
    except DECODE_ERRORS:
        return None
