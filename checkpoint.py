"""Checkpoint files: the schema of their keys, atomic writes, safe loads, and state_dict clean-up.

``FIELDS`` names every key a checkpoint of this toolkit may hold, with its type and the format version that
added it. ``make_checkpoint`` is the one way to assemble one (it refuses keys outside the schema),
``save_checkpoint`` writes it atomically, and ``load_checkpoint`` reads any checkpoint (ours of every
version, the original's, a bare state_dict) into a ``Checkpoint``, whose properties are the only readers of
its keys.

Checkpoints hold only tensors and plain Python types, so they load with
``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is refused
instead of being allowed to run code.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from datasets.clip_spec import ClipSpec
from errors import UserError
from opts import RESUME_AUTO
from utils import capture_rng_state, new_file_mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Field:
    """One key of a checkpoint: the type of its value, the format version that added it, what it holds."""

    type: type | tuple[type, ...]
    since: int  # 0: the original 3D-ResNets-PyTorch already wrote it
    doc: str


FORMAT_VERSION = 4  # written as "format_version"; files without it are of version 0 (original) to 3
FIELDS: dict[str, Field] = {
    "state_dict": Field(Mapping, 0, "the model's weights, with the original's key names"),
    "epoch": Field(int, 0, "epochs completed"),
    "arch": Field(str, 0, "'{model}-{depth}', e.g. 'resnet-50'"),
    "optimizer": Field(Mapping, 0, "optimiser state"),
    "scheduler": Field(Mapping, 0, "LR scheduler state (the original saved it before its end-of-epoch step)"),
    "scaler": Field(Mapping, 1, "fp16 GradScaler state"),
    "rng": Field(Mapping, 1, "python/numpy/torch/CUDA RNG states, for an exact resume"),
    "model_kwargs": Field(Mapping, 1, "the model builder's keyword arguments, actual head size included"),
    "class_names": Field(list, 1, "class index -> name"),
    "options": Field(Mapping, 1, "the run's options as plain types (as opts.json)"),
    "mid_epoch": Field(Mapping, 2, "a run stopped inside epoch epoch + 1: {batch, world_size, "
                                   "process_batch_size, meters: per rank [loss sum, correct, clips]}"),
    "ema_state_dict": Field(Mapping, 3, "the weight average of --ema_decay, same keys as state_dict"),
    "ema_updates": Field(int, 3, "updates of that average, so a resumed one continues exactly"),
    "optimizer_steps": Field(int, 3, "optimiser steps so far (--accumulate_grad_batches counts one per step)"),
    "clip_spec": Field(Mapping, 4, "the clip the model was trained on (datasets.clip_spec.ClipSpec.to_dict)"),
    "format_version": Field(int, 4, "FORMAT_VERSION of the writer"),
}


class Checkpoint(dict):
    """A loaded checkpoint: the file's dict, read through typed properties (a value of the wrong type, as a
    foreign file may hold, reads as absent)."""

    def field(self, key: str, default=None):
        """The value of schema key ``key`` when present and of its schema type, else ``default``."""
        value = self.get(key)
        return value if isinstance(value, FIELDS[key].type) and not isinstance(value, bool) else default

    @property
    def state_dict(self) -> Mapping:
        return self["state_dict"]

    @property
    def epoch(self) -> int:
        return int(self.field("epoch", 0))

    @property
    def arch(self) -> str | None:
        return self.field("arch") or None

    @property
    def model_kwargs(self) -> dict | None:
        kwargs = self.field("model_kwargs")
        return dict(kwargs) if kwargs is not None else None

    @property
    def class_names(self) -> list[str] | None:
        return list(self.field("class_names") or []) or None

    @property
    def options(self) -> dict:
        return dict(self.field("options", {}))

    @property
    def mid_epoch(self) -> dict | None:
        return self.field("mid_epoch")

    @property
    def rng(self) -> dict:
        return self.field("rng", {})

    @property
    def optimizer_steps(self) -> int:
        return self.field("optimizer_steps", 0)

    @property
    def clip_spec(self) -> dict | None:
        return self.field("clip_spec")

    @property
    def clip(self) -> ClipSpec:
        """The clip the model was trained on; for files before format 4, derived from their options."""
        return ClipSpec.from_stored(self.clip_spec, self.options, self.class_names or ())

    @property
    def format_version(self) -> int:
        """The writer's format version; for files older than version 4, the newest version their keys need."""
        return self.field("format_version", max((FIELDS[k].since for k in self if k in FIELDS), default=0))

    @property
    def is_original_format(self) -> bool:
        """Written by the original code (it saved its scheduler before the end-of-epoch step)."""
        return "scheduler" in self and not any(key in self for key in ORIGINAL_MISSING_KEYS)

    @property
    def ema_updates(self) -> int:
        return self.field("ema_updates", 1)

    def eval_weights(self, choice: str = "ema") -> tuple[Mapping, str]:
        """The weights to evaluate with: the EMA average when the file has one and ``choice`` is 'ema', else
        the raw ``state_dict``; and which ones ('ema' or 'raw')."""
        if choice == "ema" and self.field("ema_state_dict") is not None:
            return self["ema_state_dict"], "ema"
        return self.state_dict, "raw"


