"""`main.py --predict` on live sources: stdin, a FIFO whose writer pauses and comes back, an HTTP server that is
killed and restarted; the bounded queue's drop policy and the sliding window. The streams last a few seconds and the
model is tiny; what is checked is structure (lines, fields, counts, exit status, files), never timing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from datasets.live_source import LiveFrame
from predict.live import ChunkQueue, _Chunk, _Clip, _Window
from tests.conftest import ROOT, run_main

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary (a live stream)")
LINE_FIELDS = {"source", "segment", "frames", "result", "latency_s", "dropped_segments", "reconnects"}
STREAM = ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=20", "-c:v", "libx264", "-preset", "ultrafast",
          "-tune", "zerolatency", "-g", "10", "-f", "mpegts"]


def _clip(k: int) -> _Clip:
    return _Clip(k, k, 0.0, 0.0, 0.0, 1, [])


def test_a_full_queue_drops_its_oldest_segment_with_its_frames():
    queue = ChunkQueue(capacity=2)
    for k in range(5):
        queue.put(_Chunk([(k, 0.0, None)] * 3, _clip(k)))
    assert (queue.dropped_segments, queue.dropped_frames) == (3, 9)
    assert [c.clip.first for c in queue.take(max_clips=8, timeout=0)] == [3, 4]  # the newest, in order
    assert queue.take(max_clips=8, timeout=0) == []
    queue.close()
    assert queue.take(max_clips=8, timeout=0) is None


def test_the_window_cuts_a_clip_every_stride_kept_frames():
    window = _Window(size=4, t_stride=2, stride=2)
    clips = []
    for n in range(20):
        views = [np.full((2, 2, 3), n, np.uint8)] if window.wants() else None
        clip = window.add(LiveFrame(n, n / 10, float(n), None, 1), views)
        if clip is not None:
            clips.append(clip)
    # kept frames 0, 2, 4, ...; clips of 4 kept frames, one every 2 kept frames
    assert [(c.first, c.last) for c in clips] == [(0, 6), (4, 10), (8, 14), (12, 18)]
    assert clips[0].views[0][:, 0, 0, 0].tolist() == [0, 2, 4, 6]
    assert clips[0].end_s == pytest.approx(0.8)  # the last frame's time + the gap between kept frames


def _predict(checkpoint: Path, source: str, out: Path, *extra: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "main.py", "--predict", source, "--resume_path", str(checkpoint), "--result_path",
           str(out), "--no_cuda", "--inference_batch_size", "2", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen)


def _lines(text: str) -> list[dict]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    for line in lines:
        assert set(line) == LINE_FIELDS
        assert line["segment"][0] <= line["segment"][1] and line["frames"][0] <= line["frames"][1]
        assert line["result"] and {"label", "score"} <= set(line["result"][0]) and line["latency_s"] >= 0
    assert [line["frames"][1] for line in lines] == sorted(line["frames"][1] for line in lines)
    return lines


def _live_entry(out: Path) -> tuple[dict, dict]:
    data = json.loads((out / "predictions.json").read_text())
    (entry,) = data["results"].values()
    return data, entry


def test_stdin_mpegts_pipe(checkpoint, tmp_path):
    """`ffmpeg ... -f mpegts - | main.py --predict -`: one JSON line per segment on stdout (nothing else there),
    and the run's predictions.json/.csv/.html when the pipe ends."""
    ffmpeg = subprocess.Popen(["ffmpeg", "-v", "error", "-re", *STREAM[:3], STREAM[3] + ":duration=2", *STREAM[4:],
                               "-"], stdout=subprocess.PIPE)
    run = _predict(checkpoint, "-", tmp_path / "out", "--save_features", stdin=ffmpeg.stdout)
    ffmpeg.stdout.close()
    stdout, stderr = run.communicate(timeout=120)
    ffmpeg.wait()
    assert run.returncode == 0, stderr
    lines = _lines(stdout)
    assert lines and all(line["source"] == "-" for line in lines)
    assert "stream ended: standard input ended" in stderr and "latency median" in stderr
    data, entry = _live_entry(tmp_path / "out")
    assert data["complete"] is True
    assert len(entry["segments"]) == len(lines) and entry["result"]
    assert set(entry["live"]) >= {"dropped_segments", "dropped_frames", "reconnects", "latency_s"}
    assert entry["live"]["latency_s"]["n"] == len(lines)
    for name in ("predictions.csv", "predictions.html", "features.h5"):
        assert (tmp_path / "out" / name).is_file()


