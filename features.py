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

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inference import VideoScoreAggregator

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

    def __enter__(self) -> ClassifierInputCapture:
        self._handle = self.classifier.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

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
    """Write the collected embeddings in the layout of the module docstring, atomically.

    `unit`: "seconds" writes start_s/end_s, "frames" writes start_frame/end_frame (the collected segments).
    `segment_times(video_id, segment) -> (start_s, end_s)`: turns a collected segment into seconds (unit seconds;
    default: the segment as it is).
    """
    import h5py

    if video_order is not None:
        collected.reorder(video_order)
    videos = list(collected.clips)
    rows, index, starts, ends, means = [], [], [], [], []
    for v, video_id in enumerate(videos):
        for segment, vector in collected.segment_scores(video_id):
            start, end = segment_times(video_id, segment) if segment_times else segment
            rows.append(vector.numpy())
            index.append(v)
            starts.append(start)
            ends.append(end)
        means.append(_mean(collected, video_id))
    dim = rows[0].shape[0] if rows else 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(layout_version=LAYOUT_VERSION, dim=dim, segment_unit=unit, source=source)
            f.create_dataset("features", data=np.asarray(rows, np.float32).reshape(len(rows), dim))
            f.create_dataset("video_index", data=np.asarray(index, np.int32))
            names = ("start_s", "end_s") if unit == "seconds" else ("start_frame", "end_frame")
            dtype = np.float64 if unit == "seconds" else np.int64
            f.create_dataset(names[0], data=np.asarray(starts, dtype))
            f.create_dataset(names[1], data=np.asarray(ends, dtype))
            f.create_dataset("videos", data=videos, dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("video_mean", data=np.asarray(means, np.float32).reshape(len(videos), dim))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _mean(collected: VideoScoreAggregator, video_id: str) -> np.ndarray:
    return torch.stack([v for _, v in collected.clips[video_id]]).mean(dim=0).numpy()


def read_features(path: Path) -> dict:
    """The file's datasets as numpy arrays (videos as str) and its attrs under "attrs"."""
    import h5py

    with h5py.File(path, "r") as f:
        out = {name: f[name][()] for name in f}
        out["videos"] = [v.decode() if isinstance(v, bytes) else v for v in out["videos"]]
        out["attrs"] = dict(f.attrs)
    return out
