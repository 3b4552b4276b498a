"""Clip-to-video scoring: clip scores collected per video, averaged into video scores, top-k lists in the
original's result schema, and clip/video accuracy.

Shared by ``--inference`` (engine.inference), ``--predict`` (predict.video_predictor) and the feature files
(engine.features).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class VideoScoreAggregator:
    """Collects clip scores per video and turns them into video scores.

    Args:
        class_names: index -> class name, used for the labels in the results.
    """

    def __init__(self, class_names: Sequence[str]):
        self.class_names = list(class_names)
        # video_id -> list of (segment, clip scores); dict order = order in which videos were first seen.
        self.clips: dict[str, list[tuple[list[int], torch.Tensor]]] = {}

    def update(self, scores: torch.Tensor, video_ids: Sequence[str], segments: Sequence[Sequence[int]]) -> None:
        """Add a batch of clip scores (N, n_classes) with each clip's video id and [begin, end] segment."""
        scores = scores.detach().float().cpu()
        for row, video_id, segment in zip(scores, video_ids, segments):
            self.clips.setdefault(video_id, []).append(([int(s) for s in segment], row))

    def merge(self, other: VideoScoreAggregator) -> None:
        """Add another aggregator's clips (e.g. gathered from another rank); videos keep their first position."""
        for video_id, clips in other.clips.items():
            self.clips.setdefault(video_id, []).extend(clips)

    def reorder(self, video_order: Sequence[str]) -> None:
        """Put videos in ``video_order`` (unknown ones last, in their current order) and clips by segment."""
        rank = {vid: i for i, vid in enumerate(video_order)}
        ordered = sorted(self.clips, key=lambda vid: rank.get(vid, len(rank)))
        self.clips = {vid: sorted(self.clips[vid], key=lambda c: c[0]) for vid in ordered}

    def video_scores(self) -> dict[str, torch.Tensor]:
        """Mean clip score per video (with multi-view testing: the mean over all clips x crops)."""
        return {vid: torch.stack([s for _, s in clips]).mean(dim=0) for vid, clips in self.clips.items()}

    def segment_scores(self, video_id: str) -> list[tuple[list[int], torch.Tensor]]:
        """(segment, mean score) per distinct segment of a video, in order: the crops of one clip are averaged."""
        groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for segment, scores in self.clips[video_id]:
            groups.setdefault(tuple(segment), []).append(scores)
        return [(list(seg), torch.stack(s).mean(dim=0)) for seg, s in groups.items()]

    def top(self, scores: torch.Tensor, k: int) -> list[dict]:
        """The ``k`` best classes of a score vector, best first: [{"label": name, "score": float}, ...]."""
        return top_classes(scores, self.class_names, k)

    def finalize(self, topk: int, *, average: bool = True) -> dict:
        """The results dict of the original's JSON schema (averaged per video, or one entry per clip)."""
        if average:
            results = {vid: self.top(s, topk) for vid, s in self.video_scores().items()}
        else:
            results = {vid: [{"segment": seg, "result": self.top(s, topk)} for seg, s in self.segment_scores(vid)]
                       for vid in self.clips}
        return {"results": results}

    def accuracy(self, labels: Mapping[str, int], k: int = 1) -> tuple[float, int] | None:
        """Video-level top-k accuracy over the videos that have a label, and their number (None if none)."""
        hits, n = 0, 0
        for vid, scores in self.video_scores().items():
            label = labels.get(vid)
            if label is None or label < 0:
                continue
            n += 1
            hits += int(label in scores.topk(min(k, scores.numel())).indices.tolist())
        return (hits / n, n) if n else None

    def clip_accuracy(self, labels: Mapping[str, int], k: int = 1) -> tuple[float, int] | None:
        """Top-k accuracy of every single view (clip, or clip x crop) of the labelled videos, and their number."""
        hits, n = 0, 0
        for vid, clips in self.clips.items():
            label = labels.get(vid)
            if label is None or label < 0:
                continue
            for _, scores in clips:
                n += 1
                hits += int(label in scores.topk(min(k, scores.numel())).indices.tolist())
        return (hits / n, n) if n else None

    def confusion(self, labels: Mapping[str, int]) -> list[list[int]]:
        """Top-1 confusion matrix of the labelled videos: rows the true class, columns the top-1 predicted one."""
        n = len(self.class_names)
        matrix = [[0] * n for _ in range(n)]
        for vid, scores in self.video_scores().items():
            label = labels.get(vid)
            if label is not None and label >= 0:
                matrix[label][int(scores.argmax())] += 1
        return matrix

    def accuracy_report(self, labels: Mapping[str, int]) -> dict | None:
        """Clip-level and video-level top-1 accuracy with their counts (None when no video has a label)."""
        clip, video = self.clip_accuracy(labels), self.accuracy(labels)
        if clip is None or video is None:
            return None
        return {"clip_acc": clip[0], "clips": clip[1], "video_acc": video[0], "videos": video[1]}


SCORE_DIGITS = 6  # decimals of the scores in prediction files (predictions.json/.csv, live JSON lines)


def top_classes(scores: torch.Tensor, class_names: Sequence[str], k: int, *, digits: int | None = None) -> list[dict]:
    """The ``k`` best classes of a score vector, best first: [{"label": name, "score": float}, ...], the scores
    rounded to ``digits`` when given (as the prediction files store them)."""
    values, indices = scores.topk(min(k, scores.numel()))
    return [{"label": class_names[i], "score": v if digits is None else round(v, digits)}
            for v, i in zip(values.tolist(), indices.tolist())]
