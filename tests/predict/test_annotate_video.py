"""--output_video: annotated copies keep the input's frames, timing and (upright) orientation; the overlay
changes only the pixels inside the boxes it draws."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw

from datasets.video_files import probe_video, stream_frames, upright_array
from predict.annotate_video import (
    MAX_BOX_HEIGHT,
    MAX_BOX_WIDTH,
    MIN_FONT_PX,
    AnnotatedVideoWriter,
    ClassColors,
    Segment,
    class_color,
    draw_overlay,
    label_box,
    safe_file_name,
)
from tests.video_corpus import N_FRAMES, corpus_frame, vfr_pts_ms, write_video

TOP = [{"label": "walk", "score": 0.91}, {"label": "run", "score": 0.06}, {"label": "<jump>", "score": 0.03}]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The awkward files of tests/video_corpus.py at 320x240, big enough for the overlay to leave room."""
    root = tmp_path_factory.mktemp("corpus")
    frames = [corpus_frame(i, 320, 240) for i in range(N_FRAMES)]
    return SimpleNamespace(clean=write_video(root / "clean.mp4", frames),
                           rotated=write_video(root / "rotated.mp4", frames, rotation=90),  # a phone video
                           vfr=write_video(root / "vfr.mp4", frames, pts_ms=vfr_pts_ms(N_FRAMES)))


def _annotate(src: Path, dst: Path, *, window_s: float = 0.8, **kwargs) -> AnnotatedVideoWriter:
    """Annotate like the predictor does: segments [k * window, (k + 1) * window) reported after their frames."""
    meta = probe_video(src)
    writer = AnnotatedVideoWriter(dst, duration_s=meta.duration, fps=meta.fps, **kwargs)
    next_start = 0.0
    for _, seconds, frame in stream_frames(src, meta):
        writer.add_frame(_, seconds, frame)
        while seconds >= next_start + window_s:
            writer.add_segment(next_start, next_start + window_s, TOP)
            next_start += window_s
    while next_start < meta.duration:
        writer.add_segment(next_start, min(next_start + window_s, meta.duration), TOP[::-1])
        next_start += window_s
    writer.close()
    return writer


def _outside(shape, boxes, margin: int = 2) -> np.ndarray:
    """Pixels at least `margin` away from every box (chroma subsampling smears a box's edge by a pixel or two)."""
    mask = np.ones(shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, y0 - margin): y1 + margin, max(0, x0 - margin): x1 + margin] = False
    return mask


def _container_duration(path: Path) -> float:
    with av.open(str(path)) as c:
        return c.duration / 1_000_000


@pytest.mark.parametrize("kind", ["clean", "rotated", "vfr"])
def test_same_frames_timing_and_upright_orientation(corpus, tmp_path, kind):
    src = getattr(corpus, kind)
    writer = _annotate(src, tmp_path / "annotated" / f"{kind}.mp4")
    out = writer.path
    a, b = probe_video(src), probe_video(out)
    assert b.n_frames == a.n_frames
    assert max(abs(a.frame_time(i) - b.frame_time(i)) for i in range(a.n_frames)) < 1e-3
    assert _container_duration(out) == pytest.approx(_container_duration(src), abs=1e-3)
    assert (b.width, b.height) == (a.width, a.height) and b.rotation == 0  # stored upright, shown the same
    assert (a.width, a.height) == ((240, 320) if kind == "rotated" else (320, 240))
    # The displayed frames are the input's outside the drawn boxes (so orientation is the upright one too).
    checked = 0
    for (_, seconds, f_in), (_, _, f_out) in zip(stream_frames(src, a), stream_frames(out, b)):
        original, annotated = upright_array(f_in), upright_array(f_out)
        _, boxes = writer.render(seconds, original)
        outside = _outside(original.shape, boxes)
        assert np.abs(original[outside].astype(int) - annotated[outside].astype(int)).mean() < 4
        checked += outside.sum()
    assert checked > 0


