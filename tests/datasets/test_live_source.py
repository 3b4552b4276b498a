"""Live sources of --predict: what counts as live, and `--predict`'s value kept as given for URLs and stdin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datasets.live_source import is_live_source, source_kind
from opts import parse_opts


@pytest.mark.parametrize("source", ["rtsp://10.0.0.2:554/stream1", "http://127.0.0.1:8080", "https://cam/x.m3u8",
                                    "udp://@239.0.0.1:1234", "srt://host:9000?mode=caller", "-"])
def test_urls_and_stdin_are_live(source):
    assert is_live_source(source)


def test_fifos_and_character_devices_are_live_files_and_folders_are_not(tmp_path):
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0")
    assert source_kind(fifo) == "fifo"
    assert source_kind(Path("/dev/null")) == "device"  # as a V4L2 camera is
    assert not is_live_source(video) and not is_live_source(tmp_path) and not is_live_source(tmp_path / "missing")
    assert not is_live_source("C:/videos/clip.mp4") and not is_live_source("videos/rtsp:/x")


def test_predict_keeps_a_url_as_text_and_does_not_root_it(tmp_path):
    opt = parse_opts(["--predict", "rtsp://cam:554/live", "--resume_path", "c.pth", "--root_path", str(tmp_path)])
    assert opt.predict == "rtsp://cam:554/live"  # a Path would fold '//' and be joined onto --root_path
    assert opt.resume_path == tmp_path / "c.pth"
    assert parse_opts(["--predict", "-", "--resume_path", "c.pth"]).predict == "-"
    assert parse_opts(["--predict", "v.mp4", "--resume_path", "c.pth", "--root_path", str(tmp_path)]).predict == \
        tmp_path / "v.mp4"


@pytest.mark.parametrize("flags, message", [
    (["--live_stall_seconds", "0"], "--live_stall_seconds must be > 0"),
    (["--live_reconnect", "-2"], "--live_reconnect must be >= -1"),
])
def test_live_flag_bounds(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_opts(["--predict", "-", "--resume_path", "c.pth", *flags])
    assert message in capsys.readouterr().err


def test_live_output_needs_predict(capsys, tmp_path):
    with pytest.raises(SystemExit):
        parse_opts(["--result_path", str(tmp_path), "--live_output", "x.jsonl"])
    assert "--live_output needs --predict" in capsys.readouterr().err