def _wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def test_fifo_writer_that_pauses_and_a_new_writer_then_sigterm(checkpoint, tmp_path):
    """A FIFO: the writer pauses longer than --live_stall_seconds (a stall, waited out on the same pipe: labels go
    on), closes it, and a second writer comes (the FIFO is opened again: a reconnection). SIGTERM then stops the
    run cleanly: exit status 143, every line whole, predictions.json marked incomplete, the annotated video
    finished."""
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    chunks = subprocess.run(["ffmpeg", "-v", "error", *STREAM[:3], STREAM[3] + ":duration=2", *STREAM[4:], "-"],
                            capture_output=True, check=True).stdout
    log = tmp_path / "segments.jsonl"
    run = _predict(checkpoint, str(fifo), tmp_path / "out", "--live_output", str(log), "--live_stall_seconds",
                   "0.3", "--output_video")

    def segments() -> list[dict]:
        return _lines(log.read_text()) if log.is_file() else []

    def write(data: bytes) -> None:
        with open(fifo, "wb") as pipe:  # blocks until the predictor opens its end
            half = len(data) // 2
            pipe.write(data[:half])
            pipe.flush()
            _wait_for(lambda: segments())
            time.sleep(2.0)  # the pause: no frame for much longer than --live_stall_seconds
            pipe.write(data[half:])

    writer = threading.Thread(target=write, args=(chunks,))
    writer.start()
    writer.join(timeout=90)
    _wait_for(lambda: segments() and segments()[-1]["frames"][1] > 30)  # labels after the pause
    first_run = len(segments())
    threading.Thread(target=lambda: open(fifo, "wb").write(chunks), daemon=True).start()  # the second writer
    _wait_for(lambda: any(line["reconnects"] >= 1 for line in segments()))
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM, stderr
    lines = segments()
    assert len(lines) > first_run
    assert "no frame for" in stderr and "live: stopped by SIGTERM;" in stderr
    data, entry = _live_entry(tmp_path / "out")
    assert data["complete"] is False and len(entry["segments"]) == len(lines)
    assert entry["live"]["reconnects"] >= 1 and "SIGTERM" in entry["live"]["stopped"]
    assert "partial" in (tmp_path / "out" / "predictions.html").read_text().lower()
    (video,) = (tmp_path / "out" / "annotated").glob("*.mp4")
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_server(port: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(["ffmpeg", "-v", "error", "-re", *STREAM[:3], f"{STREAM[3]}:duration={seconds}",
                             *STREAM[4:], "-listen", "1", f"http://127.0.0.1:{port}"])


def test_http_server_killed_and_restarted_on_the_same_port(checkpoint, tmp_path):
    """The server dies mid-stream: the predictor reconnects to the new one on the same port and labels go on; when
    that one ends and nobody answers --live_reconnect times, the run ends with complete results (exit 0)."""
    port = _free_port()
    server = _http_server(port, 30)
    log = tmp_path / "segments.jsonl"
    run = _predict(checkpoint, f"http://127.0.0.1:{port}", tmp_path / "out", "--live_output", str(log),
                   "--live_reconnect", "3", "--live_stall_seconds", "2")  # 3.5 s for the new server to listen
    try:
        _wait_for(lambda: log.is_file() and _lines(log.read_text()))
        server.kill()
        server.wait()
        server = _http_server(port, 2)
        stdout, stderr = run.communicate(timeout=90)
    finally:
        server.kill()
        run.kill()
    assert run.returncode == 0, stderr
    lines = _lines(log.read_text())
    assert lines[0]["reconnects"] == 0 and lines[-1]["reconnects"] == 1
    assert "reconnected to" in stdout and "gave up after 3 reconnection attempt(s)" in stdout  # the log: stdout
    data, entry = _live_entry(tmp_path / "out")
    assert data["complete"] is True and entry["live"]["reconnects"] == 1 and "reconnected 1 times" in entry["problems"]


def test_a_source_that_never_answers_and_whole_video_views_are_one_line_errors(checkpoint, tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"  # nobody listens
    base = ["--predict", url, "--resume_path", checkpoint, "--result_path", tmp_path / "out", "--no_cuda"]
    nothing = run_main([*base, "--live_reconnect", "0"], timeout=120)
    assert nothing.returncode == 2 and nothing.stderr.strip().splitlines()[-1].startswith(f"error: no frame came "
                                                                                          f"from {url}")
    clips = run_main([*base, "--inference_n_clips", "3"], timeout=120)
    assert clips.returncode == 2 and "error: live --predict cuts sliding windows" in clips.stderr
    assert "Traceback" not in nothing.stderr + clips.stderr
