"""Streaming prediction of one video file: one sequential decode, a bounded window of frames, clips scored in
batches as soon as their frames have arrived (the listener API is described in predict/runner.py).

Each video is decoded once, front to back (`stream_frames`), by a thread of its own that runs ahead of the model
(`DecodeAhead`): while a batch is scored, the next frames are decoded, scaled (in swscale, straight from the
decoder's YUV picture to the reduced size the spatial transform needs) and cut into every view. The thread is at most
`frames_ahead` frames ahead (about AHEAD_BYTES of decoded pictures), and only the frames some clip uses are kept,
only until the last clip that uses them has been cut; so memory depends on the clip settings and the frame size,
not on the video's length. The frames, their numbers and the clips are those of a decode in the calling thread
(`frames_ahead=0`), so the scores are the same.
Clips are the inference clips of the video's frame numbers (`TemporalTransform`), exactly as the loader of
`--inference` would cut them. Frames lost to damage are taken from the nearest decoded frame of the clip (the
loader's rule); a clip with no decoded frame at all is counted and left unscored.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
from torch import nn

from datasets.clip_loader import decode_views, view_params
from datasets.spatial_transforms import ClipParams, SpatialTransform
from datasets.temporal_transforms import TemporalTransform
from datasets.video_files import DecodeAhead, VideoMeta, displayed_size, is_truncated, stream_frames
from engine.features import ClassifierInputCapture
from engine.forward import autocast, class_scores, prepare_batch
from engine.scoring import VideoScoreAggregator

AHEAD_BYTES = 192 << 20  # decoded pictures the decode thread may hold ahead of the model (they are full size)
MAX_FRAMES_AHEAD = 128  # enough for the decoder to run on while a batch is scored; more only costs memory


def frames_ahead_for(meta: VideoMeta) -> int:
    """How far the decode thread may run ahead on this video: AHEAD_BYTES of YUV 4:2:0 pictures, 2 to
    MAX_FRAMES_AHEAD frames (each queued frame keeps its full-size picture: listeners are shown every frame)."""
    picture_bytes = max(1, meta.width * meta.height * 3 // 2)
    return max(2, min(MAX_FRAMES_AHEAD, AHEAD_BYTES // picture_bytes))


@dataclass(frozen=True)
class VideoInfo:
    """One input video: its id in the outputs (the path as given), probe result and announced duration."""

    video_id: str
    path: Path
    meta: VideoMeta
    announced_seconds: float = 0.0  # the container's own duration (0: unknown)
    live: bool = False  # a live source (predict.live): no known length, `meta.n_frames` is 0

    @property
    def duration_seconds(self) -> float:
        """The container's duration, or the frames' when the container names none."""
        return self.announced_seconds or self.meta.duration


class PredictionListener:
    """Told about every video, decoded frame and scored segment of a `VideoPredictor` run; every method is a
    no-op here, so a listener overrides only what it needs. `wants_features`: pass the classifier inputs
    to `segment`."""

    wants_features = False

    def start_video(self, video: VideoInfo) -> None:
        pass

    def frame(self, number: int, seconds: float, frame) -> None:
        pass

    def segment(self, start_s: float, end_s: float, topk: list[dict], scores: torch.Tensor,
                features: torch.Tensor | None) -> None:
        pass

    def finish_video(self, result: VideoResult) -> None:
        pass


@dataclass
class VideoResult:
    """What predicting one video found: clip scores (per video id, in an aggregator), decoding statistics."""

    video: VideoInfo
    scores: VideoScoreAggregator
    n_decoded: int = 0
    decoded_seconds: float = 0.0  # seconds of video covered by the decoded frames
    decoded_end: float = 0.0  # end (seconds) of the last decoded frame
    unscored_clips: int = 0
    segment_times: dict[tuple[int, int], tuple[float, float]] = field(default_factory=dict)
    # share of each clip's frames that are distinct frames of the video: below 1 only for a video shorter than one
    # clip, whose frames were repeated (looped) to fill it
    segment_real_share: dict[tuple[int, int], float] = field(default_factory=dict)
    error: str = ""  # why nothing could be predicted ('' when the video was predicted)

    @property
    def usable(self) -> bool:
        return not self.error

    def problems(self) -> list[str]:
        """What a person should know about the file, one phrase each."""
        meta, out = self.video.meta, []
        if self.error:
            return [self.error]
        lost = meta.n_frames - self.n_decoded
        if lost > 0:
            out.append(f"damaged: {lost} frames could not be decoded")
        if is_truncated(self.video.announced_seconds, self.decoded_end, meta.fps):
            out.append(f"truncated: decoded {self.decoded_end:.1f} of {self.video.announced_seconds:.1f} s")
        if meta.rotation:
            out.append(f"rotated {meta.rotation}")
        if meta.vfr:
            out.append("variable frame rate")
        if self.unscored_clips:
            out.append(f"{self.unscored_clips} clips had no decodable frame and were not scored")
        return out


@dataclass(frozen=True)
class _Decoded:
    """One decoded frame, as the decode thread hands it over."""

    number: int
    seconds: float
    frame: object  # the av.VideoFrame, full size (for the listeners)
    views: list[np.ndarray] | None  # (H, W, C) uint8 per view; None when no clip uses the frame, or it is corrupt


def _frames_with_views(video: VideoInfo, wanted: set[int], spatial: SpatialTransform,
                       threads: int) -> Iterator[_Decoded]:
    """Every decoded frame of `video`; those in `wanted` cut into the views of the clips. swscale converts the
    decoder's own YUV picture straight to RGB at the reduced size the crops need (`view_params`: a 1080p frame for
    112-pixel crops becomes 199x112), with no full-size RGB picture on the way; only a frame less than twice the
    crops' size is converted at its own size."""
    transform: tuple[list[ClipParams], tuple[int, int] | None] | None = None
    for number, seconds, frame in stream_frames(video.path, video.meta, threads=threads):
        if transform is None:  # the crop boxes of the picture as displayed, from its first frame
            transform = view_params(spatial, *displayed_size(frame), None)
        yield _Decoded(number, seconds, frame, decode_views(frame, *transform) if number in wanted else None)


