"""Faults in 2-process gloo runs: a failing rank stops the job in bounded time and is named; corrupt frames
are skipped, counted over both ranks, and both ranks finish the epoch.

The failure is injected by tests/engine/fail_rank_main.py (a wrapper around main.main), not by production code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from checkpoint import load_checkpoint
from tests.conftest import ROOT, free_port, log_rows
from tests.datagen import make_frame_dataset

TINY = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--sample_size", "16",
        "--sample_duration", "4", "--n_threads", "0", "--no_cuda", "--learning_rate", "0.01", "--batch_size", "4",
        "--n_val_samples", "1", "--n_classes", "2", "--checkpoint", "1"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
BOUND_S = 60


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_frame_dataset(tmp_path_factory.mktemp("data"), n_classes=2, videos_per_class=4, n_frames=8,
                              size=(24, 20))


def _args(ds, out) -> list[str]:
    return ["--video_path", str(ds.video_path), "--annotation_path", str(ds.annotation_path), "--result_path",
            str(out), *TINY]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_torchrun_job_with_a_failing_rank_exits_in_bounded_time(ds, tmp_path, mode):
    cmd = [*TORCHRUN, "tests/engine/fail_rank_main.py", *_args(ds, tmp_path), "--n_epochs", "3", "--dist_timeout", "10"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=BOUND_S + 60,
                          env=_env(TOOLKIT_TEST_FAIL_MODE=mode, TOOLKIT_TEST_FAIL_AT_BATCH="5"))
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert elapsed < BOUND_S, f"took {elapsed:.0f} s\n{output}"
    if mode == "raise":  # the failing rank names itself; torchrun's summary names it as the root cause
        # Batch 5 of rank 1 = the 2nd training batch of epoch 2 (an epoch: 2 training + 1 validation batch).
        assert "error (rank 1): RuntimeError: injected failure at batch 5" in output, output
        assert "rank      : 1 (local_rank: 1)" in output.split("Root Cause")[-1], output
    else:  # rank 0 gives up after --dist_timeout and names the hung rank; torchrun then stops rank 1
        assert "error (rank 0): stopping because rank 1 died or hangs" in output, output
    # The epoch-1 checkpoint (written before the failure in epoch 2) is intact.
    assert load_checkpoint(tmp_path / "save_1.pth")["epoch"] == 1


@pytest.mark.slow
def test_survivor_names_the_failed_rank_without_torchrun(ds, tmp_path):
    """Processes started by another launcher (e.g. srun): no agent kills the survivor, it must stop by itself."""
    port, procs = str(free_port()), []
    start = time.monotonic()
    for rank in (0, 1):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        cmd = [sys.executable, "tests/engine/fail_rank_main.py", *_args(ds, tmp_path), "--n_epochs", "2"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=BOUND_S + 30))
    finally:
        for proc in procs:
            proc.kill()
    elapsed = time.monotonic() - start
    assert elapsed < BOUND_S, f"took {elapsed:.0f} s: {outputs}"
    (_, err0), (_, err1) = outputs
    assert procs[0].returncode == 1 and procs[1].returncode != 0, outputs
    # (torch's DDP may print a UserWarning about grad strides before it; no traceback on the survivor)
    assert err0.strip().splitlines()[-1] == ("error (rank 0): stopping because rank 1: RuntimeError: injected failure "
                                             "at batch 2"), err0
    assert "Traceback" not in err0
    assert "error (rank 1): RuntimeError: injected failure at batch 2" in err1


@pytest.mark.slow
def test_corrupt_frames_in_a_distributed_run(tmp_path):
    ds = make_frame_dataset(tmp_path / "data", n_classes=2, videos_per_class=2, n_frames=8, size=(24, 20))
    victims = ds.ids("training")
    for vid in victims:  # every training video: whichever rank gets it meets corrupt frames
        (ds.videos[vid].path / "image_00004.jpg").write_bytes(b"not a jpeg")  # both inside the centre clip 3-6
        (ds.videos[vid].path / "image_00005.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out = tmp_path / "out"
    cmd = [*TORCHRUN, "main.py", *_args(ds, out), "--n_epochs", "2", "--train_t_crop", "center"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Both ranks finished both epochs in step (weights compared across ranks at the end) ...
    assert "weights identical on all 2 ranks" in proc.stdout
    assert [r[0] for r in log_rows(out / "train.log")[1:]] == ["1", "2"]
    # ... and the counts are summed over the ranks: 4 videos x 2 corrupt frames per epoch.
    for epoch in (1, 2):
        assert f"[rank 0] train epoch {epoch}: data problems corrupt_frames 8" in proc.stdout, proc.stdout
    assert load_checkpoint(out / "save_2.pth")["epoch"] == 2