def make_checkpoint(**fields) -> Checkpoint:
    """A checkpoint of this toolkit's current format from schema keys (None values are left out)."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"not checkpoint schema keys: {unknown} (add them to checkpoint.FIELDS)")
    payload = Checkpoint({k: v for k, v in fields.items() if v is not None}, format_version=FORMAT_VERSION)
    wrong = [k for k, v in payload.items() if not isinstance(v, FIELDS[k].type)]
    if wrong or "state_dict" not in payload:
        raise ValueError(f"checkpoint fields of the wrong type: {wrong}" if wrong else "a checkpoint needs state_dict")
    return payload

# Wrappers that prefix state_dict keys: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(path: str | os.PathLike, payload: Mapping) -> Path:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    An interruption at any moment leaves either the old file or the new one, never a torn file. The file
    gets the permissions the umask gives new files. A failed write (disk full, no permission) raises
    :class:`UserError` with the reason; an interrupted one (Ctrl-C) raises a plain KeyboardInterrupt
    (torch would wrap both in a RuntimeError about its zip writer).
    """
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, new_file_mode())  # mkstemp makes it private
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(payload), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        cause = _root_cause(e)
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        if isinstance(cause, OSError):
            raise UserError(f"cannot write checkpoint {path}: {cause.strerror or cause}; "
                            "the checkpoints written before it are intact") from None
        raise
    return path