class _ClipWindow:
    """The frames of one video that pending clips need, and the clips whose frames have all gone by."""

    def __init__(self, clips: Sequence[Sequence[int]]):
        self.clips = sorted((list(c) for c in clips), key=max)  # cut order: by last frame
        self.wanted = {i for c in self.clips for i in c}
        # first_needed[k]: the earliest frame any clip from the k-th on uses (frames before it can go)
        self.first_needed = [0] * (len(self.clips) + 1)
        self.first_needed[-1] = math.inf
        for k in range(len(self.clips) - 1, -1, -1):
            self.first_needed[k] = min(self.first_needed[k + 1], min(self.clips[k]))
        self.frames: dict[int, list[np.ndarray]] = {}
        self.next = 0

    def add(self, number: int, views: list[np.ndarray] | None) -> list[tuple]:
        """Keep frame `number`'s views (None: no clip uses it, or it does not convert); the clips complete with it."""
        if views is not None and number in self.wanted and number >= self.first_needed[self.next]:
            self.frames[number] = views
        return self._cut_until(number)

    def finish(self) -> list[tuple]:
        """Every clip not cut yet (the end of the decodable frames has been reached)."""
        return self._cut_until(math.inf)

    def _cut_until(self, number: float) -> list[tuple]:
        ready = []
        while self.next < len(self.clips) and max(self.clips[self.next]) <= number:
            ready.append(self._cut(self.clips[self.next]))
            self.next += 1
        if ready:
            first = self.first_needed[self.next]
            for i in [i for i in self.frames if i < first]:
                del self.frames[i]
        return ready

    def _cut(self, clip: list[int]) -> tuple[list[int], list[np.ndarray] | None]:
        """(clip, one (T, H, W, C) uint8 array per view), or (clip, None) when no frame of it was decoded; lost
        frames are taken from the nearest decoded one (the earlier on ties), as the clip loader does."""
        order = sorted(set(clip))
        good = [k for k, i in enumerate(order) if i in self.frames]
        if not good:
            return clip, None
        source = {}
        for k, i in enumerate(order):
            source[i] = i if i in self.frames else order[min(good, key=lambda g: (abs(g - k), g))]
        n_views = len(self.frames[order[good[0]]])
        return clip, [np.stack([self.frames[source[i]][v] for i in clip]) for v in range(n_views)]


