"""eval_accuracy and remove_dataparallel."""

import csv
import json

import pytest
import torch

from checkpoint import load_checkpoint
from errors import UserError
from tests.support import run_tool
from util_scripts import eval_accuracy, remove_dataparallel
from util_scripts.eval_accuracy import evaluate

LABELS = ["cat", "dog", "eel"]


@pytest.fixture
def gt_and_results(tmp_path):
    database = {
        "v1": {"subset": "validation", "annotations": {"label": "cat", "segment": [1, 9]}},
        "v2": {"subset": "validation", "annotations": {"label": "cat", "segment": [1, 9]}},
        "v3": {"subset": "validation", "annotations": {"label": "dog", "segment": [1, 9]}},
        "v4": {"subset": "validation", "annotations": {"label": "eel", "segment": [1, 9]}},  # no result
        "t1": {"subset": "training", "annotations": {"label": "dog", "segment": [1, 9]}},
        "x1": {"subset": "testing", "annotations": {}},
    }
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"labels": LABELS, "database": database}))

    def ranked(*pairs):
        return [{"label": label, "score": score} for label, score in pairs]

    results = {
        "v1": ranked(("cat", 0.7), ("dog", 0.2), ("eel", 0.1)),  # top-1 right
        "v2": ranked(("cat", 0.3), ("dog", 0.6), ("eel", 0.1)),  # unsorted on purpose: top-1 dog, top-2 has cat
        "v3": ranked(("eel", 0.5), ("cat", 0.3), ("dog", 0.2)),  # wrong in top-1 and top-2
        "x1": ranked(("dog", 0.9)),
    }
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    res = out_dir / "val.json"
    res.write_text(json.dumps({"results": results}))
    return gt, res


def test_evaluate_top1_and_per_class(gt_and_results):
    gt, res = gt_and_results
    report = evaluate(gt, res, subset="validation", k=1)
    assert report["n_ground_truth"] == 4 and report["n_result"] == 3 and report["n_evaluated"] == 4
    assert report["accuracy"] == 0.25  # v1 only; v4 (no result) counts as wrong
    assert report["per_class_accuracy"] == {"cat": 0.5, "dog": 0.0, "eel": 0.0}
    assert report["mean_class_accuracy"] == pytest.approx(0.5 / 3)
    assert report["confusion"] == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]


def test_evaluate_ignore_top2_and_subset_aliases(gt_and_results):
    gt, res = gt_and_results
    report = evaluate(gt, res, subset="val", k=2, ignore=True)
    assert report["n_evaluated"] == 3
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["per_class_accuracy"] == {"cat": 1.0, "dog": 0.0, "eel": None}
    assert report["mean_class_accuracy"] == 0.5
    with pytest.raises(UserError, match="any of the 1 'training' videos"):  # 'train' is the training subset
        evaluate(gt, res, subset="train")


@pytest.mark.parametrize("metric", ["accuracy", "map"])
@pytest.mark.parametrize("ignore", [[], ["--ignore"]])
def test_eval_of_a_subset_without_results_is_an_error(gt_and_results, metric, ignore):
    # Results of the validation videos evaluated as 'training': no number (top-1 0.0, mAP of zeros) but an error.
    gt, res = gt_and_results
    result = run_tool("eval_accuracy", gt, res, "--subset", "train", "--metric", metric, *ignore)
    assert result.returncode == 2 and result.stdout.count("accuracy:") == 0 and "mAP" not in result.stdout
    assert result.stderr == (f"error: {res} has no result for any of the 1 'training' videos (its 4 results are of "
                             "other videos); evaluate the subset its inference ran on (--subset) or run inference on "
                             "this one (--inference_subset)\n")


def test_eval_cli_prints_original_lines_and_saves(gt_and_results, capsys, tmp_path):
    gt, res = gt_and_results
    prefix = tmp_path / "cm" / "confusion"
    argv = [str(gt), str(res), "--subset", "val", "-k", "1", "--save", "--per_class", "--confusion_matrix", str(prefix)]
    assert eval_accuracy.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:7] == [
        "load ground truth",
        "number of ground truth: 4",
        "load result",
        "number of result: 3",
        "calculate top-1 accuracy",
        "top-1 accuracy: 0.25",
        f"mean class top-1 accuracy: {0.5 / 3}",
    ]
    assert "  cat: 0.5000" in lines and "  eel: 0.0000" in lines
    assert (res.parent / "top1.txt").read_text() == "0.25"
    with open(prefix.with_name("confusion.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["true \\ predicted", *LABELS],
        ["cat", "1", "1", "0"],
        ["dog", "0", "0", "1"],
        ["eel", "0", "0", "0"],
    ]
    pytest.importorskip("matplotlib")
    assert prefix.with_name("confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_errors(gt_and_results, tmp_path):
    gt, res = gt_and_results
    with pytest.raises(
        UserError, match=r"no labelled videos in subset 'validaton' \(subsets present: testing, training"
    ):
        evaluate(gt, res, subset="validaton")
    per_clip = tmp_path / "clips.json"
    per_clip.write_text(json.dumps({"results": {"v1": [{"segment": [1, 17], "result": []}]}}))
    with pytest.raises(UserError, match="per clip"):
        evaluate(gt, per_clip)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"results": {"v1": [{"label": "emu", "score": 1.0}]}}))
    with pytest.raises(UserError, match="unknown label"):
        evaluate(gt, unknown)
    result = run_tool("eval_accuracy", gt, tmp_path / "missing.json")
    assert result.returncode == 2
    assert result.stderr == f"error: result JSON not found: {tmp_path / 'missing.json'}\n"


def test_remove_dataparallel_strips_only_real_prefixes(tmp_path, capsys):
    state = {
        "module.conv1.weight": torch.ones(2),
        "module.fc.module.bias": torch.zeros(1),  # inner 'module.' is part of the real name
        "bn1.running_mean": torch.zeros(2),  # already clean: must stay as is
    }
    src = tmp_path / "save_3.pth"
    torch.save({"epoch": 3, "arch": "resnet-18", "state_dict": state, "optimizer": {"lr": 0.1}}, src)
    dst = tmp_path / "clean.pth"
    assert remove_dataparallel.main([str(src), "--dst_file_path", str(dst)]) == 0
    assert "2 state_dict keys had a wrapper prefix" in capsys.readouterr().out
    clean = load_checkpoint(dst)
    assert list(clean["state_dict"]) == ["conv1.weight", "fc.module.bias", "bn1.running_mean"]
    assert torch.equal(clean["state_dict"]["conv1.weight"], torch.ones(2))
    assert clean["epoch"] == 3 and clean["arch"] == "resnet-18" and clean["optimizer"] == {"lr": 0.1}
    assert list(load_checkpoint(src)["state_dict"]) == list(state)  # source untouched
    # Idempotent: a second run (in place, the default) changes nothing.
    assert remove_dataparallel.main([str(dst)]) == 0
    assert list(load_checkpoint(dst)["state_dict"]) == ["conv1.weight", "fc.module.bias", "bn1.running_mean"]


def test_remove_dataparallel_errors(tmp_path):
    result = run_tool("remove_dataparallel", tmp_path / "none.pth")
    assert result.returncode == 2 and result.stderr.startswith("error: checkpoint not found")
