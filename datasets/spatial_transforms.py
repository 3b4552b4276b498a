"""Spatial transforms: clip parameters sampled once, uint8 geometry in workers, float normalisation anywhere.

The path of one clip: `SpatialTransform.sample(width, height, rng)` draws a `ClipParams` once per
clip (crop box, output size, flip, colour jitter, RandAugment ops); `transform_frame` applies it to each
decoded PIL frame (one crop+resize, then jitter) and `finish_clip` mirrors the stacked uint8 clip and
applies its RandAugment ops (datasets.randaugment) to all of its frames alike. The float
part (value scale, mean/std) is `ClipNormalizer`, which runs on the device in the training step or
in the workers (`normalize_in_workers`), with identical numbers either way.

Deliberate deviations from the original:
- Resize + CenterCrop is done as ONE resample of the source region that the two-step version
  would keep (same geometry, one interpolation instead of two; slightly sharper).
- `--colorjitter` really jitters (brightness/contrast/saturation 0.4, hue 0.1, random order,
  parameters shared by all frames of a clip); the original's had zero strengths or crashed.
- No torchvision: the random-resized-crop parameter draw is re-implemented with the same rules.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance

from datasets.randaugment import Ops, apply_randaugment, sample_randaugment

# Per-channel (R, G, B) statistics of inputs in [0, 1] by --mean_dataset; multiplied by --value_scale.
MEAN_STD: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "activitynet": ((0.4477, 0.4209, 0.3906), (0.2767, 0.2695, 0.2714)),
    "kinetics": ((0.4345, 0.4051, 0.3775), (0.2768, 0.2713, 0.2737)),
    "0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # torchvision's video models (r3d_18, mc3_18, r2plus1d_18) were trained with these.
    "torchvision": ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
}
CORNER_SCALES = (1.0, 2 ** -0.25, 2 ** -0.5, 2 ** -0.75, 0.5)
CORNER_POSITIONS = ("c", "tl", "tr", "bl", "br")
DEFAULT_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
TRAIN_CROPS = ("random", "corner", "center")
INFERENCE_CROPS = ("center", "nocrop")


def get_mean_std(value_scale: float, dataset: str = "kinetics") -> tuple[list[float], list[float]]:
    """Per-channel mean and std of `dataset`, multiplied by `value_scale`."""
    if dataset not in MEAN_STD:
        raise ValueError(f"mean_dataset must be one of {sorted(MEAN_STD)}, got {dataset!r}")
    mean, std = MEAN_STD[dataset]
    return [m * value_scale for m in mean], [s * value_scale for s in std]


@dataclass(frozen=True)
class JitterParams:
    """Colour jitter factors of one clip; `order` is a permutation of 0..3 (brightness, contrast, saturation, hue)."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    order: tuple[int, ...]


@dataclass(frozen=True)
class ClipParams:
    """Everything random about the spatial transform of one clip.

    Attributes:
        box: crop region (left, top, right, bottom) as fractions of the source frame, so it applies
            to frames decoded at any (draft) scale.
        out_size: output (width, height) in pixels.
        flip: mirror horizontally.
        jitter: colour jitter factors, or None.
        randaugment: the RandAugment ops of the clip (name, value), or None.
    """

    box: tuple[float, float, float, float]
    out_size: tuple[int, int]
    flip: bool = False
    jitter: JitterParams | None = None
    randaugment: Ops | None = None

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """Smallest source size whose crop region still covers `out_size` (for JPEG draft decoding)."""
        bw, bh = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return (min(width, math.ceil(self.out_size[0] / bw)), min(height, math.ceil(self.out_size[1] / bh)))


def _relative_box(left: float, top: float, w: float, h: float, width: int, height: int) -> tuple[float, ...]:
    return (left / width, top / height, (left + w) / width, (top + h) / height)


