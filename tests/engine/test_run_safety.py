"""What a run never does: overwrite an earlier run's logs, share its --result_path with another live run, crash
on a last batch of one clip, stay silent when there is nothing to do, resume an original-format checkpoint with
a late LR decay, or hang when the nodes of a distributed run hold different data copies or a peer dies."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from checkpoint import load_checkpoint, save_checkpoint
from engine.run_folder import RunLock
from errors import UserError
from tests.conftest import ROOT, dataset_args, free_port, log_rows, run_main
from tests.datagen import make_frame_dataset

SMALL = ["--resnet_widen_factor", "0.125", "--sample_size", "16", "--sample_duration", "4", "--n_val_samples", "1"]


def test_fresh_start_moves_the_previous_run_aside(tiny_dataset, tmp_path):
    args = [*dataset_args(tiny_dataset, tmp_path), *SMALL, "--n_epochs", 1, "--checkpoint", 1]
    assert run_main(args).returncode == 0
    first = (tmp_path / "train.log").read_bytes()
    proc = run_main(args)
    assert proc.returncode == 0, proc.stderr
    [previous] = tmp_path.glob("previous_run_*")
    assert "moved the previous run's logs and checkpoints to" in proc.stdout
    assert (previous / "train.log").read_bytes() == first
    assert {p.name for p in previous.iterdir()} >= {"train.log", "val.log", "train_batch.log", "opts.json",
                                                    "save_1.pth"}
    assert (tmp_path / "save_1.pth").is_file()


def _held_at_first_batch(args: list, release: Path) -> subprocess.Popen:
    """A run (through tests/engine/window_main.py) that waits at its first training batch until `release` exists."""
    env = _env(TOOLKIT_TEST_WINDOW="batch", TOOLKIT_TEST_ACTION=f"wait:{release}")
    proc = subprocess.Popen([sys.executable, "tests/engine/window_main.py", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not Path(f"{release}.reached").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never reached its first batch: {proc.communicate()}")
        time.sleep(0.05)
    return proc


def test_a_second_run_on_a_live_runs_result_path_is_refused(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    args = [*dataset_args(tiny_dataset, out), *SMALL, "--n_epochs", 1, "--checkpoint", 1]
    assert run_main(args).returncode == 0  # an earlier, finished run: the live one moved it aside
    live = _held_at_first_batch(args, tmp_path / "release")
    try:
        before = sorted(p.name for p in out.iterdir())
        for second in (args, [*args, "--resume_path", "auto"], [*args, "--no_train"]):
            proc = run_main(second)
            assert proc.returncode == 2, proc.stdout + proc.stderr
            [line] = proc.stderr.splitlines()
            assert line.startswith(f"error: --result_path {out} is in use by a live run (pid {live.pid} on "
                                   f"{socket.gethostname()} since "), line
            assert line.endswith(f"; {out / 'run.lock'} names it): wait for it to end or give another --result_path")
            assert sorted(p.name for p in out.iterdir()) == before  # nothing moved aside, written or removed
        (tmp_path / "release").touch()
        stdout, stderr = live.communicate(timeout=120)
    finally:
        live.kill()  # a no-op once it has ended; a failed check must not leave it waiting
    assert live.returncode == 0, stdout + stderr
    assert len(list(out.glob("previous_run_*"))) == 1 and len(log_rows(out / "train.log")) == 2
    assert not (out / "run.lock").exists()  # released at the end


def test_the_lock_is_exclusive_and_a_refused_run_leaves_no_folder(tmp_path):
    folder = tmp_path / "new" / "out"
    first = RunLock.take(folder)
    with pytest.raises(UserError, match=rf"in use by a live run \(pid {os.getpid()} on {socket.gethostname()} since "):
        RunLock.take(folder)
    first.release()
    assert not folder.exists()  # created for the run, left empty: removed with the lock file
    (folder / "keep").parent.mkdir(parents=True)
    RunLock.take(folder).release()
    assert folder.is_dir() and not any(folder.iterdir())  # a folder that was there stays


def test_the_lock_of_a_killed_run_is_taken_over_with_a_note(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    args = [*dataset_args(tiny_dataset, out), *SMALL, "--n_epochs", 1, "--checkpoint", 1]
    killed = _held_at_first_batch(args, tmp_path / "never")
    killed.kill()
    killed.communicate()
    assert f"pid {killed.pid} on" in (out / "run.lock").read_text()  # left behind, no longer locked
    proc = run_main([*args, "--resume_path", "auto"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"taking over {out / 'run.lock'}, left by pid {killed.pid} on" in proc.stdout
    assert "that process has ended (an flock lock ends with its process, so no run holds it)" in proc.stdout
    assert not (out / "run.lock").exists() and len(log_rows(out / "train.log")) == 2


def test_nothing_to_do_is_said(tiny_dataset, tmp_path):
    args = [*dataset_args(tiny_dataset, tmp_path), *SMALL, "--n_epochs", 1, "--checkpoint", 1, "--no_val"]
    assert run_main(args).returncode == 0
    proc = run_main([*args, "--resume_path", "auto"])
    assert proc.returncode == 0 and "nothing to train" in proc.stdout, proc.stdout
    proc = run_main([*dataset_args(tiny_dataset, tmp_path / "eval"), *SMALL, "--no_train"])
    assert proc.returncode == 0 and "evaluating a randomly initialised model" in proc.stdout, proc.stdout


def test_a_last_batch_of_one_clip_is_dropped(tmp_path):
    ds = make_frame_dataset(tmp_path / "data", n_classes=3, videos_per_class=1, n_frames=8, size=(24, 20))
    proc = run_main([*dataset_args(ds, tmp_path / "out", n_classes=3), *SMALL, "--n_epochs", 1, "--no_val"])
    assert proc.returncode == 0, proc.stderr  # 3 videos, batch 2: BatchNorm would fail on the last single clip
    assert [r[1] for r in log_rows(tmp_path / "out" / "train_batch.log")[1:]] == ["1"]


def test_original_format_checkpoint_resumes_with_the_uninterrupted_lr(tiny_dataset, tmp_path):
    args = [*dataset_args(tiny_dataset, tmp_path), *SMALL, "--no_val", "--multistep_milestones", 2,
            "--checkpoint", 1]
    assert run_main([*args, "--n_epochs", 1]).returncode == 0
    ours = load_checkpoint(tmp_path / "save_1.pth")
    # The original saved the scheduler before its end-of-epoch step, and none of our extra keys.
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    before_step = torch.optim.lr_scheduler.MultiStepLR(sgd, milestones=[2], gamma=0.1).state_dict()
    original = {k: ours[k] for k in ("epoch", "arch", "state_dict", "optimizer")}
    save_checkpoint(tmp_path / "orig" / "save_1.pth", {**original, "scheduler": before_step})
    out = tmp_path / "orig"
    proc = run_main([*dataset_args(tiny_dataset, out), *SMALL, "--no_val", "--multistep_milestones", 2,
                     "--n_epochs", 3, "--resume_path", out / "save_1.pth"])
    assert proc.returncode == 0, proc.stderr
    assert [float(r[3]) for r in log_rows(out / "train.log")[1:]] == pytest.approx([0.01, 0.001])


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _two_ranks(argv_of_rank, script: str = "main.py", env_of_rank=lambda r: {}) -> tuple[list, float]:
    port, procs, start = str(free_port()), [], time.monotonic()
    for rank in (0, 1):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   **env_of_rank(rank))
        procs.append(subprocess.Popen([sys.executable, script, *map(str, argv_of_rank(rank))], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return results, time.monotonic() - start


@pytest.mark.slow
def test_nodes_with_different_data_copies_stop_at_once(tmp_path):
    ds = make_frame_dataset(tmp_path / "data", n_classes=2, videos_per_class=4, n_frames=8, size=(24, 20))
    copy = tmp_path / "copy"
    shutil.copytree(ds.video_path, copy)
    for vid in ds.ids("training")[:2]:  # the second node's copy misses two training videos
        shutil.rmtree(copy / ds.videos[vid].path.relative_to(ds.video_path))

    def argv(rank):
        args = [*dataset_args(ds, tmp_path / "out"), *SMALL, "--batch_size", 4, "--n_epochs", 1]
        return [copy if a == ds.video_path and rank == 1 else a for a in args]

    results, elapsed = _two_ranks(argv)
    assert elapsed < 60, results  # the default --dist_timeout is 30 minutes
    for rank, (rc, _, err) in enumerate(results):
        assert rc == 2, results
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"error (rank {rank}): training records differ between rank 0 and rank 1: 8 videos")
        assert "Traceback" not in err


@pytest.mark.slow
def test_a_dead_peer_is_named_by_the_survivor_without_a_traceback(tiny_dataset, tmp_path):
    def argv(rank):
        return [*dataset_args(tiny_dataset, tmp_path), *SMALL, "--batch_size", 4, "--n_epochs", 2]

    results, _ = _two_ranks(argv, "tests/engine/fail_rank_main.py", lambda r: {"TOOLKIT_TEST_FAIL_MODE": "exit"})
    (rc0, _, err0), (rc1, _, _) = results
    assert rc0 == 1 and rc1 == 3, results
    assert "stopping because rank 1 died or hangs" in err0.strip().splitlines()[-1], err0
    assert "Traceback" not in err0