def test_overlay_changes_only_the_drawn_boxes(tmp_path):
    frames = [corpus_frame(i, 320, 240) for i in range(12)]
    src = write_video(tmp_path / "big.mp4", frames)
    meta = probe_video(src)
    writer = AnnotatedVideoWriter(tmp_path / "out.mp4", duration_s=meta.duration, fps=meta.fps, crf=0)
    writer.add_segment(0.0, 0.6, TOP)
    writer.add_segment(0.6, 1.2, TOP[::-1])
    for n, seconds, frame in stream_frames(src, meta):
        original = upright_array(frame)
        drawn, boxes = writer.render(seconds, frame)
        outside = np.ones(original.shape[:2], bool)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
            outside[y0:y1, x0:x1] = False
            assert (drawn[y0:y1, x0:x1] != original[y0:y1, x0:x1]).any()  # something was drawn there
        assert outside.mean() > 0.6  # the boxes leave most of the picture alone
        np.testing.assert_array_equal(drawn[outside], original[outside])  # bit-identical before encoding
        writer.add_frame(n, seconds, frame)
    out = writer.close()
    # after encoding (4:2:0, crf 0): equal within codec noise away from the box edges
    for (_, _, f_in), (_, _, f_out) in zip(stream_frames(src), stream_frames(out)):
        a, b = upright_array(f_in).astype(int), upright_array(f_out).astype(int)
        diff = np.abs(a[120:200, 160:] - b[120:200, 160:])
        assert diff.mean() < 1 and np.percentile(diff, 99) <= 12  # colour edges: 4:2:0 chroma twice


LONG_TOP = ({"label": "rotate_counterclockwise_slowly", "score": 0.747}, {"label": "move_left", "score": 0.2},
            {"label": "grow", "score": 0.05})


