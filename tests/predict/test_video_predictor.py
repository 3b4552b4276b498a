"""`main.py --predict` on awkward videos (rotated, damaged, truncated, variable frame rate, no video stream),
bounded memory on long videos, incremental results, Ctrl-C and reruns, listeners."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import main
from checkpoint import load_checkpoint
from datasets.video_files import probe_video, upright_array
from opts import parse_opts
from predict import runner as predict
from tests.conftest import ROOT, run_main
from tests.predict.conftest import CLASSES
from tests.video_corpus import DUP_PTS_FRAMES, N_FRAMES, make_corpus, make_timestamp_corpus

OPENCV_DATA = [Path(os.environ.get("OPENCV_DOC_DATA", "/nonexistent")), Path("/usr/share/doc/opencv-doc/examples/data")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def corpus_predictions(corpus, checkpoint, tmp_path_factory):  # noqa: F811
    """One run over the whole corpus folder: 8-frame windows every 8 frames, all classes."""
    out = tmp_path_factory.mktemp("corpus_predictions")
    code = main.main([str(a) for a in ["--predict", corpus.root, "--resume_path", checkpoint, "--result_path", out,
                                       "--n_threads", 1, "--output_topk", 0]])
    assert code == 0
    return json.loads((out / "predictions.json").read_text())


def _scores(top: list[dict]) -> dict[str, float]:
    return {t["label"]: t["score"] for t in top}


def test_rotated_video_is_predicted_like_the_upright_one(corpus, corpus_predictions):
    results = corpus_predictions["results"]
    rotated, upright = results[str(corpus.rotated)], results[str(corpus.upright)]
    assert rotated["problems"] == ["rotated 90"] and upright["problems"] == []
    assert [s["segment"] for s in rotated["segments"]] == [s["segment"] for s in upright["segments"]]
    for a, b in zip([rotated, *rotated["segments"]], [upright, *upright["segments"]]):
        sa, sb = _scores(a["result"]), _scores(b["result"])
        assert all(abs(sa[c] - sb[c]) < 0.02 for c in CLASSES)  # two encodings of one picture: noise only


def test_corrupt_middle_keeps_the_clean_scores_before_the_damage(corpus, corpus_predictions):
    results = corpus_predictions["results"]
    clean, corrupt = results[str(corpus.clean)], results[str(corpus.corrupt)]
    # The garbage hits the group of pictures of frames 16-23: windows 0-7 and 8-15 decode exactly as before.
    assert [s["segment"] for s in corrupt["segments"]] == [s["segment"] for s in clean["segments"]]
    assert corrupt["segments"][:2] == clean["segments"][:2]
    assert corrupt["segments"][2] != clean["segments"][2]
    problems = corrupt["problems"]
    assert len(problems) == 1 and problems[0].startswith("damaged: ") and "frames could not be decoded" in problems[0]
    lost = int(problems[0].split()[1])
    assert corrupt["n_decoded_frames"] == 30 - lost and corrupt["decoded_seconds"] == pytest.approx(3.0 - lost / 10)
    assert corrupt["duration_seconds"] == pytest.approx(3.0)
    assert clean["problems"] == [] and clean["decoded_seconds"] == pytest.approx(3.0)


def test_truncated_video_reports_what_was_decoded(corpus, corpus_predictions):
    entry = corpus_predictions["results"][str(corpus.truncated)]
    assert entry["duration_seconds"] == pytest.approx(3.0)  # what the container announces
    # Frames 0-8 decode; the container's table has one more frame, at 1.0 s, whose data is cut off: frame 8 is
    # shown until then.
    assert entry["n_decoded_frames"] == 9 and entry["decoded_seconds"] == pytest.approx(1.0)
    assert "truncated: decoded 1.0 of 3.0 s" in entry["problems"]
    # Only segments with decoded frames are labelled, and they stop where the decoded frames stop; the last window
    # ends at the container's last frame (frames 2-9; 9 is taken from 8, the nearest decoded one).
    assert [s["segment"] for s in entry["segments"]] == [[0.0, 0.8], [0.2, 1.0]]


def test_variable_frame_rate_segments_have_true_times(corpus, corpus_predictions):
    entry = corpus_predictions["results"][str(corpus.vfr)]
    meta = probe_video(corpus.vfr)
    # 30 frames, 8-frame windows: the last one ends at the last frame (frames 22-29)
    expected = [[round(meta.frame_time(s), 3), round(meta.frame_time(s + 8) if s + 8 < 30 else meta.duration, 3)]
                for s in (0, 8, 16, 22)]
    assert [s["segment"] for s in entry["segments"]] == expected
    assert expected[1][0] == pytest.approx(0.533)  # frame 8 is shown at 0.533 s, not at 8 / average fps
    assert "variable frame rate" in entry["problems"]


def test_timestamps_that_cannot_number_frames_lose_no_frame(checkpoint, tmp_path):  # noqa: F811
    odd = {name: path for name, path in make_timestamp_corpus(tmp_path / "odd").items()
           if path.suffix in (".mp4", ".mkv", ".avi")}  # the files a folder given to --predict lists
    out = tmp_path / "out"
    code = main.main([str(a) for a in ["--predict", tmp_path / "odd", "--resume_path", checkpoint, "--result_path",
                                       out, "--n_threads", 4, "--output_topk", 0]])  # several decoder threads
    assert code == 0
    results = json.loads((out / "predictions.json").read_text())["results"]
    assert sorted(results) == sorted(str(p) for p in odd.values())
    decoded = {name: results[str(path)]["n_decoded_frames"] for name, path in odd.items()}
    expected = {"dup_pts.mp4": DUP_PTS_FRAMES, "dup_pts.mkv": DUP_PTS_FRAMES, "dup_pts_tb30.mp4": DUP_PTS_FRAMES,
                "gaps.mp4": N_FRAMES, "b_frames.avi": N_FRAMES, "clock_restart.mkv": N_FRAMES, "truncated.mp4": 9}
    assert decoded == {name: expected[name] for name in odd}
    for name in set(odd) & {"dup_pts.mp4", "dup_pts.mkv"}:
        entry = results[str(odd[name])]
        meta = probe_video(odd[name])
        assert [s["segment"][0] for s in entry["segments"]] == [round(meta.frame_time(k), 3) for k in (0, 8, 16, 24)]
        assert "variable frame rate" in entry["problems"]


def test_inputs_without_video_are_listed_not_predicted(corpus, corpus_predictions, checkpoint, tmp_path,  # noqa: F811
                                                       capsys):
    assert corpus_predictions["unusable"] == {str(corpus.audio_only): "no video stream"}
    assert corpus_predictions["complete"] is True and str(corpus.audio_only) not in corpus_predictions["results"]
    code = main.main(["--predict", str(corpus.audio_only), "--resume_path", str(checkpoint), "--result_path",
                      str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "error: none of the 1 video(s) could be used (no video stream)" in err
    assert "Traceback" not in err


def test_csv_has_the_new_columns_at_the_end(corpus, corpus_predictions, checkpoint, tmp_path):  # noqa: F811
    code = main.main([str(a) for a in ["--predict", corpus.truncated, "--resume_path", checkpoint, "--result_path",
                                       tmp_path, "--n_threads", 1, "--output_topk", 1]])
    assert code == 0
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0] == "video,scope,start_s,end_s,rank,label,score,decoded_seconds,duration_seconds,problems"
    assert lines[1].split(",")[7:9] == ["1.0", "3.0"] and "truncated: decoded 1.0 of 3.0 s" in lines[1]


def test_results_do_not_depend_on_the_batch_size(corpus, corpus_predictions, checkpoint, tmp_path):  # noqa: F811
    code = main.main([str(a) for a in ["--predict", corpus.corrupt, "--resume_path", checkpoint, "--result_path",
                                       tmp_path, "--n_threads", 1, "--output_topk", 0, "--inference_batch_size", 1]])
    assert code == 0
    one = json.loads((tmp_path / "predictions.json").read_text())["results"][str(corpus.corrupt)]
    full = corpus_predictions["results"][str(corpus.corrupt)]
    for a, b in zip([one, *one["segments"]], [full, *full["segments"]]):
        sa, sb = _scores(a["result"]), _scores(b["result"])
        assert all(abs(sa[c] - sb[c]) < 1e-5 for c in CLASSES)


def test_output_problems_are_found_before_any_work(corpus, checkpoint, tmp_path, capsys):  # noqa: F811
    taken = tmp_path / "a_file"
    taken.write_text("x")
    assert main.main(["--predict", str(corpus.clean), "--resume_path", str(checkpoint), "--result_path",
                      str(taken)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    # A directory that cannot be made (root can write anywhere else): under a file.
    assert main.main(["--predict", str(corpus.clean), "--resume_path", str(checkpoint), "--result_path",
                      str(taken / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not writable" in err and "Traceback" not in err


def test_predict_path_is_joined_to_root_path(corpus, checkpoint, tmp_path):  # noqa: F811
    code = main.main(["--root_path", str(corpus.root), "--predict", corpus.short.name, "--resume_path",
                      str(checkpoint), "--result_path", str(tmp_path / "out"), "--n_threads", "0"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())["results"]
    assert list(results) == [str(corpus.short)]


class Recorder:
    """A listener that keeps what it is told."""

    wants_features = True

    def __init__(self):
        self.calls: list[str] = []
        self.frames: list[tuple[int, float, tuple]] = []
        self.segments: list[tuple] = []

    def start_video(self, video):
        self.calls.append(f"start {Path(video.path).name}")

    def frame(self, number, seconds, frame):
        self.frames.append((number, seconds, upright_array(frame).shape))

    def segment(self, start_s, end_s, topk, scores, features):
        self.segments.append((start_s, end_s, topk, scores, features))

    def finish_video(self, result):
        self.calls.append(f"finish {result.usable} {result.problems()}")


def test_listeners_see_every_frame_segment_and_feature(corpus, checkpoint, tmp_path):  # noqa: F811

    opt = parse_opts(["--predict", str(corpus.rotated), "--resume_path", str(checkpoint), "--result_path",
                      str(tmp_path), "--n_threads", "1", "--output_topk", "2", "--inference_batch_size", "3"])
    recorder = Recorder()
    assert isinstance(opt, argparse.Namespace) and predict.run(opt, listeners=[recorder]) == 0
    assert recorder.calls == ["start rotated.mp4", "finish True ['rotated 90']"]
    meta = probe_video(corpus.rotated)
    assert [f[0] for f in recorder.frames] == list(range(30))
    assert [f[1] for f in recorder.frames] == [meta.frame_time(i) for i in range(30)]
    assert all(f[2] == (64, 48, 3) for f in recorder.frames)  # full size, upright (portrait)
    entry = json.loads((tmp_path / "predictions.json").read_text())["results"][str(corpus.rotated)]
    assert [[s[0], s[1]] for s in recorder.segments] == [s["segment"] for s in entry["segments"]]
    for (_, _, top, scores, features), seg in zip(recorder.segments, entry["segments"]):
        assert [t["label"] for t in top] == [t["label"] for t in seg["result"]]
        assert scores.shape == (3,) and float(scores.sum()) == pytest.approx(1.0, abs=1e-5)
        assert features is not None and features.dim() == 1 and features.numel() > 3
    assert not torch.equal(recorder.segments[0][4], recorder.segments[1][4])


class FrameKeeper(Recorder):
    """A Recorder that keeps every frame's pixels too."""

    def frame(self, number, seconds, frame):
        self.frames.append((number, seconds, upright_array(frame)))