def random_resized_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                       rng: random.Random) -> tuple[int, int, int, int]:
    """(left, top, w, h) drawn like torchvision's RandomResizedCrop.get_params (10 tries, then a central crop)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def corner_box(width: int, height: int, scale: float, position: str) -> tuple[int, int, int, int]:
    """(left, top, side, side) of MultiScaleCornerCrop: a square of side int(min(W, H) * scale)."""
    side = int(min(width, height) * scale)
    lefts = {"c": round((width - side) / 2), "tl": 0, "tr": width - side, "bl": 0, "br": width - side}
    tops = {"c": round((height - side) / 2), "tl": 0, "tr": 0, "bl": height - side, "br": height - side}
    return lefts[position], tops[position], side, side


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Resize(size): the shorter side becomes `size`, the longer int(size * long / short)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_center_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """Source box (relative) that Resize(size) followed by CenterCrop(size) keeps."""
    rw, rh = resized_size(width, height, size)
    left, top = int(round((rw - size) / 2)), int(round((rh - size) / 2))
    return (left / rw, top / rh, (left + size) / rw, (top + size) / rh)


def three_crop_boxes(width: int, height: int, size: int) -> list[tuple[float, float, float, float]]:
    """Source boxes (relative) of Resize(size) + three size x size crops along the longer side.

    Landscape: left, center, right; portrait: top, center, bottom (square frames: three center crops).
    The center box is exactly `resize_center_box`.
    """
    rw, rh = resized_size(width, height, size)
    center = resize_center_box(width, height, size)
    if rw >= rh:
        lefts = (0, int(round((rw - size) / 2)), rw - size)
        boxes = [(left / rw, center[1], (left + size) / rw, center[3]) for left in lefts]
    else:
        tops = (0, int(round((rh - size) / 2)), rh - size)
        boxes = [(center[0], top / rh, center[2], (top + size) / rh) for top in tops]
    boxes[1] = center
    return boxes


def sample_jitter(strengths: Sequence[float], rng: random.Random) -> JitterParams:
    b, c, s, h = strengths
    order = list(range(4))
    rng.shuffle(order)
    return JitterParams(brightness=rng.uniform(max(0.0, 1 - b), 1 + b), contrast=rng.uniform(max(0.0, 1 - c), 1 + c),
                        saturation=rng.uniform(max(0.0, 1 - s), 1 + s), hue=rng.uniform(-h, h), order=tuple(order))


@dataclass(frozen=True)
class SpatialTransform:
    """Spatial transform of one split, built by `get_spatial_transform` (picklable, for workers).

    Attributes:
        crop: 'random' (random resized crop), 'corner' (multi-scale corner crop), 'center'
            (resize + center crop) or 'nocrop' (resize the shorter side only).
        size: output side (sample_size).
        scale: area fraction range of the random crop; ratio: aspect ratio range.
        hflip: random horizontal flip with p=0.5.
        jitter: (brightness, contrast, saturation, hue) strengths, or None.
        n_crops: spatial views per clip; 3 (crop 'center' only) = left/center/right (landscape)
            or top/center/bottom (portrait) crops of the resized frame (multi-view testing).
        randaugment: (number of ops, magnitude 0..30) of RandAugment, or None.
    """

    crop: str
    size: int
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (0.75, 1 / 0.75)
    hflip: bool = False
    jitter: tuple[float, float, float, float] | None = None
    n_crops: int = 1
    randaugment: tuple[int, int] | None = None

    def __post_init__(self):
        if self.n_crops not in (1, 3):
            raise ValueError(f"n_crops must be 1 or 3, got {self.n_crops}")
        if self.n_crops == 3 and self.crop != "center":
            raise ValueError(f"3 crops need crop 'center' (resize + crops), got {self.crop!r}")

    def sample_views(self, width: int, height: int, rng: random.Random | None = None, *,
                     flip: bool | None = None) -> list[ClipParams]:
        """The parameters of every spatial view of one clip: [sample(...)], or the three crops."""
        if self.n_crops == 1:
            return [self.sample(width, height, rng, flip=flip)]
        out = (self.size, self.size)
        return [ClipParams(box=box, out_size=out) for box in three_crop_boxes(width, height, self.size)]

    def sample(self, width: int, height: int, rng: random.Random | None = None, *,
               flip: bool | None = None) -> ClipParams:
        """Draw the parameters of one clip whose frames are `width` x `height`; `flip` True/False overrides the
        random flip (the caller decided it, e.g. from the label: datasets.targets.DirectionFlip)."""
        rng = rng or random
        size = self.size
        out = (size, size)
        if self.crop == "random":
            box = _relative_box(*random_resized_box(width, height, self.scale, self.ratio, rng), width, height)
        elif self.crop == "corner":
            scale, position = rng.choice(CORNER_SCALES), rng.choice(CORNER_POSITIONS)
            box = _relative_box(*corner_box(width, height, scale, position), width, height)
        elif self.crop == "center":
            box = resize_center_box(width, height, size)
        else:  # nocrop: keep the aspect ratio
            box, out = (0.0, 0.0, 1.0, 1.0), resized_size(width, height, size)
        if flip is None:
            flip = self.hflip and rng.random() < 0.5
        jitter = sample_jitter(self.jitter, rng) if self.jitter else None
        ops = sample_randaugment(*self.randaugment, rng) if self.randaugment else None
        return ClipParams(box=box, out_size=out, flip=flip, jitter=jitter, randaugment=ops)


def get_spatial_transform(
    split: str,
    *,
    sample_size: int,
    train_crop: str = "random",
    train_crop_min_scale: float = 0.25,
    train_crop_min_ratio: float = 0.75,
    hflip: bool = True,
    colorjitter: bool = False,
    inference_crop: str = "center",
    inference_n_crops: int = 1,
    randaugment: tuple[int, int] | None = None,
) -> SpatialTransform:
    """Spatial transform for `split` in {'train', 'val', 'inference'}; inference may have 3 crops; `randaugment`
    (ops, magnitude) applies to training only."""
    if split == "train":
        if train_crop not in TRAIN_CROPS:
            raise ValueError(f"train_crop must be one of {TRAIN_CROPS}, got {train_crop!r}")
        return SpatialTransform(train_crop, sample_size, scale=(train_crop_min_scale, 1.0),
                                ratio=(train_crop_min_ratio, 1 / train_crop_min_ratio), hflip=hflip,
                                jitter=DEFAULT_JITTER if colorjitter else None,
                                randaugment=tuple(randaugment) if randaugment and randaugment[0] else None)
    if split == "val":
        return SpatialTransform("center", sample_size)
    if split == "inference":
        if inference_crop not in INFERENCE_CROPS:
            raise ValueError(f"inference_crop must be one of {INFERENCE_CROPS}, got {inference_crop!r}")
        return SpatialTransform(inference_crop, sample_size, n_crops=inference_n_crops)
    raise ValueError(f"split must be 'train', 'val' or 'inference', got {split!r}")


def _adjust_hue(img: Image.Image, hue: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    # uint8 addition wraps around, which is exactly a rotation of the hue circle.
    shifted = (np.asarray(h, dtype=np.uint8) + np.uint8(int(hue * 255) % 256)).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(shifted, "L"), s, v)).convert("RGB")


def apply_jitter(img: Image.Image, jitter: JitterParams) -> Image.Image:
    """Brightness, contrast, saturation and hue of an RGB frame, in the clip's random order."""
    for op in jitter.order:
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(jitter.brightness)
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(jitter.contrast)
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(jitter.saturation)
        elif jitter.hue:
            img = _adjust_hue(img, jitter.hue)
    return img


