"""`--file_type video` end to end through main.py: train, validate, checkpoint and infer on real compressed videos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from checkpoint import load_checkpoint
from tests.conftest import run_main
from tests.datagen import frame_image, make_frame_dataset, write_video_file

TINY = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--sample_size", "32",
        "--sample_duration", "8", "--no_cuda", "--learning_rate", "0.01", "--batch_size", "2", "--n_val_samples", "2",
        "--inference_stride", "8", "--file_type", "video", "--n_classes", "2"]
N_FRAMES = [16, 12, 20]  # cycled over videos: both validation videos (numbers 2 and 5) get 20 frames


@pytest.fixture(scope="module")
def video_dataset(tmp_path_factory):
    """H.264 .mp4 files made with PyAV, one of them replaced by an MPEG-4 Part 2 .avi (another codec/container)."""
    ds = make_frame_dataset(tmp_path_factory.mktemp("videos"), n_classes=2, videos_per_class=2, n_frames=N_FRAMES,
                            size=(48, 32), file_type="video", fps=10)
    info = ds.videos["kinetics_c1_v1"]
    frames = [frame_image("shapes", label=1, number=info.number, frame=i, size=(48, 32))
              for i in range(1, info.n_frames + 1)]
    avi = info.path.with_suffix(".avi")
    write_video_file(avi, frames, fps=10, codec="mpeg4")
    info.path.unlink()
    info.path = avi
    return ds


def _args(ds, out: Path) -> list:
    return ["--video_path", ds.video_path, "--annotation_path", ds.annotation_path, "--result_path", out, *TINY]


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(video_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run_main([*_args(video_dataset, out), "--n_epochs", 1, "--checkpoint", 1, "--inference",
                     "--n_threads", 1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def test_one_epoch_with_validation_and_inference(video_dataset, trained):
    out, proc = trained
    train = _rows(out / "train.log")
    assert train[0] == ["epoch", "loss", "acc", "lr"] and train[1][0] == "1" and math.isfinite(float(train[1][1]))
    assert len(_rows(out / "train_batch.log")) == 1 + 2  # 4 training videos, batch 2
    val = _rows(out / "val.log")
    assert val[0] == ["epoch", "loss", "acc"] and val[1][0] == "1" and math.isfinite(float(val[1][1]))
    assert "validation epoch 1" in proc.stdout and "(4 clips)" in proc.stdout  # 2 videos x --n_val_samples 2
    assert "data problems" not in proc.stdout + proc.stderr  # every frame of every clip decoded
    assert "video-level top-1 accuracy on val" in proc.stdout and "clip-level top-1 accuracy on val" in proc.stdout
    results = json.loads((out / "val.json").read_text())["results"]
    assert list(results) == video_dataset.ids("validation")
    for top in results.values():
        assert [t["label"] for t in top] in (["class_0", "class_1"], ["class_1", "class_0"])
        scores = [t["score"] for t in top]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_frame_counts_are_probed_once_and_cached(video_dataset, trained):
    cache = Path(str(video_dataset.annotation_path) + ".video_meta.json")
    entries = json.loads(cache.read_text())
    counts = {Path(k).stem: v["meta"]["n_frames"] for k, v in entries.items()}
    assert counts == {vid: info.n_frames for vid, info in video_dataset.videos.items()}
    assert all(v["meta"]["fps"] == 10 for v in entries.values())


def test_checkpoint_then_per_clip_inference_from_it(video_dataset, trained, tmp_path):
    out, _ = trained
    ckpt = load_checkpoint(out / "save_1.pth")
    assert ckpt["arch"] == "resnet-10" and ckpt["class_names"] == ["class_0", "class_1"]
    assert ckpt["options"]["file_type"] == "video"
    proc = run_main([*_args(video_dataset, tmp_path), "--no_train", "--no_val", "--inference", "--resume_path",
                     out / "save_1.pth", "--inference_no_average", "--output_topk", 1, "--n_threads", 0])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "val.json").read_text())["results"]
    # 20 decoded frames, 0-based, windows of 8 every 8: the last one is loop-padded.
    for vid in video_dataset.ids("validation"):
        assert [c["segment"] for c in results[vid]] == [[0, 8], [8, 16], [16, 20]]
        assert all(len(c["result"]) == 1 for c in results[vid])
