"""Mixup, CutMix and random erasing for video clips: drawn per clip, the same over all of its frames.

Each clip of a batch is paired with another clip of the same batch (a random permutation) and gets its own
mixing weight ``lam`` drawn from Beta(alpha, alpha): mixup blends the two whole clips, cutmix pastes a box of
the partner (the same box in every frame, so it is a space-time tube) and sets ``lam`` to the area actually
kept. The targets become ``lam * one_hot(label) + (1 - lam) * one_hot(partner's label)``, which sum to 1.

Random erasing (:class:`ClipEraser`) fills a random box of a clip, the same box in every frame, with noise.

Every random draw comes from torch's global CPU generator (whatever the device; the erasing noise from a device
generator seeded by one such draw), so a run resumed with the checkpoint's RNG state mixes exactly as an
uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ClipMixer:
    """Mixes normalised float clips (N, C, T, H, W) and integer labels (N,) into soft targets (N, n_classes).

    ``mix_prob`` is the chance that a clip is mixed at all (otherwise ``lam`` = 1); with both alphas > 0,
    ``switch_prob`` is the chance that a mixed clip uses cutmix instead of mixup.
    """

    n_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5

    def __call__(self, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, height, width = clips.shape[0], clips.shape[-2], clips.shape[-1]
        partner = torch.randperm(n)
        use_cutmix = self._choose_cutmix(n)
        lam = torch.ones(n, dtype=torch.float64)
        if self.mixup_alpha > 0:
            lam = torch.where(~use_cutmix, _beta(self.mixup_alpha, n), lam)
        if self.cutmix_alpha > 0:
            lam = torch.where(use_cutmix, _beta(self.cutmix_alpha, n), lam)
        lam = torch.where(torch.rand(n, dtype=torch.float64) < self.mix_prob, lam, torch.ones_like(lam))
        box = cutmix_boxes(torch.where(use_cutmix, lam, torch.ones_like(lam)), height, width)
        lam = torch.where(use_cutmix, 1 - _box_area(box) / (height * width), lam)  # the area actually kept

        device = clips.device
        partner_d, lam_d = partner.to(device), lam.to(device)
        other = clips[partner_d]
        blend = lam_d.to(clips.dtype).view(n, 1, 1, 1, 1)
        mixed = torch.where(use_cutmix.to(device).view(n, 1, 1, 1, 1), clips, blend * clips + (1 - blend) * other)
        mixed = torch.where(_box_mask(box.to(device), height, width), other, mixed)
        one_hot = F.one_hot(labels, self.n_classes).to(torch.float32)
        lam_t = lam_d.to(torch.float32).view(n, 1)
        return mixed, lam_t * one_hot + (1 - lam_t) * one_hot[partner_d]

    def _choose_cutmix(self, n: int) -> torch.Tensor:
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return torch.rand(n, dtype=torch.float64) < self.switch_prob
        return torch.full((n,), self.cutmix_alpha > 0)


def _beta(alpha: float, n: int) -> torch.Tensor:
    concentration = torch.full((n,), float(alpha), dtype=torch.float64)
    return torch.distributions.Beta(concentration, concentration).sample()


def cutmix_boxes(lam: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One box per clip, (N, 4) integer [top, bottom, left, right), covering about 1 - lam of the frame.

    The box has the frame's aspect ratio and a uniformly drawn centre; it is clipped at the frame's borders
    (so the area kept is recomputed from the box). ``lam`` = 1 gives an empty box.
    """
    n = lam.shape[0]
    ratio = torch.sqrt(1 - lam)
    cut_h, cut_w = (ratio * height).long(), (ratio * width).long()
    cy = (torch.rand(n, dtype=torch.float64) * height).long()
    cx = (torch.rand(n, dtype=torch.float64) * width).long()
    top, bottom = (cy - cut_h // 2).clamp(0, height), (cy + cut_h - cut_h // 2).clamp(0, height)
    left, right = (cx - cut_w // 2).clamp(0, width), (cx + cut_w - cut_w // 2).clamp(0, width)
    return torch.stack([top, bottom, left, right], dim=1)


def _box_area(box: torch.Tensor) -> torch.Tensor:
    return ((box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])).to(torch.float64)


def _box_mask(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 1, 1, H, W) True inside each clip's box: the same pixels in every channel and frame."""
    rows = torch.arange(height, device=box.device).view(1, height, 1)
    cols = torch.arange(width, device=box.device).view(1, 1, width)
    inside = ((rows >= box[:, 0, None, None]) & (rows < box[:, 1, None, None])
              & (cols >= box[:, 2, None, None]) & (cols < box[:, 3, None, None]))
    return inside.view(box.shape[0], 1, 1, height, width)


@dataclass(frozen=True)
class ClipEraser:
    """Random erasing of normalised float clips (N, C, T, H, W) as space-time tubes (timm's RandomErasing, mode
    'pixel', one box per clip).

    With probability ``prob`` a clip gets one box covering a fraction ``scale`` of the frame with aspect ratio
    (height / width) in ``ratio`` (log-uniform), placed uniformly; the first of ``attempts`` draws that fits the
    frame is used (none fits: the clip is kept). The same box is cut from every frame, and its pixels become
    per-pixel standard normal noise (in normalised units: about the data's own spread), different per frame.
    """

    prob: float
    scale: tuple[float, float] = (0.02, 1 / 3)
    ratio: tuple[float, float] = (0.3, 3.3)
    attempts: int = 10

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        n, height, width = clips.shape[0], clips.shape[-2], clips.shape[-1]
        erase = torch.rand(n, dtype=torch.float64) < self.prob
        box = self._boxes(n, height, width)
        box = torch.where(erase.view(n, 1), box, torch.zeros_like(box))
        seed = int(torch.randint(2**62, (1,)).item())  # drawn every batch, so the CPU sequence never depends on data
        if not bool((box[:, 1] > box[:, 0]).any()):
            return clips
        erased = clips.clone()
        noise = torch.Generator(clips.device).manual_seed(seed)
        for i, (top, bottom, left, right) in enumerate(box.tolist()):
            if bottom > top:  # noise only for the boxes: a whole batch of it costs more than the step on a CPU
                erased[i, :, :, top:bottom, left:right].normal_(generator=noise)
        return erased

    def _boxes(self, n: int, height: int, width: int) -> torch.Tensor:
        """(N, 4) [top, bottom, left, right) of the first fitting attempt per clip (an empty box where none fits)."""
        shape = (n, self.attempts)
        area = height * width * _uniform(*self.scale, shape)
        aspect = torch.exp(_uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), shape))
        box_h, box_w = torch.sqrt(area * aspect).round().long(), torch.sqrt(area / aspect).round().long()
        fits = (box_h < height) & (box_w < width) & (box_h > 0) & (box_w > 0)
        top = (_uniform(0, 1, shape) * (height - box_h + 1)).long()
        left = (_uniform(0, 1, shape) * (width - box_w + 1)).long()
        first = fits.to(torch.int8).argmax(dim=1)
        box = torch.stack([top, top + box_h, left, left + box_w], dim=2)[torch.arange(n), first]
        return torch.where(fits.any(dim=1, keepdim=True), box, torch.zeros_like(box))


def _uniform(low: float, high: float, shape: tuple[int, ...]) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, dtype=torch.float64)


def eraser_from_opts(opt) -> ClipEraser | None:
    """The eraser --random_erasing asks for (None when it is 0)."""
    return ClipEraser(opt.random_erasing) if opt.random_erasing > 0 else None


def mixer_from_opts(opt, n_classes: int) -> ClipMixer | None:
    """The mixer --mixup_alpha/--cutmix_alpha ask for (None when both are 0)."""
    if opt.mixup_alpha <= 0 and opt.cutmix_alpha <= 0:
        return None
    return ClipMixer(n_classes, mixup_alpha=opt.mixup_alpha, cutmix_alpha=opt.cutmix_alpha, mix_prob=opt.mix_prob,
                     switch_prob=opt.mix_switch_prob)
