"""Annotated copies of videos (`--predict PATH --output_video`): every frame upright, with the top-k labels of
the segment covering it and a timeline strip of the top-1 label of every segment scored so far.

    writer = AnnotatedVideoWriter(out_dir / "annotated" / "clip.mp4", duration_s=meta.duration)
    for number, seconds, frame in stream_frames(path, meta):
        writer.add_frame(number, seconds, frame)          # av.VideoFrame (or an upright RGB array)
        ...   writer.add_segment(start_s, end_s, top)     # whenever a segment's scores are known
    writer.close()                                         # flushes, then moves the file into place

Frames wait in a bounded buffer until a segment covering their time is known (at most `max_buffered`
frames and about `buffer_bytes` of decoded pictures; older ones are drawn with the latest segment known
then). The output keeps the input's frame timing (pts
and time base), so its frame count and duration are the input's; it is stored upright (no display matrix).
Encoding: H.264 (libx264) where PyAV has it, else MPEG-4 part 2.
"""

from __future__ import annotations

import colorsys
import hashlib
import logging
import os
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from datasets.video_files import upright_array

log = logging.getLogger(__name__)

DEFAULT_MAX_BUFFERED = 256  # frames waiting for their segment (full-resolution decoded frames: keep it bounded)
DEFAULT_BUFFER_BYTES = 512 * 2**20  # and at most this much of them (4K: about 40 frames)
UNKNOWN_COLOR = (60, 60, 60)  # timeline where no segment is known yet
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ClassColors:
    """Colours of class labels, the same in annotated videos and in the HTML report.

    Classes of `class_names` get hues spaced by the golden ratio in class order (neighbours differ clearly, for
    any number of classes); other labels a hue from a hash of the label (stable across runs).
    """

    def __init__(self, class_names: Sequence[str] = ()):
        self.index = {str(name): k for k, name in enumerate(class_names)}

    def rgb(self, label: str) -> tuple[int, int, int]:
        k = self.index.get(str(label))
        if k is None:
            digest = hashlib.sha1(str(label).encode("utf-8")).digest()
            k = int.from_bytes(digest[:4], "big")
        hue = (k * 0.6180339887) % 1.0
        lightness = (0.45, 0.62, 0.35)[k % 3]
        r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.8)
        return round(r * 255), round(g * 255), round(b * 255)

    def hex(self, label: str) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.rgb(label))


def class_color(label: str) -> tuple[int, int, int]:
    """The colour of a label when no class list is known."""
    return ClassColors().rgb(label)


def safe_file_name(video_id: str, taken: set[str], suffix: str = ".mp4") -> str:
    """A file name made from the video's name: only [A-Za-z0-9._-], no leading dot, at most 100 characters,
    unique among `taken` (which it joins)."""
    stem = _SAFE.sub("_", Path(str(video_id)).stem).strip("._")[:100] or "video"
    name, k = stem + suffix, 2
    while name.lower() in taken:
        name, k = f"{stem}_{k}{suffix}", k + 1
    taken.add(name.lower())
    return name


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    top: tuple  # ({"label": str, "score": float}, ...), best first

    @property
    def label(self) -> str:
        return self.top[0]["label"] if self.top else ""

    def covers(self, t: float, *, final: bool = False) -> bool:
        """start <= t < end; the video's final segment (`final`) also covers the time from its end on."""
        return self.start_s <= t and (t < self.end_s or final)


# The label box: text at a share of the frame's shorter side, so it looks the same on landscape and portrait
# videos of any resolution, but never below a legible size; the box never covers more than a set share of the
# picture (labels are shortened in the middle, "move…left", where the ends tell classes apart; the lowest-ranked
# lines are left out on frames too small for all); its black is see-through. Frames smaller than TINY_FRAME_PX
# (thumbnails, the demo's 96x72 videos) cannot hold a legible label in that share: the box may take the
# whole width there.
FONT_SHARE = 1 / 28
MIN_FONT_PX = 10
MAX_BOX_WIDTH = 0.6  # of the frame's width
MAX_BOX_HEIGHT = 0.4  # of the frame's height
TINY_FRAME_PX = 100  # shorter side
BOX_OPACITY = 0.55
ELLIPSIS = "…"


