"""Small shared helpers: meters, accuracy, TSV logs, the confusion-matrix files, seeding and RNG state capture, the
process's age."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

_IMPORTED = time.monotonic()  # the age's fallback origin where /proc cannot tell when the process started


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

    Multi-hot targets (N, C): rows where any of the top-k classes is a true label (0 for a row without any).
    Stays on the device so callers can accumulate without a host sync per step.
    """
    k = min(k, outputs.shape[1])
    top = outputs.topk(k, dim=1).indices
    if targets.dim() == 2:
        return (targets.gather(1, top) > 0).any(dim=1).sum()
    return (top == targets.view(-1, 1)).any(dim=1).sum()


def average_precision(scores, targets) -> float | None:
    """Average precision of one class: the sum over the distinct score thresholds, highest first, of (recall
    gained) x (precision there); tied scores are one threshold. This is the usual (scikit-learn's
    `average_precision_score`) non-interpolated definition. None when the class has no positive.

    [0.9, 0.8, 0.7, 0.6] with targets [1, 0, 1, 0] -> (1 + 2/3) / 2; [0.5, 0.5, 0.2], [1, 0, 1] -> 0.5 * 0.5 +
    0.5 * 2/3.
    """
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets) > 0
    n_pos = int(targets.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    scores, targets = scores[order], targets[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(targets)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall_gain = np.diff(np.r_[0, tp]) / n_pos
    return float(np.sum(recall_gain * precision))


def mean_average_precision(scores, targets) -> tuple[float, list[float | None]]:
    """mAP of (N, C) scores against (N, C) multi-hot targets over the classes with at least one positive
    (classes without positives are left out), and the per-class APs (None for those classes); 0.0 if none."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    per_class = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    known = [ap for ap in per_class if ap is not None]
    return (float(np.mean(known)) if known else 0.0), per_class


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


def new_file_mode(*, folder: bool = False) -> int:
    """The permissions the umask gives a new file or folder (``tempfile.mkstemp``/``mkdtemp`` would make it
    private: 0600/0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def beside_input(path: Path, tail: str) -> Path:
    """The default output of a tool run on `path`: named after it and placed beside it (my_videos/ ->
    my_videos<tail>, clip.mp4 -> clip<tail>), never in the current directory, which may be the source tree."""
    path = Path(path).resolve()
    name = path.stem if path.is_file() else path.name
    return path.with_name(name + tail) if name else path / tail.lstrip("_.")  # a file system root: inside it


PARTIAL_MARK = ".partial-"  # in the names of temporary files and folders that become outputs when complete
# This process's temporary outputs in progress (atomic_file, atomic_dir): what a stopped worker removes.
UNFINISHED_OUTPUTS: set[Path] = set()


def registered_unfinished(make: Callable[[], Path]) -> Path:
    """``make()``'s new temporary output, added to UNFINISHED_OUTPUTS with SIGTERM held in between: a stop
    cannot land after it exists and before it is registered (and so be left behind)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        tmp = make()
        UNFINISHED_OUTPUTS.add(tmp)
        return tmp
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _new_temporary_file(final: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{final.name}{PARTIAL_MARK}", dir=final.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a hidden temporary file path next to ``final`` that is renamed to ``final`` on success (with the
    umask's permissions; flushed to disk first), and removed on any error: ``final`` is old or complete."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = registered_unfinished(lambda: _new_temporary_file(final))
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        UNFINISHED_OUTPUTS.discard(tmp)


def seconds_since_process_start() -> float:
    """Seconds since this process started, interpreter start-up and imports included (Linux: its start time in
    /proc/self/stat against the boot clock); elsewhere, since this module was imported."""
    try:
        # Fields 3 onwards: after the last ')', as the process name between parentheses may hold anything.
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, in clock ticks since boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):  # no /proc, no boot clock
        return time.monotonic() - _IMPORTED


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


def tensorboard_writer(result_path, begin_epoch: int):
    """A TensorBoard writer in ``result_path``; a resumed run purges the events after its checkpoint."""
    from torch.utils.tensorboard import SummaryWriter  # heavy (about 1 s of imports): only with --tensorboard

    return SummaryWriter(log_dir=str(result_path), purge_step=begin_epoch if begin_epoch > 1 else None)


def write_scalars(writer, epoch: int, metrics: dict) -> None:
    """An epoch's train/val metrics as TensorBoard scalars (nothing without a writer)."""
    if writer is None:
        return
    names = {"loss": "train/loss", "acc": "train/acc", "lr": "train/lr", "val_loss": "val/loss", "val_acc": "val/acc",
             "val_map": "val/map"}
    for key, tag in names.items():
        if key in metrics:
            writer.add_scalar(tag, metrics[key], epoch)
    writer.flush()


def write_confusion_matrix(prefix: Path, labels: list[str], confusion: list[list[int]]) -> list[Path]:
    """Write PREFIX.csv (and PREFIX.png if matplotlib is available); return the written paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    csv_path = prefix.with_name(prefix.name + ".csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *labels])
        writer.writerows([label, *row] for label, row in zip(labels, confusion))
    written = [csv_path]
    try:
        import matplotlib  # optional dependency, imported only when a plot is drawn

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    size = min(40, 2 + 0.35 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=90, fontsize=6 if len(labels) > 30 else 9)
    ax.set_yticks(ticks, labels, fontsize=6 if len(labels) > 30 else 9)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true")
    fig.tight_layout()
    png_path = prefix.with_name(prefix.name + ".png")
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [*written, png_path]
