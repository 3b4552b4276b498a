"""`python -m util_scripts.benchmark` runs on the CPU in a small configuration and writes complete JSON."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from benchmarks.data import photo_like_frames
from benchmarks.report import format_table, summarize_targets
from tests.conftest import ROOT

TINY = ["--device", "cpu", "--model_depth", "10", "--batch_size", "2", "--sample_duration", "4", "--sample_size",
        "32", "--workers", "0", "1", "--steps", "1", "--loader_steps", "2", "--warmup", "1", "--repeats", "2",
        "--videos_per_class", "2", "--n_frames", "8"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "util_scripts.benchmark", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_benchmark_cli_writes_every_part(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run([*TINY, "--data_dir", str(tmp_path / "data"), "--output", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"].startswith("CPU") and report["settings"]["batch_size"] == 2
    assert report["data"]["source"] == "synthetic" and report["data"]["frame_size"] == [320, 240]
    parts = report["parts"]
    for part in ("model", "e2e", "inference"):
        for variant in ("original", "fast"):
            entry = parts[part][variant]
            assert entry["clips_per_s"] > 0 and len(entry["clips_per_s_repeats"]) == 2
    assert 0.0 <= parts["e2e"]["fast"]["data_wait_share"] <= 1.0
    assert set(parts["loader"]) == {"0", "1"}
    for variants in parts["loader"].values():
        assert variants["original"]["clips_per_s_per_worker"] > 0 and variants["fast"]["clips_per_s"] > 0
    assert "loader_gpu_decode" not in parts  # no CUDA here
    assert "loader_per_worker_1w" in report["targets"]
    assert "loader only" in proc.stdout and "end to end" in proc.stdout


def test_benchmark_rejects_half_a_dataset(tmp_path):
    proc = _run(["--device", "cpu", "--video_path", str(tmp_path), "--output", str(tmp_path / "x.json")])
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_synthetic_frames_look_like_photos():
    frames = list(photo_like_frames(np.random.default_rng(0), 2, (320, 240)))
    assert all(12_000 <= len(f) <= 25_000 for f in frames)  # about the 17 KB of real 320x240 frames
    arr = np.asarray(Image.open(io.BytesIO(frames[0]))).astype(float)
    assert arr.shape == (240, 320, 3) and arr.std() > 20  # not flat colour
    assert np.abs(np.diff(arr, axis=1)).mean() > 2  # texture and noise down to the pixel level
    assert frames[0] != frames[1]


def test_targets_and_table_from_a_report():
    def rate(x, **extra):
        return {"clips_per_s": x, **extra}

    report = {"device": "GPU", "torch": "x", "parts": {
        "model": {"original": rate(800, peak_memory_gb=8.0), "fast": rate(1100, peak_memory_gb=4.0),
                  "fast_compile": rate(1500, peak_memory_gb=4.2)},
        "loader": {"4": {"original": rate(100, clips_per_s_per_worker=25),
                         "fast": rate(240, clips_per_s_per_worker=60)}},
        "e2e": {"original": rate(400, data_wait_share=0.7, workers=16), "fast": rate(1000, data_wait_share=0.1,
                                                                                     workers=16),
                "fast_compile": rate(1400, data_wait_share=0.05, workers=16)}}}
    targets = summarize_targets(report)
    assert targets["model_fast_vs_fp32"] == {"value": 1.88, "goal": ">= 1.8", "met": True}
    assert targets["peak_memory_fast_over_fp32"]["value"] == 0.5 and targets["peak_memory_fast_over_fp32"]["met"]
    assert targets["loader_per_worker_4w"]["value"] == 2.4
    assert targets["e2e_fast_vs_original"]["value"] == 3.5
    assert targets["e2e_over_model_only"]["value"] == round(1400 / 1500, 2)  # compiled e2e vs compiled model
    report["targets"] = targets
    text = format_table(report)
    assert "model only" in text and "fast_compile" in text and "1.88" in text and "NOT met" not in text


def test_benchmark_predict_part(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run(["--device", "cpu", "--parts", "predict", "--predict_sizes", "1080p", "--predict_seconds", "0.4",
                 "--model_depth", "10", "--batch_size", "2", "--sample_duration", "4", "--sample_size", "32",
                 "--workers", "1", "--videos_per_class", "1", "--n_frames", "4", "--data_dir", str(tmp_path / "data"),
                 "--output", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = json.loads(out.read_text())["parts"]["predict"]["1080p"]
    assert entry["frame_size"] == [1920, 1080] and entry["video_seconds"] == 0.4
    assert entry["video_s_per_s"] > 0 and 0.05 < entry["peak_rss_gb"] < 16
    assert "predict" in proc.stdout and "s of video/s, peak RSS" in proc.stdout


def test_benchmark_video_loader_part(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run(["--device", "cpu", "--parts", "video_loader", "--sample_size", "32", "--video_clip_duration", "4",
                 "--video_sizes", "96x64", "128x96", "--videos_per_size", "2", "--video_seconds", "0.5",
                 "--video_gop", "12", "--video_short_side", "48", "--video_jpg_sizes", "48", "64",
                 "--video_clips", "2", "--repeats", "2", "--data_dir", str(tmp_path / "data"), "--output", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    part = report["parts"]["video_loader"]
    assert part["clip"] == [4, 32, 32] and part["prepared"] == "prepared_48" and part["same_size_jpg"] == "jpg_48"
    sources = part["sources"]
    assert set(sources) == {"prepared_48", "jpg_48", "jpg_64", "camera_96x64", "camera_128x96"}
    for entry in sources.values():
        assert entry["videos"] == 2 and entry["disk_bytes"] > 0 and entry["fast_over_source_naive"] > 0
        video = entry["file_type"] == "video"
        assert ("naive" in entry) == ("fast_over_naive" in entry) == video  # naive PyAV: video files only
        for rates in [entry["fast"], entry["naive"]] if video else [entry["fast"]]:
            assert rates["clips_per_s"] > 0 and rates["clips_per_cpu_s"] > 0 and len(rates["clips_per_s_repeats"]) == 2
    assert sources["jpg_48"]["made_from"] == sources["prepared_48"]["made_from"] == "camera_96x64"
    assert set(part["prepared_over_jpg"]) == {"jpg_48", "jpg_64"}
    targets = report["targets"]
    assert {"video_prepared_vs_jpg_per_worker", "video_camera_96x64_vs_naive_per_worker",
            "video_camera_128x96_vs_naive_per_worker"} <= set(targets)
    assert "video loader" in proc.stdout and "prepared_48" in proc.stdout
    (manifest,) = (tmp_path / "data").glob("video_loader_v*/camera_96x64_*/prepared_48/manifest.json")
    assert len(json.loads(manifest.read_text())["videos"]) == 2  # made by util_scripts.prepare_videos
