"""RandAugment for video clips: N operations drawn once per clip and applied alike to every frame.

The op set and magnitude scale are RandAugment's (Cubuk et al., 2020) as torchvision and timm use them: 14 ops,
a magnitude M from 0 to 30 (31 bins; torchvision's default is 9). At M an op has ``M / 30`` of its strongest
setting (``STRONGEST``), and the ops that can go either way (rotate, shear, translate and the four enhancements)
take a random sign. Ops are drawn with replacement, so an op may come twice.

Temporal consistency: one draw per clip (in the worker, from the item's own generator: runs repeat and resume
exactly), and every frame gets the same ops, magnitudes and signs. The statistics that autocontrast, equalize
and contrast need are taken over the whole clip rather than per frame, so a colour maps to the same colour in
every frame and the clip does not flicker. Geometric ops keep the frame size, sample the nearest pixel and fill
with black, as torchvision does. Input and output are uint8 clips (T, H, W, C) with C = 3 (RGB).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F

MAX_MAGNITUDE = 30
# Strongest setting of each op (at M = 30): shear factor, translation as a fraction of the frame's side
# (torchvision's 150/331), degrees, enhancement factor offset; posterize keeps 4 bits and solarize inverts every
# pixel (threshold 0) at the strongest. None: the op has no magnitude.
STRONGEST: dict[str, float | None] = {
    "identity": None, "autocontrast": None, "equalize": None,
    "rotate": 30.0, "shear_x": 0.3, "shear_y": 0.3, "translate_x": 150 / 331, "translate_y": 150 / 331,
    "brightness": 0.9, "color": 0.9, "contrast": 0.9, "sharpness": 0.9,
    "posterize": 4.0, "solarize": 255.0,
}
SIGNED = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "brightness", "color", "contrast", "sharpness")
OPS = tuple(STRONGEST)

Ops = tuple[tuple[str, float], ...]  # (op name, signed value) per op, in the order they are applied


def sample_randaugment(n_ops: int, magnitude: int, rng: random.Random) -> Ops:
    """The ops of one clip: ``n_ops`` names drawn with replacement, each with its value at ``magnitude``."""
    ops = []
    for _ in range(n_ops):
        name = rng.choice(OPS)
        value = op_value(name, magnitude)
        if name in SIGNED and rng.random() < 0.5:
            value = -value
        ops.append((name, value))
    return tuple(ops)


def op_value(name: str, magnitude: int) -> float:
    """The value of op ``name`` at ``magnitude`` (0..30): the factor, angle or fraction; bits kept by posterize
    (8 down to 4, as torchvision rounds them); solarize's threshold (255 down to 0)."""
    strongest = STRONGEST[name]
    if strongest is None:
        return 0.0
    fraction = magnitude / MAX_MAGNITUDE
    if name == "posterize":
        return float(8 - round(fraction * strongest))
    if name == "solarize":
        return strongest * (1 - fraction)
    return strongest * fraction


def apply_randaugment(clip: np.ndarray, ops: Ops) -> np.ndarray:
    """``ops`` applied in order to a uint8 (T, H, W, C) clip; returns a new uint8 array of the same shape."""
    x = torch.from_numpy(np.ascontiguousarray(clip))
    for name, value in ops:
        x = _APPLY[name](x, value)
    return x.contiguous().numpy()


def _identity(x: torch.Tensor, _value: float) -> torch.Tensor:
    return x


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Map every pixel through its channel's table: ``lut`` (C, 256)."""
    pixels, tables = x.numpy(), lut.to(torch.uint8).numpy()
    out = np.empty_like(pixels)
    for c in range(pixels.shape[-1]):  # numpy indexes with uint8 directly: no int64 copy of the clip
        out[..., c] = tables[c][pixels[..., c]]
    return torch.from_numpy(out)


def _autocontrast(x: torch.Tensor, _value: float) -> torch.Tensor:
    """Stretch each channel so the clip's darkest value becomes 0 and its brightest 255."""
    flat = x.reshape(-1, x.shape[-1])
    low, high = flat.amin(dim=0).double(), flat.amax(dim=0).double()
    scale = torch.where(high > low, 255 / (high - low).clamp(min=1), torch.ones_like(low))
    low = torch.where(high > low, low, torch.zeros_like(low))
    levels = torch.arange(256, dtype=torch.float64)
    lut = ((levels[None] - low[:, None]) * scale[:, None]).clamp(0, 255).floor()
    return _apply_lut(x, lut)


