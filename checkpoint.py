"""Checkpoint files: atomic writes, safe loads, and state_dict clean-up.

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

from errors import UserError
from opts import RESUME_AUTO
from utils import capture_rng_state

log = logging.getLogger(__name__)

# Wrappers that prefix state_dict keys: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(path: str | os.PathLike, payload: Mapping) -> Path:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    An interruption at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(payload), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


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


def load_checkpoint(path: str | os.PathLike) -> dict:
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
    obj = dict(obj)
    if "state_dict" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {"state_dict": obj}
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


@dataclass
class Resume:
    """A checkpoint to continue from (or only to take weights from, with --no_train)."""

    path: Path
    payload: dict = field(repr=False)

    @property
    def epoch(self) -> int:
        return int(self.payload.get("epoch", 0))


def find_resume(resume_path: str | os.PathLike | None, result_path: str | os.PathLike) -> Resume | None:
    """The checkpoint --resume_path names; for 'auto', the newest readable save_*.pth in ``result_path``."""
    if resume_path is None:
        return None
    if str(resume_path) != RESUME_AUTO:
        return Resume(Path(resume_path), load_checkpoint(resume_path))
    for stale in Path(result_path).glob(".save_*.pth.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    candidates = sorted(Path(result_path).glob("save_*.pth"), key=_epoch_of, reverse=True)
    for path in candidates:
        try:
            payload = load_checkpoint(path)
        except UserError as e:  # a damaged file from an earlier crash: fall back to the previous one
            log.warning("skipping %s: %s", path, e)
            continue
        log.info("resuming from %s", path)
        return Resume(path, payload)
    log.info("--resume_path auto: no checkpoint in %s, starting fresh", result_path)
    return None


def _epoch_of(path: Path) -> int:
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def training_payload(epoch: int, *, model: nn.Module, arch: str, model_kwargs: Mapping, optimizer, scheduler,
                     scaler, class_names: Sequence[str], options: Mapping) -> dict:
    """What save_{epoch}.pth holds: weights, optimiser/scheduler/scaler/RNG state to resume exactly, and the
    model description (``arch``, ``model_kwargs`` with the actual head size), class names and options."""
    bare = unwrap_model(model)
    kwargs = {**model_kwargs, "n_classes": bare.get_classifier().out_features}
    payload = {"epoch": epoch, "arch": arch, "state_dict": strip_wrapper_prefixes(bare.state_dict()),
               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": capture_rng_state(),
               "model_kwargs": kwargs, "class_names": list(class_names), "options": dict(options)}
    if scaler is not None:
        payload["scaler"] = scaler.state_dict()
    return payload
