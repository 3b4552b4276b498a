"""Temporal sampling: pure functions from a list of frame indices to the indices of one or more clips.

Every function returns new lists and never mutates its input. Randomness comes only from the
`rng` argument (a `random.Random`), so a caller that seeds it gets reproducible clips.

Deliberate deviations from the original (kenshohara/3D-ResNets-PyTorch):
- `random_crop` can pick every full window, including the last one (the original never did).
- `even_crop` with `n_samples=1` returns the first window (the original divided by zero; this is
  what its `work` branch does).
- `even_crop` and `sliding_window` slice the (possibly subsampled) index list, so
  `--sample_t_stride` is honoured inside validation and inference clips (original issue #254).
  With stride 1 the clips are identical to the original's.
- Nothing is mutated in place (the original's LoopPadding appended to its argument).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

Clip = list[int]
TEMPORAL_SAMPLINGS = ("dense", "segment")


def loop_padding(indices: Sequence[int], size: int) -> Clip:
    """Repeat `indices` cyclically until there are at least `size` of them (longer lists are kept)."""
    out = list(indices)
    if not out:
        raise ValueError("cannot loop-pad an empty index list")
    i = 0
    while len(out) < size:
        out.append(out[i])
        i += 1
    return out


def begin_crop(indices: Sequence[int], size: int) -> Clip:
    """The first `size` indices, loop-padded when the video is shorter."""
    return loop_padding(indices[:size], size)


def center_crop(indices: Sequence[int], size: int) -> Clip:
    """The `size` indices around the middle (1..100, 16 -> 43..58), loop-padded when short."""
    begin = max(0, len(indices) // 2 - size // 2)
    return loop_padding(indices[begin : begin + size], size)


def random_crop(indices: Sequence[int], size: int, rng: random.Random | None = None) -> Clip:
    """A window of `size` consecutive entries at a uniformly random start, loop-padded when short.

    Every start 0..len-size is possible (the original excluded the last one).
    """
    rng = rng or random
    begin = rng.randint(0, max(0, len(indices) - size))
    return loop_padding(indices[begin : begin + size], size)


def even_crop(indices: Sequence[int], size: int, n_samples: int) -> list[Clip]:
    """Up to `n_samples` windows with evenly spaced starts (validation).

    Same start arithmetic as the original: stride = max(1, ceil((len - 1 - size) / (n_samples - 1)));
    a window that runs past the end is loop-padded and is the last one. 1..100, 16, 3 -> starts 1, 43, 85.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    n = len(indices)
    stride = 1 if n_samples == 1 else max(1, -(-(n - 1 - size) // (n_samples - 1)))
    clips: list[Clip] = []
    for begin in range(0, n, stride):
        if len(clips) >= n_samples:
            break
        window = indices[begin : begin + size]
        clips.append(loop_padding(window, size))
        if len(window) < size:
            break
    return clips


def sliding_window(indices: Sequence[int], size: int, stride: int, *, align_last: bool = False) -> list[Clip]:
    """Windows starting every `stride` entries (0 means `size`); the first short window is loop-padded and ends it.

    1..50, 16, 16 -> [1..16], [17..32], [33..48], [49, 50, 49, ...]; 1..48 -> exactly three windows.
    `align_last`: the short window becomes the one that ends at the last entry, so every window holds real frames
    only (1..50 -> [1..16], [17..32], [33..48], [35..50]); it is dropped when the window before already ends there.
    Only a video shorter than one window is still loop-padded. A padded tail holds few real frames but counts as
    much as any window in the video's mean: on short videos its guess decides a large part of the result.
    """
    stride = stride or size
    clips: list[Clip] = []
    for begin in range(0, len(indices), stride):
        window = indices[begin : begin + size]
        if len(window) < size and align_last and len(indices) >= size:
            tail = list(indices[-size:])
            return clips if clips and clips[-1] == tail else [*clips, tail]
        clips.append(loop_padding(window, size))
        if len(window) < size:
            break
    return clips


def uniform_clips(indices: Sequence[int], size: int, n_clips: int) -> list[Clip]:
    """Exactly `n_clips` windows with evenly spaced starts from the first to the last full window (multi-view).

    Start k is round(k * (len - size) / (n_clips - 1)); one clip is the center window. A video shorter
    than `size` gives `n_clips` copies of its loop-padded indices, so every video has the same view count.
    1..100, 16, 3 -> starts 1, 43, 85.
    """
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    if n_clips == 1:
        return [center_crop(indices, size)]
    last_start = max(0, len(indices) - size)
    starts = [round(k * last_start / (n_clips - 1)) for k in range(n_clips)]
    return [loop_padding(indices[b : b + size], size) for b in starts]


def segment_bounds(n: int, n_segments: int) -> list[tuple[int, int]]:
    """[lo, hi) of each of `n_segments` equal parts of `n` frames; with fewer frames than segments a
    part is a single frame and consecutive parts repeat it (10, 4 -> [0,2) [2,5) [5,7) [7,10); 2, 4 ->
    [0,1) [0,1) [1,2) [1,2))."""
    if n < 1 or n_segments < 1:
        raise ValueError(f"need at least one frame and one segment, got {n} frames, {n_segments} segments")
    bounds = []
    for k in range(n_segments):
        lo = k * n // n_segments
        bounds.append((lo, max(lo + 1, (k + 1) * n // n_segments)))
    return bounds


def segment_sample(indices: Sequence[int], n_segments: int, rng: random.Random | None = None) -> Clip:
    """TSN/TSM-style sampling for training: the video split into `n_segments` equal parts, one frame drawn
    uniformly from each, in order. A video shorter than `n_segments` repeats its frames evenly."""
    rng = rng or random
    return [indices[rng.randrange(lo, hi)] for lo, hi in segment_bounds(len(indices), n_segments)]


def segment_offsets(indices: Sequence[int], n_segments: int, n_views: int = 1) -> list[Clip]:
    """Deterministic segment sampling (validation, inference): `n_views` clips, clip j taking the frame at
    (j + 0.5) / n_views of each segment; one view is the segment centres (1..100, 4 -> 13, 38, 63, 88)."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    bounds = segment_bounds(len(indices), n_segments)
    return [[indices[lo + int((hi - lo) * (j + 0.5) / n_views)] for lo, hi in bounds] for j in range(n_views)]


def subsample(indices: Sequence[int], stride: int) -> Clip:
    """Every `stride`-th index, starting with the first."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return list(indices[::stride])


def clip_segment(clip: Sequence[int]) -> list[int]:
    """[first, end_exclusive] covered by a clip, as the original reports it: [min, max + 1]."""
    return [min(clip), max(clip) + 1]


@dataclass(frozen=True)
class TemporalTransform:
    """Frame-index sampling of one split, built by `get_temporal_transform` (picklable, for workers).

    Calling it with a video's frame indices returns a list of clips (index lists): exactly one for
    'random' and 'center' (training), several for 'even' (validation), 'sliding' (inference) and
    'uniform' (multi-view inference: exactly `n_samples` evenly spaced clips). Segment sampling
    (`size` segments over the whole video, one frame each; `t_stride` unused): 'segment_random' and
    'segment_center' (training, one clip), 'segment_views' (`n_samples` offset variants; 1 = centres).
    """

    kind: str
    size: int
    t_stride: int = 1
    n_samples: int = 1
    window_stride: int = 0
    align_last: bool = False  # 'sliding': the last window ends at the last frame instead of being loop-padded

    @property
    def multi_clip(self) -> bool:
        return self.kind in ("even", "sliding", "uniform", "segment_views")

    def __call__(self, indices: Sequence[int], rng: random.Random | None = None) -> list[Clip]:
        if not indices:
            raise ValueError("a video needs at least one frame")
        if self.kind == "segment_random":
            return [segment_sample(indices, self.size, rng)]
        if self.kind == "segment_center":
            return segment_offsets(indices, self.size)
        if self.kind == "segment_views":
            return segment_offsets(indices, self.size, self.n_samples)
        ix = subsample(indices, self.t_stride)
        if self.kind == "random":
            return [random_crop(ix, self.size, rng)]
        if self.kind == "center":
            return [center_crop(ix, self.size)]
        if self.kind == "even":
            return even_crop(ix, self.size, self.n_samples)
        if self.kind == "uniform":
            return uniform_clips(ix, self.size, self.n_samples)
        return sliding_window(ix, self.size, self.window_stride, align_last=self.align_last)


def get_temporal_transform(
    split: str,
    *,
    sample_duration: int,
    sample_t_stride: int = 1,
    train_t_crop: str = "random",
    n_val_samples: int = 3,
    inference_stride: int = 16,
    inference_n_clips: int = 0,
    sampling: str = "dense",
    align_last: bool = False,
) -> TemporalTransform:
    """Temporal sampling for `split` in {'train', 'val', 'inference'} (with the fixes above).

    sampling 'dense' (consecutive frames): inference uses sliding windows every `inference_stride`
    frames (`align_last`: the last one ends at the last frame, see `sliding_window`), or with
    `inference_n_clips` > 0 that many evenly spaced clips per video.
    sampling 'segment': `sample_duration` segments over the whole video, one frame each; training draws
    it at random within each segment ('center' with train_t_crop='center'), validation takes the centres
    (one clip), inference the centres or `inference_n_clips` evenly offset variants.
    """
    if sample_duration < 1 or sample_t_stride < 1:
        raise ValueError("sample_duration and sample_t_stride must be >= 1")
    if sampling not in TEMPORAL_SAMPLINGS:
        raise ValueError(f"sampling must be one of {TEMPORAL_SAMPLINGS}, got {sampling!r}")
    if sampling == "segment":
        return _segment_transform(split, sample_duration, train_t_crop=train_t_crop,
                                  inference_n_clips=inference_n_clips)
    if split == "train":
        if train_t_crop not in ("random", "center"):
            raise ValueError(f"train_t_crop must be 'random' or 'center', got {train_t_crop!r}")
        return TemporalTransform(train_t_crop, sample_duration, sample_t_stride)
    if split == "val":
        if n_val_samples < 1:
            raise ValueError(f"n_val_samples must be >= 1, got {n_val_samples}")
        return TemporalTransform("even", sample_duration, sample_t_stride, n_samples=n_val_samples)
    if split == "inference":
        if inference_n_clips < 0:
            raise ValueError(f"inference_n_clips must be >= 0, got {inference_n_clips}")
        if inference_n_clips:
            return TemporalTransform("uniform", sample_duration, sample_t_stride, n_samples=inference_n_clips)
        return TemporalTransform("sliding", sample_duration, sample_t_stride, window_stride=inference_stride,
                                 align_last=align_last)
    raise ValueError(f"split must be 'train', 'val' or 'inference', got {split!r}")


def _segment_transform(split: str, n_segments: int, *, train_t_crop: str, inference_n_clips: int) -> TemporalTransform:
    if split == "train":
        if train_t_crop not in ("random", "center"):
            raise ValueError(f"train_t_crop must be 'random' or 'center', got {train_t_crop!r}")
        return TemporalTransform(f"segment_{train_t_crop}", n_segments)
    if split == "val":
        return TemporalTransform("segment_views", n_segments)
    if split == "inference":
        if inference_n_clips < 0:
            raise ValueError(f"inference_n_clips must be >= 0, got {inference_n_clips}")
        return TemporalTransform("segment_views", n_segments, n_samples=max(1, inference_n_clips))
    raise ValueError(f"split must be 'train', 'val' or 'inference', got {split!r}")
