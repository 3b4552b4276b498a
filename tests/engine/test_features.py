"""--save_features: the classifier's input of every clip/segment and its mean per video, in one HDF5 file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.features import ClassifierInputCapture, FeatureTable, feature_collector, read_features, write_features
from models import factory as model_lib
from opts import parse_opts
from tests.conftest import dataset_args, run_main


def _tiny_model(depth: int, widen: float = 1.0, n_classes: int = 3):
    opt = parse_opts(["--model", "resnet", "--model_depth", str(depth), "--resnet_widen_factor", str(widen),
                      "--n_classes", str(n_classes), "--sample_size", "32", "--sample_duration", "4",
                      "--result_path", "/tmp", "--no_cuda"])
    return model_lib.generate_model(opt).eval()


def test_capture_is_the_classifier_input_of_resnet18():
    torch.manual_seed(0)
    net = _tiny_model(18)
    assert net.get_classifier().in_features == 512
    clips = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad(), ClassifierInputCapture(net) as capture:
        logits = net(clips)
        embedding = capture.take()
    assert embedding.shape == (2, 512)
    fc = net.get_classifier()
    assert torch.allclose(fc(embedding), logits, atol=1e-5)  # it is exactly what the classifier saw
    with pytest.raises(RuntimeError):
        capture.take()
    net(clips)  # the hook is gone after the with block
    assert capture._captured is None


def test_file_layout_one_row_per_segment(tmp_path):
    collected = feature_collector()
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((3, 8)).astype(np.float32))
    # video a: two segments, the second seen in 2 crops (averaged into one row); video b: one segment
    collected.update(a, ["a", "a", "a"], [[0, 7], [8, 15], [8, 15]])
    collected.update(a[:1] * 2, ["b"], [[0, 7]])
    path = write_features(tmp_path / "f.h5", collected, video_order=["b", "a"],
                          segment_times=lambda vid, seg: (seg[0] / 10, (seg[1] + 1) / 10))
    f = read_features(path)
    assert f["videos"] == ["b", "a"]
    assert f["features"].shape == (3, 8) and f["attrs"]["dim"] == 8 and f["attrs"]["segment_unit"] == "seconds"
    assert f["video_index"].tolist() == [0, 1, 1]
    assert f["start_s"].tolist() == [0.0, 0.0, 0.8] and f["end_s"].tolist() == [0.8, 0.8, 1.6]
    np.testing.assert_allclose(f["features"][2], a[1:].mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(f["video_mean"][1], a.mean(0).numpy(), rtol=1e-6)  # every clip and crop
    assert f["video_mean"].shape == (2, 8)
    assert [p.name for p in tmp_path.iterdir()] == ["f.h5"]  # written atomically, nothing left behind


def test_inference_save_features(tiny_dataset, tmp_path):
    proc = run_main([*dataset_args(tiny_dataset, tmp_path), "--n_epochs", 1, "--no_val", "--inference",
                     "--save_features"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "val.json").read_text())["results"]
    f = read_features(tmp_path / "val_features.h5")
    assert f["videos"] == list(results)
    assert f["attrs"]["segment_unit"] == "frames"
    n_segments = len(f["videos"]) * 2  # 12 frames, window 8, stride 8 -> 2 clips per video
    assert f["features"].shape[0] == n_segments == len(f["video_index"]) == len(f["start_frame"])
    # the classifier input width of the model that ran: resnet-10 at --resnet_widen_factor 0.25 -> 512 / 4
    assert f["features"].shape[1] == 128 == f["video_mean"].shape[1]
    assert f["start_frame"][:2].tolist() == [1, 9] and f["end_frame"][:2].tolist() == [9, 13]


def test_a_rerun_keeps_the_rows_of_videos_it_skipped(tmp_path):
    first = FeatureTable()
    first.add("a", 0.0, 1.0, np.ones(4))
    first.add("b", 0.0, 1.0, np.full(4, 2.0))
    first.add("b", 1.0, 2.0, np.full(4, 4.0))
    first.write(tmp_path / "f.h5")
    rerun = FeatureTable()
    rerun.add("a", 0.0, 1.0, np.zeros(4))  # predicted again
    assert rerun.keep_earlier(tmp_path / "f.h5", ["a", "b"]) == 1
    assert rerun.keep_earlier(tmp_path / "missing.h5", ["a", "b"]) == 0
    rerun.write(tmp_path / "f.h5")
    f = read_features(tmp_path / "f.h5")
    assert f["videos"] == ["a", "b"] and f["features"][:, 0].tolist() == [0.0, 2.0, 4.0]
    assert f["end_s"].tolist() == [1.0, 1.0, 2.0] and f["video_mean"][:, 0].tolist() == [0.0, 3.0]
