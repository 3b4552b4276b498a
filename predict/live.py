"""`--predict` on a live source (a URL, `-`, a camera device, a FIFO: `datasets.live_source`): labels per segment
as they are known.

A reader thread follows the stream (`LiveStream`: decoding, reconnection), cuts each frame into the views the model
needs (scaled in swscale, as for files) and, every --inference_stride frames once a window is full, hands a
*chunk* to the model: the window's clip (--sample_duration frames every --sample_t_stride) and the frames that came
since the last chunk. The model's thread scores the waiting clips in one batch (at most --inference_batch_size
views), tells the listeners (annotated video, page, features) and writes one JSON line per segment.

Drop policy: at most QUEUE_CHUNKS chunks wait between the two threads. When the model falls behind and the queue is
full, the oldest waiting chunk is dropped, its segment and its frames (the annotated copy skips them): the model
always works on the newest frames, so the delay stays bounded and memory stays flat. Every dropped segment is
counted (`dropped_segments` in each JSON line and in the results). Clips never span a reconnection: the window
starts afresh with each connection.

Latency: from the moment the decoder gave a segment's last frame to the moment its JSON line is written
(`latency_s` per line; median and 90th percentile over the last LATENCY_WINDOW segments at the end).
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import torch

from datasets.clip_loader import decode_views, view_params
from datasets.live_source import STDIN, LiveFrame, LiveStream
from datasets.video_files import VideoMeta, displayed_size
from engine.features import ClassifierInputCapture
from engine.scoring import SCORE_DIGITS, top_classes
from engine.stop_signals import StopRequested, signal_name
from predict.video_predictor import PredictionListener, VideoInfo, VideoPredictor

log = logging.getLogger(__name__)

QUEUE_CHUNKS = 2  # segments (with their frames) waiting for the model at most; beyond, the oldest is dropped
POLL_S = 0.2  # how often the model's thread looks up from an empty queue (status line, stop signals)
STATUS_EVERY_S = 5.0  # seconds between status lines on stderr
LATENCY_WINDOW = 10_000  # latencies kept for the median and p90 (the last ones: memory stays flat)


@dataclass
class _Clip:
    first: int  # frame numbers of the clip's first and last frame
    last: int
    start_s: float
    end_s: float
    arrival: float  # monotonic time the last frame came out of the decoder
    connection: int
    views: list[np.ndarray]  # (T, H, W, C) uint8 per view


@dataclass
class _Chunk:
    frames: list[tuple[int, float, object]]  # (number, seconds, av.VideoFrame or None) since the last chunk
    clip: _Clip | None


class ChunkQueue:
    """The bounded hand-over between the reader thread and the model (see the drop policy above)."""

    def __init__(self, capacity: int = QUEUE_CHUNKS):
        self.capacity = max(1, capacity)
        self._items: deque[_Chunk] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self.dropped_segments = self.dropped_frames = 0

    def put(self, chunk: _Chunk) -> None:
        with self._ready:
            if len(self._items) >= self.capacity:
                old = self._items.popleft()
                self.dropped_segments += old.clip is not None
                self.dropped_frames += len(old.frames)
            self._items.append(chunk)
            self._ready.notify()

    def close(self) -> None:
        """No more chunks will come (the stream is over)."""
        with self._ready:
            self._closed = True
            self._ready.notify()

    def take(self, max_clips: int, timeout: float) -> list[_Chunk] | None:
        """The waiting chunks, oldest first, up to `max_clips` clips; [] after `timeout` without any; None once the
        queue is closed and empty."""
        with self._ready:
            if not self._items and not self._closed:
                self._ready.wait(timeout)
            if not self._items:
                return None if self._closed else []
            taken, clips = [], 0
            while self._items and (clips < max_clips or self._items[0].clip is None):
                chunk = self._items.popleft()
                clips += chunk.clip is not None
                taken.append(chunk)
            return taken


class _Window:
    """The sliding window of one connection: every t_stride-th frame is kept, the last `size` kept frames are a
    clip, and a clip is cut every `stride` kept frames (the inference windows of a file, as the frames come)."""

    def __init__(self, size: int, t_stride: int, stride: int):
        self.size, self.t_stride, self.stride = size, t_stride, max(1, stride or size)
        self.frames: deque[tuple[LiveFrame, list[np.ndarray]]] = deque(maxlen=size)
        self.seen = self.kept = 0

    def wants(self) -> bool:
        """The next frame is one the clips use."""
        return self.seen % self.t_stride == 0

    def add(self, item: LiveFrame, views: list[np.ndarray] | None) -> _Clip | None:
        """The next frame of the connection (`views`: None when the clips do not use it); the clip it completes."""
        self.seen += 1
        if views is None:
            return None
        self.frames.append((item, views))
        self.kept += 1
        if self.kept < self.size or (self.kept - self.size) % self.stride:
            return None
        first, last = self.frames[0][0], self.frames[-1][0]
        frame_s = last.seconds - self.frames[-2][0].seconds if self.size > 1 else 0.0
        n_views = len(views)
        return _Clip(first.number, last.number, first.seconds, last.seconds + max(frame_s, 0.0), last.arrival,
                     last.connection, [np.stack([v[k] for _, v in self.frames]) for k in range(n_views)])


@dataclass
class LiveResult:
    """What a live run found: the summary entry of predictions.json is made from it (`entry`)."""

    source: str
    video: VideoInfo | None = None  # set when the first frame came
    n_frames: int = 0
    end_s: float = 0.0
    segments: list[dict] = field(default_factory=list)  # {"segment", "result", "real_share"} as for files
    score_sum: torch.Tensor | None = None
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    dropped_segments: int = 0
    dropped_frames: int = 0
    reconnects: int = 0
    stopped: str = ""  # why the run ended early ('' when the stream ended)
    ended: str = ""  # why the stream ended

    def latency_stats(self) -> dict:
        if not self.latencies:
            return {}
        values = sorted(self.latencies)
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        return {"median": round(statistics.median(values), 4), "p90": round(p90, 4), "max": round(values[-1], 4),
                "n": len(values)}

    def entry(self, class_names: Sequence[str], topk: int) -> dict:
        """The predictions.json entry (the file schema, plus `live`): the mean scores' top labels, the segments."""
        mean = self.score_sum / len(self.segments) if self.segments else None
        problems = [f"dropped {self.dropped_segments} segments ({self.dropped_frames} frames): the model fell "
                    "behind"] if self.dropped_segments else []
        problems += [f"reconnected {self.reconnects} times"] if self.reconnects else []
        fps = self.video.meta.fps if self.video else 0.0
        return {"duration": round(self.end_s, 3), "fps": fps, "n_frames": self.n_frames,
                "result": top_classes(mean, class_names, topk, digits=SCORE_DIGITS) if mean is not None else [],
                "segments": self.segments,
                "decoded_seconds": round(self.end_s, 3), "duration_seconds": round(self.end_s, 3),
                "n_decoded_frames": self.n_frames, "problems": problems, "file": None,
                "live": {"source": self.source, "dropped_segments": self.dropped_segments,
                         "dropped_frames": self.dropped_frames, "reconnects": self.reconnects,
                         "latency_s": self.latency_stats(), "stopped": self.stopped, "ended": self.ended}}