def _root_cause(error: BaseException) -> BaseException:
    """The first exception of a chain (torch's zip writer turns an OSError or Ctrl-C into a RuntimeError)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform allows opening a directory.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint or pretrained file safely, on the CPU.

    Returns a dict that always has a ``state_dict`` entry: a file that is itself a bare
    state_dict is wrapped. Raises :class:`UserError` with a one-line reason for a missing,
    truncated, corrupt or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not _looks_like_pickle_or_zip(path):  # random bytes also end up in the (weights-only) unpickler
            raise UserError(f"cannot read checkpoint {path}: the file is corrupt or not a PyTorch checkpoint "
                            f"({_unpickling_reason(e)})") from None
        raise UserError(
            f"refusing to load {path}: it needs arbitrary unpickling, which could run code "
            f"({_unpickling_reason(e)}). Only checkpoints of tensors and plain Python types are accepted."
        ) from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes torch.load raise (EOFError, KeyError, ...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: the file is corrupt or truncated ({reason})") from None
    if not isinstance(obj, Mapping):
        raise UserError(f"cannot use checkpoint {path}: expected a dict, found {type(obj).__name__}")
    obj = Checkpoint(obj)
    if "state_dict" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return Checkpoint(state_dict=dict(obj))
        raise UserError(f"cannot use checkpoint {path}: it has no 'state_dict' entry (keys: {sorted(obj)[:8]})")
    if not isinstance(obj["state_dict"], Mapping):
        raise UserError(f"cannot use checkpoint {path}: its 'state_dict' is not a mapping")
    return obj


def _looks_like_pickle_or_zip(path: Path) -> bool:
    """A zip archive (torch.save's format) or a pickle stream of protocol 2+ (the legacy format)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _unpickling_reason(error: Exception) -> str:
    """The specific line of torch's long weights-only message, e.g. 'unsupported GLOBAL posix.system ...'."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    specific = [line for line in lines if "GLOBAL" in line or line.startswith("Unsupported")]
    return (specific or lines or ["unsupported content"])[0]


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading ``module.`` / ``_orig_mod.`` prefixes (in any combination) from every key."""
    cleaned = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    stripped = True
        cleaned[key] = value
    return cleaned


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP/DataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


LATEST_NAME = "latest.pth"  # the rolling / on-signal checkpoint next to save_{epoch}.pth
ORIGINAL_MISSING_KEYS = ("rng", "model_kwargs", "options")  # what only this project's checkpoints hold


@dataclass
class Resume:
    """A checkpoint to continue from (or only to take weights from, with --no_train)."""

    path: Path
    payload: Checkpoint = field(repr=False)

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.payload.epoch

    @property
    def batch(self) -> int:
        """Batches of epoch ``epoch + 1`` completed (a run stopped mid-epoch), else 0."""
        return int((self.payload.mid_epoch or {}).get("batch", 0))

    @property
    def progress(self) -> tuple[int, int]:
        return self.epoch, self.batch


def find_resume(resume_path: str | os.PathLike | None, result_path: str | os.PathLike) -> Resume | None:
    """The checkpoint --resume_path names; for 'auto', the readable checkpoint in ``result_path`` that is
    furthest on: the newest save_*.pth or latest.pth (written mid-epoch on a stop signal and every
    --checkpoint_minutes)."""
    if resume_path is None:
        return None
    if str(resume_path) != RESUME_AUTO:
        return Resume(Path(resume_path), load_checkpoint(resume_path))
    folder = Path(result_path)
    for pattern in (".save_*.pth.*.tmp", f".{LATEST_NAME}.*.tmp"):  # left by a process killed mid-write
        for stale in folder.glob(pattern):
            stale.unlink(missing_ok=True)
    found = [r for r in (_newest_epoch_checkpoint(folder), _readable(folder / LATEST_NAME)) if r is not None]
    if not found:
        log.info("--resume_path auto: no checkpoint in %s, starting fresh", result_path)
        return None
    best = max(found, key=lambda r: r.progress)
    log.info("resuming from %s", best.path)
    return best


def _newest_epoch_checkpoint(folder: Path) -> Resume | None:
    for path in sorted(folder.glob("save_*.pth"), key=_epoch_of, reverse=True):
        resume = _readable(path)
        if resume is not None:
            return resume
    return None


def _readable(path: Path) -> Resume | None:
    if not path.is_file():
        return None
    try:
        return Resume(path, load_checkpoint(path))
    except UserError as e:  # a damaged file from an earlier crash: fall back to another one
        log.warning("skipping %s: %s", path, e)
        return None


def _epoch_of(path: Path) -> int:
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def training_payload(epoch: int, *, model: nn.Module, arch: str, model_kwargs: Mapping, optimizer, scheduler,
                     scaler, class_names: Sequence[str], options: Mapping, clip_spec: Mapping,
                     mid_epoch: Mapping | None = None, **recipe) -> Checkpoint:
    """What save_{epoch}.pth holds: weights, optimiser/scheduler/scaler/RNG state to resume exactly, and the
    model description (``arch``, ``model_kwargs`` with the actual head size), class names, options and the clip
    spec (``datasets.clip_spec.ClipSpec.to_dict()``).

    ``epoch`` is the number of completed epochs; ``mid_epoch`` and ``recipe`` (the EMA, optimiser steps) are
    further schema fields (see FIELDS)."""
    bare = unwrap_model(model)
    kwargs = {**model_kwargs, "n_classes": bare.get_classifier().out_features}
    return make_checkpoint(epoch=epoch, arch=arch, state_dict=strip_wrapper_prefixes(bare.state_dict()),
                           optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=capture_rng_state(),
                           model_kwargs=kwargs, class_names=list(class_names), options=dict(options),
                           clip_spec=dict(clip_spec), scaler=scaler.state_dict() if scaler is not None else None,
                           mid_epoch=dict(mid_epoch) if mid_epoch is not None else None, **recipe)


def newest_checkpoint_note(result_path: str | os.PathLike | None) -> str:
    """What a rerun can continue from after an interruption that saved nothing (checkpoints are atomic, so
    whatever was being written when it came is simply absent)."""
    folder = result_path
    found = [p for p in (Path(folder).glob("*.pth") if folder is not None and Path(folder).is_dir() else [])
             if p.name.startswith("save_") or p.name == LATEST_NAME]
    if not found:
        return "no checkpoint has been saved yet"
    newest = max(found, key=lambda p: p.stat().st_mtime)
    return f"nothing saved since {newest}; rerun with --resume_path auto to continue from it"
