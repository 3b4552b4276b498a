"""generate_video_jpgs / generate_video_hdf5 on tiny synthetic videos (and real footage if available)."""

import io
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
from PIL import Image

from tests.support import REPO, real_footage, run_tool
from util_scripts import common, generate_video_hdf5, generate_video_jpgs
from util_scripts.common import scaled_size


def write_video(path: Path, *, width=64, height=48, n_frames=12, rate=25, codec="mpeg4") -> Path:
    """A small real compressed video of random frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n_frames + width)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(n_frames):
            frame = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def frame_files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def expected_names(n: int) -> list[str]:
    return [f"image_{i:05d}.jpg" for i in range(1, n + 1)]


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


@pytest.fixture
def ucf_videos(tmp_path):
    src = tmp_path / "videos"
    write_video(src / "Jump" / "v_Jump_g01_c01.avi", n_frames=12)
    write_video(src / "Jump" / "v_Jump_g01_c02.avi", width=48, height=64, n_frames=10)
    write_video(src / "Run" / "v_Run_g01_c01.avi", width=66, height=48, n_frames=11)
    (src / "Run" / "notes.txt").write_text("not a video")
    write_video(src / "Run" / ".hidden.avi", n_frames=3)
    return src


@pytest.mark.parametrize(
    "width, height, size, expected",
    [
        (1280, 720, 240, (427, 240)),  # 426.67 -> 427
        (720, 1280, 240, (240, 427)),
        (64, 64, 32, (32, 32)),  # square: width gets the size
        (150, 100, 41, (62, 41)),  # 61.5 -> 62: halves round up like ffmpeg's av_rescale
        (66, 48, 24, (33, 24)),
    ],
)
def test_scaled_size_keeps_aspect_with_ffmpeg_rounding(width, height, size, expected):
    assert scaled_size(width, height, size) == expected


def test_jpgs_ucf101_layout_counts_and_sizes(ucf_videos, tmp_path, capsys):
    dst = tmp_path / "jpg"
    code = generate_video_jpgs.main([str(ucf_videos), str(dst), "ucf101", "--size", "24", "--n_jobs", "1"])
    assert code == 0
    assert sorted(os.listdir(dst)) == ["Jump", "Run"]
    assert sorted(os.listdir(dst / "Jump")) == ["v_Jump_g01_c01", "v_Jump_g01_c02"]
    assert sorted(os.listdir(dst / "Run")) == ["v_Run_g01_c01"]  # .txt and hidden files ignored
    for rel, n_frames, size in [
        ("Jump/v_Jump_g01_c01", 12, (32, 24)),
        ("Jump/v_Jump_g01_c02", 10, (24, 32)),
        ("Run/v_Run_g01_c01", 11, (33, 24)),
    ]:
        assert frame_files(dst / rel) == expected_names(n_frames)
        for name in expected_names(n_frames):
            assert image_size(dst / rel / name) == size
    assert "3 converted, 0 already complete (skipped), 0 failed, of 3 videos" in capsys.readouterr().out


def test_jpgs_fps_resampling_selects_frames_like_ffmpeg_fps_filter(tmp_path):
    # 20 frames at 25 fps = 0.8 s; fps=10 gives 8 frames (checked against ffmpeg -vf fps=10).
    write_video(tmp_path / "src" / "a" / "clip.mp4", n_frames=20)
    generate_video_jpgs.main([str(tmp_path / "src"), str(tmp_path / "dst"), "kinetics", "--fps", "10", "--n_jobs", "1"])
    assert frame_files(tmp_path / "dst" / "a" / "clip") == expected_names(8)


def test_jpgs_activitynet_flat_layout_in_two_processes(tmp_path):
    src = tmp_path / "src"
    write_video(src / "v_abc.mp4", n_frames=6)
    write_video(src / "v_xyz.mp4", n_frames=7, rate=Fraction(30000, 1001))
    write_video(src / "skip.avi", n_frames=3)
    code = generate_video_jpgs.main([str(src), str(tmp_path / "dst"), "activitynet", "--size", "-1", "--n_jobs", "2"])
    assert code == 0
    assert sorted(os.listdir(tmp_path / "dst")) == ["v_abc", "v_xyz"]
    assert frame_files(tmp_path / "dst" / "v_xyz") == expected_names(7)
    assert image_size(tmp_path / "dst" / "v_abc" / "image_00001.jpg") == (64, 48)  # --size -1 keeps the size


def test_jpgs_rerun_converts_only_what_is_missing(ucf_videos, tmp_path, capsys):
    dst = tmp_path / "jpg"
    argv = [str(ucf_videos), str(dst), "ucf101", "--size", "24", "--n_jobs", "1"]
    generate_video_jpgs.main(argv)
    kept = dst / "Jump" / "v_Jump_g01_c01" / "image_00001.jpg"
    os.utime(kept, (1, 1))
    # An interrupted earlier run: one video gone, a stale half-written folder, an empty output folder.
    redo = dst / "Run" / "v_Run_g01_c01"
    for f in redo.iterdir():
        f.unlink()
    stale = dst / "Run" / f".v_Run_g01_c01{common.PARTIAL_MARK}old"
    stale.mkdir()
    (stale / "image_00001.jpg").write_bytes(b"truncated")
    capsys.readouterr()
    assert generate_video_jpgs.main(argv) == 0
    assert "1 converted, 2 already complete (skipped), 0 failed" in capsys.readouterr().out
    assert os.stat(kept).st_mtime == 1  # untouched
    assert frame_files(redo) == expected_names(11)
    assert sorted(os.listdir(dst / "Run")) == ["v_Run_g01_c01"]  # stale partial removed


def test_jpgs_interrupted_video_leaves_no_folder(ucf_videos, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_encode = common.encode_jpeg

    def failing_encode(image, quality):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a video
        return real_encode(image, quality)

    monkeypatch.setattr(generate_video_jpgs, "encode_jpeg", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        generate_video_jpgs.main([str(ucf_videos), str(tmp_path / "jpg"), "ucf101", "--size", "24", "--n_jobs", "1"])
    assert os.listdir(tmp_path / "jpg" / "Jump") == []  # neither a final nor a partial folder


def _partial_with_frames(folder: Path) -> bool:
    """Whether a video's temporary folder in ``folder`` holds frames yet (it may vanish while we look)."""
    try:
        return any(common.PARTIAL_MARK in entry.name and any(os.scandir(entry)) for entry in os.scandir(folder))
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("n_jobs", ["1", "2"])
def test_jpgs_ctrl_c_stops_the_workers_keeps_only_complete_videos_and_says_so(tmp_path, n_jobs):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for k in range(4):  # long enough that a busy machine still sees a video half-written
        write_video(src / "walk" / f"v{k}.mp4", width=96, height=64, n_frames=400)
    command = [sys.executable, "-m", "util_scripts.generate_video_jpgs", str(src), str(dst), "kinetics", "--size", "-1",
               "--n_jobs", n_jobs]
    # Its own process group, so that the signal reaches every process, as Ctrl-C in a terminal does.
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not _partial_with_frames(dst / "walk") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # in the middle of a video
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped after ") and " of 4 videos (" in last, err
    assert last.endswith("; rerun the same command to convert the rest (finished videos are skipped)"), last
    assert not [p for p in dst.rglob("*") if common.PARTIAL_MARK in p.name]  # no half-written folder left
    folders = sorted(os.listdir(dst / "walk"))
    assert len(folders) < 4  # it did stop early
    assert all(frame_files(dst / "walk" / name) == expected_names(400) for name in folders)  # the rest are complete
    assert run_tool("generate_video_jpgs", src, dst, "kinetics", "--size", "-1").returncode == 0  # a rerun finishes
    assert all(frame_files(dst / "walk" / f"v{k}") == expected_names(400) for k in range(4))


def test_jpgs_unreadable_video_is_reported_and_others_converted(ucf_videos, tmp_path, capsys):
    (ucf_videos / "Jump" / "v_Jump_g02_c01.avi").write_bytes(b"RIFF\x00\x00not really a video" * 10)
    dst = tmp_path / "jpg"
    code = generate_video_jpgs.main([str(ucf_videos), str(dst), "ucf101", "--size", "24", "--n_jobs", "1"])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 converted" not in captured.out and "3 converted, 0 already complete (skipped), 1 failed" in captured.out
    assert "v_Jump_g02_c01.avi" in captured.err
    assert sorted(os.listdir(dst / "Jump")) == ["v_Jump_g01_c01", "v_Jump_g01_c02"]
    assert frame_files(dst / "Run" / "v_Run_g01_c01") == expected_names(11)


def test_hdf5_files_hold_jpeg_bytes_and_are_skipped_on_rerun(ucf_videos, tmp_path, capsys):
    dst = tmp_path / "hdf5"
    argv = [str(ucf_videos), str(dst), "ucf101", "--size", "24", "--n_jobs", "1"]
    assert generate_video_hdf5.main(argv) == 0
    assert sorted(os.listdir(dst / "Jump")) == ["v_Jump_g01_c01.hdf5", "v_Jump_g01_c02.hdf5"]
    assert sorted(os.listdir(dst / "Run")) == ["v_Run_g01_c01.hdf5"]
    with h5py.File(dst / "Jump" / "v_Jump_g01_c02.hdf5", "r") as f:
        assert list(f.keys()) == ["video"]
        video = f["video"]
        assert video.shape == (10,)
        assert h5py.check_vlen_dtype(video.dtype) == np.dtype("uint8")
        for element in video:
            assert bytes(element[:2]) == b"\xff\xd8"  # a complete JPEG file
            assert Image.open(io.BytesIO(element.tobytes())).size == (24, 32)
    target = dst / "Run" / "v_Run_g01_c01.hdf5"
    os.utime(target, (1, 1))
    capsys.readouterr()
    assert generate_video_hdf5.main(argv) == 0
    assert "0 converted, 3 already complete (skipped)" in capsys.readouterr().out
    assert os.stat(target).st_mtime == 1


def test_hdf5_unreadable_video_reported(tmp_path, capsys):
    src = tmp_path / "src"
    write_video(src / "a" / "good.mp4", n_frames=5)
    (src / "a" / "bad.mp4").write_bytes(b"\x00" * 100)
    code = generate_video_hdf5.main([str(src), str(tmp_path / "dst"), "kinetics", "--n_jobs", "1"])
    assert code == 1
    assert "bad.mp4" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "dst" / "a")) == ["good.hdf5"]


