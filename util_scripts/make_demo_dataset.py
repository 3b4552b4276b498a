"""Write a small labelled action dataset of real compressed videos, in the UCF-101 layout.

Usage: ``python -m util_scripts.make_demo_dataset DIR [--n_train_per_class 100] [--n_test_per_class 10]
[--size 96x72] [--n_frames 24] [--seed 0]``

Each video shows one textured shape on a noisy textured background; the class is the MOTION
(move_left, move_right, move_up, move_down, rotate_cw, grow), while shape, colours, size,
start position and speed are random. Output::

    DIR/videos/<class>/v_<class>_gXX_cYY.avi   (MPEG-4 part 2 in AVI, written with PyAV)
    DIR/splits/classInd.txt, trainlist01.txt, testlist01.txt   (official UCF-101 formats)

so ``generate_video_jpgs DIR/videos DIR/jpg ucf101`` and ``ucf101_json DIR/splits DIR/jpg DIR``
prepare it like the real dataset. The direction of motion is the label, so train WITHOUT random
horizontal flips (``main.py --no_hflip``): a flip turns move_left into move_right and rotate_cw
into a counter-clockwise turn.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from datasets.video_files import parse_frame_size
from errors import UserError
from util_scripts.common import atomic_file, run_cli

CLASSES = ("move_left", "move_right", "move_up", "move_down", "rotate_cw", "grow")
SHAPES = ("square", "triangle", "disk")
CLIPS_PER_GROUP = 4  # UCF-101 names clips c01..cNN inside groups gXX
# Default size: with ~30 training videos per class a small 3D ResNet memorises the backgrounds
# (train 100%, test ~65%); with 100 it learns the motions (test ~95% after ~10 epochs on CPU).


@dataclass(frozen=True)
class Motion:
    """Where the shape is in each frame: centre (x, y), radius and rotation angle (radians)."""

    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray


def sample_motion(action: str, rng: np.random.Generator, *, width: int, height: int, n_frames: int) -> Motion:
    """Random trajectory of one video whose only class-specific property is the motion."""
    t = np.arange(n_frames, dtype=np.float64)
    short = min(width, height)
    radius0 = rng.uniform(0.14, 0.2) * short
    growth = rng.uniform(0.45, 0.8) / max(1, n_frames - 1) if action == "grow" else 0.0
    radius = radius0 * (1 + growth * t)
    spin = rng.uniform(0.12, 0.25) if action == "rotate_cw" else 0.0  # radians per frame
    angle = rng.uniform(0, 2 * math.pi) + spin * t  # image y points down: growing angle turns clockwise
    speed = rng.uniform(0.5, 0.75) * (short - 2.2 * radius0) / max(1, n_frames - 1)
    dx, dy = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}.get(action, (0, 0))
    travel_x, travel_y = dx * speed * (n_frames - 1), dy * speed * (n_frames - 1)
    margin = radius.max() * 1.35  # the ellipse reaches 1.29 radii from its centre
    cx0 = rng.uniform(margin + max(0.0, -travel_x), width - margin - max(0.0, travel_x))
    cy0 = rng.uniform(margin + max(0.0, -travel_y), height - margin - max(0.0, travel_y))
    return Motion(cx0 + dx * speed * t, cy0 + dy * speed * t, radius, angle)


def render_video(action: str, rng: np.random.Generator, *, width: int, height: int, n_frames: int) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of one random video of ``action``."""
    motion = sample_motion(action, rng, width=width, height=height, n_frames=n_frames)
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = rng.integers(0, 256, size=3)
    colours = np.stack([colour, 255 - colour])  # complementary stripes: the shape stands out from any background
    stripe = rng.uniform(0.35, 0.6)  # stripe frequency: the texture makes rotation visible
    background = _background(rng, width=width, height=height)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    for i in range(n_frames):
        cos, sin = math.cos(motion.angle[i]), math.sin(motion.angle[i])
        u = ((xs - motion.cx[i]) * cos + (ys - motion.cy[i]) * sin) / motion.radius[i]
        v = (-(xs - motion.cx[i]) * sin + (ys - motion.cy[i]) * cos) / motion.radius[i]
        inside = _inside(shape, u, v)
        texture = (np.sin(u * motion.radius[i] * stripe) > 0)[..., None]
        shape_rgb = np.where(texture, colours[0], colours[1])
        frame = np.where(inside[..., None], shape_rgb, background)
        frame = frame + rng.normal(0, 4, size=frame.shape)
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "square":
        return (np.abs(u) < 0.8) & (np.abs(v) < 0.8)
    if shape == "triangle":
        return (v < 0.6) & (v > 1.8 * np.abs(u) - 1.0)
    return u * u + 0.6 * v * v < 1.0  # an ellipse, so that its rotation shows in its outline too