def _predictor(checkpoint: Path, out: Path, *extra: str):  # noqa: F811
    """The predictor `main.py --predict` builds (batches of 2 clips, several decoder threads), on the CPU."""
    opt = parse_opts(["--predict", ".", "--resume_path", str(checkpoint), "--result_path", str(out), "--n_threads", "3",
                      "--inference_batch_size", "2", *extra])
    payload = load_checkpoint(checkpoint)
    spec = predict.checkpoint_clip_spec(opt, payload, checkpoint)
    net, names = predict.load_predictor(opt, payload, checkpoint, spec)
    return predict.build_predictor(net, opt, spec, class_names=names, topk=3, device=torch.device("cpu"))


def _told(predictor, video: Path, frames_ahead: int | None) -> tuple[FrameKeeper, dict]:
    predictor.frames_ahead = frames_ahead
    keeper = FrameKeeper()
    [info], _ = predict.probe_inputs([video])
    result = predictor.predict(info, [keeper])
    return keeper, predict.result_entry(result, 3)


@pytest.mark.parametrize("name", ["clean", "corrupt", "truncated", "vfr", "rotated", "720p"])
def test_decoding_ahead_of_the_model_gives_the_same_frames_and_scores(name, corpus, long_videos, checkpoint,
                                                                     tmp_path):  # noqa: F811
    video = long_videos / "a_short.mp4" if name == "720p" else getattr(corpus, name)  # 720p: scaled by swscale
    predictor = _predictor(checkpoint, tmp_path)
    assert predictor.threads == 3  # on the CPU: --n_threads decoder threads, as before
    inline, inline_entry = _told(predictor, video, 0)
    for depth in (2, None):  # a queue that fills at once, and the automatic one
        ahead, ahead_entry = _told(predictor, video, depth)
        assert [f[:2] for f in ahead.frames] == [f[:2] for f in inline.frames]
        assert all(np.array_equal(a[2], b[2]) for a, b in zip(ahead.frames, inline.frames))
        assert len(ahead.segments) == len(inline.segments) > 0
        for a, b in zip(ahead.segments, inline.segments):
            assert a[:3] == b[:3] and torch.equal(a[3], b[3]) and torch.equal(a[4], b[4])
        assert {**ahead_entry, "file": None} == {**inline_entry, "file": None}
        assert ahead.calls == inline.calls


