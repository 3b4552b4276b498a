"""Own data trained end to end on the CPU: official-format SSv2 and Charades files (through ssv2_json and
charades_json), and a list_json file with segments, each for one epoch of a tiny model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from datasets.annotations import read_records
from tests.conftest import TINY, log_rows, run_main
from tests.datagen import write_video_file
from tests.support import run_tool
from util_scripts.eval_accuracy import evaluate_map

SMALL = [*TINY, "--sample_duration", "4", "--n_epochs", "1", "--checkpoint", "1"]


def frames(n: int, value: int) -> list[np.ndarray]:
    return [np.full((32, 40, 3), (value + 15 * i) % 256, np.uint8) for i in range(n)]


def run_module(name: str, *args) -> subprocess.CompletedProcess:
    return run_tool(name, *args, timeout=120)


def annotate_and_train(tool: str, tool_args: list, annotation: Path, videos: Path, out: Path, *main_args):
    """Write `annotation` with util_scripts.<tool>, then train one tiny epoch of main.py on the videos."""
    proc = run_module(tool, *tool_args, annotation)
    assert proc.returncode == 0, proc.stderr
    proc = run_main(["--video_path", videos, "--annotation_path", annotation, "--result_path", out,
                     "--file_type", "video", *SMALL, *main_args])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_ssv2_trains_with_segment_sampling_and_direction_flips(tmp_path):
    ann = tmp_path / "ssv2"
    ann.mkdir()
    labels = {"Pushing something from left to right": "0", "Pushing something from right to left": "1",
              "Holding something": "2"}
    (ann / "something-something-v2-labels.json").write_text(json.dumps(labels))
    train = [{"id": str(i), "template": t} for i, t in enumerate(
        ["Pushing [something] from left to right", "Pushing [something] from right to left", "Holding [something]",
         "Holding [something]"])]
    (ann / "something-something-v2-train.json").write_text(json.dumps(train))
    (ann / "something-something-v2-validation.json").write_text(json.dumps(
        [{"id": "10", "template": "Holding [something]"}, {"id": "11", "template": "Pushing [something] from "
                                                                                   "left to right"}]))
    videos = tmp_path / "videos"
    for k, video_id in enumerate(["0", "1", "2", "3", "10", "11"]):
        write_video_file(videos / f"{video_id}.webm", frames(6 + 3 * k, 40 * k), fps=8, codec="libvpx")
    out = tmp_path / "out"
    proc = annotate_and_train("ssv2_json", [ann, videos], tmp_path / "ssv2.json", videos, out, "--dataset", "ssv2",
                              "--n_classes", 3, "--temporal_sampling", "segment", "--inference",
                              "--inference_n_clips", 2)
    assert "2 direction classes swap with their mirrored class" in proc.stdout
    assert [r[0] for r in log_rows(out / "train.log")] == ["epoch", "1"]
    assert log_rows(out / "val.log")[0] == ["epoch", "loss", "acc"]
    results = json.loads((out / "val.json").read_text())["results"]
    assert set(results) == {"10", "11"}
    assert "video-level top-1 accuracy on val" in proc.stdout


@pytest.fixture(scope="module")
def charades_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("charades")
    cdir = tmp / "Charades"
    cdir.mkdir()
    (cdir / "Charades_v1_classes.txt").write_text("c000 Holding some clothes\nc001 Putting clothes somewhere\n"
                                                  "c002 Taking a cup\nc003 Sitting down\n")
    header = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    (cdir / "Charades_v1_train.csv").write_text(
        header + "AAA,s,k,6,7,Yes,x,y,z,c000 0.0 1.0;c001 1.0 2.0,2.0\n"
        + "BBB,s,k,6,7,Yes,x,y,z,c002 0.5 2.0,2.0\n"
        + "CCC,s,k,6,7,Yes,x,y,z,,2.0\n"  # no actions: an all-zero target
        + "GGG,s,k,6,7,Yes,x,y,z,c003 0.0 0.5,2.0\n")  # 4 videos: no batch of 1 for BatchNorm
    (cdir / "Charades_v1_test.csv").write_text(
        header + "DDD,s,k,6,7,Yes,x,y,z,c000 0.0 2.0;c002 1.0 2.0,2.0\n"
        + "EEE,s,k,6,7,Yes,x,y,z,c001 0.0 1.0,2.0\n"
        + "FFF,s,k,6,7,Yes,x,y,z,,2.0\n")
    videos = tmp / "videos"
    for k, video_id in enumerate(["AAA", "BBB", "CCC", "GGG", "DDD", "EEE", "FFF"]):
        write_video_file(videos / f"{video_id}.mp4", frames(16, 30 * k), fps=8)
    out = tmp / "out"
    proc = annotate_and_train("charades_json", [cdir, videos], tmp / "charades.json", videos, out,
                              "--dataset", "charades", "--n_classes", 4, "--temporal_sampling", "segment",
                              "--inference", "--output_topk", 0)
    return tmp / "charades.json", out, proc


def test_charades_trains_multi_label_and_reports_map(charades_run):
    _, out, proc = charades_run
    opts = json.loads((out / "opts.json").read_text())
    assert opts["multi_label"] is True  # implied by --dataset charades
    val = log_rows(out / "val.log")
    assert val[0] == ["epoch", "loss", "acc", "map"] and 0.0 <= float(val[1][3]) <= 1.0
    assert "mAP" in proc.stdout and "video-level mAP on val" in proc.stdout
    results = json.loads((out / "val.json").read_text())["results"]
    assert set(results) == {"DDD", "EEE", "FFF"}
    for entries in results.values():  # every class, sigmoid scores (independent, in (0, 1))
        assert sorted(e["label"] for e in entries) == sorted(
            ["Holding some clothes", "Putting clothes somewhere", "Taking a cup", "Sitting down"])
        assert all(0.0 < e["score"] < 1.0 for e in entries)


def test_eval_accuracy_map_of_charades_results(charades_run):
    annotation, out, _ = charades_run
    proc = run_module("eval_accuracy", annotation, out / "val.json", "--metric", "map")
    assert proc.returncode == 0, proc.stderr
    assert "over 3 of 4 classes; classes without a positive video are left out" in proc.stdout
    assert "AP Sitting down: n/a (no positive video)" in proc.stdout

    report = evaluate_map(annotation, out / "val.json")
    assert report["n_evaluated"] == 3 and 0.0 < report["map"] <= 1.0


def test_eval_accuracy_map_against_hand_computed_values(tmp_path):
    gt = {"labels": ["a", "b"], "database": {
        "v1": {"subset": "validation", "annotations": {"actions": [{"label": "a", "segment_seconds": [0, 1]},
                                                                   {"label": "b", "segment_seconds": [0, 1]}]}},
        "v2": {"subset": "validation", "annotations": {"actions": []}},
        "v3": {"subset": "validation", "annotations": {"label": "a"}},
        "v4": {"subset": "training", "annotations": {"label": "b"}}}}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = {"results": {"v1": [{"label": "a", "score": 0.9}, {"label": "b", "score": 0.2}],
                           "v2": [{"label": "a", "score": 0.95}, {"label": "b", "score": 0.1}],
                           "v3": [{"label": "a", "score": 0.5}]}}  # b not listed: scores 0
    (tmp_path / "val.json").write_text(json.dumps(results))
    report = evaluate_map(tmp_path / "gt.json", tmp_path / "val.json")
    # a: ranking v2 (neg), v1 (pos), v3 (pos) -> (1/2 + 2/3) / 2; b: v1 first -> 1
    assert report["per_class_ap"] == {"a": pytest.approx(7 / 12), "b": pytest.approx(1.0)}
    assert report["map"] == pytest.approx((7 / 12 + 1) / 2)


def test_list_json_segments_train(tmp_path):
    videos = tmp_path / "videos"
    write_video_file(videos / "long.mp4", frames(24, 0), fps=8)  # 3 s
    write_video_file(videos / "other.mp4", frames(16, 90), fps=8)
    (tmp_path / "train.txt").write_text("long.mp4 jump 0 1.5\nlong.mp4 run 1.5 3\nother.mp4 run\n"
                                        "other.mp4 jump 0.25 1\n")
    (tmp_path / "val.txt").write_text("other.mp4 jump 0.5 1.5\n")
    proc = run_module("list_json", tmp_path / "train.txt", tmp_path / "val.txt", videos, tmp_path / "own.json")
    assert proc.returncode == 0, proc.stderr

    records, _ = read_records(tmp_path / "own.json", videos, dataset="kinetics", subset="training",
                              file_type="video")
    assert [r.segment for r in records] == [(0, 12), (12, 24), (0, 16), (2, 8)]  # seconds x 8 fps
    out = tmp_path / "out"
    proc = run_main(["--video_path", videos, "--annotation_path", tmp_path / "own.json", "--result_path", out,
                     "--n_classes", 2, "--file_type", "video", *SMALL])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r[0] for r in log_rows(out / "train.log")] == ["epoch", "1"]
