"""Small shared helpers: meters, accuracy, TSV logs, seeding and RNG state capture."""

from __future__ import annotations

import csv
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


class AverageMeter:
    """Running sum and count of a value; ``avg`` is their ratio.

    Attributes:
        val: the last value given to ``update``.
        sum: sum of ``val * n`` over all updates.
        count: sum of ``n``.
    """

    def __init__(self) -> None:
        self.val = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0


def count_correct(outputs: torch.Tensor, targets: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Number of rows whose target is among the top-k outputs, as a 0-d tensor on the outputs' device.

    Stays on the device so callers can accumulate without a host sync per step.
    """
    k = min(k, outputs.shape[1])
    top = outputs.topk(k, dim=1).indices
    return (top == targets.view(-1, 1)).any(dim=1).sum()


def accuracy(outputs: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Top-k accuracies (fractions in [0, 1]) of a batch, one per k."""
    n = max(targets.shape[0], 1)
    return [count_correct(outputs, targets, k).item() / n for k in topk]


class Logger:
    """A tab-separated log with a header row, flushed after every row (CRLF line ends, as the original).

    Args:
        path: the log file.
        header: column names; the first column must be the epoch.
        resume_after_epoch: when resuming, keep the rows of epochs up to this one and append after them
            (rows of later epochs, written by an interrupted run, are dropped so no epoch appears twice).
            None starts a new file.
        resume_after_batch: a run stopped in the middle of the next epoch: also keep that epoch's rows of
            batches up to this one (the second column must be the batch).
    """

    def __init__(self, path: str | os.PathLike, header: Sequence[str], *, resume_after_epoch: int | None = None,
                 resume_after_batch: int = 0):
        self.path = Path(path)
        self.header = list(header)
        kept = self._rows_to_keep(resume_after_epoch, resume_after_batch) if resume_after_epoch is not None else []
        # Rewrite header + kept rows to a temporary file and rename, so a kill here never loses the log.
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(self.header)
            writer.writerows(kept)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file, delimiter="\t")

    def _rows_to_keep(self, last_epoch: int, last_batch: int) -> list[list[str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        kept = []
        for row in rows[1:]:
            try:
                epoch = int(row[0])
                if epoch <= last_epoch or (last_batch and epoch == last_epoch + 1 and int(row[1]) <= last_batch):
                    kept.append(row)
            except (ValueError, IndexError):
                continue  # a torn last line of a killed run
        return kept

    def log(self, values: dict) -> None:
        """Append one row; ``values`` must have every column of the header."""
        self._writer.writerow([values[col] for col in self.header])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


RUN_LOGS = ("train.log", "train_batch.log", "val.log")


def move_previous_run(folder: Path, names: Sequence[str], *, patterns: Sequence[str] = ()) -> Path | None:
    """Move the files ``names`` (and those matching ``patterns``) of an earlier run in ``folder`` into
    ``folder/previous_run_<UTC time>/``, so a fresh start never overwrites them; returns that folder (None
    when there was nothing to move). Renames within one folder: instant whatever the sizes."""
    found = [folder / name for name in names if (folder / name).is_file()]
    found += [p for pattern in patterns for p in sorted(folder.glob(pattern)) if p.is_file()]
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = folder / f"previous_run_{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"previous_run_{stamp}_{n}"
    target.mkdir()
    for path in found:
        os.replace(path, target / path.name)
    return target


def new_file_mode() -> int:
    """The permissions the umask gives a new file (``tempfile.mkstemp`` would make it private: 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (all devices) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """Global RNG states as tensors and plain types (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`; missing entries are left alone."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
