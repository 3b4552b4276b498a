"""datasets/randaugment.py (--randaugment N M): each op does what it says, magnitudes follow the 0..30 scale, one
draw per clip gives every frame the same transform, the same seed the same clip, and it is off by default."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from datasets.factory import build_dataset
from datasets.randaugment import OPS, apply_randaugment, op_value, sample_randaugment
from datasets.spatial_transforms import SpatialTransform, get_spatial_transform
from opts import parse_opts
from tests.conftest import make_opt


def _clip(frames: int = 2, height: int = 9, width: int = 11, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def _one(clip: np.ndarray, name: str, value: float = 0.0) -> np.ndarray:
    return apply_randaugment(clip, ((name, value),))


def test_geometric_ops_move_the_picture_and_fill_with_black():
    square, clip = _clip(height=9, width=9), _clip()
    assert np.array_equal(_one(square, "rotate", 90.0)[0], np.rot90(square[0]))  # counter-clockwise
    moved = _one(clip, "translate_x", 3 / 11)  # 3 pixels to the right
    assert np.array_equal(moved[:, :, 3:], clip[:, :, :-3]) and not moved[:, :, :3].any()
    moved = _one(clip, "translate_y", -2 / 9)  # 2 pixels up
    assert np.array_equal(moved[:, :-2], clip[:, 2:]) and not moved[:, -2:].any()
    sheared = _one(clip, "shear_x", 0.3)  # rows slide sideways in proportion to their distance from the centre
    assert np.array_equal(sheared[:, 4], clip[:, 4]) and not np.array_equal(sheared[:, 0], clip[:, 0])
    sheared = _one(clip, "shear_y", -0.3)
    assert np.array_equal(sheared[:, :, 5], clip[:, :, 5]) and not np.array_equal(sheared[:, :, 0], clip[:, :, 0])
    assert np.array_equal(_one(clip, "identity"), clip)


def test_rotation_and_shear_of_a_wide_frame_are_pils_about_the_centre():
    frame = _clip(frames=1, height=40, width=64)
    image = Image.fromarray(frame[0])
    rotated = np.asarray(image.rotate(20, resample=Image.Resampling.NEAREST))
    assert (_one(frame, "rotate", 20.0)[0] == rotated).all(axis=-1).mean() > 0.995  # a few pixels on a rounding edge
    sheared = np.asarray(image.transform((64, 40), Image.Transform.AFFINE, (1, 0.3, -0.3 * 20, 0, 1, 0),
                                         resample=Image.Resampling.NEAREST))
    assert np.array_equal(_one(frame, "shear_x", 0.3)[0], sheared)


@pytest.mark.parametrize(("name", "value", "pil"), [
    ("autocontrast", 0.0, ImageOps.autocontrast), ("equalize", 0.0, ImageOps.equalize),
    ("posterize", 3.0, lambda im: ImageOps.posterize(im, 3)),
    ("solarize", 100.0, lambda im: ImageOps.solarize(im, 100)),
])
def test_colour_ops_of_one_frame_are_pils(name, value, pil):
    frame = _clip(frames=1)
    assert np.array_equal(_one(frame, name, value)[0], np.asarray(pil(Image.fromarray(frame[0]))))


@pytest.mark.parametrize(("name", "enhance"), [("brightness", ImageEnhance.Brightness), ("color", ImageEnhance.Color),
                                               ("contrast", ImageEnhance.Contrast),
                                               ("sharpness", ImageEnhance.Sharpness)])
def test_enhancements_of_one_frame_match_pil_within_rounding(name, enhance):
    frame = _clip(frames=1)
    for value in (0.6, -0.6):  # the op's signed value: factor 1 + value
        ours = _one(frame, name, value)[0].astype(int)
        assert np.abs(ours - np.asarray(enhance(Image.fromarray(frame[0])).enhance(1 + value)).astype(int)).max() <= 1


def test_magnitudes_follow_the_0_to_30_scale():
    assert op_value("rotate", 0) == 0 and op_value("rotate", 30) == 30 and op_value("rotate", 9) == pytest.approx(9)
    assert op_value("shear_x", 30) == pytest.approx(0.3) and op_value("translate_y", 30) == pytest.approx(150 / 331)
    assert op_value("brightness", 15) == pytest.approx(0.45)
    assert [op_value("posterize", m) for m in (0, 15, 30)] == [8, 6, 4]
    assert [op_value("solarize", m) for m in (0, 30)] == [255, 0]


def test_same_seed_same_ops_and_signs_both_ways():
    assert sample_randaugment(3, 9, random.Random(4)) == sample_randaugment(3, 9, random.Random(4))
    draws = [op for seed in range(200) for op in sample_randaugment(2, 9, random.Random(seed))]
    assert {name for name, _ in draws} == set(OPS)
    assert {value > 0 for name, value in draws if name == "rotate"} == {True, False}


@pytest.mark.parametrize("seed", range(8))
def test_every_frame_of_a_clip_gets_the_same_transform(seed):
    frame = _clip(frames=1, seed=seed)
    still = np.repeat(frame, 4, axis=0)  # a clip of identical frames stays one of identical frames
    ops = sample_randaugment(4, 20, random.Random(seed))
    out = apply_randaugment(still, ops)
    assert all(np.array_equal(out[0], f) for f in out[1:])
    for name in OPS:  # also each op on its own, at full strength
        one = _one(still, name, op_value(name, 30))
        assert all(np.array_equal(one[0], f) for f in one[1:]), name


def test_clip_wide_statistics_map_a_colour_alike_in_every_frame():
    dark, bright = np.full((1, 4, 4, 3), 50, np.uint8), np.full((1, 4, 4, 3), 150, np.uint8)
    clip = np.concatenate([dark, bright])
    out = _one(clip, "autocontrast")  # per frame, each flat frame would stay as it is
    assert out[0].max() == 0 and out[1].min() == 255


def test_off_by_default_and_never_outside_training():
    assert parse_opts(["--result_path", "r"]).randaugment is None
    assert get_spatial_transform("train", sample_size=16).randaugment is None
    assert get_spatial_transform("train", sample_size=16, randaugment=(0, 9)).randaugment is None
    for split in ("val", "inference"):
        assert get_spatial_transform(split, sample_size=16, randaugment=(2, 9)).randaugment is None
    plain = SpatialTransform("random", 16, hflip=True, jitter=(0.4, 0.4, 0.4, 0.1))
    augmented = SpatialTransform("random", 16, hflip=True, jitter=(0.4, 0.4, 0.4, 0.1), randaugment=(2, 9))
    a, b = plain.sample(40, 30, random.Random(3)), augmented.sample(40, 30, random.Random(3))
    assert a.randaugment is None and len(b.randaugment) == 2
    assert (a.box, a.flip, a.jitter) == (b.box, b.flip, b.jitter)  # drawn after them: the other draws stay


def test_training_clips_get_it_deterministically_validation_clips_never(tiny_dataset):
    train = build_dataset(make_opt(tiny_dataset, randaugment=[2, 9]), "train")
    plain = build_dataset(make_opt(tiny_dataset), "train")
    clips = [train[(i, 1)][0] for i in range(len(train))]
    assert all(torch.equal(c, train[(i, 1)][0]) for i, c in enumerate(clips))  # same seed, same clip
    assert any(not torch.equal(c, plain[(i, 1)][0]) for i, c in enumerate(clips))
    assert all(c.dtype == torch.uint8 and c.shape == plain[(0, 1)][0].shape for c in clips)
    val, val_plain = (build_dataset(make_opt(tiny_dataset, **kw), "val") for kw in ({"randaugment": [2, 9]}, {}))
    assert all(torch.equal(a, b) for a, b in zip(val[0][0], val_plain[0][0]))


def test_flow_clips_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        parse_opts(["--result_path", "r", "--file_type", "hdf5", "--input_type", "flow", "--randaugment", "2", "9"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--randaugment applies to RGB clips" in err
    assert parse_opts(["--result_path", "r", "--randaugment", "2", "9"]).randaugment == [2, 9]