class VideoPredictor:
    """Scores videos with `net`, one sequential decode each (see the module docstring).

    Args:
        spatial, temporal: the inference transforms (`get_spatial_transform` / `get_temporal_transform`).
        batch_size: views (clips x crops) per forward pass.
        normalizer: uint8 clips -> model input (`build_input_normalizer`).
        topk: labels per segment handed to listeners.
        threads: FFmpeg decoder threads (0: as many as FFmpeg likes, for a model on a GPU; 1: one).
        frames_ahead: how far the decode thread may run ahead of the model, in frames (None: `frames_ahead_for`
            the video; 0: no thread, each frame is decoded when the model needs it).
    """

    def __init__(self, net: nn.Module, *, class_names: Sequence[str], spatial: SpatialTransform,
                 temporal: TemporalTransform, batch_size: int, device: torch.device, normalizer=None,
                 precision: str = "fp32", topk: int = 5, threads: int = 1, multi_label: bool = False,
                 frames_ahead: int | None = None):
        self.net = net.to(device).eval()
        self.class_names = list(class_names)
        self.spatial, self.temporal = spatial, temporal
        self.batch_size = max(batch_size, spatial.n_crops)
        self.device, self.normalizer, self.precision = device, normalizer, precision
        self.topk, self.threads = topk, threads
        self.multi_label = multi_label  # independent per-class sigmoids instead of one softmax
        self.frames_ahead = frames_ahead

    def predict(self, video: VideoInfo, listeners: Sequence[PredictionListener] = ()) -> VideoResult:
        """Decode and score one video, telling `listeners` as it goes."""
        result = VideoResult(video, VideoScoreAggregator(self.class_names))
        wanted = any(getattr(x, "wants_features", False) for x in listeners)
        tap = ClassifierInputCapture(self.net).attach() if wanted else None
        try:
            for listener in listeners:
                listener.start_video(video)
            try:
                self._run(video, result, listeners, tap)
            except (av.error.FFmpegError, OSError) as e:  # the file cannot be read (any more): not a crash
                result.error = f"cannot decode it ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                result.scores = VideoScoreAggregator(self.class_names)  # nothing of a half-read video is kept
            result.scores.reorder([video.video_id])
            if result.n_decoded == 0 and not result.error:
                result.error = f"no decodable frame ({video.meta.n_frames} in the container)"
            for listener in listeners:
                listener.finish_video(result)
        finally:
            if tap is not None:
                tap.close()
        return result

    def _run(self, video: VideoInfo, result: VideoResult, listeners, tap) -> None:
        meta = video.meta
        window = _ClipWindow(self.temporal(list(range(meta.n_frames))))
        pending: list[tuple[list[int], list[np.ndarray]]] = []
        with self._decoded(video, window.wanted) as frames:
            for item in frames:
                for listener in listeners:
                    listener.frame(item.number, item.seconds, item.frame)
                result.n_decoded += 1
                result.decoded_seconds += _frame_seconds(meta, item.number)
                result.decoded_end = meta.frame_time(item.number) + _frame_seconds(meta, item.number)
                ready = window.add(item.number, item.views)
                pending = self._queue(ready, pending, result, listeners, tap)
        pending = self._queue(window.finish(), pending, result, listeners, tap, end=True)
        self._score(pending, result, listeners, tap)

    def _decoded(self, video: VideoInfo, wanted: set[int]):
        """A context manager giving the video's `_Decoded` frames: from the decode thread, or made on demand."""
        frames = _frames_with_views(video, wanted, self.spatial, self.threads)
        depth = frames_ahead_for(video.meta) if self.frames_ahead is None else self.frames_ahead
        return DecodeAhead(frames, depth) if depth > 0 else contextlib.closing(frames)

    def _queue(self, ready, pending, result, listeners, tap, *, end: bool = False) -> list:
        """Add cut clips to the batch; score it whenever it is full."""
        for clip, views in ready:
            if views is None:
                result.unscored_clips += 1
                continue
            result.segment_times[_span(clip)] = self._times(result, clip, end=end)
            result.segment_real_share[_span(clip)] = len(set(clip)) / len(clip)
            pending.append((clip, views))
            if len(pending) * self.spatial.n_crops >= self.batch_size:
                self._score(pending, result, listeners, tap)
                pending = []
        return pending

    def _times(self, result: VideoResult, clip: list[int], *, end: bool) -> tuple[float, float]:
        """[start, end] seconds of a clip: from its first frame's time to the time of the frame t_stride - 1
        frames after its last one (windows tile the video); clips cut at the end stop where decoding did."""
        meta, first, last = result.video.meta, min(clip), max(clip)
        stop = last + self.temporal.t_stride
        end_s = meta.frame_time(stop) if stop < meta.n_frames else meta.duration
        if end:
            end_s = min(end_s, result.decoded_end)
        return round(meta.frame_time(first), 3), round(max(end_s, meta.frame_time(first)), 3)

    @torch.inference_mode()
    def scores_of(self, views: Sequence[np.ndarray]) -> torch.Tensor:
        """Class scores (CPU, one row per view) of uint8 (T, H, W, C) views: normalised, batched, scored."""
        batch = torch.from_numpy(np.stack(views))
        clips, _ = prepare_batch(batch, None, self.device, self.normalizer, keep_layout=True)
        with autocast(self.device, self.precision):
            outputs = self.net(clips)
        return class_scores(outputs, self.multi_label).cpu()

    def _score(self, pending, result: VideoResult, listeners, tap) -> None:
        if not pending:
            return
        scores = self.scores_of([view for _, views in pending for view in views])
        n = self.spatial.n_crops
        vid = result.video.video_id
        result.scores.update(scores, [vid] * len(scores), [_span(clip) for clip, _ in pending for _ in range(n)])
        features = tap.take() if tap is not None else None
        for k, (clip, _) in enumerate(pending):
            clip_scores = scores[k * n: (k + 1) * n].mean(dim=0)
            clip_features = features[k * n: (k + 1) * n].mean(dim=0) if features is not None else None
            start_s, end_s = result.segment_times[_span(clip)]
            top = result.scores.top(clip_scores, self.topk)
            for listener in listeners:
                listener.segment(start_s, end_s, top, clip_scores, clip_features)


def _span(clip: Sequence[int]) -> tuple[int, int]:
    return min(clip), max(clip)


def _frame_seconds(meta: VideoMeta, number: int) -> float:
    """How long frame `number` is shown (the last frame: one average frame)."""
    if number + 1 < meta.n_frames:
        return meta.frame_time(number + 1) - meta.frame_time(number)
    return 1 / meta.fps
