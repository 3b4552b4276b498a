"""Turn a record + frame indices into a uint8 clip (T, H, W, C), repairing and counting bad frames.

A missing or corrupt frame is replaced by the nearest good frame of the clip; when no frame of a
clip can be read (empty directory, truncated HDF5, all frames corrupt) the clip is black. Every
problem is counted in a `DataProblems` and warned about once per video id.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence

import numpy as np
from PIL import Image

from datasets.annotations import VideoRecord
from datasets.problems import DataProblems
from datasets.readers import decode_frame, frame_size, scales_to_any_size
from datasets.spatial_transforms import (
    ClipParams,
    SpatialTransform,
    apply_jitter,
    finish_clip,
    resize_clip,
    transform_frame,
)
from datasets.video_files import displayed_size, upright_array
from errors import ReadError

DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
DRAFT_MIN_FACTOR = 2  # only decode smaller when at least a 2x DCT downscale is possible


class ClipLoader:
    """Reads frames with `reader`, transforms them with one `ClipParams` per call, returns uint8 clips.

    Args:
        reader: a frame reader (datasets.readers); its `channels` is 3 (RGB) or 2 (flow u, v).
        spatial: the split's `SpatialTransform`.
        problems: where bad data is counted.
        draft: decode at a reduced size when the crop allows (faster, tiny resampling differences): JPEGs by
            DCT-domain downscaling; video frames are scaled by swscale, in their conversion to RGB, to the size at
            which the crop box is the output size, and the box is cut out (`scaled_views`: one resampling, and
            never a full-size RGB frame first).
    """

    def __init__(self, reader, spatial: SpatialTransform, problems: DataProblems, *, draft: bool = True):
        self.reader = reader
        self.spatial = spatial
        self.problems = problems
        self.draft = draft

    def load(self, record: VideoRecord, clips: Sequence[Sequence[int]], rng: random.Random | None) -> list[np.ndarray]:
        """uint8 (T, H, W, C) arrays, one per index list in `clips`, sharing one spatial sample.

        Only for transforms with one spatial view; multi-crop transforms need `load_views`.
        """
        views = self.load_views(record, clips, rng)
        if len(views) != 1:
            raise ValueError(f"the spatial transform has {len(views)} views; use load_views")
        return views[0]

    def load_views(self, record: VideoRecord, clips: Sequence[Sequence[int]], rng: random.Random | None, *,
                   flip: bool | None = None) -> list[list[np.ndarray]]:
        """For each spatial view of the transform, the uint8 (T, H, W, C) arrays of all `clips`.

        Frames are fetched and decoded once; each view is a different crop of the same frames. `flip`
        True/False overrides the transform's random horizontal flip.
        """
        wanted = sorted({i for clip in clips for i in clip})
        n_views = self.spatial.n_crops
        encoded = self._fetch(record, wanted)
        if encoded is None:  # the file could not be opened at all (already counted)
            return [[self._black(len(c)) for c in clips] for _ in range(n_views)]
        views, min_size = self._params(encoded.values(), rng, flip)
        if views is None:
            self.problems.record("unreadable_videos", record.video_id, detail=str(record.path))
            return [[self._black(len(c)) for c in clips] for _ in range(n_views)]
        frames = self._decode_all(record, encoded, views, min_size)
        if not any(f is not None for f in frames.values()):
            self.problems.record("unreadable_videos", record.video_id, detail=str(record.path))
            return [[self._black(len(c), params) for c in clips] for params in views]
        _fill_from_neighbours(frames, wanted)
        out = []
        for v, params in enumerate(views):
            out.append([finish_clip(resample_view(np.stack([frames[i][v] for i in clip]), params), params)
                        for clip in clips])
        return out

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

    def _params(self, encoded, rng: random.Random | None,
                flip: bool | None = None) -> tuple[list[ClipParams] | None, tuple[int, int] | None]:
        """Parameters of every view from the first frame with a readable header, and the reduced decode size."""
        for data in encoded:
            if data is None:
                continue
            try:
                width, height = frame_size(data[0] if isinstance(data, tuple) else data)
            except DECODE_ERRORS:
                continue  # a corrupt frame; it is counted when decoding
            return view_params(self.spatial, width, height, rng, draft=self.draft, flip=flip)
        return None, None

    def _decode_all(self, record: VideoRecord, encoded: dict, views: list[ClipParams],
                    min_size: tuple[int, int] | None) -> dict[int, list[np.ndarray] | None]:
        frames: dict[int, list[np.ndarray] | None] = {}
        n_corrupt = 0
        for i, data in encoded.items():
            if data is None:
                frames[i] = None
            elif self.draft and scales_to_any_size(data):
                frames[i] = scaled_views(data, views)
            else:
                frames[i] = decode_views(data, views, min_size)
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


def view_params(spatial: SpatialTransform, width: int, height: int, rng: random.Random | None, *,
                draft: bool = True, flip: bool | None = None) -> tuple[list[ClipParams], tuple[int, int] | None]:
    """Parameters of every view of a clip of `width` x `height` frames, and the reduced size to decode them at
    (None: full size, when a 2x reduction is not possible or `draft` is off). `flip` forces the flip decision
    (direction-aware labels); it is passed only when given, so transforms without that argument keep working."""
    views = (spatial.sample_views(width, height, rng) if flip is None
             else spatial.sample_views(width, height, rng, flip=flip))
    needs = [params.decode_size(width, height) for params in views]
    need = (max(n[0] for n in needs), max(n[1] for n in needs))
    small = draft and need[0] * DRAFT_MIN_FACTOR <= width and need[1] * DRAFT_MIN_FACTOR <= height
    return views, need if small else None


def scaled_views(frame, views: list[ClipParams]) -> list[np.ndarray] | None:
    """The views of a video frame out of swscale. A large frame is scaled, in its conversion to RGB, to a
    whole-pixel size at which a view's crop box is its output size, and the box is cut out (`cut`: edges off by a
    fraction of an output pixel, instead of a second resampling). A frame that would be scaled to at least half
    its size (a prepared copy's, say) is converted at its own size, which swscale does several times faster, and
    its box (in whole pixels) is cut out for `resample_view` to resample the clip in one go. Views that need the
    same conversion share it. None when the frame cannot be converted."""
    converted: dict[tuple[int, int] | None, np.ndarray] = {}
    out = []
    try:
        for params in views:
            size, (x, y, width, height) = conversion(displayed_size(frame), params)
            if size not in converted:
                converted[size] = upright_array(frame, size)
            view = converted[size][y:y + height, x:x + width]
            if params.jitter is not None and (width, height) == params.out_size:
                view = np.asarray(apply_jitter(Image.fromarray(view), params.jitter))
            out.append(view)
    except DECODE_ERRORS:
        return None
    return out


def conversion(frame_size: tuple[int, int], params: ClipParams) -> tuple[tuple[int, int] | None, tuple[int, ...]]:
    """How `scaled_views` gets a view of a frame of displayed `frame_size`: (the size to convert it to, None for
    its own, and the (x, y, width, height) box to cut from the converted frame)."""
    left, top, right, bottom = params.box
    out_width, out_height = params.out_size
    (scaled_width, x), (scaled_height, y) = cut(left, right, out_width), cut(top, bottom, out_height)
    width, height = frame_size
    if 2 * scaled_width < width or 2 * scaled_height < height:
        return (scaled_width, scaled_height), (x, y, out_width, out_height)
    x0, x1 = whole_pixels(left, right, width)
    y0, y1 = whole_pixels(top, bottom, height)
    return None, (x0, y0, x1 - x0, y1 - y0)


def whole_pixels(low: float, high: float, length: int) -> tuple[int, int]:
    """The pixel range [start, stop) nearest to [low, high) (fractions of `length`), at least one pixel."""
    start = min(max(round(low * length), 0), length - 1)
    return start, max(start + 1, min(round(high * length), length))


def resample_view(clip: np.ndarray, params: ClipParams) -> np.ndarray:
    """A stacked (T, H, W, C) view at its output size: boxes cut at a frame's own size (`scaled_views`) are
    resampled here, all frames at once, and then jittered."""
    if clip.shape[2] == params.out_size[0] and clip.shape[1] == params.out_size[1]:
        return clip
    clip = resize_clip(clip, params.out_size)
    if params.jitter is not None:
        clip = np.stack([np.asarray(apply_jitter(Image.fromarray(f), params.jitter)) for f in clip])
    return clip


@functools.lru_cache(maxsize=256)  # asked for every frame of a clip with the same box
def cut(low: float, high: float, out: int) -> tuple[int, int]:
    """(scaled length, offset) along one axis: the frame scaled to that many pixels puts the box [low, high)
    (fractions of the frame) closest to pixels [offset, offset + out). The exact scale, out / (high - low), is
    rarely a whole number: the lengths around it are tried, each with the offset that centres the box."""
    exact = out / (high - low)
    best = None
    for length in range(max(out, math.floor(exact) - 1), max(out, math.ceil(exact) + 1) + 1):
        offset = min(max(round((low + high) / 2 * length - out / 2), 0), length - out)
        error = max(abs(low * length - offset), abs(high * length - offset - out))
        if best is None or error < best[0]:
            best = (error, length, offset)
    return best[1], best[2]


def decode_views(data, views: list[ClipParams], min_size: tuple[int, int] | None) -> list[np.ndarray] | None:
    """The frame decoded once and transformed per view: (H, W, C) uint8 each, or None when the bytes are corrupt."""
    try:
        if isinstance(data, tuple):  # flow: (u, v) grayscale planes -> 2 channels
            planes = [decode_frame(d, gray=True, min_size=min_size) for d in data]
            return [np.stack([np.asarray(transform_frame(p, params)) for p in planes], axis=-1) for params in views]
        img = decode_frame(data, min_size=min_size)
        return [np.asarray(transform_frame(img, params)) for params in views]
    except DECODE_ERRORS:
        return None
