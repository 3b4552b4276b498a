"""SIGKILL main.py at random moments (some during checkpoint writes), rerun with --resume_path auto.

Every kill must leave only loadable checkpoints, and each chain of killed and resumed runs must end
with the same final weights and the same logs (no duplicate or lost epoch) as an uninterrupted run.
Runs go through tests/engine/slow_save_main.py, which only stretches checkpoint writes so kills can land
inside them. TOOLKIT_KILL_SEED=<int> replays a failing sequence (the seed is in every failure message).
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
from tests.conftest import ROOT, run_main
from tests.datagen import make_frame_dataset

N_EPOCHS = 5
N_KILLS = 12  # every other one while a checkpoint is being written
TINY = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--sample_size", "16",
        "--sample_duration", "4", "--n_threads", "0", "--no_cuda", "--learning_rate", "0.05", "--batch_size", "2",
        "--n_val_samples", "1", "--n_epochs", str(N_EPOCHS), "--checkpoint", "1", "--multistep_milestones", "3",
        "--manual_seed", "5", "--deterministic"]
LOGS = ("train.log", "train_batch.log", "val.log")
SEED = int(os.environ.get("TOOLKIT_KILL_SEED", random.SystemRandom().randrange(10**6)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_frame_dataset(tmp_path_factory.mktemp("data"), n_classes=2, videos_per_class=2, n_frames=10,
                              size=(24, 20))


def args(ds, out: Path) -> list[str]:
    return ["--video_path", str(ds.video_path), "--annotation_path", str(ds.annotation_path), "--result_path",
            str(out), "--n_classes", "2", *TINY]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Two uninterrupted runs (plain main.py); returns the first's folder and its duration."""
    outs, durations = [tmp_path_factory.mktemp("ref_a"), tmp_path_factory.mktemp("ref_b")], []
    for out in outs:
        start = time.monotonic()
        proc = run_main(args(data, out))
        durations.append(time.monotonic() - start)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return outs, min(durations)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def _assert_same_weights(a: Path, b: Path, context: str) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys(), context
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{context}: {key} differs"


def test_two_deterministic_runs_give_identical_weights_and_logs(reference):
    (a, b), _ = reference
    _assert_same_weights(a / f"save_{N_EPOCHS}.pth", b / f"save_{N_EPOCHS}.pth", "two identical runs")
    for name in LOGS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _start(ds, out: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "tests/engine/slow_save_main.py", *args(ds, out), "--resume_path", "auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOOLKIT_TEST_SAVE_SECONDS": "0.4"}
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def _temp_files(out: Path) -> list[Path]:
    return list(out.glob(".save_*.pth.*.tmp"))


def _kill_during_write(proc: subprocess.Popen, out: Path, rng: random.Random, deadline: float) -> str | None:
    """Wait until a checkpoint's temporary file appears, then SIGKILL within its (stretched) write."""
    while time.monotonic() < deadline and proc.poll() is None:
        if _temp_files(out):
            time.sleep(rng.uniform(0.0, 0.25))
            proc.kill()
            proc.wait()
            return "during_write" if _temp_files(out) else "random"  # still there: it died mid-write
        time.sleep(0.005)
    return None


def _kill_at_random(proc: subprocess.Popen, rng: random.Random, longest: float) -> str | None:
    try:
        proc.wait(timeout=rng.uniform(0.5, longest))
        return None  # finished before the kill
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "random"


def _check_after_kill(out: Path, context: str) -> int:
    """Every visible checkpoint loads; returns the newest epoch (0 if none)."""
    epochs = []
    for path in out.glob("save_*.pth"):
        ckpt = load_checkpoint(path)  # raises on a torn file
        assert ckpt["epoch"] == int(path.stem.split("_")[1]), context
        epochs.append(ckpt["epoch"])
    return max(epochs, default=0)


def _epochs_column(path: Path, n_cols: int = 1) -> list[tuple[str, ...]]:
    rows = path.read_text().splitlines()[1:]
    return [tuple(r.split("\t")[:n_cols]) for r in rows]


