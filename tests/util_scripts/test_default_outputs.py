"""Run from the repository (or any folder), the tools write nothing into the current directory by default: their
outputs go beside the input (check_videos, --predict), where a required flag says (gradcam) or into their working
folder (benchmark)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

import main
from predict.runner import find_videos
from tests.conftest import random_model_checkpoint
from tests.video_corpus import corpus_frame, write_video
from util_scripts import benchmark, check_videos, gradcam

FLAGS = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--n_classes", "2",
         "--sample_size", "32", "--sample_duration", "8", "--inference_stride", "8"]


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's folder of videos, a checkpoint, and an empty current directory (the repository) run from."""
    videos = tmp_path / "my_videos"
    write_video(videos / "clip.mp4", [corpus_frame(i, 64, 48) for i in range(12)])
    checkpoint = random_model_checkpoint(tmp_path / "ckpt", FLAGS, ["walk", "run"])
    cwd = tmp_path / "repo"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return videos, checkpoint, cwd


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_check_videos_reports_beside_the_input(user):
    videos, _, cwd = user
    assert check_videos.main([str(videos), "--n_jobs", "1"]) == 0
    assert check_videos.main([str(videos / "clip.mp4"), "--n_jobs", "1"]) == 0
    assert _files(cwd) == []
    assert json.loads((videos.parent / "my_videos_check_videos.json").read_text())["checked"] == 1
    assert json.loads((videos / "clip_check_videos.json").read_text())["checked"] == 1


def test_predict_writes_beside_the_input_and_skips_its_own_results(user):
    videos, checkpoint, cwd = user
    common = ["--resume_path", str(checkpoint), "--n_threads", "0", "--output_video", "--save_features"]
    assert main.main(["--predict", str(videos), *common]) == 0
    assert _files(cwd) == []
    assert _files(videos.parent / "my_videos_predictions") == [
        "annotated/clip.mp4", "features.h5", "predictions.csv", "predictions.html", "predictions.json"]
    # One video on its own: its results folder lands beside it, inside the videos' folder ...
    assert main.main(["--predict", str(videos / "clip.mp4"), *common]) == 0
    assert _files(cwd) == []
    assert "predictions.json" in _files(videos / "clip_predictions")
    # ... and its annotated copy is no input of a later run over the folder
    assert find_videos(videos) == [videos / "clip.mp4"]


def test_gradcam_writes_only_where_output_says(user, capsys):
    videos, checkpoint, cwd = user
    with pytest.raises(SystemExit):  # no default output: --output is required
        gradcam.main(["--resume_path", str(checkpoint), "--video", str(videos / "clip.mp4")])
    out = videos.parent / "gradcam"
    assert gradcam.main(["--resume_path", str(checkpoint), "--video", str(videos / "clip.mp4"), "--output", str(out),
                         "--no_cuda"]) == 0
    assert _files(cwd) == [] and _files(out) == ["clip_gradcam.mp4", "clip_gradcam.png"]


def test_benchmark_report_goes_to_its_data_folder(tmp_path):
    default = benchmark.resolve_args(benchmark.build_parser().parse_args(["--device", "cpu"]))
    assert default.output == Path(tempfile.gettempdir()) / "3dcnn_benchmark" / "benchmark.json"
    given = benchmark.resolve_args(benchmark.build_parser().parse_args(["--device", "cpu", "--data_dir",
                                                                        str(tmp_path)]))
    assert given.output == tmp_path / "benchmark.json"
