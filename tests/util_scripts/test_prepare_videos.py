"""util_scripts.prepare_videos: a training copy of a video set that every reader takes like any video folder."""

from __future__ import annotations

import hashlib
import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from datasets import factory
from datasets.video_files import VideoFileReader, probe_video, upright_array
from errors import UserError
from tests.conftest import make_opt
from tests.datagen import make_frame_dataset
from tests.support import run_tool
from tests.video_corpus import FPS, N_FRAMES, corpus_frame, make_corpus, write_audio_only, write_video
from util_scripts import check_videos, prepare_videos
from util_scripts.common import PARTIAL_MARK, iter_frames, scaled_size

ENCODING_NOISE = 6.0  # mean absolute difference (0..255) of a crf 23 copy from its source


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def write_video_with_audio(path: Path) -> Path:
    """The corpus frames (H.264) and a sine tone (AAC) in one file, as cameras record."""
    rate = 8000
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        for i in range(N_FRAMES):
            container.mux(video.encode(av.VideoFrame.from_ndarray(corpus_frame(i), format="rgb24")))
            tone = (0.3 * np.sin(np.arange(rate // FPS) / 3)).astype(np.float32)[None, :]
            samples = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            samples.sample_rate = rate
            container.mux(audio.encode(samples))
        container.mux(video.encode())
        container.mux(audio.encode())
    return path


@pytest.fixture
def source(corpus, tmp_path) -> Path:
    """A video set as users have it: class folders, a nested one, rotated, variable-rate, upper-case, with audio."""
    src = tmp_path / "src"
    for rel, video in (("walk/clean.mp4", corpus.clean), ("walk/rotated.mp4", corpus.rotated),
                       ("run/vfr.mp4", corpus.vfr), ("run/more/upper.MP4", corpus.upper_case)):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(video, src / rel)
    write_video_with_audio(src / "run" / "camera.mkv")
    (src / "walk" / "notes.txt").write_text("not a video")
    return src


def prepare(src: Path, dst: Path, *extra) -> int:
    return prepare_videos.main([str(src), str(dst), "--short_side", "48", "--keyframe_interval", "4",
                                "--n_jobs", "1", *map(str, extra)])


def manifest(dst: Path) -> dict:
    return json.loads((dst / "manifest.json").read_text())


def copy_frames(path: Path) -> list[np.ndarray]:
    meta = probe_video(path)
    return [upright_array(f) for f in VideoFileReader().fetch(path, range(meta.n_frames))]


def mean_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


def closest(frame: np.ndarray, pictures: list[np.ndarray]) -> int:
    """The number of the source picture a frame of the copy shows (the moving block tells them apart)."""
    return int(np.argmin([mean_diff(frame, p) for p in pictures]))


def hidden_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*")]


EXPECTED = ["run/camera.mp4", "run/more/upper.mp4", "run/vfr.mp4", "walk/clean.mp4", "walk/rotated.mp4"]


def test_a_video_set_becomes_small_upright_constant_rate_h264_with_keyframes_and_a_manifest(source, corpus, tmp_path):
    dst = tmp_path / "dst"
    assert prepare(source, dst) == 0
    data = manifest(dst)
    assert data["settings"] == {"short_side": 48, "keyframe_interval": 4, "fps": None, "crf": 23, "codec": "h264",
                                "pix_fmt": "yuv420p", "x264_params": "b-pyramid=none", "tune": "fastdecode"}
    assert sorted(data["videos"]) == EXPECTED and data["failed"] == {}
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.mp4")) == EXPECTED
    for name, entry in data["videos"].items():
        path = dst / name
        meta = probe_video(path)
        assert entry["n_frames"] == meta.n_frames and entry["bytes"] == path.stat().st_size
        x264_settings = path.read_bytes()  # x264 writes its settings into the stream: made to decode quickly
        assert all(s in x264_settings for s in (b"cabac=0", b"deblock=0:", b"b_pyramid=0"))
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert not meta.vfr and meta.rotation == 0 and min(meta.width, meta.height) == 48
        assert meta.keyframes == tuple(range(0, meta.n_frames, 4)), name
        with av.open(str(path)) as container:
            assert not container.streams.audio and container.streams.video[0].codec_context.name == "h264"
            assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
    assert data["videos"]["run/camera.mp4"]["source"] == "run/camera.mkv"
    # A constant-rate source keeps every frame: frame i of the copy is frame i of the source, upright.
    pictures = [corpus_frame(i) for i in range(N_FRAMES)]
    upright = [np.rot90(p) for p in pictures]  # the rotated video as it is shown
    for name, shown in (("walk/clean.mp4", pictures), ("walk/rotated.mp4", upright), ("run/camera.mp4", pictures)):
        frames = copy_frames(dst / name)
        assert [closest(f, shown) for f in frames] == list(range(N_FRAMES)) and probe_video(dst / name).fps == FPS
        assert max(mean_diff(f, shown[i]) for i, f in enumerate(frames)) < ENCODING_NOISE
        assert data["videos"][name]["resampled"] is False
    # A variable-rate source is resampled to its nominal rate by time, as ffmpeg's fps filter does.
    vfr, source_meta = data["videos"]["run/vfr.mp4"], probe_video(corpus.vfr)
    assert vfr["resampled"] is True and vfr["source_frames"] == N_FRAMES
    assert vfr["fps"] == pytest.approx(source_meta.fps, rel=1e-3)
    assert abs(vfr["n_frames"] - source_meta.duration * source_meta.fps) <= 2
    shown = [closest(f, pictures) for f in copy_frames(dst / "run" / "vfr.mp4")]
    selected = iter_frames(corpus.vfr, size=-1, fps=prepare_videos.frame_rate(source_meta.fps))  # as extraction does
    assert shown == [closest(np.asarray(image), pictures) for image in selected]
    assert shown == sorted(shown) and shown[0] == 0 and shown[-1] == N_FRAMES - 1
    assert hidden_files(dst) == []


def test_the_short_side_scales_and_the_long_side_is_even(source, tmp_path):
    dst = tmp_path / "dst"
    assert prepare_videos.main([str(source), str(dst), "--short_side", "30", "--n_jobs", "2"]) == 0
    sizes = {name: (e["width"], e["height"]) for name, e in manifest(dst)["videos"].items()}
    assert sizes["walk/clean.mp4"] == (40, 30) and sizes["walk/rotated.mp4"] == (30, 40)
    assert probe_video(dst / "walk" / "clean.mp4").keyframes == (0, 16)  # the default --keyframe_interval
    assert scaled_size(640, 272, 128, multiple=2) == (302, 128)  # 301.2 -> 302, H.264 in yuv420p
    assert scaled_size(272, 640, 128, multiple=2) == (128, 302) and scaled_size(340, 256, 128, multiple=2) == (170, 128)


def test_a_constant_output_rate_is_a_flag(source, tmp_path):
    dst = tmp_path / "dst"
    assert prepare(source, dst, "--fps", 5) == 0
    entry = manifest(dst)["videos"]["walk/clean.mp4"]
    assert entry["fps"] == 5 and entry["n_frames"] == N_FRAMES // 2 and entry["resampled"] is True
    pictures = [corpus_frame(i) for i in range(N_FRAMES)]
    assert [closest(f, pictures) for f in copy_frames(dst / "walk" / "clean.mp4")] == list(range(0, N_FRAMES, 2))
    assert probe_video(dst / "walk" / "clean.mp4").fps == 5


def test_bad_inputs_are_listed_and_skipped_with_exit_1(source, tmp_path, capsys):
    write_audio_only(source / "walk" / "sound.mp4")
    (source / "walk" / "broken.avi").write_bytes(b"\x00not a video" * 100)
    dst = tmp_path / "dst"
    assert prepare(source, dst) == 1
    captured = capsys.readouterr()
    assert "prepared 5 videos" in captured.out and "2 failed, of 7" in captured.out
    assert "sound.mp4: NoVideoStream: no video stream" in captured.err and "broken.avi" in captured.err
    data = manifest(dst)
    assert sorted(data["failed"]) == ["walk/broken.avi", "walk/sound.mp4"] and sorted(data["videos"]) == EXPECTED
    assert not (dst / "walk" / "sound.mp4").exists() and hidden_files(dst) == []


def test_a_rerun_skips_what_the_manifest_lists_and_redoes_what_is_gone(source, tmp_path, monkeypatch, capsys):
    dst = tmp_path / "dst"
    assert prepare(source, dst) == 0
    first = manifest(dst)
    writes = []
    real_write = prepare_videos.write_copy
    monkeypatch.setattr(prepare_videos, "write_copy", lambda src, *a, **kw: writes.append(src) or
                        real_write(src, *a, **kw))
    (dst / "run" / "vfr.mp4").unlink()
    capsys.readouterr()
    assert prepare(source, dst) == 0
    assert writes == [source / "run" / "vfr.mp4"] and "prepared 1 videos" in capsys.readouterr().out
    assert manifest(dst) == first  # the same settings, files and checksums
    write_video(source / "walk" / "rotated.mp4", [corpus_frame(i) for i in range(20)])  # a source replaced
    assert prepare(source, dst) == 0 and writes[1:] == [source / "walk" / "rotated.mp4"]
    assert manifest(dst)["videos"]["walk/rotated.mp4"]["n_frames"] == 20


def test_other_settings_into_the_same_copy_are_refused_in_one_line(source, tmp_path):
    dst = tmp_path / "dst"
    assert prepare(source, dst) == 0
    with pytest.raises(UserError, match="other settings: short_side 48 \\(now 64\\)"):
        prepare_videos.main([str(source), str(dst), "--short_side", "64", "--keyframe_interval", "4"])
    proc = run_tool("prepare_videos", source, dst, "--short_side", "64")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def test_an_interrupted_run_keeps_what_it_finished_and_a_rerun_does_the_rest(source, tmp_path, monkeypatch, capsys):
    dst = tmp_path / "dst"
    real_write, calls = prepare_videos.write_copy, []

    def interrupted(src, dst_file, *args, **kwargs):  # Ctrl-C while the third video is half written
        calls.append(src)
        if len(calls) == 3:
            dst_file.write_bytes(b"half a video")
            # and another worker's, stopped before its own clean-up
            (dst_file.parent / f".other.mp4{PARTIAL_MARK}stopped").write_bytes(b"half")
            raise KeyboardInterrupt
        return real_write(src, dst_file, *args, **kwargs)

    monkeypatch.setattr(prepare_videos, "write_copy", interrupted)
    assert prepare(source, dst) == 130
    assert "interrupted: 2 prepared videos are recorded" in capsys.readouterr().err
    finished = manifest(dst)["videos"]
    assert len(finished) == 2 and hidden_files(dst) == []
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.mp4")) == sorted(finished)
    # Killed after a video was renamed into place but before the manifest recorded it: taken as it is.
    unrecorded = EXPECTED[2]
    real_write(source / "run" / "vfr.mp4", dst / unrecorded, prepare_videos.CopySettings(short_side=48,
               keyframe_interval=4), rate=Fraction(FPS), resample=False, threads=1)
    calls.clear()
    monkeypatch.setattr(prepare_videos, "write_copy", lambda src, *a, **kw: calls.append(src) or
                        real_write(src, *a, **kw))
    assert prepare(source, dst) == 0
    data = manifest(dst)
    assert sorted(data["videos"]) == EXPECTED and len(calls) == 2  # the 2 left, not the 2 finished nor the unrecorded
    for name in finished:
        assert data["videos"][name] == finished[name]
    assert data["videos"][unrecorded]["sha256"] == hashlib.sha256((dst / unrecorded).read_bytes()).hexdigest()


def test_the_copy_trains_and_is_checked_like_any_video_folder(tmp_path):
    ds = make_frame_dataset(tmp_path / "data", n_classes=2, videos_per_class=2, n_frames=[20, 16], size=(64, 48),
                            file_type="video", fps=10)
    dst = tmp_path / "prepared"
    assert prepare_videos.main([str(ds.video_path), str(dst), "--short_side", "32", "--n_jobs", "2"]) == 0
    assert len(manifest(dst)["videos"]) == len(ds.videos)
    opt = make_opt(ds, video_path=dst, file_type="video", sample_size=24, sample_duration=8, train_crop="random")
    train = factory.build_dataset(opt, "train")  # the annotation file of the source serves the copy
    assert len(train) == 4 and {Path(r.path).parent.parent for r in train.records} == {dst}
    clip, label = train[0]
    assert clip.shape == (8, 24, 24, 3) and label in (0, 1)
    assert train.problems.counts() == {"missing_frames": 0, "corrupt_frames": 0, "unreadable_videos": 0}
    out = tmp_path / "check.json"
    assert check_videos.main([str(dst), "--sample_duration", "8", "--n_jobs", "1", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["videos"]
    assert len(rows) == len(ds.videos) and all(row["kinds"] == [] for row in rows)  # manifest.json is no video
    first = ds.videos[ds.ids("training")[0]]
    assert probe_video(dst / first.path.relative_to(ds.video_path)).n_frames == first.n_frames


def test_user_errors_are_one_line(source, tmp_path):
    for args, message in (((source, tmp_path / "d", "--short_side", "127"), "--short_side must be an even number"),
                          ((source, source / "copy"), "must not be SRC or inside it"),
                          ((tmp_path / "none", tmp_path / "d"), "is not a folder of videos"),
                          ((source, tmp_path / "d", "--keyframe_interval", "0"), "--keyframe_interval must be")):
        proc = run_tool("prepare_videos", *args)
        assert proc.returncode == 2 and proc.stderr == f"error: {proc.stderr[7:]}" and message in proc.stderr
        assert proc.stderr.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no video files under"):
        prepare_videos.main([str(empty), str(tmp_path / "d")])


def test_partial_outputs_of_a_killed_run_are_removed(source, tmp_path):
    dst = tmp_path / "dst"
    stale = dst / "walk" / f".clean.mp4{PARTIAL_MARK}killed"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    assert prepare(source, dst) == 0
    assert hidden_files(dst) == []
