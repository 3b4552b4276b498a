"""Resume: 2 epochs + resume to 4 equals 4 straight epochs (same LR every epoch, same weights, appended logs);
flags changed on resume are kept, taken or refused as engine/resume_options.py says, and said."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from checkpoint import load_checkpoint
from engine.resume_options import RESUME_POLICY
from opts import build_parser
from tests.conftest import dataset_args, log_rows, run_main

# A decay right after the resume point: the original applied it one epoch late after resuming.
SCHEDULE = ["--multistep_milestones", 2, 3, "--checkpoint", 2, "--manual_seed", 7, "--deterministic"]


@pytest.fixture(scope="module")
def straight_and_resumed(tiny_dataset, tmp_path_factory):
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    runs = [run_main([*dataset_args(tiny_dataset, straight), "--n_epochs", 4, *SCHEDULE]),
            run_main([*dataset_args(tiny_dataset, resumed), "--n_epochs", 2, *SCHEDULE]),
            run_main([*dataset_args(tiny_dataset, resumed), "--n_epochs", 4, *SCHEDULE,
                      "--resume_path", resumed / "save_2.pth"])]
    for proc in runs:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return straight, resumed, runs[2]


def test_same_lr_every_epoch_and_logs_appended(straight_and_resumed):
    straight, resumed, proc = straight_and_resumed
    assert "resuming training at epoch 3" in proc.stdout
    a, b = log_rows(straight / "train.log"), log_rows(resumed / "train.log")
    assert [r[0] for r in b[1:]] == ["1", "2", "3", "4"]  # appended, not truncated
    assert [float(r[3]) for r in a[1:]] == pytest.approx([0.01, 0.01, 0.001, 0.0001])
    assert [r[3] for r in a] == [r[3] for r in b]
    assert len(log_rows(resumed / "val.log")) == 5 and len(log_rows(resumed / "train_batch.log")) == 9


def test_same_metrics_and_final_weights(straight_and_resumed):
    straight, resumed, _ = straight_and_resumed
    for name in ("train.log", "val.log"):
        for x, y in zip(log_rows(straight / name)[1:], log_rows(resumed / name)[1:]):
            assert [float(v) for v in x] == pytest.approx([float(v) for v in y], rel=1e-5, abs=1e-7)
    a = load_checkpoint(straight / "save_4.pth")
    b = load_checkpoint(resumed / "save_4.pth")
    assert a["epoch"] == b["epoch"] == 4
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)


def test_overwrite_milestones(tiny_dataset, straight_and_resumed, tmp_path):
    _, resumed, _ = straight_and_resumed

    shutil.copy(resumed / "save_2.pth", tmp_path / "save_2.pth")
    proc = run_main([*dataset_args(tiny_dataset, tmp_path), "--n_epochs", 4, "--checkpoint", 2, "--no_val",
                     "--resume_path", "auto", "--multistep_milestones", 4, "--overwrite_milestones"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lrs = [float(r[3]) for r in log_rows(tmp_path / "train.log")[1:]]
    # The checkpoint's LR (0.001 after the epoch-2 decay) stays; the old milestone 3 no longer applies.
    assert lrs == pytest.approx([0.001, 0.001])
    assert dict(load_checkpoint(tmp_path / "save_4.pth")["scheduler"]["milestones"]) == {4: 1}


# Every step option of the fine-tuning recipe at once; 2 batches per epoch, so each epoch ends in a partial group.
RECIPE = ["--optimizer", "adamw", "--learning_rate", 0.001, "--weight_decay", 0.05, "--label_smoothing", 0.1,
          "--mixup_alpha", 0.8, "--cutmix_alpha", 1.0, "--clip_grad_norm", 1.0, "--ema_decay", 0.9,
          "--accumulate_grad_batches", 3, "--checkpoint", 2, "--manual_seed", 7, "--deterministic"]


def test_resume_with_the_recipe_is_exact(tiny_dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    runs = [run_main([*dataset_args(tiny_dataset, straight), "--n_epochs", 4, *RECIPE]),
            run_main([*dataset_args(tiny_dataset, resumed), "--n_epochs", 2, *RECIPE]),
            run_main([*dataset_args(tiny_dataset, resumed), "--n_epochs", 4, *RECIPE, "--resume_path", "auto"])]
    for proc in runs:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 optimiser steps (3 in all)" in runs[2].stdout  # epoch 3: one step per epoch, counted across the resume
    for name in ("train.log", "val.log"):  # validation scores the EMA weights
        for x, y in zip(log_rows(straight / name)[1:], log_rows(resumed / name)[1:], strict=True):
            assert [float(v) for v in x] == pytest.approx([float(v) for v in y], rel=1e-5, abs=1e-7)
    a, b = load_checkpoint(straight / "save_4.pth"), load_checkpoint(resumed / "save_4.pth")
    assert a["optimizer_steps"] == b["optimizer_steps"] == 4 and a["ema_updates"] == b["ema_updates"] == 4
    for field in ("state_dict", "ema_state_dict"):
        for key, value in a[field].items():
            torch.testing.assert_close(b[field][key], value, rtol=0, atol=1e-6, msg=f"{field} {key}")


def test_every_flag_says_what_happens_to_it_on_resume():
    flags = {action.dest for action in build_parser()._actions if action.dest != "help"}
    assert sorted(flags - set(RESUME_POLICY)) == [] and sorted(set(RESUME_POLICY) - flags) == []


@pytest.fixture()
def one_epoch(tiny_dataset, tmp_path):
    """A finished 1-epoch run (--learning_rate 0.01) to resume; returns its arguments."""
    args = [*dataset_args(tiny_dataset, tmp_path), "--no_val", "--checkpoint", 1, "--n_epochs", 1]
    proc = run_main(args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return args


def test_a_changed_learning_rate_is_kept_and_a_changed_n_epochs_taken_and_both_said(one_epoch, tmp_path):
    proc = run_main([*one_epoch, "--n_epochs", 2, "--learning_rate", 0.5, "--resume_path", "auto"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = [line for line in proc.stdout.splitlines() if line.startswith("resume: ")]
    assert said == ["resume: --learning_rate 0.5 given, 0.01 kept from the checkpoint (its optimiser, schedule and "
                    "data order carry on)",
                    "resume: --n_epochs 2 taken from the command line (the checkpoint's run: 1)"]
    assert [float(r[3]) for r in log_rows(tmp_path / "train.log")[1:]] == pytest.approx([0.01, 0.01])
    recorded = json.loads((tmp_path / "opts.json").read_text())  # the truth: what the run uses
    assert (recorded["learning_rate"], recorded["n_epochs"]) == (0.01, 2)
    assert load_checkpoint(tmp_path / "save_2.pth")["options"]["learning_rate"] == 0.01


def test_a_changed_model_or_clip_size_is_refused_before_anything_is_written(one_epoch, tmp_path):
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    proc = run_main([*one_epoch, "--n_epochs", 2, "--sample_size", 16, "--conv1_t_stride", 2, "--resume_path", "auto"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: cannot resume {tmp_path / 'save_1.pth'} with another model, input or optimiser: --conv1_t_stride 2 "
        "(the checkpoint's run: 1); --sample_size 16 (the checkpoint's run: 32); give the checkpoint's values, or "
        "start a new run in another --result_path (--pretrain_path starts it from these weights)"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
