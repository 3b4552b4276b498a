"""One training epoch: explicit arguments in, a metrics dict out.

Loss and accuracy accumulate on the device; the host reads them only every ``log_interval`` batches
and at the end of the epoch, so a GPU never waits for a per-step ``.item()``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from distributed import all_reduce_sum
from errors import UserError
from utils import count_correct

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` ('fp32' disables it)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def prepare_batch(clips: torch.Tensor, targets: torch.Tensor, device: torch.device,
                  normalizer: Callable | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a batch to ``device`` and turn uint8 (N, T, H, W, C) clips into normalised float (N, C, T, H, W)."""
    clips = clips.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if normalizer is not None:
        clips = normalizer(clips)
    if clips.device.type == "cpu":
        # CPU models stay in the default layout (main.py); channels_last_3d input measured ~25% slower there.
        clips = clips.contiguous()
    return clips, targets


class _Progress:
    """A tqdm bar on an interactive main process, periodic plain log lines elsewhere on the main process."""

    def __init__(self, total: int, *, epoch: int, phase: str, enabled: bool):
        self.epoch, self.phase, self.enabled = epoch, phase, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"{phase} {epoch}", dynamic_ncols=True, leave=True)

    def update(self, done: int, total: int, stats: dict) -> None:
        if not self.enabled:
            return
        text = {"loss": f"{stats['loss']:.4f}", "acc": f"{stats['acc']:.3f}",
                "clips/s": f"{stats['clips_per_s']:.1f}", "data": f"{100 * stats['data_share']:.0f}%"}
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(text, refresh=False)
        else:
            log.info("%s epoch %d [%d/%d] %s", self.phase, self.epoch, done, total,
                     " ".join(f"{k} {v}" for k, v in text.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_finite(losses: list[float], *, epoch: int, first_batch: int) -> None:
    for i, value in enumerate(losses):
        if not math.isfinite(value):
            raise UserError(f"training diverged: loss is {value} at epoch {epoch}, batch {first_batch + i}; "
                            "lower --learning_rate or check the data (the last good checkpoint is kept)")


def train_one_epoch(model: nn.Module, loader: Iterable, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, epoch: int, normalizer: Callable | None = None,
                    precision: str = "fp32", scaler: torch.amp.GradScaler | None = None, log_interval: int = 10,
                    show_progress: bool = True, on_batches: Callable[[list[dict]], None] | None = None) -> dict:
    """Train ``model`` for one pass over ``loader``.

    ``on_batches`` receives, every ``log_interval`` batches and at the end, the rows of the batches since
    the previous call: dicts with batch (1-based), loss, acc (this process's values). Returns a dict with
    loss and acc (means over all clips of all ranks), lr, clips, time, clips_per_s and data_share.
    """
    model.train()
    lr = max(group["lr"] for group in optimizer.param_groups)
    n_batches = len(loader)
    progress = _Progress(n_batches, epoch=epoch, phase="train", enabled=show_progress)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct count
    pending: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
    n_clips, data_time, start = 0, 0.0, time.perf_counter()
    tick = start
    for i, (clips, targets) in enumerate(loader, start=1):
        data_time += time.perf_counter() - tick
        clips, targets = prepare_batch(clips, targets, device, normalizer)
        with autocast(device, precision):
            outputs = model(clips)
            loss = criterion(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = targets.shape[0]
        batch_loss, correct = loss.detach().float(), count_correct(outputs.detach(), targets)
        totals += torch.stack([batch_loss.double() * n, correct.double()])
        n_clips += n
        pending.append((i, n, batch_loss, correct))
        if i % log_interval == 0 or i == n_batches:
            _flush(pending, on_batches, epoch=epoch)
            elapsed = time.perf_counter() - start
            loss_sum, correct_sum = totals.tolist()
            progress.update(i, n_batches, {"loss": loss_sum / n_clips, "acc": correct_sum / n_clips,
                                           "clips_per_s": n_clips / elapsed, "data_share": data_time / elapsed})
        tick = time.perf_counter()
    _flush(pending, on_batches, epoch=epoch)
    progress.close()
    elapsed = time.perf_counter() - start
    return _epoch_result(totals, n_clips, device, lr=lr, elapsed=elapsed, data_time=data_time)


def _flush(pending: list, on_batches: Callable | None, *, epoch: int) -> None:
    if not pending:
        return
    # One host sync for all batches since the last flush.
    values = torch.stack([torch.stack([loss, correct.float()]) for _, _, loss, correct in pending]).tolist()
    _check_finite([v[0] for v in values], epoch=epoch, first_batch=pending[0][0])
    if on_batches is not None:
        on_batches([{"batch": i, "loss": v[0], "acc": v[1] / n} for (i, n, _, _), v in zip(pending, values)])
    pending.clear()


def _epoch_result(totals: torch.Tensor, n_clips: int, device: torch.device, *, lr: float, elapsed: float,
                  data_time: float) -> dict:
    summed = all_reduce_sum(torch.cat([totals, torch.tensor([float(n_clips)], dtype=torch.float64,
                                                            device=device)]))
    loss_sum, correct, count = summed.tolist()
    count = max(count, 1.0)
    return {"loss": loss_sum / count, "acc": correct / count, "lr": lr, "clips": int(count), "time": elapsed,
            "clips_per_s": n_clips / max(elapsed, 1e-9), "data_share": data_time / max(elapsed, 1e-9)}


def build_scheduler(optimizer: torch.optim.Optimizer, opt) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR scheduler named by --lr_scheduler; every one of them is stepped once per epoch."""
    sched = torch.optim.lr_scheduler
    if opt.lr_scheduler == "multistep":
        return sched.MultiStepLR(optimizer, milestones=opt.multistep_milestones, gamma=0.1)
    if opt.lr_scheduler == "plateau":
        return sched.ReduceLROnPlateau(optimizer, "min", patience=opt.plateau_patience)
    return sched.LambdaLR(optimizer, cosine_with_warmup(n_epochs=opt.n_epochs, warmup_epochs=opt.warmup_epochs))


def cosine_with_warmup(*, n_epochs: int, warmup_epochs: int) -> Callable[[int], float]:
    """LR factor for 0-based epoch k: linear warm-up to 1 over ``warmup_epochs``, then half a cosine to 0."""

    def factor(k: int) -> float:
        if k < warmup_epochs:
            return (k + 1) / (warmup_epochs + 1)
        span = max(n_epochs - warmup_epochs, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(k - warmup_epochs, span) / span))

    return factor


def step_scheduler(scheduler, val_loss: float | None) -> None:
    """Step once at the end of an epoch (the plateau scheduler needs that epoch's validation loss)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()
