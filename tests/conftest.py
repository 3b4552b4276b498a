"""Helpers and fixtures shared by the test modules: running main.py on a tiny model, a tiny dataset, log rows,
a free TCP port, dataset options, and the device variants of a test (DEVICES, cuda_only, device_args).

Fixtures defined here reach every test module; the helpers are imported with ``from tests.conftest import ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from datasets.clip_spec import ClipSpec
from models import MODEL_DEPTHS, build_model
from models import factory as model_lib
from opts import opts_to_plain, parse_opts
from tests.datagen import decode_frame_number, make_frame_dataset

ROOT = Path(__file__).resolve().parents[1]
# A model and clips small enough for a few seconds per epoch on one core.
TINY = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.25", "--sample_size", "32",
        "--sample_duration", "8", "--n_threads", "0", "--no_cuda", "--learning_rate", "0.01", "--batch_size", "2",
        "--n_val_samples", "2", "--inference_stride", "8"]


# The devices a test body runs on: the CPU always, so no body rots where CI has no GPU, and CUDA, marked `gpu` and
# skipped without a CUDA device (`pytest -m gpu` selects those variants; benchmarks/gpu_check.sh runs them on a GPU
# machine). Use `@pytest.mark.parametrize("device", DEVICES)`; `@cuda_only` is for what truly needs CUDA (NCCL,
# nvjpeg).
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, NEEDS_CUDA])]


def pytest_collection_modifyitems(items):
    """Tests marked `compiles` last: the time-boxed GPU check (benchmarks/gpu_check.sh) then has every other verdict
    before its slowest test, an inductor build."""
    items.sort(key=lambda item: item.get_closest_marker("compiles") is not None)


def cuda_only(test):
    return pytest.mark.gpu(NEEDS_CUDA(test))


def device_args(ds, result_path: Path, device: str, *extra) -> list:
    """The tiny run of dataset_args on ``device``: on CUDA without --no_cuda, so with its defaults (bf16,
    channels_last_3d); nothing else changes."""
    args = dataset_args(ds, result_path)
    return [*(a for a in args if device == "cpu" or a != "--no_cuda"), *extra]


def run_main(args: list[str], *, launcher: list[str] | None = None, timeout: int = 240,
             env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [*(launcher or [sys.executable]), "main.py", *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None removes a variable
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)


def dataset_args(ds, result_path: Path, n_classes: int = 2) -> list[str]:
    return ["--video_path", ds.video_path, "--annotation_path", ds.annotation_path, "--result_path", result_path,
            "--n_classes", n_classes, *TINY]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return make_frame_dataset(tmp_path_factory.mktemp("data"), n_classes=2, videos_per_class=2, n_frames=12,
                              size=(40, 32))


def log_rows(path: Path) -> list[list[str]]:
    """The tab-separated rows of a training log, checking its CRLF line ends."""
    raw = path.read_bytes().decode()
    assert raw.endswith("\r\n") and "\n" not in raw.replace("\r\n", "")  # CRLF like the original
    return [line.split("\t") for line in raw.split("\r\n")[:-1]]


def check_trained_run(out: Path, ds, proc: subprocess.CompletedProcess, device: str, *, n_epochs: int) -> None:
    """A finished training + validation + --inference run of main.py on ``device``: its default precision, one
    row per epoch with finite losses, val.json over the validation videos, and a last checkpoint that loads on
    the CPU without wrapper prefixes."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((out / "opts.json").read_text())["precision"] == ("bf16" if device == "cuda" else "fp32")
    epochs = [str(e) for e in range(1, n_epochs + 1)]
    train, val = log_rows(out / "train.log"), log_rows(out / "val.log")
    assert [r[0] for r in train[1:]] == epochs and [r[0] for r in val[1:]] == epochs
    assert all(math.isfinite(float(r[1])) for r in train[1:] + val[1:])
    assert list(json.loads((out / "val.json").read_text())["results"]) == ds.ids("validation")
    ckpt = load_checkpoint(out / f"save_{n_epochs}.pth")
    assert ckpt["epoch"] == n_epochs and not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["state_dict"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` installed (Linux: the SigCgt mask of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(caught >> (sig - 1) & 1)


def make_opt(ds, **overrides) -> argparse.Namespace:
    """Full options from the real parser (every field present), with small-clip, no-worker test values on top."""
    opt = vars(parse_opts(["--result_path", str(ds.video_path.parent / "results"), "--no_cuda"]))
    opt.update(video_path=ds.video_path, annotation_path=ds.annotation_path, dataset="kinetics", file_type="jpg",
               input_type="rgb", sample_size=16, sample_duration=4, sample_t_stride=1, train_crop="center",
               train_crop_min_scale=0.25, train_crop_min_ratio=0.75, no_hflip=True, colorjitter=False,
               train_t_crop="center", n_val_samples=2, inference_subset="val", inference_stride=4,
               inference_crop="center", batch_size=4, inference_batch_size=2, n_threads=0, mean_dataset="kinetics",
               value_scale=1, no_mean_norm=False, no_std_norm=False, manual_seed=1, normalize_in_workers=False)
    opt.update(overrides)
    return argparse.Namespace(**opt)


def frame_numbers(clip) -> list[int]:
    """Frame numbers of an 'index'-content clip (T, H, W, C)."""
    return [decode_frame_number(f) for f in np.asarray(clip)]


def family_clip(family: str, batch: int = 2) -> torch.Tensor:
    """A random clip that every family accepts (fixed seed)."""
    # DenseNet halves time three times after its stem pool, so it needs 16 frames; batch 2 for train-mode BN.
    frames = 16 if family == "densenet" else 8
    return torch.randn(batch, 3, frames, 32, 32, generator=torch.Generator().manual_seed(1))


def smallest_family_model(family: str) -> torch.nn.Module:
    """The smallest model of a family, 5 classes, seeded."""
    torch.manual_seed(0)
    # k=1 keeps the wide bottleneck code path at a quarter of the eager cost.
    kwargs = {"k": 1} if family == "wideresnet" else {}
    return build_model(family, MODEL_DEPTHS[family][0], n_classes=5, **kwargs)


def save_model_checkpoint(path: Path, net: torch.nn.Module, opt: argparse.Namespace, class_names) -> Path:
    """``net`` saved as main.py saves it (arch, model_kwargs, class names, options, clip spec), as epoch 1."""
    return save_checkpoint(path, make_checkpoint(epoch=1, arch=opt.arch, state_dict=net.state_dict(),
                                                 class_names=list(class_names), options=opts_to_plain(opt),
                                                 model_kwargs=model_lib.model_kwargs_from_opts(opt),
                                                 clip_spec=ClipSpec.from_options(opt, class_names).to_dict()))


def random_model_checkpoint(folder: Path, flags: list[str], class_names) -> Path:
    """save_1.pth in ``folder``: a model built from main.py ``flags`` with seeded random weights."""
    opt = parse_opts([*flags, "--result_path", str(folder), "--no_cuda"])
    torch.manual_seed(0)
    return save_model_checkpoint(folder / "save_1.pth", model_lib.generate_model(opt), opt, class_names)


class TinyNet(torch.nn.Module):
    """A linear classifier of a clip's mean colour: no BatchNorm, so batch composition does not matter."""

    def __init__(self, n_classes: int = 3):
        super().__init__()
        self.fc = torch.nn.Linear(3, n_classes)

    def forward(self, x):  # (N, C, T, H, W)
        return self.fc(x.mean(dim=(2, 3, 4)))
