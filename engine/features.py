"""Clip embeddings: the classifier's input (the pooled features) of every clip, saved per segment and per video.

`--save_features` (with `--predict`, or with `--inference` for an annotation subset) writes one HDF5 file:

    features     float32 (N_segments, D)  pooled embedding of each segment (the crops of one clip averaged)
    video_index  int32   (N_segments,)    row of `videos` the segment belongs to
    start_s      float64 (N_segments,)    segment start in seconds      (--predict)
    end_s        float64 (N_segments,)    segment end in seconds        (--predict)
    start_frame  int64   (N_segments,)    first frame of the clip        (--inference: the {subset}.json segments)
    end_frame    int64   (N_segments,)    last frame of the clip         (--inference)
    videos       utf-8 strings (N_videos,) video ids (paths for --predict)
    video_mean   float32 (N_videos, D)    mean embedding over every clip (and crop) of the video
    attrs: layout_version, dim (D), segment_unit ("seconds" or "frames"), source (checkpoint)

Rows are in video order, segments in time order: `features[video_index == v]` are video v's segments.
The embedding is whatever enters `model.get_classifier()` (after global pooling and dropout, which is
the identity in eval mode): 512 wide for ResNet-18/34, 2048 for ResNet-50 and deeper.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from engine.scoring import VideoScoreAggregator
from utils import atomic_file

LAYOUT_VERSION = 1


class ClassifierInputCapture:
    """Records the input of `model.get_classifier()` on every forward (a forward pre-hook), as float32 on the CPU.

        with ClassifierInputCapture(model) as capture:
            scores = model(clips)
            embeddings = capture.take()   # (N, D)
    """

    def __init__(self, model: nn.Module):
        self.classifier = model.get_classifier()
        self._handle = None
        self._captured: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.classifier.in_features)

    def _hook(self, module: nn.Module, inputs: tuple) -> None:
        self._captured = inputs[0].detach().float().flatten(1).cpu()

    def attach(self) -> ClassifierInputCapture:
        if self._handle is None:
            self._handle = self.classifier.register_forward_pre_hook(self._hook)
        return self

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> ClassifierInputCapture:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.close()

    def take(self) -> torch.Tensor:
        """The embeddings of the last forward pass (N, D); raises when the classifier did not run."""
        if self._captured is None:
            raise RuntimeError("the classifier did not run since the last take()")
        out, self._captured = self._captured, None
        return out


def feature_collector() -> VideoScoreAggregator:
    """Per-video clip embeddings with their segments: the same bookkeeping (merge across ranks, crop averaging,
    video mean) as clip scores."""
    return VideoScoreAggregator([])


def write_features(path: Path, collected: VideoScoreAggregator, *, video_order: Sequence[str] | None = None,
                   unit: str = "seconds", segment_times=None, source: str = "") -> Path:
    """Write embeddings collected per clip (`feature_collector`) in the layout of the module docstring.

    `unit`: "seconds" writes start_s/end_s, "frames" writes start_frame/end_frame (the collected segments).
    `segment_times(video_id, segment) -> (start_s, end_s)`: turns a collected segment into seconds (unit seconds;
    default: the segment as it is).
    """
    if video_order is not None:
        collected.reorder(video_order)
    table = FeatureTable()
    for video_id in collected.clips:
        for segment, vector in collected.segment_scores(video_id):
            start, end = segment_times(video_id, segment) if segment_times else segment
            table.add(video_id, start, end, vector)
        table.means[video_id] = _mean(collected, video_id)
    return table.write(path, unit=unit, source=source)


class FeatureTable:
    """Segment embeddings in arrival order, grouped by video, and the file writer.

    The mean per video is the mean of its segments unless `means` holds one (e.g. over every clip and crop).
    """

    def __init__(self):
        self.videos: list[str] = []
        self.rows: list[tuple[int, float, float, np.ndarray]] = []  # (video index, start, end, vector)
        self.means: dict[str, np.ndarray] = {}
        self._index: dict[str, int] = {}

    def add(self, video_id: str, start: float, end: float, vector) -> None:
        if video_id not in self._index:
            self._index[video_id] = len(self.videos)
            self.videos.append(video_id)
        vector = vector.detach().float().cpu().numpy() if isinstance(vector, torch.Tensor) else np.asarray(vector)
        self.rows.append((self._index[video_id], start, end, vector.astype(np.float32).reshape(-1)))

    def keep_earlier(self, path: Path, videos: Sequence[str]) -> int:
        """Take the rows of `videos` from an earlier file at `path` (a rerun that skipped them) unless this table
        has them; returns how many videos were taken. An unreadable or different-width file is ignored."""
        try:
            earlier = read_features(path)
        except (OSError, KeyError):
            return 0
        dim = self.rows[0][3].shape[0] if self.rows else earlier["features"].shape[1]
        if earlier["features"].shape[1] != dim:
            return 0
        wanted = set(videos) - set(self.videos)
        unit = earlier["attrs"].get("segment_unit", "seconds")
        starts, ends = ("start_s", "end_s") if unit == "seconds" else ("start_frame", "end_frame")
        taken = 0
        for v, video_id in enumerate(earlier["videos"]):
            if video_id not in wanted:
                continue
            for k in np.flatnonzero(earlier["video_index"] == v):
                self.add(video_id, earlier[starts][k].item(), earlier[ends][k].item(), earlier["features"][k])
            self.means[video_id] = earlier["video_mean"][v]
            taken += 1
        return taken

    def reorder(self, video_order: Sequence[str]) -> None:
        """Put the videos in `video_order` (unknown ones last, as they were); segments keep their order."""
        rank = {vid: k for k, vid in enumerate(video_order)}
        videos = sorted(self.videos, key=lambda vid: rank.get(vid, len(rank)))
        new_index = {self._index[vid]: k for k, vid in enumerate(videos)}
        self.rows = sorted(((new_index[v], *rest) for v, *rest in self.rows), key=lambda row: row[0])
        self.videos, self._index = videos, {vid: k for k, vid in enumerate(videos)}

    def write(self, path: Path, *, unit: str = "seconds", source: str = "") -> Path:
        """The HDF5 file of the module docstring, written atomically."""
        dim = self.rows[0][3].shape[0] if self.rows else 0
        features = np.zeros((len(self.rows), dim), np.float32)
        for k, row in enumerate(self.rows):
            features[k] = row[3]
        index = np.asarray([r[0] for r in self.rows], np.int32)
        means = np.zeros((len(self.videos), dim), np.float32)
        for v, video_id in enumerate(self.videos):
            means[v] = self.means[video_id] if video_id in self.means else features[index == v].mean(axis=0)

        path = Path(path)
        with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs.update(layout_version=LAYOUT_VERSION, dim=dim, segment_unit=unit, source=source)
            f.create_dataset("features", data=features)
            f.create_dataset("video_index", data=index)
            names = ("start_s", "end_s") if unit == "seconds" else ("start_frame", "end_frame")
            dtype = np.float64 if unit == "seconds" else np.int64
            f.create_dataset(names[0], data=np.asarray([r[1] for r in self.rows], dtype))
            f.create_dataset(names[1], data=np.asarray([r[2] for r in self.rows], dtype))
            f.create_dataset("videos", data=self.videos, dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("video_mean", data=means)
        return path


def _mean(collected: VideoScoreAggregator, video_id: str) -> np.ndarray:
    return torch.stack([v for _, v in collected.clips[video_id]]).mean(dim=0).numpy()


def read_features(path: Path) -> dict:
    """The file's datasets as numpy arrays (videos as str) and its attrs under "attrs"."""
    with h5py.File(path, "r") as f:
        out = {name: f[name][()] for name in f}
        out["videos"] = [v.decode() if isinstance(v, bytes) else v for v in out["videos"]]
        out["attrs"] = dict(f.attrs)
    return out
