"""An original-style clip loader: the yardstick that the fast data path is measured and checked against.

It does what the original's pipeline does for every frame: PIL decodes the full JPEG, crops and
resizes it (bilinear), flips it, converts it to float in [0, 1] (ToTensor), scales by value_scale
and normalises with mean/std; the workers then stack float32 (C, T, H, W) clips. Validation and
inference frames go through Resize(size) then CenterCrop(size), two resamples as in the original.

Clip parameters are drawn exactly like the project's loader (same temporal transform, same
`SpatialTransform.sample` with the same per-item generator), so for the same seed both paths crop
the same boxes; only decoding, the resampling order and where the float work happens differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datasets.annotations import VideoRecord, read_records
from datasets.factory import seed_worker
from datasets.layout import SUBSET_NAMES, frame_path
from datasets.sampling import EpochShardSampler
from datasets.spatial_transforms import ClipParams, SpatialTransform, get_spatial_transform, resized_size
from datasets.temporal_transforms import TemporalTransform, clip_segment, get_temporal_transform
from datasets.video_dataset import collate_clips, draw_item


def load_frame(path: Path) -> Image.Image:
    """Full-size RGB decode with PIL, like the original's image loader."""
    with path.open("rb") as f, Image.open(f) as img:
        return img.convert("RGB")


def pixel_box(params: ClipParams, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop (left, top, right, bottom) in pixels that `params.box` (relative) stands for."""
    left, top, right, bottom = params.box
    return round(left * width), round(top * height), round(right * width), round(bottom * height)


def reference_geometry(img: Image.Image, params: ClipParams, crop: str) -> Image.Image:
    """Crop + resize of one frame the original's way (two resamples for 'center'/'nocrop')."""
    if crop in ("center", "nocrop"):
        size = min(params.out_size)  # the shorter side is `size` for both
        img = img.resize(resized_size(*img.size, size), Image.Resampling.BILINEAR)
        if crop == "center":
            w, h = img.size
            left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
            img = img.crop((left, top, left + size, top + size))
    else:  # random resized crop / corner crop: crop the box, then one bilinear resize
        img = img.crop(pixel_box(params, *img.size)).resize(params.out_size, Image.Resampling.BILINEAR)
    if params.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def to_normalized_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float],
                         value_scale: float = 1.0) -> torch.Tensor:
    """ToTensor + ScaleValue + Normalize of one frame: float32 (C, H, W)."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    x = x * value_scale
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - m) / s


def reference_clip(frames: Sequence[Image.Image], params: ClipParams, *, crop: str, mean: Sequence[float],
                   std: Sequence[float], value_scale: float = 1.0) -> torch.Tensor:
    """Per-frame float pipeline over decoded full frames -> float32 (C, T, H, W)."""
    out = [to_normalized_tensor(reference_geometry(f, params, crop), mean, std, value_scale) for f in frames]
    return torch.stack(out, 0).permute(1, 0, 2, 3).contiguous()


class ReferenceClipDataset(Dataset):
    """Original-style clips of jpg frame directories; items like `VideoClipDataset` with a normaliser.

    Args:
        records: the samples (datasets.annotations.read_records, file_type 'jpg').
        temporal: the split's temporal transform.
        spatial: the split's spatial transform (only its parameter draw is shared with the fast path).
        mean, std, value_scale: normalisation (as `get_mean_std` returns them).
        seed: base seed of the per-item generators (same meaning as in VideoClipDataset).
        target: 'label' or 'video_segment'.
    """

    def __init__(self, records: Sequence[VideoRecord], temporal: TemporalTransform, spatial: SpatialTransform, *,
                 mean: Sequence[float], std: Sequence[float], value_scale: float = 1.0, seed: int = 0,
                 target: str = "label"):
        self.records = list(records)
        self.temporal, self.spatial = temporal, spatial
        self.mean, self.std, self.value_scale = list(mean), list(std), value_scale
        self.seed, self.target = seed, target

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]):
        record, rng, clips_indices = draw_item(self.records, self.temporal, self.seed, key)
        first = load_frame(frame_path(record.path, clips_indices[0][0]))
        params = self.spatial.sample(*first.size, rng)
        clips = []
        for indices in clips_indices:
            frames = [load_frame(frame_path(record.path, i)) for i in indices]
            clips.append(reference_clip(frames, params, crop=self.spatial.crop, mean=self.mean, std=self.std,
                                        value_scale=self.value_scale))
        if self.target == "label":
            targets = [record.label] * len(clips)
        else:
            targets = [[record.video_id, clip_segment(c)] for c in clips_indices]
        if not self.temporal.multi_clip:
            return clips[0], targets[0]
        return clips, targets


def build_reference_dataset(opt, split: str) -> ReferenceClipDataset:
    """The original-style dataset of `split` ('train', 'val' or 'inference' on opt.inference_subset)."""
    subset = SUBSET_NAMES[opt.inference_subset if split == "inference" else split]
    records, _ = read_records(opt.annotation_path, opt.video_path, dataset=opt.dataset, subset=subset,
                              file_type="jpg", untrimmed=split == "inference")
    spatial = get_spatial_transform(
        split, sample_size=opt.sample_size, train_crop=opt.train_crop, train_crop_min_scale=opt.train_crop_min_scale,
        train_crop_min_ratio=opt.train_crop_min_ratio, hflip=not opt.no_hflip, inference_crop=opt.inference_crop)
    temporal = get_temporal_transform(
        split, sample_duration=opt.sample_duration, sample_t_stride=opt.sample_t_stride,
        train_t_crop=opt.train_t_crop, n_val_samples=opt.n_val_samples, inference_stride=opt.inference_stride)
    return ReferenceClipDataset(records, temporal, spatial, mean=opt.mean, std=opt.std, value_scale=opt.value_scale,
                                seed=opt.manual_seed, target="video_segment" if split == "inference" else "label")


def build_reference_loader(opt, split: str, *, pin_memory: bool = False) -> DataLoader:
    """DataLoader over `build_reference_dataset` with opt.n_threads workers (persistent, as the fast loader,
    so that a benchmark compares per-clip work rather than worker start-up)."""
    ds = build_reference_dataset(opt, split)
    sampler = EpochShardSampler(len(ds), shuffle=split == "train", seed=opt.manual_seed)
    batch = opt.batch_size if split == "train" else (opt.inference_batch_size or opt.batch_size)
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=opt.n_threads, pin_memory=pin_memory,
                      collate_fn=None if split == "train" else collate_clips, persistent_workers=opt.n_threads > 0,
                      worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(opt.manual_seed))
