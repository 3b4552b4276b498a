"""The forward pass every loop shares: a batch moved to the device and normalised, and the autocast context.

Training, validation, inference, ``--predict`` and Grad-CAM all feed the model through these two functions,
so a clip is prepared the same way wherever it is scored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` ('fp32' disables it)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def prepare_batch(clips: torch.Tensor, targets: torch.Tensor | None, device: torch.device, normalizer: Callable | None,
                  *, keep_layout: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Move a batch to ``device`` and turn uint8 (N, T, H, W, C) clips into normalised float (N, C, T, H, W).

    ``targets`` (labels) move along; None (inference batches, whose targets are not tensors) stays None.
    On the CPU the clips get the default layout unless ``keep_layout`` (inference keeps the normaliser's
    channels_last_3d, so its scores stay bit-identical to what it always wrote).
    """
    clips = clips.to(device, non_blocking=True)
    if targets is not None:
        targets = targets.to(device, non_blocking=True)
    if normalizer is not None:
        clips = normalizer(clips)
    if clips.device.type == "cpu" and not keep_layout:
        # CPU models stay in the default layout (models.factory); channels_last_3d input measured ~25% slower there.
        clips = clips.contiguous()
    return clips, targets


def class_scores(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Per-class scores of a batch of logits, in float32: independent sigmoids for a multi-label model (they do
    not sum to 1), else the softmax over the classes."""
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)