@pytest.mark.parametrize("width, height", [(160, 120), (272, 640), (3840, 2160)])
def test_label_box_fits_small_portrait_and_4k_frames(width, height):
    """The box scales with the frame's shorter side, keeps a legible size and every top-k line, covers at most a
    set share of the picture, and lets the picture show through."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    segment = Segment(0.0, 1.0, LONG_TOP)
    x0, y0, x1, y1 = draw_overlay(image, 0.5, 1.0, segment, [segment], topk=3)[-1]
    assert (x0, y0) == (0, 0)
    assert x1 <= MAX_BOX_WIDTH * width and y1 <= MAX_BOX_HEIGHT * height
    assert x1 * y1 <= 0.25 * width * height
    layout = label_box(width, height, LONG_TOP, ImageDraw.Draw(image))
    assert layout.box == (x0, y0, x1, y1) and len(layout.lines) == 3  # all of the top 3, in order
    assert [score for _, score in layout.lines] == ["0.75", "0.20", "0.05"]
    assert layout.font.size == max(MIN_FONT_PX, round(min(width, height) / 28))
    long_label = layout.lines[0][0]
    if width > 1000:
        assert long_label == LONG_TOP[0]["label"]
    else:  # cut in the middle to fit: both ends kept
        assert long_label.startswith("rot") and long_label.endswith("wly") and "…" in long_label
    drawn = np.asarray(image)
    background = drawn[y1 - 1, x1 - 1]  # the box's last pixel: no text there
    assert 80 < background.mean() < 160  # white under see-through black (not black, not untouched)
    assert (drawn[y0:y1, x0:x1] > 220).all(axis=2).any()  # the white text (anti-aliased at small sizes)


def test_tiny_frames_show_the_top_label_whole():
    """The demo's 96x72 videos cannot hold a legible label in a share of their width: the top-1 line takes what it
    needs, and the lines that do not fit the height share are left out."""
    image = Image.new("RGB", (96, 72))
    top = ({"label": "rotate_cw", "score": 0.63}, {"label": "move_left", "score": 0.37})
    layout = label_box(96, 72, top, ImageDraw.Draw(image))
    assert layout.lines == (("rotate_cw", "0.63"),) and layout.font.size == MIN_FONT_PX
    assert layout.box[2] <= 96 and layout.box[3] <= MAX_BOX_HEIGHT * 72


def test_timeline_strip_shows_the_first_segment_covering_each_moment():
    """An end-aligned last window overlaps the one before: the strip shows it only where it adds, as the label box
    (frames are drawn once the first segment covering them is known)."""
    image = Image.new("RGB", (96, 72))
    first, tail = Segment(0.0, 0.64, (TOP[0],)), Segment(0.32, 0.96, (TOP[1],))
    strip, _ = draw_overlay(image, 0.0, 0.96, first, [first, tail])
    colors = ClassColors()
    row = np.asarray(image)[strip[1] + 1]
    assert tuple(row[40]) == colors.rgb("walk")  # 0.4 s: in both windows
    assert tuple(row[80]) == colors.rgb("run")  # 0.8 s: the last window only


def test_frames_wait_for_their_segment_within_a_bound(tmp_path):
    writer = AnnotatedVideoWriter(tmp_path / "w.mp4", duration_s=1.0, fps=10, max_buffered=4)
    frame = np.zeros((32, 48, 3), np.uint8)
    for k in range(3):
        writer.add_frame(k, k / 10, frame)
    assert writer.frames_written == 0  # no segment yet: waiting
    writer.add_segment(0.0, 0.2, TOP)
    assert writer.frames_written == 2 and writer.segment_at(0.1).top == tuple(TOP)
    for k in range(3, 10):
        writer.add_frame(k, k / 10, frame)
    assert writer.frames_written == 10 - 4  # bounded: the oldest go out with the latest segment known
    assert writer.latest_before(0.5).top == tuple(TOP) and writer.latest_before(-1) is None
    big = AnnotatedVideoWriter(tmp_path / "big.mp4", duration_s=1.0, buffer_bytes=10 * 640 * 480 * 3)
    big.add_frame(0, 0.0, np.zeros((480, 640, 3), np.uint8))
    assert big.max_buffered == 10  # about buffer_bytes of decoded frames
    big.abort()
    writer.close()
    assert probe_video(tmp_path / "w.mp4").n_frames == 10
    assert not list(tmp_path.glob(".*"))  # the temporary file was moved into place


def test_a_live_stream_has_a_rolling_strip_and_forgets_old_segments(tmp_path):
    """rolling: the strip shows the latest duration_s seconds (the cursor at its right end once past it), and the
    segments no frame or strip needs any more are dropped, so a long stream does not pile them up."""
    writer = AnnotatedVideoWriter(tmp_path / "live.mp4", duration_s=1.0, fps=10, rolling=True)
    frame = np.zeros((72, 96, 3), np.uint8)
    labels = [TOP, list(reversed(TOP))]
    for k in range(50):
        writer.add_frame(k, k / 10, frame)
        if k % 2:
            writer.add_segment((k - 1) / 10, (k + 1) / 10, labels[(k // 2) % 2])
    assert len(writer.segments) <= 8 and writer.segments[-1].start_s == pytest.approx(4.8)
    array, boxes = writer.render(4.9, frame)
    strip = array[boxes[0][1] + 1]
    colors = ClassColors()
    assert tuple(strip[15]) == colors.rgb(labels[0][0]["label"]) != colors.rgb(labels[1][0]["label"])  # 4.0-4.2 s
    assert tuple(strip[95]) == (255, 255, 255)  # the cursor: now, at the strip's right end
    writer.close()
    assert probe_video(tmp_path / "live.mp4").n_frames == 50


def test_abort_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), AnnotatedVideoWriter(tmp_path / "x.mp4", duration_s=1.0) as writer:
        writer.add_frame(0, 0.0, np.zeros((16, 16, 3), np.uint8))
        writer.add_frame(1, 0.1, np.zeros((16, 16, 3), np.uint8))
        writer.add_segment(0, 1, TOP)
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_safe_unique_names_and_stable_colours():
    taken: set[str] = set()
    names = [safe_file_name(v, taken) for v in ["a/b/clip.mp4", "c/clip.avi", "<img src=x onerror=alert(1)>.mp4",
                                                 "../../etc/passwd", ".hidden.mkv", "Clip.mp4"]]
    assert names[:2] == ["clip.mp4", "clip_2.mp4"]
    assert names[5] == "Clip_3.mp4"  # unique on case-insensitive file systems too
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and not name.startswith(".") and set(name) <= set(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert class_color("walk") == class_color("walk") != class_color("run")
    colors = ClassColors(["walk", "run", "jump"])
    assert len({colors.rgb(c) for c in ["walk", "run", "jump", "other"]}) == 4
    assert colors.hex("walk") == "#{:02x}{:02x}{:02x}".format(*colors.rgb("walk"))
