"""A file crafted to run code when unpickled, given to main.py as --resume_path or --pretrain_path:
refused with one clear line and a non-zero exit, and the code never runs (its marker file never appears)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

import main
from models import factory as model_lib
from tests.conftest import ROOT
from tests.datagen import make_frame_dataset

TINY = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--sample_size", "16",
        "--sample_duration", "4", "--n_threads", "0", "--no_cuda", "--batch_size", "2", "--n_epochs", "1",
        "--n_classes", "2"]


class RunsCode:
    """Unpickling this object runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_frame_dataset(tmp_path_factory.mktemp("data"), n_classes=2, videos_per_class=1, n_frames=6,
                              size=(24, 20))


def _evil_file(tmp_path, writer: str):
    """A checkpoint with real weights plus one code-running object, written by torch.save or plain pickle."""
    marker = tmp_path / "pwned"
    net = model_lib.build_model_from_checkpoint_info("resnet-10", {"n_classes": 2, "widen_factor": 0.125})
    payload = {"epoch": 1, "arch": "resnet-10", "state_dict": net.state_dict(), "extra": RunsCode(marker)}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=int(writer.removeprefix("pickle-")))
    assert not marker.exists()
    return path, marker


FLAGS = {"resume": lambda p: ["--resume_path", str(p)],
         "pretrain": lambda p: ["--pretrain_path", str(p), "--n_pretrain_classes", "2"]}


@pytest.mark.parametrize("writer", ["torch.save", "pickle-2", "pickle-4"])
@pytest.mark.parametrize("flag", list(FLAGS))
def test_code_running_checkpoint_is_refused_in_process(ds, tmp_path, capsys, flag, writer):
    path, marker = _evil_file(tmp_path, writer)
    argv = ["--video_path", str(ds.video_path), "--annotation_path", str(ds.annotation_path), "--result_path",
            str(tmp_path / "out"), *TINY, *FLAGS[flag](path)]
    status = main.main(argv)
    err = capsys.readouterr().err.strip()
    assert status != 0
    assert len(err.splitlines()) == 1 and err.startswith(f"error: refusing to load {path}"), err
    assert "could run code" in err and "Traceback" not in err
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "out" / "train.log").exists()  # nothing trained


@pytest.mark.parametrize("flag", list(FLAGS))
def test_code_running_checkpoint_is_refused_by_the_cli(ds, tmp_path, flag):
    path, marker = _evil_file(tmp_path, "torch.save")
    cmd = [sys.executable, "main.py", "--video_path", str(ds.video_path), "--annotation_path",
           str(ds.annotation_path), "--result_path", str(tmp_path / "out"), *TINY, *FLAGS[flag](path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: refusing to load") and "GLOBAL posix.system" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not marker.exists(), "the pickle's code ran"
