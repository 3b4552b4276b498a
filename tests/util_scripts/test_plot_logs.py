"""`python -m util_scripts.plot_logs`: PNG curves from the TSV logs that main.py writes (utils.Logger)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import run_tool
from utils import Logger

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from util_scripts import plot_logs  # noqa: E402


def _write_logs(result_dir: Path, epochs: range, *, val: bool = True, resume_after: int | None = None) -> None:
    """train.log / val.log as main.py writes them (the same Logger, CRLF rows, resume rewriting)."""
    train = Logger(result_dir / "train.log", ["epoch", "loss", "acc", "lr"], resume_after_epoch=resume_after)
    valid = Logger(result_dir / "val.log", ["epoch", "loss", "acc"], resume_after_epoch=resume_after) if val else None
    for epoch in epochs:
        train.log({"epoch": epoch, "loss": 2.0 / epoch, "acc": 1 - 1 / (epoch + 1), "lr": 0.1 * 0.5 ** epoch})
        if valid is not None:
            valid.log({"epoch": epoch, "loss": 2.2 / epoch, "acc": 0.9 - 1 / (epoch + 1)})
    train.close()
    if valid is not None:
        valid.close()


def _check_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as img:
        img.verify()  # a complete, valid PNG
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (640, 400)
        assert len(img.convert("L").getcolors(1 << 16)) > 20  # axes, labels and curves were drawn


def run_cli(*args) -> subprocess.CompletedProcess:
    return run_tool("plot_logs", *args, timeout=120)


def test_cli_writes_loss_accuracy_and_lr_curves(tmp_path):
    _write_logs(tmp_path, range(1, 6))
    assert (tmp_path / "train.log").read_bytes().count(b"\r\n") == 6  # the format main.py writes
    proc = run_cli(tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("loss.png", "accuracy.png", "lr.png"):
        _check_png(tmp_path / name)
        assert f"wrote {tmp_path / name}" in proc.stdout
    assert not list(tmp_path.glob(".*partial*"))  # atomic writes leave nothing behind


def test_resumed_and_torn_logs_without_val(tmp_path):
    _write_logs(tmp_path, range(1, 5), val=False)
    _write_logs(tmp_path, range(3, 7), val=False, resume_after=2)  # resumed at epoch 3: epochs 1..6 once each
    with open(tmp_path / "train.log", "ab") as f:
        f.write(b"7\t0.1")  # killed while writing a row
    logs = {"train": plot_logs.read_log(tmp_path / "train.log")}
    assert logs["train"]["epoch"] == [1, 2, 3, 4, 5, 6]
    assert logs["train"]["lr"] == pytest.approx([0.1 * 0.5 ** e for e in range(1, 7)])
    assert plot_logs.read_log(tmp_path / "val.log") == {}
    assert plot_logs.main([str(tmp_path), "--output_dir", str(tmp_path / "plots")]) == 0
    for name in ("loss.png", "accuracy.png", "lr.png"):
        _check_png(tmp_path / "plots" / name)


def test_duplicate_epoch_keeps_last_row(tmp_path):
    (tmp_path / "val.log").write_bytes(b"epoch\tloss\tacc\r\n1\t3.0\t0.1\r\n2\t2.0\t0.2\r\n2\t1.5\t0.3\r\n")
    log = plot_logs.read_log(tmp_path / "val.log")
    assert log == {"epoch": [1, 2], "loss": [3.0, 1.5], "acc": [0.1, 0.3]}
    assert plot_logs.main([str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.glob("*.png")} == {"loss.png", "accuracy.png"}  # no lr in val.log


@pytest.mark.parametrize("setup", ["empty_dir", "header_only", "not_a_dir"])
def test_no_logs_is_a_one_line_error(tmp_path, setup):
    target = tmp_path
    if setup == "header_only":
        (tmp_path / "train.log").write_bytes(b"epoch\tloss\tacc\tlr\r\n")
    elif setup == "not_a_dir":
        target = tmp_path / "missing"
    proc = run_cli(target)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_help():
    proc = run_cli("-h")
    assert proc.returncode == 0 and "RESULT_DIR" in proc.stdout.upper() and "--output_dir" in proc.stdout
