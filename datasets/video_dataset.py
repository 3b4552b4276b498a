"""The one Dataset class for training (one clip per item) and validation/inference (several clips per item)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from datasets.annotations import VideoRecord
from datasets.clip_loader import ClipLoader
from datasets.spatial_transforms import ClipNormalizer
from datasets.targets import DirectionFlip, multi_hot, record_actions
from datasets.temporal_transforms import TemporalTransform, clip_segment

TARGETS = ("label", "multi_hot", "video_segment")


def item_seed(seed: int, epoch: int, index: int, copy: int = 0) -> int:
    """Seed of one item's random draws: different per epoch, item and repeated copy (--repeated_aug), independent
    of workers and ranks. Copy 0 has the seed items had before repeats existed."""
    base = (seed * 1_000_003 + epoch) * 1_000_000_007 + index
    return base if copy == 0 else base * 1_000_000_009 + copy


def draw_item(records: Sequence[VideoRecord], temporal, seed: int, key: int | tuple[int, ...]):
    """Item ``key`` (an index, or (index, epoch) or (index, epoch, copy) from EpochShardSampler): its record,
    its own generator (seeded by seed, epoch, index and copy, so workers do not matter) and the frame indices of
    its clips, drawn first. Every loader of clips draws in this order (the benchmarks' reference loader too)."""
    index, epoch, copy = (*key, 0)[:3] if isinstance(key, tuple) else (key, 0, 0)
    record = records[index]
    rng = random.Random(item_seed(seed, epoch, index, copy))
    return record, rng, temporal(record.frame_indices, rng)


class VideoClipDataset(Dataset):
    """Clips of annotated videos: temporal transform -> reader -> spatial transform -> uint8 clip.

    Items: training (`temporal.multi_clip` False) -> (clip, label); validation/inference -> (list of
    clips, list of targets), flattened by `collate_clips`; with a 3-crop spatial transform every clip
    comes as its 3 crops in a row, each with the clip's target. A clip is uint8 (T, H, W, C), or float32
    (C, T, H, W) already normalised when `normalizer` is given. Targets are the label (int), with
    target='multi_hot' a float32 (n_classes,) vector of the record's actions overlapping the clip, or
    with target='video_segment' [video_id, [first_frame, end_exclusive]] of each clip.

    An index may be an int, an (index, epoch) pair or an (index, epoch, copy) triple (as `EpochShardSampler`
    yields): all random draws of an item come from a generator seeded by (seed, epoch, index, copy), so a run is
    reproducible whatever the number of workers, persistent workers still get new crops every epoch, and the
    repeated copies of an item (--repeated_aug) get different ones.

    Args:
        records: the samples (datasets.annotations.read_records).
        loader: reads and transforms clips (datasets.clip_loader.ClipLoader).
        temporal: the split's temporal transform.
        target: 'label' or 'video_segment'.
        normalizer: when given, clips are normalised here (in the worker) and returned as float.
        seed: base seed of the per-item generators.
        n_classes: length of the multi-hot targets.
        direction_flip: when given (training with flips), the dataset decides each flip from the label and
            a flipped clip takes the mirrored class (datasets.targets.DirectionFlip).
    """

    def __init__(self, records: Sequence[VideoRecord], loader: ClipLoader, temporal: TemporalTransform, *,
                 target: str = "label", normalizer: ClipNormalizer | None = None, seed: int = 0,
                 n_classes: int = 0, direction_flip: DirectionFlip | None = None):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if target == "multi_hot" and n_classes < 1:
            raise ValueError("multi-hot targets need n_classes >= 1")
        self.n_classes = n_classes
        self.direction_flip = direction_flip
        self.records = list(records)
        self.loader = loader
        self.temporal = temporal
        self.target = target
        self.normalizer = normalizer
        self.seed = seed

    @property
    def problems(self):
        """The `DataProblems` counters of this dataset (shared with its worker processes)."""
        return self.loader.problems

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, ...]):
        record, rng, clips_indices = draw_item(self.records, self.temporal, self.seed, key)
        label, flip = record.label, None
        if self.direction_flip is not None and label >= 0:
            flip = self.direction_flip.draw(label, rng)
            label = self.direction_flip.label(label, flip)
        views = (self.loader.load_views(record, clips_indices, rng) if flip is None
                 else self.loader.load_views(record, clips_indices, rng, flip=flip))
        if len(views) > 1:  # multi-crop: every crop of clip 0, then of clip 1, ... (targets repeat per crop)
            clips_indices = [c for c in clips_indices for _ in views]
        clips = [self._to_tensor(view[k]) for k in range(len(views[0])) for view in views]
        if self.target == "label":
            targets = [label] * len(clips)
        elif self.target == "multi_hot":
            actions = record_actions(record)
            targets = [multi_hot(actions, c, self.n_classes) for c in clips_indices]
        else:
            targets = [[record.video_id, clip_segment(c)] for c in clips_indices]
        if not self.temporal.multi_clip:
            return clips[0], targets[0]
        return clips, targets

    def _to_tensor(self, clip) -> torch.Tensor:
        t = torch.from_numpy(clip)
        return t if self.normalizer is None else self.normalizer(t[None])[0]


def collate_clips(batch: list[tuple[list[torch.Tensor], list]]) -> tuple[torch.Tensor, torch.Tensor | list]:
    """Flatten the clips of all videos in a batch: labels -> LongTensor, multi-hot -> float (N, C),
    segments -> plain list."""
    clips = [c for item_clips, _ in batch for c in item_clips]
    targets = [t for _, item_targets in batch for t in item_targets]
    stacked = torch.stack(clips)
    if targets and isinstance(targets[0], int):
        return stacked, torch.tensor(targets, dtype=torch.long)
    if targets and isinstance(targets[0], torch.Tensor):
        return stacked, torch.stack(targets)
    return stacked, targets
