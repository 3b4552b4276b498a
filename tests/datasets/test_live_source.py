"""Live sources of --predict: what counts as live, and `--predict`'s value kept as given for URLs and stdin."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from datasets.live_source import LiveStream, is_live_source, source_kind
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


class _SilentThenWholeServer:
    """An HTTP server of MPEG-TS: the first client gets half the stream and then silence (the connection stays
    open), the second the whole stream; then it stops listening."""

    HEADER = b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n\r\n"

    def __init__(self, data: bytes):
        self.data = data
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        silent, _ = self.sock.accept()
        silent.sendall(self.HEADER + self.data[: len(self.data) // 2])
        whole, _ = self.sock.accept()
        whole.sendall(self.HEADER + self.data)
        whole.close()
        self.sock.close()
        silent.close()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary (an MPEG-TS stream)")
def test_a_stalled_connection_is_dropped_after_the_stall_time_and_reconnected():
    data = subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=20:duration=2",
                           "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-f", "mpegts", "-"],
                          capture_output=True, check=True).stdout
    server = _SilentThenWholeServer(data)
    stream = LiveStream(server.url, stall_s=0.5, reconnect=1)
    frames = list(stream)
    assert {f.connection for f in frames} == {1, 2} and stream.state.reconnects == 1
    assert stream.state.losses[0] != "end of stream"  # the first connection timed out: it never ended
    assert "gave up after 1 reconnection attempt(s)" in stream.state.ended
    times = [f.seconds for f in frames]
    assert times == sorted(times) and [f.number for f in frames] == list(range(len(frames)))
    second = [f for f in frames if f.connection == 2]
    assert len(second) == 40 and second[0].seconds >= max(f.seconds for f in frames if f.connection == 1)
