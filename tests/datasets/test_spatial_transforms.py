import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import spatial_transforms as S
from datasets.annotations import VideoRecord
from datasets.clip_loader import ClipLoader
from datasets.problems import DataProblems
from tests.datagen import encode_jpeg, frame_image


class MemoryReader:
    """Serves the same JPEG bytes for every index (a video of identical frames)."""

    channels = 3

    def __init__(self, data: bytes):
        self.data = data

    def fetch(self, path, indices):
        return [self.data for _ in indices]


def gradient_image(width=64, height=48) -> np.ndarray:
    """R grows with x, G with y, B constant: any crop or flip is visible in the pixel values."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.stack([x, y, np.full_like(x, 90)], -1).astype(np.uint8)


RECORD = VideoRecord("vid", Path("nowhere"), 0, (1, 9))


def test_mean_std_table_and_value_scale():
    mean, std = S.get_mean_std(1, "kinetics")
    assert mean == pytest.approx([0.4345, 0.4051, 0.3775]) and std == pytest.approx([0.2768, 0.2713, 0.2737])
    mean, std = S.get_mean_std(255, "activitynet")
    assert mean == pytest.approx([0.4477 * 255, 0.4209 * 255, 0.3906 * 255])
    assert S.get_mean_std(1, "0.5") == ([0.5] * 3, [0.5] * 3)
    with pytest.raises(ValueError):
        S.get_mean_std(1, "imagenet")


def test_random_resized_box_respects_scale_ratio_and_bounds():
    rng = random.Random(0)
    for _ in range(200):
        left, top, w, h = S.random_resized_box(64, 48, (0.25, 1.0), (0.75, 4 / 3), rng)
        assert 0 <= left <= 64 - w and 0 <= top <= 48 - h
        assert 0.25 * 64 * 48 * 0.9 <= w * h <= 64 * 48 * 1.05
        assert 0.75 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_random_resized_box_falls_back_to_a_central_crop_clamped_to_the_ratio():
    # A 100x10 frame cannot hold any crop with aspect <= 4/3 and area >= 90 %: central fallback.
    box = S.random_resized_box(100, 10, (0.9, 1.0), (0.75, 4 / 3), random.Random(0))
    assert box == (43, 0, 13, 10)


@pytest.mark.parametrize(("pos", "expected"), [("tl", (0, 0)), ("tr", (31, 0)), ("bl", (0, 15)), ("br", (31, 15)),
                                                ("c", (16, 8))])
def test_corner_box_positions(pos, expected):
    # side = int(min(64, 48) * 2^-0.5) = 33; 'c' uses round(31 / 2) = 16 and round(15 / 2) = 8
    assert S.corner_box(64, 48, 2 ** -0.5, pos) == (*expected, 33, 33)


def test_resize_then_center_crop_box():
    assert S.resized_size(64, 48, 16) == (21, 16)
    assert S.resized_size(48, 64, 16) == (16, 21)
    box = S.resize_center_box(64, 48, 16)  # resized 21x16, left = round(2.5) = 2
    assert box == pytest.approx((2 / 21, 0.0, 18 / 21, 1.0))


def test_center_and_nocrop_sampling_is_deterministic():
    center = S.get_spatial_transform("val", sample_size=16)
    assert center.sample(64, 48, random.Random(1)) == center.sample(64, 48, random.Random(2))
    nocrop = S.get_spatial_transform("inference", sample_size=16, inference_crop="nocrop").sample(64, 48)
    assert nocrop.out_size == (21, 16) and nocrop.box == (0.0, 0.0, 1.0, 1.0) and not nocrop.flip


def test_hflip_flag_and_colorjitter_flag():
    rng = random.Random(0)
    flipping = S.get_spatial_transform("train", sample_size=16)
    assert {flipping.sample(64, 48, rng).flip for _ in range(50)} == {True, False}
    fixed = S.get_spatial_transform("train", sample_size=16, hflip=False)
    assert {fixed.sample(64, 48, rng).flip for _ in range(50)} == {False}
    assert fixed.sample(64, 48, rng).jitter is None
    jit = S.get_spatial_transform("train", sample_size=16, colorjitter=True).sample(64, 48, rng).jitter
    assert jit is not None and sorted(jit.order) == [0, 1, 2, 3] and abs(jit.hue) <= 0.1
    assert 0.6 <= jit.brightness <= 1.4


def test_corner_train_crop_uses_the_multiscale_table():
    t = S.get_spatial_transform("train", sample_size=16, train_crop="corner", hflip=False)
    sides = {round((p.box[2] - p.box[0]) * 64) for p in (t.sample(64, 48, random.Random(i)) for i in range(60))}
    assert sides == {int(48 * s) for s in S.CORNER_SCALES}


def test_builder_rejects_unknown_choices():
    with pytest.raises(ValueError):
        S.get_spatial_transform("train", sample_size=16, train_crop="middle")
    with pytest.raises(ValueError):
        S.get_spatial_transform("inference", sample_size=16, inference_crop="random")
    with pytest.raises(ValueError):
        S.get_spatial_transform("test", sample_size=16)


def test_transform_frame_crops_the_relative_box():
    img = Image.fromarray(gradient_image())
    params = S.ClipParams(box=(0.5, 0.0, 1.0, 0.5), out_size=(8, 6))
    out = np.asarray(S.transform_frame(img, params))
    assert out.shape == (6, 8, 3)
    assert out[..., 0].min() >= 120 and out[..., 1].max() <= 135  # right half, top half
    # The same relative box on a half-size frame (a draft decode) selects the same content.
    half = np.asarray(S.transform_frame(img.resize((32, 24)), params)).astype(int)
    assert np.abs(half - out).mean() < 6


def test_colorjitter_changes_pixels_and_hue_rotates():
    img = Image.fromarray(frame_image("shapes", label=1, number=0, frame=3, size=(32, 24)))
    base = S.ClipParams(box=(0, 0, 1, 1), out_size=(32, 24))
    jitter = S.JitterParams(brightness=1.3, contrast=0.7, saturation=1.4, hue=0.05, order=(3, 0, 2, 1))
    jittered = S.transform_frame(img, S.ClipParams(box=(0, 0, 1, 1), out_size=(32, 24), jitter=jitter))
    assert np.abs(np.asarray(jittered, int) - np.asarray(S.transform_frame(img, base), int)).mean() > 3
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    cyan = S.apply_jitter(red, S.JitterParams(1, 1, 1, 0.5, (3,)))
    r, g, b = cyan.getpixel((0, 0))
    assert r < 10 and g > 240 and b > 240


def test_flip_clip_mirrors_width():
    clip = np.arange(2 * 3 * 4 * 1, dtype=np.uint8).reshape(2, 3, 4, 1)
    flipped = S.flip_clip(clip)
    assert flipped.flags["C_CONTIGUOUS"] and (flipped[:, :, 0] == clip[:, :, -1]).all()


@pytest.mark.parametrize("channels", [2, 3])
def test_flip_clip_keeps_every_pixel_s_channels_together(channels):
    clip = np.random.default_rng(0).integers(0, 256, (3, 5, 7, channels), dtype=np.uint8)
    flipped = S.flip_clip(clip[:, 1:])  # a view, as a stacked clip's slice can be
    assert flipped.flags["C_CONTIGUOUS"] and np.array_equal(flipped, clip[:, 1:, ::-1])


def test_decode_size_for_draft():
    params = S.ClipParams(box=(0.0, 0.0, 0.5, 0.25), out_size=(16, 16))
    assert params.decode_size(320, 240) == (32, 64)
    assert params.decode_size(20, 20) == (20, 20)


@pytest.mark.parametrize("crop", ["random", "corner", "center"])
def test_random_parameters_are_shared_by_all_frames_of_a_clip(crop):
    """Identical frames in -> identical frames out, whatever crop, flip and jitter the clip drew."""
    data = encode_jpeg(gradient_image())
    spatial = S.get_spatial_transform("train", sample_size=16, train_crop=crop, colorjitter=True)
    loader = ClipLoader(MemoryReader(data), spatial, DataProblems())
    rng = random.Random(3)
    outputs = []
    for _ in range(6):
        (clip,) = loader.load(RECORD, [list(range(1, 9))], rng)
        assert clip.shape == (8, 16, 16, 3) and clip.dtype == np.uint8
        assert all((frame == clip[0]).all() for frame in clip)
        outputs.append(clip[0])
    assert any(not np.array_equal(outputs[0], o) for o in outputs[1:])  # but clips differ from each other


def test_flip_is_visible_in_the_clip():
    data = encode_jpeg(gradient_image())
    t = S.SpatialTransform("center", 16, hflip=True)
    loader = ClipLoader(MemoryReader(data), t, DataProblems())
    clips = [loader.load(RECORD, [[1, 2]], random.Random(seed))[0] for seed in range(8)]
    directions = {int(c[0, 8, -1, 0]) > int(c[0, 8, 0, 0]) for c in clips}
    assert directions == {True, False}


def test_draft_decoding_is_close_to_full_decoding():
    big = np.asarray(Image.fromarray(gradient_image()).resize((320, 240)))
    data = encode_jpeg(big)
    t = S.get_spatial_transform("val", sample_size=32)
    full = ClipLoader(MemoryReader(data), t, DataProblems(), draft=False).load(RECORD, [[1]], None)[0]
    fast = ClipLoader(MemoryReader(data), t, DataProblems(), draft=True).load(RECORD, [[1]], None)[0]
    assert full.shape == fast.shape == (1, 32, 32, 3)
    assert np.abs(full.astype(int) - fast.astype(int)).mean() < 2


def reference_normalize(clips_uint8, mean, std):
    x = clips_uint8.permute(0, 4, 1, 2, 3).double() / 255
    m = torch.tensor(mean, dtype=torch.double).view(1, -1, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.double).view(1, -1, 1, 1, 1)
    return (x - m) / s


@pytest.mark.parametrize("value_scale", [1, 255])
def test_clip_normalizer_matches_the_original_formula(value_scale):
    clips = torch.randint(0, 256, (2, 4, 5, 6, 3), dtype=torch.uint8)
    mean, std = S.get_mean_std(value_scale, "kinetics")
    out = S.ClipNormalizer(mean, std, value_scale)(clips)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 5, 6)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    expected = reference_normalize(clips.double() * value_scale, mean, std)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_clip_normalizer_flow_channels_and_passthrough():
    norm = S.ClipNormalizer([0.5, 0.5], [0.25, 0.25])
    out = norm(torch.full((1, 2, 3, 3, 2), 255, dtype=torch.uint8))
    assert out.shape == (1, 2, 2, 3, 3) and torch.allclose(out, torch.full_like(out, 2.0))
    floats = torch.zeros(1, 2, 2, 3, 3)
    assert norm(floats) is floats
    with pytest.raises(ValueError):
        norm(torch.zeros(1, 2, 3, 3, 3, dtype=torch.uint8))
    assert math.isclose(S.ClipNormalizer([0.0], [1.0])(torch.full((1, 1, 1, 1, 1), 51, dtype=torch.uint8)).item(),
                        0.2, rel_tol=1e-6)
