"""SIGTERM / SIGUSR1 / Ctrl-C: the run finishes its step, saves latest.pth and exits 128 + signal; a rerun with
--resume_path auto continues mid-epoch exactly (bit-identical weights and logs), also in a 2-rank gloo run
whose ranks are started as srun would start them (SLURM_* variables only).

TOOLKIT_KILL_SEED=<int> replays the signal points of a failing run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from checkpoint import load_checkpoint
from datasets.sampling import EpochShardSampler
from engine.preemption import Action, StepControl
from tests.conftest import ROOT, catches, free_port
from tests.datagen import make_frame_dataset

N_EPOCHS = 2
TINY = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--sample_size", "16",
        "--sample_duration", "4", "--n_threads", "0", "--no_cuda", "--learning_rate", "0.05",
        "--n_val_samples", "1", "--n_epochs", str(N_EPOCHS), "--checkpoint", "2", "--multistep_milestones", "1",
        "--manual_seed", "5", "--deterministic", "--log_interval", "1", "--n_classes", "2"]
LOGS = ("train.log", "train_batch.log", "val.log")
SEED = int(os.environ.get("TOOLKIT_KILL_SEED", random.SystemRandom().randrange(10**6)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):  # 10 training videos: 5 batches of 2 per epoch (one process); with two ranks each
    # rank has 5 videos, batches of 2, 2 and 1, and the batch of one clip is dropped: 2 batches per epoch
    return make_frame_dataset(tmp_path_factory.mktemp("data"), n_classes=2, videos_per_class=5, n_frames=8,
                              size=(24, 20))


def _args(ds, out: Path, batch_size: int) -> list[str]:
    return ["--video_path", str(ds.video_path), "--annotation_path", str(ds.annotation_path), "--result_path",
            str(out), "--batch_size", str(batch_size), *TINY]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _start(ds, out: Path, *, ranks: int, extra=(), port: int | None = None) -> list[subprocess.Popen]:
    """One process, or `ranks` processes with only the variables srun sets (SLURM_PROCID, ...)."""
    cmd = [sys.executable, "main.py", *_args(ds, out, 2 * ranks), "--resume_path", "auto", *extra]
    if ranks == 1:
        return [subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)]
    slurm = {"SLURM_NTASKS": str(ranks), "SLURM_JOB_ID": "1", "MASTER_PORT": str(port or free_port())}
    return [subprocess.Popen(cmd, cwd=ROOT, env=_env(SLURM_PROCID=str(r), SLURM_LOCALID=str(r), **slurm),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(ranks)]


def _batch_rows(out: Path) -> int:
    path = out / "train_batch.log"
    return max(len(path.read_text().splitlines()) - 1, 0) if path.is_file() else 0


def _signal_after(procs: list[subprocess.Popen], out: Path, rows: int, sig: int, *, target: int = 0) -> list:
    """Send `sig` to procs[target] once train_batch.log has `rows` rows and the process catches `sig` (main.py
    does from its first line; before that, while the interpreter starts, nothing can); returns (rc, stdout,
    stderr) per proc. On a rerun the log may already have `rows` rows: the signal then lands during start-up."""
    deadline = time.monotonic() + 120
    while _batch_rows(out) < rows or not catches(procs[target].pid, sig):
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, [p.communicate() for p in procs]
        time.sleep(0.01)
    procs[target].send_signal(sig)
    return [(p.wait(timeout=120), *p.communicate()) for p in procs]


def _finish(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, out + err


def _assert_same_run(ref: Path, out: Path, context: str) -> None:
    a, b = load_checkpoint(ref / f"save_{N_EPOCHS}.pth"), load_checkpoint(out / f"save_{N_EPOCHS}.pth")
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{context}: {key} differs"
    for name in LOGS:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), f"{context}: {name}"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    _finish(_start(data, out, ranks=1))
    return out


def test_sigterm_mid_epoch_then_auto_resume_is_bit_identical(data, reference, tmp_path):
    rng = random.Random(SEED)
    total = 5 * N_EPOCHS
    points = sorted(rng.sample(range(1, total - 3), 2))  # two stops in one chain, at random batches (3 to spare)
    out = tmp_path / "run"
    for n, (rows, sig) in enumerate(zip(points, (signal.SIGTERM, signal.SIGUSR1))):
        context = f"TOOLKIT_KILL_SEED={SEED}, stop {n} after {rows} batches"
        [(rc, stdout, stderr)] = _signal_after(_start(data, out, ranks=1), out, rows, sig)
        assert rc == 128 + sig, f"{context}\n{stdout}\n{stderr}"
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"stopped by {signal.Signals(sig).name} after ") and "latest.pth" in last, stderr
        assert "--resume_path auto" in last and "Traceback" not in stderr, stderr
        saved = load_checkpoint(out / "latest.pth")
        done = saved["epoch"] * 5 + saved.get("mid_epoch", {}).get("batch", 0)
        assert done >= rows and _batch_rows(out) == done, context  # the log holds exactly the saved batches
    _finish(_start(data, out, ranks=1))
    _assert_same_run(reference, out, f"TOOLKIT_KILL_SEED={SEED}")
    assert not list(out.glob("previous_run_*"))  # every rerun resumed: nothing moved aside


@pytest.mark.slow
def test_a_mid_epoch_stop_with_layer_decay_precise_bn_and_ema_resumes_bit_identically(data, tmp_path):
    recipe = ["--layer_decay", "0.5", "--precise_bn", "2", "--ema_decay", "0.9"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    _finish(_start(data, ref, ranks=1, extra=recipe))
    [(rc, stdout, stderr)] = _signal_after(_start(data, out, ranks=1, extra=recipe), out, 6, signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM, stdout + stderr
    assert "precise BN" in stdout  # epoch 1's statistics were recomputed before the stop: the checkpoint has them
    assert "parameter group head: lr 0.05, " in stdout and "parameter group stem: lr 0.00156" in stdout
    _finish(_start(data, out, ranks=1, extra=recipe))
    _assert_same_run(ref, out, "--layer_decay, --precise_bn and --ema_decay")
    a, b = load_checkpoint(ref / f"save_{N_EPOCHS}.pth"), load_checkpoint(out / f"save_{N_EPOCHS}.pth")
    for key, value in a["ema_state_dict"].items():
        assert torch.equal(value, b["ema_state_dict"][key]), key
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
    assert len(b["optimizer"]["param_groups"]) == 6
    assert (b["options"]["layer_decay"], b["options"]["precise_bn"]) == (0.5, 2)  # saved with the run's options


def _in_window(ds, out: Path, window: str, action: str, *, call: int = 1, extra=()) -> subprocess.CompletedProcess:
    """One run through tests/engine/window_main.py: `action` at the `call`-th entry into `window`."""
    cmd = [sys.executable, "tests/engine/window_main.py", *_args(ds, out, 2), "--resume_path", "auto", *extra]
    env = _env(TOOLKIT_TEST_WINDOW=window, TOOLKIT_TEST_ACTION=action, TOOLKIT_TEST_CALL=str(call))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def _stopped(proc: subprocess.CompletedProcess, sig: int, out: Path, starts: str) -> str:
    """The run stopped on `sig` with one line starting `starts`, and left that status for a launcher."""
    assert proc.returncode == 128 + sig, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {signal.Signals(sig).name} {starts}"), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert (out / "stopped_resumable").read_text() == f"{128 + sig}\n{last}\n"
    return last


def test_a_stop_signal_in_every_window_of_a_run_stops_it_cleanly_and_resumes_exactly(data, reference, tmp_path):
    out = tmp_path / "run"
    # During main.py's imports (before any set-up): nothing to save, nothing written but the marker.
    _stopped(_in_window(data, out, "imports", "SIGUSR1"), signal.SIGUSR1, out, "before training started")
    assert sorted(p.name for p in out.iterdir()) == ["stopped_resumable"]
    # During validation: the epoch is complete; the stop comes at its end.
    last = _stopped(_in_window(data, out, "validation", "SIGTERM"), signal.SIGTERM, out, "after epoch 1; saved")
    assert "latest.pth" in last and load_checkpoint(out / "latest.pth")["epoch"] == 1
    saved = (out / "latest.pth").read_bytes()
    logs = {name: (out / name).read_bytes() for name in LOGS}
    # During set-up of the resumed run: nothing new, nothing rewritten.
    last = _stopped(_in_window(data, out, "setup", "SIGUSR1"), signal.SIGUSR1, out, "after epoch 1, before training")
    assert "nothing new to save" in last and "--resume_path auto" in last
    assert (out / "latest.pth").read_bytes() == saved and {n: (out / n).read_bytes() for n in LOGS} == logs
    # Half-way through writing save_2.pth: the write completes, then the run stops.
    last = _stopped(_in_window(data, out, "save", "SIGTERM"), signal.SIGTERM, out, "after epoch 2; saved")
    assert "save_2.pth" in last and load_checkpoint(out / "save_2.pth")["epoch"] == 2
    _finish(_start(data, out, ranks=1))
    _assert_same_run(reference, out, "stopped in every window")
    assert not (out / "stopped_resumable").exists()  # the last run finished


def test_a_signal_at_the_inference_stops_it_and_the_rerun_does_it(data, tmp_path):
    out = tmp_path / "run"
    extra = ["--n_epochs", "1", "--inference"]
    proc = _in_window(data, out, "inference", "SIGTERM", extra=extra)
    last = _stopped(proc, signal.SIGTERM, out, "at the inference; training is done and saved")
    assert not (out / "val.json").exists() and load_checkpoint(out / "latest.pth")["epoch"] == 1, last
    rerun = subprocess.run([sys.executable, "main.py", *_args(data, out, 2), "--resume_path", "auto", *extra],
                           cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0 and "nothing to train" in rerun.stdout, rerun.stdout + rerun.stderr
    assert (out / "val.json").is_file() and not (out / "stopped_resumable").exists()


def test_a_signal_while_the_finished_run_tears_down_is_only_noted(data, tmp_path):
    out = tmp_path / "run"
    proc = _in_window(data, out, "teardown", "SIGTERM", extra=["--n_epochs", "1", "--no_val"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("received SIGTERM as the run ended; its work was done, nothing "
                                                    "is left to do")
    assert load_checkpoint(out / "latest.pth")["epoch"] == 1 and not (out / "stopped_resumable").exists()


def test_an_evaluation_stops_at_once_with_nothing_to_save(data, reference, tmp_path):
    out = tmp_path / "eval"
    proc = _in_window(data, out, "validation", "SIGUSR1",
                      extra=["--no_train", "--resume_path", str(reference / f"save_{N_EPOCHS}.pth")])
    _stopped(proc, signal.SIGUSR1, out, "during the evaluation; nothing of it is saved")
    assert not (out / "val.log").exists() or len((out / "val.log").read_text().splitlines()) == 1


@pytest.mark.slow
def test_two_ranks_started_like_srun_stop_together_and_resume_exactly(data, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    _finish(_start(data, ref, ranks=2))
    rows = random.Random(SEED).randrange(1, 2 * N_EPOCHS)  # the run logs 2 batches per epoch: stop before the end
    results = _signal_after(_start(data, out, ranks=2), out, rows, signal.SIGTERM, target=1)  # only rank 1 told
    assert [rc for rc, _, _ in results] == [143, 143], results
    assert results[0][2].strip().splitlines()[-1].startswith("stopped by SIGTERM after"), results[0][2]
    assert "stopped by" not in results[1][2]  # one line, from rank 0
    _finish(_start(data, out, ranks=2))
    _assert_same_run(ref, out, f"2 ranks, TOOLKIT_KILL_SEED={SEED}, stop after {rows} batches")


def test_rolling_checkpoint_every_few_seconds_resumes_after_sigkill(data, reference, tmp_path):
    out = tmp_path / "run"
    procs = _start(data, out, ranks=1, extra=["--checkpoint_minutes", "0.0001"])  # after every step
    deadline = time.monotonic() + 120
    while _batch_rows(out) < 4:
        assert procs[0].poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    procs[0].kill()
    procs[0].wait()
    saved = load_checkpoint(out / "latest.pth")
    assert saved["epoch"] * 5 + saved["mid_epoch"]["batch"] >= 3
    _finish(_start(data, out, ranks=1, extra=["--checkpoint_minutes", "0.0001"]))
    _assert_same_run(reference, out, "rolling checkpoint")


def test_sampler_start_skips_exactly_the_items_already_trained_on():
    full = EpochShardSampler(11, shuffle=True, seed=3, rank=1, world_size=2)
    full.set_epoch(4)
    every = list(full)
    tail = EpochShardSampler(11, shuffle=True, seed=3, rank=1, world_size=2)
    tail.set_epoch(4, start=4)
    assert len(tail) == len(every) - 4 and list(tail) == every[4:]
    assert len(tail) == len(every) and tail.epoch == 5  # the next epoch is whole again


def test_step_control_stops_on_a_signal_and_a_second_ctrl_c_is_immediate():
    now = [0.0]
    control = StepControl(checkpoint_minutes=1, clock=lambda: now[0])
    control.install()
    try:
        assert control.poll() is None
        now[0] = 61.0
        assert control.poll() is Action.SAVE
        control.saved()
        assert control.poll() is None
        os.kill(os.getpid(), signal.SIGINT)
        assert control.poll() is Action.STOP and control.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        control.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
