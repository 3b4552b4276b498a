"""Resume: 2 epochs + resume to 4 equals 4 straight epochs (same LR every epoch, same weights, appended logs), on
the CPU and, marked gpu, on CUDA with its defaults (bf16, channels_last_3d); flags changed on resume are kept,
taken or refused as engine/resume_options.py says, and said."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from checkpoint import find_resume, load_checkpoint, save_checkpoint
from datasets import factory as dataset
from engine.distributed import DistInfo
from engine.resume_options import RESUME_POLICY
from engine.training import Trainer, build_criterion
from models import factory as model_lib
from opts import build_parser
from tests.conftest import DEVICES, ROOT, dataset_args, device_args, log_rows, make_opt, run_main

# A decay right after the resume point: the original applied it one epoch late after resuming.
SCHEDULE = ["--multistep_milestones", 2, 3, "--checkpoint", 2, "--manual_seed", 7, "--deterministic"]


@pytest.fixture(scope="module", params=DEVICES)
def straight_and_resumed(request, tiny_dataset, tmp_path_factory):
    device = request.param
    straight, resumed = tmp_path_factory.mktemp(f"straight_{device}"), tmp_path_factory.mktemp(f"resumed_{device}")
    runs = [run_main(device_args(tiny_dataset, straight, device, "--n_epochs", 4, *SCHEDULE)),
            run_main(device_args(tiny_dataset, resumed, device, "--n_epochs", 2, *SCHEDULE)),
            run_main(device_args(tiny_dataset, resumed, device, "--n_epochs", 4, *SCHEDULE,
                                 "--resume_path", resumed / "save_2.pth"))]
    for proc in runs:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return straight, resumed, runs[2]


def _assert_same_checkpoint(a: dict, b: dict, why: str) -> None:
    for key, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), f"{key}: {why}"
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(b["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"]), why


def test_two_runs_of_the_same_epochs_are_identical(straight_and_resumed):
    """Resume can only be exact where the kernels are deterministic: epochs 1-2 of both runs, bit for bit."""
    straight, resumed, _ = straight_and_resumed
    _assert_same_checkpoint(load_checkpoint(straight / "save_2.pth"), load_checkpoint(resumed / "save_2.pth"),
                            "two --deterministic runs differ before any resume: a kernel is not deterministic")


def test_resumed_tensors_keep_the_layout_of_the_uninterrupted_run(straight_and_resumed):
    """Weights and momentum buffers after the resume have the strides (channels_last_3d on CUDA) they have without
    one; checkpoints keep the strides, so save_4.pth of both runs shows them."""
    straight, resumed, _ = straight_and_resumed
    a, b = load_checkpoint(straight / "save_4.pth"), load_checkpoint(resumed / "save_4.pth")
    assert {k: v.stride() for k, v in b["state_dict"].items()} == {k: v.stride() for k, v in a["state_dict"].items()}
    strides = [{i: s["momentum_buffer"].stride() for i, s in c["optimizer"]["state"].items()} for c in (a, b)]
    assert strides[0] == strides[1] and len(strides[0]) == len(a["optimizer"]["param_groups"][0]["params"])


def _layouts(trainer: Trainer) -> tuple[list, list]:
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    return [p.stride() for p in params], [trainer.optimizer.state[p]["momentum_buffer"].stride() for p in params]


def test_restore_into_a_channels_last_model_keeps_its_layout(tiny_dataset, tmp_path):
    """What main.py does on CUDA, on the CPU: weights loaded into the built model, then channels_last_3d, then the
    optimiser state restored; weights and momentum buffers end with the strides of the run that saved them."""
    opt = make_opt(tiny_dataset, result_path=str(tmp_path), model_depth=10, resnet_widen_factor=0.25, n_classes=2,
                   conv1_t_size=3, batch_size=4)  # one step of a small stem: channels_last_3d is slow on the CPU
    cpu = DistInfo()

    def channels_last_trainer(resume):
        net = model_lib.model_for_run(opt, cpu, resume).to(memory_format=torch.channels_last_3d)
        return Trainer(opt, net, cpu, resume=resume)

    trained = channels_last_trainer(None)
    trained.train_epoch(1, build_criterion(opt, train=True), dataset.build_input_normalizer(opt))
    save_checkpoint(tmp_path / "save_1.pth", trained.payload(1))
    restored = channels_last_trainer(find_resume(tmp_path / "save_1.pth", tmp_path))
    assert restored.model.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert _layouts(restored) == _layouts(trained)
    for p, q in zip(trained.model.parameters(), restored.model.parameters()):
        assert torch.equal(p, q) and torch.equal(trained.optimizer.state[p]["momentum_buffer"],
                                                 restored.optimizer.state[q]["momentum_buffer"])


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
                     "--resume_path", "auto", "--multistep_milestones", 4, "--overwrite_milestones"])  # on the CPU
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


# The augmentations of the recipe at once: RandAugment in the workers, random erasing on the device, repeated copies.
# Every flag of the recipe that changes what is trained (--tracker only reports: tests/engine/test_tracking.py).
WHOLE_RECIPE = ["--randaugment", 2, 9, "--random_erasing", 0.5, "--repeated_aug", 2, "--layer_decay", 0.75,
                "--precise_bn", 2, "--ema_decay", 0.9, "--optimizer", "adamw", "--label_smoothing", 0.1,
                "--mixup_alpha", 0.8, "--cutmix_alpha", 1.0, "--train_crop", "random", "--colorjitter", "--n_epochs", 3,
                "--checkpoint", 3, "--manual_seed", 7, "--deterministic", "--log_interval", 1]


def test_a_mid_epoch_stop_with_the_whole_recipe_resumes_bit_identical(tiny_dataset, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    proc = run_main([*dataset_args(tiny_dataset, straight), *WHOLE_RECIPE])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # SIGTERM as the 3rd training batch is prepared (epoch 2, batch 1 of 2): that step ends, latest.pth is written.
    args = [*dataset_args(tiny_dataset, stopped), *WHOLE_RECIPE, "--resume_path", "auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOOLKIT_TEST_WINDOW": "batch", "TOOLKIT_TEST_ACTION": "SIGTERM",
           "TOOLKIT_TEST_CALL": "3"}
    first = subprocess.run([sys.executable, "tests/engine/window_main.py", *map(str, args)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=240)
    assert first.returncode == 128 + signal.SIGTERM, first.stdout + first.stderr
    saved = load_checkpoint(stopped / "latest.pth")
    assert (saved["epoch"], saved["mid_epoch"]["batch"]) == (1, 1)
    assert saved["options"]["randaugment"] == [2, 9] and saved["options"]["repeated_aug"] == 2
    assert saved["options"]["layer_decay"] == 0.75 and saved["options"]["precise_bn"] == 2
    resumed = run_main(args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming training at epoch 2 after batch 1" in resumed.stdout
    a, b = load_checkpoint(straight / "save_3.pth"), load_checkpoint(stopped / "save_3.pth")
    for weights in ("state_dict", "ema_state_dict"):
        for key, value in a[weights].items():
            assert torch.equal(b[weights][key], value), (weights, key)
    for name in ("train.log", "train_batch.log", "val.log"):
        assert (stopped / name).read_bytes() == (straight / name).read_bytes(), name
    assert json.loads((stopped / "opts.json").read_text())["random_erasing"] == 0.5


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