def test_cli_reports_user_errors_in_one_line(tmp_path):
    result = run_tool("generate_video_jpgs", tmp_path / "nope", tmp_path, "ucf101")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: video folder not found: {tmp_path / 'nope'}"
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(common.UserError, match="no .avi videos found"):
        generate_video_jpgs.main([str(tmp_path / "empty"), str(tmp_path / "out"), "ucf101"])


def test_videos_of_another_extension_are_named_and_converted_when_asked(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "jpg"
    write_video(src / "a" / "x.mp4", n_frames=3)
    write_video(src / "a" / "y.webm", n_frames=4, codec="libvpx")
    write_video(src / "b" / "z.MKV", n_frames=5)
    (src / "b" / "notes.txt").write_text("not a video")
    result = run_tool("generate_video_jpgs", src, dst, "kinetics", "--n_jobs", 1)
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(dst).as_posix() for p in dst.glob("*/*")) == ["a/x"]
    assert (f"warning: 2 video files in {src} are not .mp4 and are not converted (1 .mkv, 1 .webm; e.g. "
            f"{src / 'a' / 'y.webm'}): to convert them too, give --video_extensions .mp4 .mkv .webm") in result.stderr

    result = run_tool("generate_video_hdf5", src, tmp_path / "h5", "kinetics", "--n_jobs", 1,
                      "--video_extensions", ".mp4", "MKV", ".webm")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr and "3 converted" in result.stdout
    assert sorted(p.relative_to(tmp_path / "h5").as_posix() for p in (tmp_path / "h5").glob("*/*")) == [
        "a/x.hdf5", "a/y.hdf5", "b/z.hdf5"]
    with h5py.File(tmp_path / "h5" / "a" / "y.hdf5") as f:
        assert len(f["video"]) == 4


