"""A corpus of small awkward video files, made by the tests themselves with PyAV (and the ffmpeg binary, when it is
installed, for the ground truth of how ffmpeg displays a rotated video and for the files ffmpeg itself makes with
duplicate timestamps).

    from tests.video_corpus import make_corpus, make_timestamp_corpus
    corpus = make_corpus(tmp_path)      # a Corpus of paths: corpus.clean, corpus.rotated, ...
    odd = make_timestamp_corpus(tmp_path / "ts")  # name -> path of files whose timestamps cannot number frames

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
# The ffmpeg command (30 fps, then 15 fps from frame 150) applied to its frames 110-141, moved to start at
# 0: setpts truncates 123 / 30 / (1 / 30) = 122.99999999999999 to 122, so two packets carry one pts (12 here).
DUP_PTS_FRAMES = 32
DUP_PTS_EXPR = "(N+110+if(gte(N+110,130),N+110-130,0))/30/TB-110"


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
                codec: str = "libx264", gop: int = GOP) -> Path:
    """Encode `frames` with PyAV. `pts_ms`: explicit presentation times in milliseconds (variable frame rate);
    `rotation`: display matrix, degrees counter-clockwise; `faststart`: index at the start of an .mp4 (a
    truncated file stays readable); `gop`: frames from one keyframe to the next (libx264, which also makes
    B-frames, some of them references for others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
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


def gap_pts_ms(n: int) -> list[int]:
    """10 fps with holes: the camera skipped 1 s after frame 9 and 0.5 s after frame 19."""
    return [i * 100 + (1000 if i >= 10 else 0) + (500 if i >= 20 else 0) for i in range(n)]


def remux(src: Path, dst: Path, edit=None, *, format: str | None = None) -> Path:
    """Copy the video packets of `src` into `dst` (container from its extension or `format`), without re-encoding;
    `edit(k, packet)` may change packet k's timestamps first."""
    with av.open(str(src)) as source, av.open(str(dst), "w", format=format) as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for k, packet in enumerate(p for p in source.demux(video=0) if p.size):
            if edit is not None:
                edit(k, packet)
            packet.stream = stream
            target.mux(packet)
    return dst


def drop_every_third_pts(k: int, packet) -> None:
    """MPEG-TS stores a PES packet's timestamps only when present: every third packet has none."""
    if k % 3 == 1:
        packet.pts = None  # the muxer then writes neither pts nor dts


def restart_clock_at(frame: int):
    """An edit for `remux`: the frames shown before `frame` get pts 10 s later, so the clock goes back at `frame`,
    as in two clips joined without fixing their timestamps (decoding times stay in order, as muxers require)."""
    def edit(k: int, packet) -> None:
        tick = round(1 / (FPS * packet.time_base))
        if packet.pts < frame * tick:
            packet.pts += 100 * tick
    return edit


def ffmpeg_vfr_with_duplicate_pts(path: Path, frames, *extra: str) -> Path:
    """The issue's command line on the corpus frames: 30 then 15 fps, passthrough, libx264 (two packets share a pts)."""
    raw = np.stack(frames).tobytes()
    height, width = frames[0].shape[:2]
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
                    "-framerate", "30", "-i", "-", "-vf", f"setpts='{DUP_PTS_EXPR}'", "-fps_mode", "passthrough",
                    "-c:v", "libx264", "-g", str(GOP), *extra, str(path)], input=raw, check=True)
    return path


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


def make_timestamp_corpus(root: Path) -> dict[str, Path]:
    """Files whose container timestamps cannot number the frames by themselves, name -> path; frame i of each shows
    the corpus picture i (`frame_number(frame) == i`), except that truncated.mp4 lost the frames cut off.

    - dup_pts.mp4 / dup_pts.mkv / dup_pts_tb30.mp4 (-video_track_timescale 30): the issue's ffmpeg command, 30 then
      15 fps, one pts carried by two packets (only when the ffmpeg binary is installed);
    - gaps.mp4: 10 fps with holes in time;
    - missing_pts.ts: every third packet without timestamps;
    - clock_restart.mkv: the pts of frames 20-29 are 10 s earlier than those of frames 0-19;
    - no_pts.h264: a raw H.264 stream, no timestamps at all;
    - b_frames.avi: H.264 with B-frames in AVI: the timestamps follow decoding order, so the decoder's pictures come
      out with non-monotonic pts;
    - truncated.mp4: a constant-rate file cut at 60 % (the frames the last decoded ones reorder around are gone).
    """
    root.mkdir(parents=True, exist_ok=True)
    frames = [corpus_frame(i) for i in range(N_FRAMES)]
    files = {}
    if have_ffmpeg():
        dup_frames = [corpus_frame(i) for i in range(DUP_PTS_FRAMES)]
        files["dup_pts.mp4"] = ffmpeg_vfr_with_duplicate_pts(root / "dup_pts.mp4", dup_frames)
        files["dup_pts.mkv"] = ffmpeg_vfr_with_duplicate_pts(root / "dup_pts.mkv", dup_frames)
        files["dup_pts_tb30.mp4"] = ffmpeg_vfr_with_duplicate_pts(root / "dup_pts_tb30.mp4", dup_frames,
                                                                  "-video_track_timescale", "30")
    files["gaps.mp4"] = write_video(root / "gaps.mp4", frames, pts_ms=gap_pts_ms(N_FRAMES))
    source = write_video(root / ".source.tmp.mp4", frames)
    files["missing_pts.ts"] = remux(source, root / "missing_pts.ts", drop_every_third_pts)
    files["clock_restart.mkv"] = remux(source, root / "clock_restart.mkv", restart_clock_at(20))
    source.unlink()
    files["no_pts.h264"] = write_video(root / "no_pts.h264", frames)
    files["b_frames.avi"] = write_video(root / "b_frames.avi", frames)
    faststart = write_video(root / ".faststart.tmp.mp4", frames, faststart=True)
    files["truncated.mp4"] = truncate(faststart, root / "truncated.mp4")
    faststart.unlink()
    return files


def ffmpeg_frames(path: Path, out_dir: Path) -> list[np.ndarray]:
    """Every frame as the ffmpeg command line shows it (autorotated, one output per input frame), as RGB arrays."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-fps_mode", "passthrough",
                    str(out_dir / "%05d.png")], check=True)
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(out_dir.glob("*.png"))]


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None