def _finish_chain(ds, out: Path, ref: Path, context: str) -> None:
    """Rerun until done, then compare with the uninterrupted run: weights, checkpoints, logs."""
    log = out.parent / f"{out.name}_final.txt"
    final = _start(ds, out, log)
    assert final.wait(timeout=180) == 0, f"{context}\n{log.read_text()}"
    assert not _temp_files(out), f"{context}: temporary checkpoint files left behind"
    _assert_same_weights(ref / f"save_{N_EPOCHS}.pth", out / f"save_{N_EPOCHS}.pth", context)
    assert _check_after_kill(out, context) == N_EPOCHS
    expected = [(str(e),) for e in range(1, N_EPOCHS + 1)]
    assert _epochs_column(out / "train.log") == expected, context
    assert _epochs_column(out / "val.log") == expected, context
    assert _epochs_column(out / "train_batch.log", 2) == _epochs_column(ref / "train_batch.log", 2), context
    for name in LOGS:  # the same numbers too: every resumed run continued exactly
        assert (out / name).read_bytes() == (ref / name).read_bytes(), f"{context}: {name}"


def test_sigkill_at_random_moments_then_resume_auto(data, reference, tmp_path):
    (ref, _), ref_seconds = reference
    rng = random.Random(SEED)
    kills = {"random": 0, "during_write": 0}
    chain, runs, out = 0, 0, tmp_path / "chain0"
    while sum(kills.values()) < N_KILLS:
        context = f"TOOLKIT_KILL_SEED={SEED}, chain {chain}, run {runs}"
        before = _check_after_kill(out, context) if out.exists() else 0
        aim = "during_write" if runs % 2 else "random"
        log = tmp_path / f"chain{chain}_run{runs}.txt"
        proc = _start(data, out, log)
        runs += 1
        if aim == "during_write":
            killed = _kill_during_write(proc, out, rng, time.monotonic() + 4 * ref_seconds)
        else:
            killed = _kill_at_random(proc, rng, ref_seconds)
        if not killed:  # the run reached the end first: check this chain and start another
            assert proc.wait(timeout=180) == 0, f"{context}\n{log.read_text()}"
            _finish_chain(data, out, ref, context)
            chain += 1
            out = tmp_path / f"chain{chain}"
            continue
        kills[killed] += 1
        newest = _check_after_kill(out, f"{context}, after a {killed} kill")
        assert newest >= before, f"{context}: a checkpoint went missing ({before} -> {newest})"
    _finish_chain(data, out, ref, f"TOOLKIT_KILL_SEED={SEED}, chain {chain}, final")
    print(f"kills: {kills} over {chain + 1} chains (TOOLKIT_KILL_SEED={SEED})")
    assert kills["during_write"] >= N_KILLS // 3, f"{kills}, TOOLKIT_KILL_SEED={SEED}"


def _ctrl_c_during_epoch_2_write(data, tmp_path, presses: int) -> tuple[int, str, Path]:
    out, log = tmp_path / "out", tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "tests/engine/slow_save_main.py", *args(data, out)], cwd=ROOT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "TOOLKIT_TEST_SAVE_SECONDS": "2"},
                                stdout=subprocess.DEVNULL, stderr=f)
    deadline = time.monotonic() + 120
    while not (out / "save_1.pth").exists() or not _temp_files(out):  # epoch 2's write has begun
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    status = proc.wait(timeout=60)
    return status, log.read_text().strip(), out


def test_ctrl_c_during_a_checkpoint_write_lets_it_finish_then_stops(data, tmp_path):
    status, err, out = _ctrl_c_during_epoch_2_write(data, tmp_path, presses=1)
    assert status == 130
    assert err.splitlines() == [f"stopped by Ctrl-C after epoch 2; saved {out / 'save_2.pth'}; rerun the same "
                                "command with --resume_path auto to continue"], err
    assert not _temp_files(out) and load_checkpoint(out / "save_2.pth")["epoch"] == 2


def test_second_ctrl_c_during_a_checkpoint_write_is_one_line_and_keeps_checkpoints(data, tmp_path):
    status, err, out = _ctrl_c_during_epoch_2_write(data, tmp_path, presses=2)
    assert status == 130
    assert err.splitlines() == [f"interrupted: nothing saved since {out / 'save_1.pth'}; rerun with --resume_path "
                                "auto to continue from it"], err
    assert not _temp_files(out) and not (out / "save_2.pth").exists()
    assert load_checkpoint(out / "save_1.pth")["epoch"] == 1
