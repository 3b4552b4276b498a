"""DDP on the CPU (gloo): torchrun with 2 processes (also with the recipe's augmentations), and the original's
--distributed launch without OpenMPI;
--batchnorm_sync under a one-process torchrun (CPU and, marked gpu, CUDA) and in a one-process NCCL group (CUDA)."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as tdist
from torch import nn

from checkpoint import load_checkpoint
from engine.features import read_features
from models import build_model
from tests.conftest import (
    DEVICES,
    ROOT,
    catches,
    cuda_only,
    dataset_args,
    device_args,
    free_port,
    log_rows,
    run_main,
)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TORCHRUN_ONE = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]


@pytest.mark.slow
def test_torchrun_two_processes(tiny_dataset, tmp_path):
    proc = run_main([*dataset_args(tiny_dataset, tmp_path), "--n_epochs", 2, "--checkpoint", 2, "--inference",
                     "--batch_size", 4, "--save_features"], launcher=TORCHRUN)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Parameters are compared across ranks after training (checksums gathered from both processes).
    assert "weights identical on all 2 ranks" in proc.stdout
    # One set of logs, written by rank 0. --batch_size 4 is global: each rank takes 2 of the 4 training
    # videos per step, so an epoch is one step (a per-process reading would give 2 ranks x 4 clips).
    assert [r[:2] for r in log_rows(tmp_path / "train_batch.log")[1:]] == [["1", "1"], ["2", "1"]]
    assert len(log_rows(tmp_path / "train.log")) == 3 and len(log_rows(tmp_path / "val.log")) == 3
    assert sorted(p.name for p in tmp_path.glob("save_*.pth")) == ["save_2.pth"]
    assert load_checkpoint(tmp_path / "save_2.pth")["epoch"] == 2
    # Inference is sharded over the ranks and gathered: every validation video once, in dataset order.
    assert list(json.loads((tmp_path / "val.json").read_text())["results"]) == tiny_dataset.ids("validation")
    # --save_features: the clip embeddings of both ranks gathered the same way (2 clip positions per video)
    features = read_features(tmp_path / "val_features.h5")
    assert features["videos"] == tiny_dataset.ids("validation")
    assert features["video_index"].tolist() == [v for v in range(len(features["videos"])) for _ in range(2)]


@pytest.mark.slow
def test_torchrun_two_processes_with_the_augmentations(tiny_dataset, tmp_path):
    """RandAugment in the workers, random erasing on each rank's device and repeated copies dealt over the ranks:
    each rank takes its share of the copies (one step per epoch, as without repeats) and the ranks stay in step."""
    proc = run_main([*dataset_args(tiny_dataset, tmp_path), "--n_epochs", 1, "--checkpoint", 1, "--no_val",
                     "--batch_size", 4, "--randaugment", 2, 9, "--random_erasing", 0.5, "--repeated_aug", 2],
                    launcher=TORCHRUN)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "weights identical on all 2 ranks" in proc.stdout
    assert [r[:2] for r in log_rows(tmp_path / "train_batch.log")[1:]] == [["1", "1"]]
    assert load_checkpoint(tmp_path / "save_1.pth")["options"]["repeated_aug"] == 2


def test_distributed_flag_without_openmpi(tiny_dataset, tmp_path):
    proc = run_main([*dataset_args(tiny_dataset, tmp_path), "--n_epochs", 1, "--no_val", "--distributed",
                     "--world_size", 1, "--dist_url", f"tcp://127.0.0.1:{free_port()}"],
                    env={k: None for k in ("OMPI_COMM_WORLD_RANK", "NODE_RANK", "RANK", "WORLD_SIZE")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "spawning 1 worker(s)" in proc.stdout
    assert len(log_rows(tmp_path / "train.log")) == 2


@pytest.mark.parametrize("device", DEVICES)
def test_batchnorm_sync_under_torchrun_one_process(device, tiny_dataset, tmp_path):
    proc = run_main(device_args(tiny_dataset, tmp_path, device, "--n_epochs", 1, "--checkpoint", 1, "--batchnorm_sync"),
                    launcher=TORCHRUN_ONE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = load_checkpoint(tmp_path / "save_1.pth")["state_dict"]
    plain = build_model("resnet", 10, n_classes=2, widen_factor=0.25).state_dict()
    assert set(state) == set(plain)  # SyncBatchNorm saves BatchNorm3d's keys: loadable without the flag
    assert len(log_rows(tmp_path / "train.log")) == 2


@cuda_only
def test_sync_batchnorm_in_a_one_process_nccl_group(tmp_path):
    # SyncBatchNorm refuses CPU tensors inside a process group: NCCL and CUDA only.
    device = torch.device("cuda")
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # plain fp32 to compare
    tdist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = build_model("resnet", 10, n_classes=3, widen_factor=0.25).to(device).train()
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
        ddp = nn.parallel.DistributedDataParallel(synced, device_ids=[device])
        x = torch.randn(4, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
        for net in (plain, ddp):
            optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
            net(x).square().mean().backward()
            optimizer.step()
        assert isinstance(synced.bn1, nn.SyncBatchNorm)
        torch.testing.assert_close(synced.bn1.running_mean, plain.bn1.running_mean, atol=1e-5, rtol=1e-4)
        for (name, p), q in zip(plain.named_parameters(), synced.parameters()):
            torch.testing.assert_close(q, p, atol=1e-4, rtol=1e-3, msg=name)
        with torch.no_grad():
            torch.testing.assert_close(ddp.module.eval()(x), plain.eval()(x), atol=1e-4, rtol=1e-3)
    finally:
        tdist.destroy_process_group()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


# The README's job script reads the stop marker when torchrun reports a failure (torchrun returns 1 whatever
# status its workers exit with); this is its decision, with `requeue` for `scontrol requeue`.
SBATCH_DECISION = """rc=$1
if [ $rc -ne 0 ] && [ -f "$2/stopped_resumable" ]; then rc=$(head -n 1 "$2/stopped_resumable"); fi
if [ $rc -eq 138 ] || [ $rc -eq 143 ]; then echo requeue; fi
exit $rc"""


@pytest.mark.slow
def test_a_stop_under_torchrun_leaves_its_resumable_status_for_the_job_script(tiny_dataset, tmp_path):
    args = [*dataset_args(tiny_dataset, tmp_path), "--n_epochs", 2, "--checkpoint", 2, "--batch_size", 4]
    # Rank 1 alone receives SIGUSR1 at its first batch (tests/engine/window_main.py raises it there).
    window = {"TOOLKIT_TEST_WINDOW": "batch", "TOOLKIT_TEST_ACTION": "SIGUSR1", "TOOLKIT_TEST_RANK": "1"}
    proc = subprocess.run([*TORCHRUN, "tests/engine/window_main.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1", **window})
    assert proc.returncode != 0, proc.stdout + proc.stderr  # both workers exit 138; torchrun itself says 1
    status, message = (tmp_path / "stopped_resumable").read_text().splitlines()
    assert status == "138" and message.startswith("stopped by SIGUSR1 after batch 1 of epoch 1; saved "), message
    decision = subprocess.run(["bash", "-c", SBATCH_DECISION, "job", str(proc.returncode), str(tmp_path)],
                              capture_output=True, text=True, cwd=ROOT)
    assert (decision.returncode, decision.stdout) == (138, "requeue\n")
    rerun = run_main([*args, "--resume_path", "auto"], launcher=TORCHRUN)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert not (tmp_path / "stopped_resumable").exists() and (tmp_path / "save_2.pth").is_file()


def test_a_stop_signal_sent_to_the_distributed_launcher_alone_reaches_its_workers(tiny_dataset, tmp_path):
    args = [*dataset_args(tiny_dataset, tmp_path), "--n_epochs", 20, "--no_val", "--log_interval", 1, "--distributed",
            "--world_size", 1, "--dist_url", f"tcp://127.0.0.1:{free_port()}"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMPI_COMM_WORLD_RANK", "NODE_RANK", "RANK", "WORLD_SIZE")}
    launcher = subprocess.Popen([sys.executable, "main.py", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**env, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (tmp_path / "train_batch.log").is_file() or len(log_rows(tmp_path / "train_batch.log")) < 2:
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.05)
    assert catches(launcher.pid, signal.SIGTERM)
    launcher.send_signal(signal.SIGTERM)  # `kill PID`: the spawned worker is not signalled
    stdout, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 143, stdout + stderr
    # The worker stops at the next step boundary: mid-epoch, or at an epoch's end when the signal lands on its
    # last batch (the tiny epoch has few batches); either way it says where and what it saved.
    last_line = stderr.strip().splitlines()[-1]
    where = r"(batch \d+ of epoch \d+|epoch \d+)"
    assert re.match(rf"stopped by SIGTERM after {where}; saved .*latest\.pth", last_line), stderr
    assert (tmp_path / "latest.pth").is_file()
    assert (tmp_path / "stopped_resumable").read_text().startswith("143\n")


@pytest.mark.slow
def test_torchrun_two_processes_with_layer_decay_precise_bn_and_a_tracker_on_rank_0(tiny_dataset, tmp_path):
    pytest.importorskip("mlflow")
    proc = run_main([*dataset_args(tiny_dataset, tmp_path), "--n_epochs", 1, "--checkpoint", 1, "--batch_size", 4,
                     "--layer_decay", 0.5, "--precise_bn", 1, "--tracker", "mlflow"], launcher=TORCHRUN,
                    env={"MLFLOW_TRACKING_URI": None})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "weights identical on all 2 ranks" in proc.stdout
    assert "precise BN: BatchNorm statistics of the model recomputed over 1 training batches" in proc.stdout
    assert len(load_checkpoint(tmp_path / "save_1.pth")["optimizer"]["param_groups"]) == 6  # one per stage (sgd)
    assert len(list((tmp_path / "mlruns").glob("*/*/meta.yaml"))) == 1  # one tracker run: rank 0's
