"""What a clip is trained towards, besides its class index: multi-hot action targets and flip-aware labels.

- Multi-label (Charades): a clip's target is multi-hot over the classes of the actions whose frame span
  overlaps the clip's frames; a video without actions gets all zeros.
- Direction labels (SSv2): mirroring a clip of "Pushing something from left to right" shows "... from right
  to left". `DirectionFlip` pairs the classes whose names differ only by left <-> right; a mirrored clip takes
  its partner's label, and clips of a direction class without a partner are never mirrored.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

_DIRECTION = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def multi_hot(actions: Sequence[tuple[int, int, int]], clip: Sequence[int], n_classes: int) -> torch.Tensor:
    """float32 (n_classes,): 1 for each action (class, first, end_exclusive) overlapping [min(clip), max(clip)]."""
    target = torch.zeros(n_classes, dtype=torch.float32)
    if clip:
        lo, hi = min(clip), max(clip) + 1
        for label, first, end in actions:
            if first < hi and lo < end:
                target[label] = 1.0
    return target


def record_actions(record) -> tuple[tuple[int, int, int], ...]:
    """A VideoRecord's actions; an entry without actions but with a label is one action over its frames."""
    if record.actions:
        return record.actions
    return ((record.label, *record.segment),) if record.label >= 0 else ()


def video_target(record, n_classes: int) -> torch.Tensor:
    """The video-level multi-hot target: every action of the record (all zeros without any)."""
    return multi_hot(record_actions(record), [record.segment[0], record.segment[1] - 1], n_classes)


def mirrored_name(name: str) -> str:
    """The class name with left and right exchanged ('from left to right' -> 'from right to left')."""
    return _DIRECTION.sub(lambda m: _SWAP.get(m.group(0), _SWAP[m.group(0).lower()]), name)


@dataclass(frozen=True)
class DirectionFlip:
    """Label handling of horizontal flips, built from the class names by `direction_flip` (picklable).

    Attributes:
        swap: class index -> the index of its mirrored class (both directions listed).
        keep: indices of direction classes without a mirrored partner: their clips are never flipped.
    """

    swap: dict[int, int] = field(default_factory=dict)
    keep: frozenset[int] = frozenset()

    def draw(self, label: int, rng: random.Random) -> bool:
        """Whether to mirror a clip of `label` (p=0.5; never for a class in `keep`)."""
        return label not in self.keep and rng.random() < 0.5

    def label(self, label: int, flipped: bool) -> int:
        return self.swap.get(label, label) if flipped else label


def direction_flip(class_names: Sequence[str]) -> DirectionFlip:
    """Pair the classes whose names mention left/right with their mirrored class (see `DirectionFlip`)."""
    index = {name: i for i, name in enumerate(class_names)}
    swap, keep = {}, set()
    for i, name in enumerate(class_names):
        if not _DIRECTION.search(name):
            continue
        partner = index.get(mirrored_name(name))
        if partner is None or partner == i:
            keep.add(i)
        else:
            swap[i] = partner
    return DirectionFlip(swap, frozenset(keep))