def test_two_videos_of_one_name_are_refused(tmp_path):
    src = tmp_path / "src"
    write_video(src / "a" / "x.mp4", n_frames=3)
    write_video(src / "a" / "x.mkv", n_frames=3)
    with pytest.raises(common.UserError, match=r"a/x.mkv and .*a/x.mp4 would both become a/x: keep one of them"):
        generate_video_jpgs.main([str(src), str(tmp_path / "dst"), "kinetics", "--video_extensions", "mp4", "mkv"])
    write_video(src / "b" / "only.mkv", n_frames=3)
    (src / "a" / "x.mp4").unlink()
    (src / "a" / "x.mkv").unlink()
    with pytest.raises(common.UserError, match=r"no .mp4 videos found .*; found 1 .mkv: add --video_extensions "
                                               r"\.mp4 \.mkv\)"):
        generate_video_jpgs.main([str(src), str(tmp_path / "dst"), "kinetics"])


def test_real_footage_frame_count_and_short_side(tmp_path):
    bikes = real_footage()
    src = tmp_path / "src" / "ride"
    src.mkdir(parents=True)
    os.symlink(bikes, src / "bikes.mp4")
    dst = tmp_path / "dst"
    assert generate_video_jpgs.main([str(tmp_path / "src"), str(dst), "kinetics", "--size", "48", "--n_jobs", "1"]) == 0
    # bikes.mp4: 640x272, 250 frames at 25 fps; ffmpeg -vf scale=-1:48 gives 250 frames of 113x48 (checked).
    names = frame_files(dst / "ride" / "bikes")
    assert names == expected_names(250)
    for name in (names[0], names[-1]):
        assert image_size(dst / "ride" / "bikes" / name) == (113, 48)


def test_outputs_get_normal_permissions(tmp_path):
    write_video(tmp_path / "src" / "a" / "clip.mp4", n_frames=3)
    generate_video_jpgs.main([str(tmp_path / "src"), str(tmp_path / "jpg"), "kinetics", "--n_jobs", "1"])
    generate_video_hdf5.main([str(tmp_path / "src"), str(tmp_path / "h5"), "kinetics", "--n_jobs", "1"])
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "jpg" / "a" / "clip").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "h5" / "a" / "clip.hdf5").stat().st_mode & 0o777 == 0o666 & ~mask