def _equalize(x: torch.Tensor, _value: float) -> torch.Tensor:
    """Flatten each channel's histogram over the clip (PIL's ImageOps.equalize rule)."""
    tables = []
    for c in range(x.shape[-1]):
        hist = torch.bincount(x[..., c].flatten().long(), minlength=256)
        used = hist[hist > 0]
        step = int((used.sum() - used[-1]).item()) // 255
        if step == 0:
            tables.append(torch.arange(256))
            continue
        below = torch.cumsum(hist, 0) - hist  # pixels darker than each level
        tables.append(((below + step // 2) // step).clamp(max=255))
    return _apply_lut(x, torch.stack(tables))


def _posterize(x: torch.Tensor, bits: float) -> torch.Tensor:
    mask = (0xFF << (8 - int(bits))) & 0xFF
    return x & mask


def _solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    levels = torch.arange(256)
    return _apply_lut(x, torch.where(levels >= threshold, 255 - levels, levels).expand(x.shape[-1], 256))


def _blend(x: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    """``other + factor * (x - other)``, rounded and clipped to uint8 (PIL's ImageEnhance: factor 1 keeps x)."""
    out = other + factor * (x.float() - other)
    return out.round().clamp(0, 255).to(torch.uint8)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of every pixel (T, H, W, 1), with PIL's weights."""
    return (x.float() * torch.tensor([0.299, 0.587, 0.114])).sum(dim=-1, keepdim=True)


def _blend_lut(x: torch.Tensor, other: float, factor: float) -> torch.Tensor:
    """:func:`_blend` with one grey level ``other`` for all pixels, as a table (a per-level map is cheaper)."""
    levels = _blend(torch.arange(256, dtype=torch.uint8), torch.tensor(other), factor)
    return _apply_lut(x, levels.expand(x.shape[-1], 256))


def _brightness(x: torch.Tensor, value: float) -> torch.Tensor:
    return _blend_lut(x, 0.0, 1 + value)


def _color(x: torch.Tensor, value: float) -> torch.Tensor:
    return _blend(x, _gray(x), 1 + value)


def _contrast(x: torch.Tensor, value: float) -> torch.Tensor:
    return _blend_lut(x, _gray(x).mean().round().item(), 1 + value)  # the clip's mean grey, alike in every frame


def _sharpness(x: torch.Tensor, value: float) -> torch.Tensor:
    """Blend with a smoothed copy (PIL's SMOOTH kernel; the frame's border pixels stay as they are)."""
    if x.shape[1] < 3 or x.shape[2] < 3:
        return x
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13
    channels = x.shape[-1]
    frames = x.permute(0, 3, 1, 2).float()  # (T, C, H, W)
    smooth = F.conv2d(frames, kernel.expand(channels, 1, 3, 3), groups=channels).round()
    blurred = frames.clone()
    blurred[:, :, 1:-1, 1:-1] = smooth
    return _blend(x, blurred.permute(0, 2, 3, 1), 1 + value)


def _warp(x: torch.Tensor, inverse: tuple[float, float, float, float], shift: tuple[float, float]) -> torch.Tensor:
    """Every frame resampled (nearest pixel, black outside): the output pixel at offset p from the frame's centre
    shows the input at ``inverse @ p + shift`` (pixels, x to the right and y down). The source pixel of each output
    pixel is found once for the frame (grid_sample's nearest rule) and all frames are gathered with it: a few
    times faster than resampling every frame."""
    height, width = x.shape[1], x.shape[2]
    a, b, c, d = inverse
    # The same map in affine_grid's coordinates, where the frame spans [-1, 1] on both axes.
    theta = torch.tensor([[[a, b * height / width, 2 * shift[0] / width],
                           [c * width / height, d, 2 * shift[1] / height]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)[0]  # (H, W, 2): x, y in [-1, 1]
    # grid_sample's unnormalisation (align_corners=False) and its round-half-to-even nearest pixel.
    cols = torch.round(((grid[..., 0] + 1) * width - 1) / 2).long()
    rows = torch.round(((grid[..., 1] + 1) * height - 1) / 2).long()
    outside = ((cols < 0) | (cols >= width) | (rows < 0) | (rows >= height)).numpy()
    source = (rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)).flatten().numpy()
    pixels = x.numpy().reshape(x.shape[0], height * width, x.shape[3])
    out = np.take(pixels, source, axis=1).reshape(x.shape)  # numpy's take: far quicker than torch's indexing here
    out[:, outside] = 0
    return torch.from_numpy(out)


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Counter-clockwise as seen (y points down), about the frame's centre."""
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return _warp(x, (cos, -sin, sin, cos), (0.0, 0.0))


def _shear_x(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _warp(x, (1.0, factor, 0.0, 1.0), (0.0, 0.0))


def _shear_y(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _warp(x, (1.0, 0.0, factor, 1.0), (0.0, 0.0))


def _translate_x(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """The picture moves right by ``fraction`` of the frame's width (left when negative)."""
    return _warp(x, (1.0, 0.0, 0.0, 1.0), (-round(fraction * x.shape[2]), 0.0))


def _translate_y(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """The picture moves down by ``fraction`` of the frame's height (up when negative)."""
    return _warp(x, (1.0, 0.0, 0.0, 1.0), (0.0, -round(fraction * x.shape[1])))


_APPLY = {
    "identity": _identity, "autocontrast": _autocontrast, "equalize": _equalize, "rotate": _rotate,
    "shear_x": _shear_x, "shear_y": _shear_y, "translate_x": _translate_x, "translate_y": _translate_y,
    "brightness": _brightness, "color": _color, "contrast": _contrast, "sharpness": _sharpness,
    "posterize": _posterize, "solarize": _solarize,
}
