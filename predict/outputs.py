"""What `--predict` makes besides predictions.json/.csv, from one decoding pass per video: predictions.html
(always), annotated copies of the videos (--output_video) and the segment embeddings (--save_features).

`PredictOutputs` is a listener of the predictor: for every video it is told

    start_video(video)                                   # video.video_id, video.path, video.meta (VideoMeta)
    frame(number, seconds, av_frame)                     # every decoded frame, full resolution, in order
    segment(start_s, end_s, topk, scores, features)      # as segments are scored (features: None unless wanted)
    finish_video(result)                                 # the predictor's VideoResult (its `error`)

and close(predictions) writes the page from predictions.json's entries (and the features file).
`wants_features` tells the predictor to hand over the classifier input of every segment.
Output names: annotated/<safe name>.mp4, predictions.html, features.h5.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from engine.features import FeatureTable
from predict.annotate_video import DEFAULT_BUFFER_BYTES, DEFAULT_MAX_BUFFERED, AnnotatedVideoWriter, safe_file_name
from predict.report_html import ThumbnailSampler, VideoEntry, entries_from_predictions, write_report

log = logging.getLogger(__name__)

REPORT_NAME = "predictions.html"
FEATURES_NAME = "features.h5"
ANNOTATED_DIR = "annotated"
LIVE_TIMELINE_S = 60.0  # seconds the timeline strip of an annotated live stream shows (the latest ones)


def clips_per_batch_for_annotation(max_pixels: int, *, clip_frames: int, stride: int) -> int:
    """How many consecutive clips one inference batch may hold so that every frame of an annotated video is still
    in the writer's buffer when its segment's scores arrive (frames wait until their batch is scored)."""
    frame_bytes = max(1, max_pixels * 3 // 2)  # decoded YUV 4:2:0
    frames = max(4, min(DEFAULT_MAX_BUFFERED, DEFAULT_BUFFER_BYTES // frame_bytes))
    return max(1, (frames - clip_frames) // max(1, stride) + 1)


def problem_lines(problems) -> list[str]:
    """One line per problem, whatever form the predictor reports them in (strings, or dicts of kind/detail)."""
    lines = []
    for p in problems or ():
        if isinstance(p, dict):
            lines.append(": ".join(str(p[k]) for k in ("kind", "detail", "count") if p.get(k) not in (None, "")))
        else:
            lines.append(str(p))
    return lines


class PredictOutputs:
    """Listener of the predictor (see the module docstring).

    Args:
        out_dir: the result path.
        class_names: the model's classes (their colours in the videos and the page).
        output_video: write annotated/<name>.mp4 per video.
        save_features: write features.h5.
        topk: labels drawn on annotated frames.
        title, checkpoint: shown on the page.
    """

    def __init__(self, out_dir: Path, *, class_names: Sequence[str], output_video: bool = False,
                 save_features: bool = False, topk: int = 3, title: str = "Predictions", checkpoint: str = ""):
        self.out_dir = Path(out_dir)
        self.class_names = list(class_names)
        self.output_video, self.save_features = output_video, save_features
        self.topk, self.title, self.checkpoint = topk, title, checkpoint
        self.thumbnails: dict[str, list] = {}  # video id -> thumbnails, of the videos this run decoded
        self.annotated: dict[str, str] = {}  # video id -> link to its annotated copy (relative to the page)
        self.features = FeatureTable() if save_features else None
        self._taken: set[str] = set()
        self._video = None
        self._writer: AnnotatedVideoWriter | None = None
        self._thumbs: ThumbnailSampler | None = None
        self._annotated: str | None = None

    @property
    def wants_features(self) -> bool:
        return self.save_features

    def start_video(self, video) -> None:
        self._video = video
        meta = video.meta
        self._thumbs = ThumbnailSampler(meta.n_frames)
        self._writer, self._annotated = None, None
        if self.output_video:
            name = safe_file_name(video.video_id, self._taken)
            live = getattr(video, "live", False)  # no length known: a strip of the latest LIVE_TIMELINE_S
            self._writer = AnnotatedVideoWriter(self.out_dir / ANNOTATED_DIR / name,
                                                duration_s=LIVE_TIMELINE_S if live else meta.duration, fps=meta.fps,
                                                topk=self.topk, class_names=self.class_names, rolling=live)
            self._annotated = f"{ANNOTATED_DIR}/{name}"

    def frame(self, number: int, seconds: float, frame) -> None:
        self._thumbs.add(number, seconds, frame)
        if self._writer is not None:
            self._writer.add_frame(number, seconds, frame)

    def segment(self, start_s: float, end_s: float, topk: Sequence[dict], scores=None, features=None) -> None:
        if self._writer is not None:
            self._writer.add_segment(start_s, end_s, topk)
        if self.features is not None and features is not None:
            self.features.add(self._video.video_id, float(start_s), float(end_s), features)

    def finish_video(self, result=None) -> None:
        """Close the video's outputs. `result`: the predictor's VideoResult (or None); an unusable one (its
        `error` set) leaves no annotated video."""
        video, annotated = self._video, None
        error = getattr(result, "error", "")
        if self._writer is not None:
            if error:
                self._writer.abort()
            else:
                try:
                    self._writer.close()
                    annotated = self._annotated
                except ValueError as e:  # no frame could be decoded: nothing to show
                    log.warning("no annotated video for %s: %s", video.video_id, e)
                    self._writer.abort()
        self.thumbnails[video.video_id] = list(self._thumbs.images)
        if annotated:
            self.annotated[video.video_id] = annotated
        self._video, self._writer, self._thumbs = None, None, None

    def abort_video(self) -> None:
        """Drop the current video's partial outputs (an error or an interruption)."""
        if self._writer is not None:
            self._writer.abort()
        self._video, self._writer, self._thumbs = None, None, None

    def close(self, predictions: dict, *, unusable: dict | None = None, partial: str = "") -> list[Path]:
        """Write predictions.html (and features.h5).

        `predictions`: {"results": {video_id: entry}} as in predictions.json (videos predicted by an earlier
        run are on the page too, without thumbnails); `unusable`: {video_id: reason} of inputs that could not
        be used; `partial`: why the results are incomplete, if they are.
        """
        if self._video is not None:
            self.abort_video()
        entries = entries_from_predictions(
            predictions, thumbnails=self.thumbnails, annotated=self.annotated,
            problems={vid: problem_lines(e.get("problems")) for vid, e in predictions["results"].items()})
        entries += [VideoEntry(vid, 0.0, [], problems=[f"not used: {reason}"]) for vid, reason in
                    (unusable or {}).items()]
        written = [write_report(self.out_dir / REPORT_NAME, entries, title=self.title,
                                checkpoint=self.checkpoint, class_names=self.class_names, partial=partial)]
        if self.features is not None:
            path = self.out_dir / FEATURES_NAME
            self.features.keep_earlier(path, list(predictions["results"]))  # videos a rerun skipped
            self.features.reorder(list(predictions["results"]))
            if self.features.rows:
                written.append(self.features.write(path, unit="seconds", source=self.checkpoint))
        return written
