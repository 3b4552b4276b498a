"""A corpus of small awkward video files, made by the tests themselves with PyAV (and the ffmpeg binary for
the ground truth of how ffmpeg displays a rotated video, when it is installed).

    from tests.video_corpus import make_corpus
    corpus = make_corpus(tmp_path)      # a Corpus of paths: corpus.clean, corpus.rotated, ...

Every frame is 64x48 (stored), asymmetric so orientation is testable: a red block in the top-left corner,
a green one in the bottom-right, a blue ramp from left to right, and a strip along the bottom whose grey
level encodes the frame number (`frame_number`).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

WIDTH, HEIGHT = 64, 48
FPS = 10
N_FRAMES = 30
GOP = 8  # a keyframe every 8 frames, so seeking and damage containment are exercised
STRIP = 8  # rows of the frame-number strip
# Irregular frame durations (ms) of the variable-frame-rate file, cycled: phone cameras stretch frames in low light.
VFR_DURATIONS_MS = (33, 33, 34, 100, 33, 67, 33, 200, 40, 20)


def corpus_frame(i: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Frame `i` (0-based) of the synthetic content, (H, W, 3) uint8."""
    a = np.zeros((height, width, 3), np.uint8)
    a[..., 2] = np.linspace(0, 160, width).astype(np.uint8)[None, :]
    a[: height // 3, : width // 3, 0] = 230
    a[height - height // 4: height - STRIP, width - width // 4:, 1] = 230
    x = (i * 5) % (width - 8)
    a[height // 2 - 4: height // 2 + 4, x: x + 8] = 255
    a[height - STRIP:, :, :] = 8 * (i % 32)
    return a


def frame_number(frame: np.ndarray) -> int:
    """Frame number (mod 32) of an upright corpus frame, from the grey level of its bottom strip."""
    strip = frame[-STRIP + 2:, 2:-2].astype(float)
    return int(round(strip.mean() / 8))


def write_video(path: Path, frames, *, fps: int = FPS, pts_ms=None, rotation: int = 0, faststart: bool = False,
                codec: str = "libx264") -> Path:
    """Encode `frames` with PyAV. `pts_ms`: explicit presentation times in milliseconds (variable frame rate);
    `rotation`: display matrix, degrees counter-clockwise; `faststart`: index at the start of an .mp4 (a
    truncated file stays readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0"}
        if pts_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for k, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[k], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def vfr_pts_ms(n: int) -> list[int]:
    """Presentation times (ms) of an irregular frame rate."""
    return [sum(VFR_DURATIONS_MS[k % len(VFR_DURATIONS_MS)] for k in range(i)) for i in range(n)]


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An .mp4 with one AAC audio stream and no video."""
    rate = 8000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        t = np.arange(int(rate * seconds)) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[start: start + 1024][None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def damage_middle(src: Path, dst: Path, *, fraction: float = 0.5, n_bytes: int = 600) -> tuple[int, int]:
    """Copy `src` to `dst` with `n_bytes` of garbage written at `fraction` of the file; the damaged byte range."""
    data = bytearray(src.read_bytes())
    start = int(len(data) * fraction)
    rng = np.random.default_rng(0)
    data[start: start + n_bytes] = rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return start, start + n_bytes


def truncate(src: Path, dst: Path, *, fraction: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@dataclass
class Corpus:
    root: Path
    clean: Path  # 30 frames at 10 fps, 64x48
    upright: Path  # the rotated video's picture stored upright (48x64 portrait)
    rotated: Path  # 64x48 stored, display matrix 90 degrees counter-clockwise -> shown as 48x64
    corrupt: Path  # clean.mp4 with garbage in the middle
    corrupt_range: tuple[int, int]
    truncated: Path  # clean (faststart) cut at 60 %
    vfr: Path  # irregular timestamps
    audio_only: Path
    upper_case: Path  # a clean video named .MP4
    short: Path  # 4 frames


def make_corpus(root: Path) -> Corpus:
    """Write every kind of awkward file under `root` (flat, one file per kind)."""
    root.mkdir(parents=True, exist_ok=True)
    frames = [corpus_frame(i) for i in range(N_FRAMES)]
    clean = write_video(root / "clean.mp4", frames)
    upright = write_video(root / "upright.mp4", [np.ascontiguousarray(np.rot90(f)) for f in frames])
    rotated = write_video(root / "rotated.mp4", frames, rotation=90)
    corrupt_range = damage_middle(clean, root / "corrupt.mp4")
    faststart = write_video(root / ".faststart.tmp.mp4", frames, faststart=True)
    truncated = truncate(faststart, root / "truncated.mp4")
    faststart.unlink()
    vfr = write_video(root / "vfr.mp4", frames, pts_ms=vfr_pts_ms(N_FRAMES))
    audio_only = write_audio_only(root / "audio_only.mp4")
    upper_case = write_video(root / "upper.MP4", frames)
    short = write_video(root / "short.mp4", frames[:4])
    return Corpus(root, clean, upright, rotated, root / "corrupt.mp4", corrupt_range, truncated, vfr, audio_only,
                  upper_case, short)


def ffmpeg_frames(path: Path, out_dir: Path) -> list[np.ndarray]:
    """Every frame as the ffmpeg command line shows it (autorotated, one output per input frame), as RGB arrays."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-fps_mode", "passthrough",
                    str(out_dir / "%05d.png")], check=True)
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(out_dir.glob("*.png"))]


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None