def font_for(width: int, height: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at the size for text on a frame of this size."""
    try:
        return ImageFont.load_default(size=font_px(width, height))
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def font_px(width: int, height: int) -> int:
    return max(MIN_FONT_PX, round(min(width, height) * FONT_SHARE))


def strip_height(height: int) -> int:
    return max(4, round(height / 24))


@dataclass(frozen=True)
class LabelBox:
    """Where and what the top-k box draws: its (x0, y0, x1, y1) box (exclusive ends), the lines (label shortened to
    fit, score) and their layout: a colour swatch, the label, and the score right-aligned in a column of its own (a
    space is too thin to part them at small sizes)."""

    box: tuple[int, int, int, int]
    lines: tuple[tuple[str, str], ...]  # (label, score); score '' for the placeholder line
    font: ImageFont.ImageFont
    pad: int
    line_h: int
    swatch: int

    @property
    def label_x(self) -> int:
        return 2 * self.pad + self.swatch

    @property
    def score_right(self) -> int:
        return self.box[2] - self.pad


def label_box(width: int, height: int, top: Sequence[dict], draw: ImageDraw.ImageDraw) -> LabelBox:
    """The layout of the top-k labels `top` on a width x height frame (see FONT_SHARE)."""
    font = font_for(width, height)
    pad = max(2, round(min(width, height) / 160))
    line_h = font.getbbox("Ag")[3] + pad
    swatch = max(4, line_h - 2 * pad)
    fit_lines = max(1, int((height * MAX_BOX_HEIGHT - 2 * pad) // line_h))
    lines = [(item["label"], f"{item['score']:.2f}") for item in top[:fit_lines]] or [(ELLIPSIS, "")]
    score_w = max(draw.textlength(score, font=font) for _, score in lines)
    gap = max(3, line_h // 3)
    max_width = width if min(width, height) < TINY_FRAME_PX else width * MAX_BOX_WIDTH
    label_room = max_width - (4 * pad + swatch + gap + score_w) - 1
    lines = [(_shorten(label, label_room, draw, font), score) for label, score in lines]
    label_w = max(draw.textlength(label, font=font) for label, _ in lines)
    box_w = int(3 * pad + swatch + label_w + gap + score_w + pad) + 1
    return LabelBox((0, 0, min(width, box_w), min(height, len(lines) * line_h + 2 * pad)), tuple(lines), font, pad,
                    line_h, swatch)


def _shorten(label: str, room: float, draw: ImageDraw.ImageDraw, font) -> str:
    """`label`, with "…" for as many middle characters as it needs to fit in `room` pixels."""
    for keep in range(len(label), -1, -1):
        short = label if keep == len(label) else label[:(keep + 1) // 2] + ELLIPSIS + label[len(label) - keep // 2:]
        if draw.textlength(short, font=font) <= room:
            return short
    return ELLIPSIS


def draw_overlay(image: Image.Image, t: float, duration: float, current: Segment | None,
                 timeline: Sequence[Segment], *, topk: int = 3,
                 colors: ClassColors | None = None, origin: float = 0.0) -> list[tuple[int, int, int, int]]:
    """Draw the top-k box (top left, see-through) and the timeline strip (bottom) onto `image` (RGB) in place.
    The strip shows `duration` seconds from `origin` on (a live stream's: the latest ones).

    Returns the boxes (x0, y0, x1, y1), exclusive ends, outside which no pixel was changed.
    """
    width, height = image.size
    colors = colors or ClassColors()
    draw = ImageDraw.Draw(image)
    boxes = [_draw_timeline(draw, width, height, t - origin, duration,
                            [replace(s, start_s=s.start_s - origin, end_s=s.end_s - origin) for s in timeline]
                            if origin else timeline, colors)]
    layout = label_box(width, height, current.top[:topk] if current else (), draw)
    box = layout.box
    image.paste(Image.blend(image.crop(box), Image.new("RGB", (box[2] - box[0], box[3] - box[1])), BOX_OPACITY),
                box[:2])
    pad, swatch, white = layout.pad, layout.swatch, (255, 255, 255)
    for k, (label, score) in enumerate(layout.lines):
        y = pad + k * layout.line_h
        if score:
            draw.rectangle((pad, y + pad // 2, pad + swatch - 1, y + pad // 2 + swatch - 1),
                           fill=colors.rgb(current.top[k]["label"]))
            draw.text((layout.score_right - draw.textlength(score, font=layout.font), y), score, fill=white,
                      font=layout.font)
        draw.text((layout.label_x, y), label, fill=white, font=layout.font)
    boxes.append(box)
    return boxes


def _draw_timeline(draw: ImageDraw.ImageDraw, width: int, height: int, t: float, duration: float,
                   timeline: Sequence[Segment], colors: ClassColors) -> tuple[int, int, int, int]:
    h = strip_height(height)
    y0 = height - h
    draw.rectangle((0, y0, width - 1, height - 1), fill=UNKNOWN_COLOR)
    scale = width / duration if duration > 0 else 0.0
    # Earlier segments on top: a moment shows the first segment that covers it, as the label box does (a frame is
    # drawn as soon as a segment covers it), and an end-aligned last window shows the part it adds.
    for seg in reversed(timeline):
        x0, x1 = int(seg.start_s * scale), max(int(seg.start_s * scale) + 1, int(round(seg.end_s * scale)))
        if x1 <= 0 or x0 >= width:  # outside the strip (a live stream's: before it, or scored ahead of the frame)
            continue
        draw.rectangle((max(x0, 0), y0, min(x1, width) - 1, height - 1), fill=colors.rgb(seg.label))
    cursor = min(width - 1, int(t * scale))
    draw.rectangle((max(0, cursor - 1), y0, min(width - 1, cursor + 1), height - 1), fill=(255, 255, 255))
    return 0, y0, width, height


def pick_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


class FrameEncoder:
    """Encodes upright RGB frames to an .mp4 with the input's frame timing, written under a temporary name and
    moved into place by close() (abort() drops it).

    Each frame comes with the decoded input frame it replaces (or None): its pts, time base and duration are
    kept, so the output has the input's frame times and duration. Without one, `seconds` gives the time.
    """

    def __init__(self, path: Path, *, fps: float = 25.0, crf: int = 18, codec: str | None = None):
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self.codec = codec or pick_codec()
        self.frames_written = 0
        self._container = None
        self._stream = None
        self._first_pts: int | None = None
        self._time_base: Fraction | None = None
        self._durations: dict[int, int] = {}  # pts -> duration of the frames in the encoder
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix or '.mp4'}")

    def write(self, array: np.ndarray, seconds: float, source=None) -> None:
        """Encode one upright RGB uint8 frame shown at `seconds` (timing from `source`, the input frame, if any)."""
        if self._container is None:
            self._open(array.shape[1], array.shape[0], source)
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        out.pts = self._pts(seconds, source)
        out.time_base = self._time_base
        duration = getattr(source, "duration", None)
        if duration and getattr(source, "time_base", None) == self._time_base:
            self._durations[out.pts] = duration
        self._mux(self._stream.encode(out))
        self.frames_written += 1

    def close(self) -> Path:
        if self._container is None:
            raise ValueError(f"no frames were given for {self.path}")
        self._mux(self._stream.encode())
        self._container.close()
        self._container = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - nothing more to save
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def _mux(self, packets) -> None:
        for packet in packets:
            # The encoder drops frame durations: without them the last frame would last 0 s.
            duration = self._durations.pop(packet.pts, None)
            if duration:
                packet.duration = duration
            self._container.mux(packet)

    def _pts(self, seconds: float, source) -> int:
        pts = getattr(source, "pts", None)
        if pts is not None and getattr(source, "time_base", None) == self._time_base:
            if self._first_pts is None:
                self._first_pts = pts - round(seconds / self._time_base)
            return pts - self._first_pts
        return round(seconds / self._time_base)

    def _open(self, width: int, height: int, source) -> None:
        self._time_base = getattr(source, "time_base", None) or Fraction(1, 90000)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._tmp), "w", format="mp4")
        stream = self._container.add_stream(self.codec, rate=Fraction(self.fps or 25).limit_denominator(1001))
        stream.width, stream.height = width, height
        odd = width % 2 or height % 2
        if self.codec == "libx264":
            stream.pix_fmt = "yuv444p" if odd else "yuv420p"  # 4:2:0 needs even sizes
            stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        else:
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = max(400_000, width * height * 8)
        stream.codec_context.time_base = self._time_base
        stream.time_base = self._time_base
        self._stream = stream


class AnnotatedVideoWriter:
    """Writes an annotated, upright copy of one video (see the module docstring).

    Args:
        path: the output file (.mp4); written beside it under a temporary name and moved into place on close().
        duration_s: the input's duration (the timeline's full width).
        fps: the input's average frame rate (a hint for players; the frame times are the input's).
        topk: labels shown per frame.
        max_buffered, buffer_bytes: frames kept waiting for their segment, and their decoded size at most.
        crf: H.264 quality (lower is better; 18 is visually lossless).
        class_names: the model's classes, in order (their colours; see ClassColors).
        rolling: a live stream of unknown length: the strip shows the latest `duration_s` seconds, and segments
            older than that are forgotten (memory stays flat).
    """

    def __init__(self, path: Path, *, duration_s: float, fps: float = 25.0, topk: int = 3,
                 max_buffered: int = DEFAULT_MAX_BUFFERED, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 crf: int = 18, codec: str | None = None,
                 class_names: Sequence[str] = (), rolling: bool = False):
        self.path = Path(path)
        self.colors = ClassColors(class_names)
        self.fps = fps
        self.duration_s = float(duration_s)
        self.topk = topk
        self.max_buffered = max(1, max_buffered)
        self.buffer_bytes = buffer_bytes
        self.segments: list[Segment] = []
        self.rolling = rolling
        self._written_s = 0.0  # time of the last frame encoded
        self._buffer: deque = deque()  # (number, seconds, frame)
        self.encoder = FrameEncoder(self.path, fps=fps, crf=crf, codec=codec)

    # -- inputs -------------------------------------------------------------------------------------------

    def add_frame(self, number: int, seconds: float, frame) -> None:
        """A decoded frame (av.VideoFrame, or an upright RGB uint8 array) at `seconds` after frame 0."""
        if not self._buffer and self.encoder.frames_written == 0:  # the first frame: size the buffer
            size = frame.nbytes if isinstance(frame, np.ndarray) else frame.width * frame.height * 3 // 2
            self.max_buffered = max(4, min(self.max_buffered, self.buffer_bytes // max(size, 1)))
        self._buffer.append((number, float(seconds), frame))
        self._flush(final=False)

    def add_segment(self, start_s: float, end_s: float, top: Sequence[dict]) -> None:
        """The top-k labels of a scored segment [start_s, end_s) (best first)."""
        self.segments.append(Segment(float(start_s), float(end_s), tuple(top)))
        self.segments.sort(key=lambda s: (s.start_s, s.end_s))
        if self.rolling:  # what the strip can no longer show, and no frame waits for
            oldest = min([self._written_s, *(seconds for _, seconds, _ in self._buffer)]) - self.duration_s
            self.segments = [seg for seg in self.segments if seg.end_s >= oldest]
        self._flush(final=False)

    def close(self) -> Path:
        """Draw and encode every buffered frame, finish the file and move it into place."""
        self._flush(final=True)
        return self.encoder.close()

    def abort(self) -> None:
        """Drop the partial output (e.g. after an error or an interruption)."""
        self._buffer.clear()
        self.encoder.abort()

    @property
    def frames_written(self) -> int:
        return self.encoder.frames_written

    def __enter__(self) -> AnnotatedVideoWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- drawing and encoding -------------------------------------------------------------------------------

    def segment_at(self, t: float) -> Segment | None:
        """The latest-starting known segment that covers time t."""
        found = None
        for seg in self.segments:
            if seg.start_s > t:
                break
            if seg.covers(t, final=not self.rolling and seg.end_s >= self.duration_s - 1e-3):
                found = seg
        return found

    def latest_before(self, t: float) -> Segment | None:
        """The latest-starting known segment that starts by time t (for a frame that cannot wait longer)."""
        earlier = [seg for seg in self.segments if seg.start_s <= t]
        return earlier[-1] if earlier else None

    def _flush(self, *, final: bool) -> None:
        while self._buffer:
            number, seconds, frame = self._buffer[0]
            if not (final or len(self._buffer) > self.max_buffered or self.segment_at(seconds) is not None):
                return
            self._buffer.popleft()
            self._write(seconds, frame)

    def render(self, seconds: float, frame) -> tuple[np.ndarray, list]:
        """The annotated upright RGB array of one frame and the boxes drawn on it."""
        array = frame if isinstance(frame, np.ndarray) else upright_array(frame)
        image = Image.fromarray(array)
        current = self.segment_at(seconds) or self.latest_before(seconds)
        origin = max(0.0, seconds - self.duration_s) if self.rolling else 0.0
        boxes = draw_overlay(image, seconds, self.duration_s, current, self.segments,
                             topk=self.topk, colors=self.colors, origin=origin)
        return np.asarray(image), boxes

    def _write(self, seconds: float, frame) -> None:
        self._written_s = seconds
        array, _ = self.render(seconds, frame)
        self.encoder.write(array, seconds, None if isinstance(frame, np.ndarray) else frame)