def _background(rng: np.random.Generator, *, width: int, height: int) -> np.ndarray:
    """Smooth random colour blotches plus fine noise, fixed for the whole video."""
    coarse = rng.integers(70, 186, size=(height // 12 + 2, width // 12 + 2, 3)).astype(np.float64)
    ys = np.linspace(0, coarse.shape[0] - 1.001, height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy + rng.normal(0, 8, size=(height, width, 3))


def write_video(path: Path, frames: np.ndarray, *, fps: int = 25) -> None:
    """Encode (T, H, W, 3) uint8 frames as MPEG-4 part 2 in an AVI container, atomically."""
    with atomic_file(path) as tmp:
        with av.open(str(tmp), "w", format="avi") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = 1_500_000  # high enough that the small moving texture survives compression
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())



def video_name(action: str, index: int) -> str:
    """UCF-101 style stem: v_<class>_gXX_cYY (XX = group, YY = clip within the group)."""
    group, clip = divmod(index, CLIPS_PER_GROUP)
    return f"v_{action}_g{group + 1:02d}_c{clip + 1:02d}"


def make_dataset(
    root: Path, *, n_train: int, n_test: int, width: int, height: int, n_frames: int, seed: int
) -> dict[str, list[str]]:
    """Write videos and split files under ``root``; return {'train': [...], 'test': [...]} list rows."""
    rng = np.random.default_rng(seed)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for class_index, action in enumerate(CLASSES, start=1):
        # Test videos start a new group, so train and test never share one (as in UCF-101).
        first_test = -(-n_train // CLIPS_PER_GROUP) * CLIPS_PER_GROUP
        for i in [*range(n_train), *range(first_test, first_test + n_test)]:
            name = f"{video_name(action, i)}.avi"
            frames = render_video(action, rng, width=width, height=height, n_frames=n_frames)
            write_video(root / "videos" / action / name, frames)
            if i < n_train:
                lists["train"].append(f"{action}/{name} {class_index}")
            else:
                lists["test"].append(f"{action}/{name}")
    splits = root / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CLASSES, start=1)))
    (splits / "trainlist01.txt").write_text("".join(f"{row}\n" for row in lists["train"]))
    (splits / "testlist01.txt").write_text("".join(f"{row}\n" for row in lists["test"]))
    return lists


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir_path", type=Path, help="output folder (videos/ and splits/ are created in it)")
    parser.add_argument("--n_train_per_class", type=int, default=100)
    parser.add_argument("--n_test_per_class", type=int, default=10)
    parser.add_argument("--size", default="96x72", help="WIDTHxHEIGHT of the videos")
    parser.add_argument("--n_frames", type=int, default=24, help="frames per video (25 fps)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    width, height = parse_frame_size(args.size, flag="--size", minimum=32)
    if args.n_train_per_class < 1 or args.n_test_per_class < 0 or args.n_frames < 2:
        raise UserError("need --n_train_per_class >= 1, --n_test_per_class >= 0 and --n_frames >= 2")
    lists = make_dataset(
        args.dir_path,
        n_train=args.n_train_per_class,
        n_test=args.n_test_per_class,
        width=width,
        height=height,
        n_frames=args.n_frames,
        seed=args.seed,
    )
    print(
        f"wrote {len(lists['train'])} training and {len(lists['test'])} test videos of {len(CLASSES)} classes "
        f"to {args.dir_path / 'videos'}, split files to {args.dir_path / 'splits'}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