def transform_frame(img: Image.Image, params: ClipParams) -> Image.Image:
    """Crop + resize in one bilinear resample (box scaled to this frame's size), then colour jitter."""
    w, h = img.size
    box = (params.box[0] * w, params.box[1] * h, params.box[2] * w, params.box[3] * h)
    img = img.resize(params.out_size, Image.Resampling.BILINEAR, box=box)
    if params.jitter is not None and img.mode == "RGB":
        img = apply_jitter(img, params.jitter)
    return img


def resize_clip(clip: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """A uint8 (T, H, W, C) clip resampled to `out_size` (width, height), bilinear (antialiased when shrinking), all
    frames in one call: for small frames this is several times cheaper than scaling each frame on its own."""
    width, height = out_size
    frames = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)  # channels-last: torch's uint8 path
    shrinks = frames.shape[2] > height or frames.shape[3] > width
    resized = torch.nn.functional.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False,
                                              antialias=shrinks)
    return np.ascontiguousarray(resized.permute(0, 2, 3, 1).numpy())


def finish_clip(clip: np.ndarray, params: ClipParams) -> np.ndarray:
    """The per-clip part after the crop, on the stacked uint8 (T, H, W, C) clip: the flip, then RandAugment."""
    if params.flip:
        clip = flip_clip(clip)
    if params.randaugment:
        clip = apply_randaugment(clip, params.randaugment)
    return clip


def flip_clip(clip: np.ndarray) -> np.ndarray:
    """Mirror a (T, H, W, C) clip left-right (contiguous copy). Each pixel moves as one C-byte item: numpy copies
    a reversed axis of 3-byte pixels channel by channel, three times slower."""
    clip = np.ascontiguousarray(clip)
    pixels = clip.view(np.dtype((np.void, clip.shape[-1] * clip.itemsize)))[..., 0]  # (T, H, W)
    return np.ascontiguousarray(pixels[:, :, ::-1]).view(clip.dtype).reshape(clip.shape)


class ClipNormalizer:
    """uint8 clips (N, T, H, W, C) -> float32 (N, C, T, H, W) = (x / 255 * value_scale - mean) / std.

    `mean` and `std` are in the value_scale range (as `get_mean_std` returns them), one value per
    channel (2 for flow). The result is laid out channels_last_3d (a permuted view of the uint8
    input, so no copy beyond the float conversion). Float input passes through unchanged, so
    calling it on clips already normalised in the workers is harmless.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], value_scale: float = 1.0):
        if len(mean) != len(std):
            raise ValueError("mean and std need the same number of channels")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.value_scale = float(value_scale)
        self._consts: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._consts:
            mean = torch.tensor(self.mean, dtype=torch.float64)
            std = torch.tensor(self.std, dtype=torch.float64)
            # One fused multiply-add per pixel: x * scale + shift == (x / 255 * vs - mean) / std.
            scale = (self.value_scale / 255.0 / std).float().view(1, -1, 1, 1, 1).to(device)
            shift = (-mean / std).float().view(1, -1, 1, 1, 1).to(device)
            self._consts[device] = (scale, shift)
        return self._consts[device]

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.is_floating_point():
            return clips
        if clips.dim() != 5 or clips.shape[-1] != len(self.mean):
            raise ValueError(f"expected uint8 clips (N, T, H, W, {len(self.mean)}), got {tuple(clips.shape)}")
        scale, shift = self._constants(clips.device)
        x = clips.permute(0, 4, 1, 2, 3).float()
        return torch.addcmul(shift, x, scale).contiguous(memory_format=torch.channels_last_3d)

    def __repr__(self) -> str:
        return f"ClipNormalizer(mean={self.mean}, std={self.std}, value_scale={self.value_scale})"
