"""`python -m util_scripts.benchmark` runs on the CPU in a small configuration and writes complete JSON."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from benchmarks.data import photo_like_frames
from benchmarks.main_bench import VARIANTS, epoch_summary, first_step, main_argv, progress_lines, steady_state
from benchmarks.report import format_table, format_targets, merge_reports, summarize_targets, target_rows
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


def _gpu_check_reports() -> list[dict]:
    """The per-part JSON files of a gpu_check run (made-up numbers): model, main eager, main --compile, predict."""
    def rate(x, **extra):
        return {"clips_per_s": x, **extra}

    head = {"device": "NVIDIA H200", "torch": "x", "settings": {"workers": [4, 16], "batch_size": 64}}
    main_eager = rate(1000, workers=16, first_step_s=6.5, first_step_data_wait_s=2.0, first_step_without_data_s=4.5,
                      epoch_clips_per_s=700.0, epoch_data_wait_share=0.2)
    main_compiled = rate(1700, workers=16, first_step_s=40.0, first_step_data_wait_s=1.0,
                         first_step_without_data_s=39.0, epoch_clips_per_s=90.0, epoch_data_wait_share=0.01)
    return [{**head, "elapsed_s": 60, "parts": {"model": {"original": rate(900, peak_memory_gb=10.0),
                                                          "fast": rate(1050, peak_memory_gb=5.0),
                                                          "fast_compile": rate(2000, peak_memory_gb=5.5)}}},
            {**head, "elapsed_s": 20, "parts": {"main": {"fast": main_eager, "fast_video": rate(980, workers=16)}}},
            {**head, "elapsed_s": 50, "parts": {"main": {"fast_compile": main_compiled}}},
            {**head, "elapsed_s": 15, "parts": {"predict": {"1080p": {"video_seconds": 60, "frame_size": [1920, 1080],
                                                                      "video_s_per_s": 23.4, "elapsed_s": 2.56,
                                                                      "peak_rss_gb": 1.9}}}}]


def test_targets_table_marks_met_and_not_met_from_the_merged_parts():
    merged = merge_reports(_gpu_check_reports())
    assert set(merged["parts"]["main"]) == {"fast", "fast_compile", "fast_video"} and merged["elapsed_s"] == 145
    verdicts = {label: (measured, verdict) for label, _, measured, verdict in target_rows(merged)}
    assert verdicts["main.py steady state over model only, eager"] == ("0.95", "met")  # 1000 / 1050
    video = "main.py --file_type video (prepared mp4 copy) steady state over model only, eager"
    assert verdicts[video] == ("0.93", "met")  # 980 / 1050
    assert verdicts["main.py --compile steady state over model only, compiled"] == ("0.85", "NOT met")  # 1700 / 2000
    assert verdicts["main.py --compile steady state vs fp32 model only"] == ("1.89", "met")  # 1700 / 900
    assert verdicts["main.py --compile steady state, clips/s"] == ("1700.00", "NOT met")
    assert verdicts["main.py time to first optimiser step, eager, without data wait, s"] == ("4.50", "met")
    assert verdicts["--predict 1080p, seconds of video per second"] == ("23.40", "met")
    assert verdicts["model only, best fast (compile) vs fp32 eager"] == ("2.22", "met")
    assert verdicts["peak memory, bf16 over fp32"] == ("0.50", "met")
    for label in ("end to end over model only", "loader clips/s per worker, 16 workers, vs original"):
        assert verdicts[label] == ("-", "not measured")  # those parts did not run (or timed out)
    assert merged["targets"]["first_step_s"] == {"value": 4.5, "goal": "<= 5", "met": True}
    assert merged["targets"]["main_compile_clips_per_s"] == {"value": 1700, "goal": ">= 1750", "met": False}
    table = format_targets(merged)
    assert table.splitlines()[0].split() == ["target", "goal", "measured", "verdict"]
    assert table.count("NOT met") == 2 and table.count("not measured") == 4  # loader (2), end to end (2)
    text = format_table(merged)
    assert "main.py end to end" in text and "first step 6.50 s (4.50 s without data wait)" in text
    assert "whole epoch 700.0 clips/s, data wait 20%" in text
    assert "23.40 s of video/s, peak RSS 1.90 GB" in text


MAIN_LOG = """model resnet-10: 14.40 M parameters
train epoch 1 [2/8] loss 1.3 acc 0.200 clips/s 20.0 data 10%
first optimiser step done 7.25 s after the process started (0.80 s of it waiting for data, 6.45 s without)
train epoch 1 [4/8] loss 1.3 acc 0.250 clips/s 40.0 data 30%
train epoch 1 [6/8] loss 1.2 acc 0.300 clips/s 48.0 data 20%
train epoch 1 [8/8] loss 1.2 acc 0.300 clips/s 50.0 data 15%
train epoch 1: loss 1.2 acc 0.3 lr 0.1, 8 optimiser steps (8 in all) (50.0 clips/s, data wait 15%)
compiled in 12.5 s: 2 graph cache hits, 1 autograd cache hits (cache /tmp/x/inductor_cache)
"""


def test_main_py_steady_state_and_first_step_are_read_from_its_log():
    arrivals = [100.0, 101.0, 101.5, 102.0, 102.2, 102.4, 102.5, 102.6]  # when each line came, in seconds
    timed = list(zip(arrivals, MAIN_LOG.splitlines(keepends=True)))
    lines = progress_lines(timed)
    assert [(x.seconds, x.batch, x.of) for x in lines] == [(101.0, 2, 8), (102.0, 4, 8), (102.2, 6, 8), (102.4, 8, 8)]
    steady = steady_state(lines, 10)  # batches 2 to 8 of 10 clips: 60 clips in 1.4 s
    assert steady == {"clips_per_s": round(60 / 1.4, 2), "window_batches": [2, 8], "window_s": 1.4,
                      "epoch_batches": 8}
    assert steady_state(lines[:1], 10) is None  # one line: no window
    assert first_step(MAIN_LOG) == {"first_step_s": 7.25, "first_step_data_wait_s": 0.8,
                                    "first_step_without_data_s": 6.45}
    assert first_step("no such line") is None
    assert epoch_summary(MAIN_LOG) == {"epoch_clips_per_s": 50.0, "epoch_data_wait_share": 0.15, "compile_s": 12.5,
                                       "compile_cache": "2 graph cache hits, 1 autograd cache hits"}
    assert epoch_summary("") == {}


def _main_data(tmp_path) -> list[str]:
    """Flags of a tiny main-part run: 6 batches of 2 clips (4x32x32) from one training video per class."""
    return ["--device", "cpu", "--model_depth", "10", "--batch_size", "2", "--sample_duration", "4", "--sample_size",
            "32", "--workers", "1", "--videos_per_class", "1", "--n_frames", "6", "--epoch_videos", "12",
            "--data_dir", str(tmp_path / "data")]


def test_benchmark_main_part_runs_main_py(tmp_path):
    data = _main_data(tmp_path)
    prep = _run(["--prepare", "--parts", "main", *data])
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert list((tmp_path / "data").glob("*/kinetics_epoch12.json")) and "dataset:" in prep.stdout
    out = tmp_path / "bench.json"
    proc = _run(["--parts", "main", *data, "--output", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    entry = report["parts"]["main"]["fast"]
    assert set(report["parts"]["main"]) == {"fast"}  # eager only without --compile
    assert entry["clips_per_s"] > 0 and 0.0 <= entry["epoch_data_wait_share"] <= 1.0
    assert entry["epoch_batches"] == 6 and entry["window_batches"][1] == 6
    assert 0 <= entry["first_step_data_wait_s"] < entry["first_step_s"]
    assert "first_step_s" in report["targets"] and "main_over_model_only" not in report["targets"]  # no model part
    assert not list((tmp_path / "data").glob("main_fast_*"))  # main.py's result folder is removed


def test_benchmark_main_video_part_trains_from_a_prepared_mp4_copy(tmp_path):
    data = _main_data(tmp_path)
    prep = _run(["--prepare", "--parts", "main_video", *data])
    assert prep.returncode == 0, prep.stderr[-3000:]
    (frames,) = (tmp_path / "data").glob("bench_frames_*")
    training = sorted(p.relative_to(frames / "jpg") for p in (frames / "jpg").glob("*/*") if p.name.endswith("_v0"))
    prepared = frames / "prepared_mp4"
    assert sorted(p.relative_to(prepared).with_suffix("") for p in prepared.glob("*/*.mp4")) == training
    assert json.loads((prepared / "manifest.json").read_text())  # made by util_scripts.prepare_videos
    out = tmp_path / "bench.json"
    proc = _run(["--parts", "main_video", *data, "--output", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["parts"]["main"]) == {"fast_video"}
    entry = report["parts"]["main"]["fast_video"]
    assert entry["clips_per_s"] > 0 and entry["epoch_batches"] == 6
    assert "fast_video, 1 workers" in proc.stdout
    argv = main_argv(argparse.Namespace(dataset="kinetics", model="resnet", model_depth=10, batch_size=2,
                                        sample_size=32, sample_duration=4, e2e_workers=1, epoch_videos=12,
                                        device="cpu"),
                     video_path=prepared, annotation_path=frames / "kinetics.json", result_path=tmp_path / "r",
                     n_classes=4, **VARIANTS["fast_video"])
    assert argv[argv.index("--file_type") + 1] == "video" and "--compile" not in argv


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


def test_benchmark_deploy_part(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run(["--device", "cpu", "--parts", "deploy", "--deploy_depths", "10", "--deploy_batches", "1", "2",
                 "--deploy_frames", "4", "--deploy_size", "32", "--repeats", "1", "--videos_per_class", "1",
                 "--n_frames", "4", "--data_dir", str(tmp_path / "data"), "--output", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    part = json.loads(out.read_text())["parts"]["deploy"]
    assert set(part) == {"resnet-10 4x32"} and set(part["resnet-10 4x32"]) == {"batch 1", "batch 2"}
    for runtimes in part["resnet-10 4x32"].values():
        assert set(runtimes) == {"eager", "ort_fp32", "ort_int8"}  # no CUDA here
        for entry in runtimes.values():
            assert entry["clips_per_s"] > 0 and entry["calls"] == 5
            assert 0 < entry["latency_ms_median"] <= entry["latency_ms_p90"]
    assert "deploy resnet-10 4x32" in proc.stdout and "ort_int8" in proc.stdout