def test_the_decoder_uses_every_core_only_when_the_model_is_on_a_gpu():
    assert predict.decoder_threads(torch.device("cuda"), 4) == 0  # FFmpeg's choice: every core
    assert predict.decoder_threads(torch.device("cpu"), 4) == 4
    assert predict.decoder_threads(torch.device("cpu"), 0) == 1


# --- long videos: memory, Ctrl-C and reruns (subprocesses) ---------------------------------------------------------

def _moving_frames(n: int, width: int = 1280, height: int = 720):
    base = np.zeros((height, width, 3), np.uint8)
    base[..., 2] = np.linspace(0, 200, width).astype(np.uint8)[None, :]
    for k in range(n):
        a = base.copy()
        x = (k * 23) % (width - 160)
        a[height // 3: height // 3 + 160, x: x + 160] = 255
        yield a


def _write_long(path: Path, seconds: int, fps: int = 15) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "30"}
        for arr in _moving_frames(seconds * fps):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory) -> Path:
    """a_short.mp4 (3 s) and b_long.mp4 (12 s), 1280x720 at 15 fps."""
    root = tmp_path_factory.mktemp("long_videos")
    _write_long(root / "a_short.mp4", 3)
    _write_long(root / "b_long.mp4", 12)
    return root


def _predict_cmd(video: Path, checkpoint: Path, out: Path, *extra) -> list[str]:  # noqa: F811
    return [sys.executable, "main.py", "--predict", str(video), "--resume_path", str(checkpoint), "--result_path",
            str(out), "--n_threads", "1", "--sample_size", "112", "--sample_duration", "16", "--inference_stride", "16",
            "--inference_batch_size", "4", *map(str, extra)]