class LiveLines:
    """The JSON lines (one per segment, flushed at once) and the status line on stderr."""

    def __init__(self, out, *, status=sys.stderr):
        self.out, self.status = out, status
        self._last_status = time.monotonic()

    def segment(self, line: dict) -> None:
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()

    def say(self, text: str, *, force: bool = False) -> None:
        """A status line, at most every STATUS_EVERY_S seconds unless forced."""
        now = time.monotonic()
        if force or now - self._last_status >= STATUS_EVERY_S:
            self._last_status = now
            print(f"live: {text}", file=self.status, flush=True)


class LivePredictor:
    """Predicts a live source with `scorer`'s model, clips and views (see the module docstring).

    Args:
        scorer: the file predictor with the model, transforms, batch size and scores (`runner.build_predictor`).
        stall_s, reconnect: `LiveStream`'s.
        keep_frames: hand every full-size frame to the listeners (annotated videos); otherwise only the first of
            each chunk (the page's thumbnail; the others are passed as None), which keeps the queue small.
    """

    def __init__(self, scorer: VideoPredictor, *, stall_s: float, reconnect: int, keep_frames: bool = False,
                 queue_chunks: int = QUEUE_CHUNKS):
        self.scorer = scorer
        self.stall_s, self.reconnect, self.keep_frames = stall_s, reconnect, keep_frames
        self.queue_chunks = queue_chunks

    def run(self, source: str, listeners: Sequence[PredictionListener], lines: LiveLines) -> LiveResult:
        """Follow `source` until it ends or a stop signal (KeyboardInterrupt) comes; the listeners' videos are
        finished either way, and the result says why it ended."""
        result = LiveResult(source)
        stream = LiveStream(source, stall_s=self.stall_s, reconnect=self.reconnect, threads=self.scorer.threads)
        chunks = ChunkQueue(self.queue_chunks)
        reader = threading.Thread(target=self._read, args=(stream, chunks), name="live-reader", daemon=True)
        wanted = any(getattr(x, "wants_features", False) for x in listeners)
        tap = ClassifierInputCapture(self.scorer.net).attach() if wanted else None
        reader.start()
        try:
            self._follow(stream, chunks, result, listeners, lines, tap)
        except KeyboardInterrupt as e:  # Ctrl-C, or a SIGTERM/SIGUSR1 raised by engine.stop_signals
            result.stopped = f"stopped by {signal_name(e.signum) if isinstance(e, StopRequested) else 'Ctrl-C'}"
        finally:
            stream.stopping.set()
            if tap is not None:
                tap.close()
        result.dropped_segments, result.dropped_frames = chunks.dropped_segments, chunks.dropped_frames
        result.reconnects, result.ended = stream.state.reconnects, stream.state.ended
        if result.video is not None:
            for listener in listeners:
                listener.finish_video(None)
        reader.join(timeout=1.0)  # a reader blocked in a pipe's read is a daemon: it ends with the process
        return result

    def _read(self, stream: LiveStream, chunks: ChunkQueue) -> None:
        """The reader thread: frames -> views -> chunks."""
        temporal = self.scorer.temporal
        window, connection, params, frames = None, None, None, []
        try:
            for item in stream:
                if item.connection != connection:  # a new connection: a new window, crops for its frame size
                    connection = item.connection
                    window = _Window(temporal.size, temporal.t_stride, temporal.window_stride)
                    params = view_params(self.scorer.spatial, *displayed_size(item.frame), None)
                views = decode_views(item.frame, *params) if window.wants() else None
                # each chunk's first frame is kept in any case: the page's thumbnail, the video's size
                frames.append((item.number, item.seconds, item.frame if self.keep_frames or not frames else None))
                clip = window.add(item, views)
                if clip is not None:
                    chunks.put(_Chunk(frames, clip))
                    frames = []
        except Exception as e:  # noqa: BLE001 - the stream is over either way; the model's thread says why
            stream.state.ended = f"reading failed: {e}"
            log.warning("live: reading %s failed: %s", stream.source, e)
        finally:
            chunks.close()

    def _follow(self, stream: LiveStream, chunks: ChunkQueue, result: LiveResult, listeners, lines, tap) -> None:
        max_clips = max(1, self.scorer.batch_size // self.scorer.spatial.n_crops)
        last_frame_at, stalled = time.monotonic(), False
        while (taken := chunks.take(max_clips, POLL_S)) is not None:
            now = time.monotonic()
            if not taken:
                if now - last_frame_at > self.stall_s:  # said at once, then every STATUS_EVERY_S
                    why = stream.state.losses[-1] if stream.state.losses else "waiting for the source"
                    lines.say(f"no frame for {now - last_frame_at:.1f} s ({why})", force=not stalled)
                    stalled = True
                continue
            last_frame_at, stalled = now, False
            if result.video is None:
                self._start(stream, taken[0].frames[0], result, listeners)
            for chunk in taken:
                for number, seconds, frame in chunk.frames:
                    for listener in listeners:
                        listener.frame(number, seconds, frame)
                result.n_frames += len(chunk.frames)
                result.end_s = max(result.end_s, chunk.clip.end_s if chunk.clip else 0.0)
            self._score([c.clip for c in taken if c.clip is not None], result, listeners, lines, tap,
                        stream, chunks)

    def _start(self, stream: LiveStream, first: tuple, result: LiveResult, listeners) -> None:
        width, height = displayed_size(first[2])
        fps = stream.state.fps or 30.0
        started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta = VideoMeta(n_frames=0, fps=fps, width=width, height=height)
        name = "stdin" if result.source == STDIN else result.source
        result.video = VideoInfo(f"{name} @ {started}", result.source, meta, live=True)
        log.info("live: %s: %dx%d at %.2f fps; one segment every %d frames", result.source, width, height, fps,
                 self.scorer.temporal.window_stride * self.scorer.temporal.t_stride)
        for listener in listeners:
            listener.start_video(result.video)

    def _score(self, clips: list[_Clip], result: LiveResult, listeners, lines: LiveLines, tap, stream,
               chunks: ChunkQueue) -> None:
        if not clips:
            return
        n = self.scorer.spatial.n_crops
        scores = self.scorer.scores_of([view for clip in clips for view in clip.views])
        features = tap.take() if tap is not None else None
        for k, clip in enumerate(clips):
            clip_scores = scores[k * n: (k + 1) * n].mean(dim=0)
            top = top_classes(clip_scores, self.scorer.class_names, self.scorer.topk, digits=SCORE_DIGITS)
            span = [round(clip.start_s, 3), round(clip.end_s, 3)]
            for listener in listeners:
                listener.segment(span[0], span[1], top, clip_scores,
                                 features[k * n: (k + 1) * n].mean(dim=0) if features is not None else None)
            result.score_sum = clip_scores.clone() if result.score_sum is None else result.score_sum + clip_scores
            result.segments.append({"segment": span, "result": top, "real_share": 1.0})
            latency = time.monotonic() - clip.arrival
            result.latencies.append(latency)
            lines.segment({"source": result.source, "segment": span, "frames": [clip.first, clip.last],
                           "result": top, "latency_s": round(latency, 4),
                           "dropped_segments": chunks.dropped_segments, "reconnects": stream.state.reconnects})
        stats = result.latency_stats()
        lines.say(f"{result.end_s:.1f} s of stream, {len(result.segments)} segments, {chunks.dropped_segments} "
                  f"dropped, {stream.state.reconnects} reconnects, latency median {stats['median']:.2f} s; now: "
                  f"{top[0]['label']} {top[0]['score']:.2f}")