def _peak_rss_kb(cmd: list[str]) -> int:
    """Peak resident memory of a child process (its own rusage, from wait4)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    return usage.ru_maxrss


def test_peak_memory_does_not_grow_with_video_length(long_videos, checkpoint, tmp_path):  # noqa: F811
    short = _peak_rss_kb(_predict_cmd(long_videos / "a_short.mp4", checkpoint, tmp_path / "short"))
    long = _peak_rss_kb(_predict_cmd(long_videos / "b_long.mp4", checkpoint, tmp_path / "long"))
    print(f"peak RSS: {short / 1024:.0f} MB (3 s), {long / 1024:.0f} MB (12 s)")
    assert long <= 1.25 * short, (short, long)


def test_ctrl_c_keeps_finished_videos_and_a_rerun_skips_them(long_videos, checkpoint, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    cmd = _predict_cmd(long_videos, checkpoint, out)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    results_file, deadline = out / "predictions.json", time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if results_file.is_file() and json.loads(results_file.read_text())["results"]:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted: 1 finished video(s) are in" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr
    first = json.loads(results_file.read_text())
    assert list(first["results"]) == [str(long_videos / "a_short.mp4")] and first["complete"] is False

    rerun = run_main(cmd[2:], timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "1 of 2 video(s) already in" in rerun.stdout + rerun.stderr
    assert str(long_videos / "a_short.mp4") not in rerun.stdout  # not predicted (nor printed) again
    final = json.loads(results_file.read_text())
    assert final["complete"] is True and list(final["results"]) == [str(long_videos / n)
                                                                    for n in ("a_short.mp4", "b_long.mp4")]
    assert final["results"][str(long_videos / "a_short.mp4")] == first["results"][str(long_videos / "a_short.mp4")]
    assert final["results"][str(long_videos / "b_long.mp4")]["decoded_seconds"] == pytest.approx(12.0)


def test_a_rerun_with_other_settings_is_refused(corpus, checkpoint, tmp_path, capsys):  # noqa: F811
    args = ["--predict", str(corpus.short), "--resume_path", str(checkpoint), "--result_path", str(tmp_path),
            "--n_threads", "0"]
    assert main.main(args) == 0
    capsys.readouterr()
    assert main.main([*args, "--inference_stride", "2"]) == 2
    err = capsys.readouterr().err
    assert "holds predictions made with other settings (inference_stride)" in err


def _cut(entry: dict, k: int) -> dict:
    """The entry with its video and segment lists cut to the first k labels."""
    return {**entry, "result": entry["result"][:k],
            "segments": [{**seg, "result": seg["result"][:k]} for seg in entry["segments"]]}


def test_a_rerun_that_changes_only_output_topk_relists_or_predicts_again(corpus, checkpoint, tmp_path,  # noqa: F811
                                                                         capsys):
    video = str(corpus.upright)
    args = ["--predict", video, "--resume_path", str(checkpoint), "--result_path", str(tmp_path), "--n_threads", "0"]
    results = tmp_path / "predictions.json"
    assert main.main([*args, "--output_topk", "3"]) == 0
    first = json.loads(results.read_text())["results"][video]
    assert len(first["result"]) == 3 and len(first["segments"]) > 1
    capsys.readouterr()

    assert main.main([*args, "--output_topk", "1"]) == 0  # fewer labels: cut from the stored lists
    out = capsys.readouterr().out
    assert ("--output_topk 1 (predictions.json was listed with 3): 1 stored video(s) re-listed from their stored "
            "labels, 0 predicted again") in out
    assert f"{video} (" not in out  # not predicted (nor printed) again
    data = json.loads(results.read_text())
    assert data["results"][video] == _cut(first, 1)
    assert data["settings"]["output_topk"] == 1 and data["complete"] is True
    rows = (tmp_path / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == 1 + len(first["segments"]) and all(row.split(",")[4] == "1" for row in rows)

    assert main.main([*args, "--output_topk", "2"]) == 0  # more labels than stored: the scores are not stored
    out = capsys.readouterr().out
    assert ("--output_topk 2 (predictions.json was listed with 1): 0 stored video(s) re-listed from their stored "
            "labels, 1 predicted again (only the listed labels are stored, not all scores)") in out
    assert f"{video} (" in out
    again = json.loads(results.read_text())["results"][video]
    assert again == {**_cut(first, 2), "file": again["file"]}


# --- real footage ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vtest.avi", "tree.avi"])
def test_real_footage_opencv_samples(name, checkpoint, tmp_path):  # noqa: F811
    found = [d / name for d in OPENCV_DATA if (d / name).is_file()]
    if not found:
        pytest.skip(f"{name} (OpenCV sample data, OPENCV_DOC_DATA) is not available")
    video = found[0]
    proc = run_main(["--predict", video, "--resume_path", checkpoint, "--result_path", tmp_path, "--n_threads", 1,
                     "--output_topk", 2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = json.loads((tmp_path / "predictions.json").read_text())["results"][str(video)]
    meta = probe_video(video)
    assert entry["n_frames"] == meta.n_frames and entry["segments"]
    assert entry["decoded_seconds"] == pytest.approx(meta.duration, rel=0.05)
    assert entry["segments"][-1]["segment"][1] <= entry["duration"] + 1e-6
