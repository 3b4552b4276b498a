"""One training epoch: explicit arguments in, a metrics dict out.

Loss and accuracy accumulate on the device; the host reads them only every ``log_interval`` batches
and at the end of the epoch, so a GPU never waits for a per-step ``.item()``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from checkpoint import LATEST_NAME, Checkpoint, Resume, save_checkpoint, training_payload, unwrap_model
from datasets import factory as dataset
from datasets.clip_spec import ClipSpec
from engine.compiled import CompileReport, compile_model, compiled_part, use_compile_cache
from engine.distributed import DistInfo, all_reduce_sum, gather_objects
from engine.ema import build_ema, ema_payload, restore_ema
from engine.forward import autocast, prepare_batch
from engine.mixing import eraser_from_opts, mixer_from_opts
from engine.precise_bn import recompute_bn_stats
from engine.preemption import Action, Preempted, StepControl
from engine.stop_signals import signal_name
from errors import UserError
from models import factory as model_lib
from opts import opts_to_plain
from utils import Logger, count_correct, seconds_since_process_start

log = logging.getLogger(__name__)

class _Progress:
    """A tqdm bar on an interactive main process, periodic plain log lines elsewhere on the main process."""

    def __init__(self, total: int, *, epoch: int, phase: str, enabled: bool):
        self.epoch, self.phase, self.enabled = epoch, phase, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
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


def build_criterion(opt: argparse.Namespace, *, train: bool = False) -> nn.Module:
    """The loss: cross-entropy over class indices (or the soft targets of mixing), with --label_smoothing in
    training only, so validation losses keep their meaning; with --multi_label binary cross-entropy on the
    logits against multi-hot targets (each class an independent yes/no)."""
    if opt.multi_label:
        return nn.BCEWithLogitsLoss()
    return nn.CrossEntropyLoss(label_smoothing=opt.label_smoothing if train else 0.0)


def _check_finite(losses: list[float], *, epoch: int, first_batch: int) -> None:
    for i, value in enumerate(losses):
        if not math.isfinite(value):
            raise UserError(f"training diverged: loss is {value} at epoch {epoch}, batch {first_batch + i}; "
                            "lower --learning_rate or check the data (the last good checkpoint is kept)")


@dataclass
class EpochProgress:
    """Where an epoch stands: batches done and this process's running loss sum, correct count and clips."""

    batch: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    clips: int = 0
    steps: int = 0  # optimiser steps taken in this epoch by this call (for the run's step count)


def train_one_epoch(model: nn.Module, loader: Iterable, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, epoch: int, normalizer: Callable | None = None,
                    precision: str = "fp32", scaler: torch.amp.GradScaler | None = None, log_interval: int = 10,
                    show_progress: bool = True, on_batches: Callable[[list[dict]], None] | None = None,
                    start: EpochProgress | None = None, control: StepControl | None = None,
                    on_checkpoint: Callable[[EpochProgress, Action], None] | None = None,
                    mixer: Callable | None = None, clip_grad_norm: float = 0.0, ema: nn.Module | None = None,
                    accumulate: int = 1, on_first_step: Callable[[float], None] | None = None,
                    eraser: Callable | None = None) -> dict:
    """Train ``model`` for one pass over ``loader``.

    ``on_batches`` receives, every ``log_interval`` batches and at the end, the rows of the batches since
    the previous call: dicts with batch (1-based), loss, acc (this process's values). Returns a dict with
    loss and acc (means over all clips of all ranks), lr, clips, steps (optimiser steps of this call), time,
    clips_per_s and data_share. The step itself (erasing, mixing, accumulation, clipping, EMA) is
    :class:`_Stepper`'s.

    A resumed epoch passes ``start`` (the loader then yields only the remaining batches). After every
    optimiser step ``control.poll()`` may ask for a checkpoint: the logged rows are flushed and
    ``on_checkpoint(progress, action)`` is called (it raises to stop). With ``accumulate`` > 1 that happens
    only at the end of a group, so a checkpoint never holds half-accumulated gradients.

    ``on_first_step(data_wait_s)`` is called once, when the first optimiser step of this call has finished on the
    device (one synchronisation), with the seconds spent waiting for the loader until then.
    """
    model.train()
    lr = max(group["lr"] for group in optimizer.param_groups)
    start = start or EpochProgress()
    n_batches = start.batch + len(loader)
    stepper = _Stepper(model, criterion, optimizer, device, precision=precision, scaler=scaler, mixer=mixer,
                       clip_grad_norm=clip_grad_norm, ema=ema, accumulate=accumulate, n_batches=n_batches,
                       eraser=eraser)
    progress = _Progress(n_batches, epoch=epoch, phase="train", enabled=show_progress)
    totals = torch.tensor([start.loss_sum, start.correct], dtype=torch.float64, device=device)
    pending: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
    n_clips, data_time, start_time = start.clips, 0.0, time.perf_counter()
    tick = start_time
    if control is not None:
        control.begin_steps()
    for i, (clips, targets) in enumerate(loader, start=start.batch + 1):
        data_time += time.perf_counter() - tick
        clips, targets = prepare_batch(clips, targets, device, normalizer)
        loss, outputs, targets = stepper.batch(i, clips, targets)
        n = targets.shape[0]
        batch_loss, correct = loss.detach().float(), count_correct(outputs.detach(), targets)
        totals += torch.stack([batch_loss.double() * n, correct.double()])
        n_clips += n
        pending.append((i, n, batch_loss, correct))
        if i % log_interval == 0 or i == n_batches:
            _flush(pending, on_batches, epoch=epoch)
            elapsed = time.perf_counter() - start_time
            loss_sum, correct_sum = totals.tolist()
            progress.update(i, n_batches, {"loss": loss_sum / n_clips, "acc": correct_sum / n_clips,
                                           "clips_per_s": (n_clips - start.clips) / elapsed,
                                           "data_share": data_time / elapsed})
        if on_first_step is not None and stepper.stepped:
            _wait_for_device(device)
            on_first_step(data_time)
            on_first_step = None
        action = control.poll() if control is not None and stepper.stepped else None
        if action is not None and on_checkpoint is not None:
            _flush(pending, on_batches, epoch=epoch)  # the log holds every batch the checkpoint has
            loss_sum, correct_sum = totals.tolist()
            on_checkpoint(EpochProgress(i, loss_sum, correct_sum, n_clips, stepper.steps), action)
        tick = time.perf_counter()
    _flush(pending, on_batches, epoch=epoch)
    if control is not None:
        control.end_steps()
    progress.close()
    elapsed = time.perf_counter() - start_time
    result = _epoch_result(totals, n_clips, device, lr=lr, elapsed=elapsed, data_time=data_time,
                           new_clips=n_clips - start.clips)
    return {**result, "steps": stepper.steps}


class _Stepper:
    """Forward, loss, backward and optimiser step of one batch, with the fine-tuning recipe's options.

    ``eraser`` (random erasing) changes the clips first; ``mixer`` then mixes them and turns the labels into soft
    targets (the loss uses them; the returned targets are the dominant labels, so accuracy stays meaningful).
    With ``accumulate`` N, batches form groups of N (the last group of the epoch may be smaller) and the
    optimiser steps once per group: each batch's loss is divided by its group's size, and DDP synchronises
    gradients only on the group's last batch. ``clip_grad_norm`` > 0
    clips the gradients' total norm before the step (unscaled first under fp16); ``ema`` is updated after it.
    """

    def __init__(self, model, criterion, optimizer, device, *, precision, scaler, mixer, clip_grad_norm, ema,
                 accumulate, n_batches, eraser=None):
        self.model, self.criterion, self.optimizer, self.device = model, criterion, optimizer, device
        self.precision, self.scaler, self.mixer, self.ema, self.eraser = precision, scaler, mixer, ema, eraser
        self.clip_grad_norm, self.accumulate, self.n_batches = clip_grad_norm, max(int(accumulate), 1), n_batches
        self.steps = 0
        self.stepped = False  # whether the last batch ended with an optimiser step

    def batch(self, i: int, clips: torch.Tensor, labels: torch.Tensor):
        """Train on batch ``i`` (1-based); returns the (unscaled) loss, the outputs and the labels to score."""
        group_start = (i - 1) // self.accumulate * self.accumulate + 1
        group_size = min(self.accumulate, self.n_batches - group_start + 1)
        last_of_group = i == group_start + group_size - 1
        if i == group_start:
            self.optimizer.zero_grad(set_to_none=True)
        targets = labels
        if self.eraser is not None:
            clips = self.eraser(clips)
        if self.mixer is not None:
            clips, targets = self.mixer(clips, labels)
            labels = targets.argmax(dim=1)  # the dominant label of each mixed clip
        skip_sync = not last_of_group and hasattr(self.model, "no_sync")  # DDP: all-reduce on the step's batch only
        with self.model.no_sync() if skip_sync else contextlib.nullcontext():
            loss, outputs = self._forward_backward(clips, targets, group_size)
        if last_of_group:
            self._step()
        self.stepped = last_of_group
        return loss, outputs, labels

    def _forward_backward(self, clips: torch.Tensor, targets: torch.Tensor, group_size: int):
        """Forward, loss and backward of one batch. A --compile model that fails in them goes back to eager and
        the batch is run again: the failed attempt changed no gradient and (restored by ``fall_back``) no
        BatchNorm statistic, so the batch counts exactly once (see engine.compiled)."""
        compiled = compiled_part(self.model)
        if compiled is None or not compiled.active:
            return self._forward_backward_once(clips, targets, group_size)
        try:
            return self._forward_backward_once(clips, targets, group_size)
        except Exception as error:  # noqa: BLE001 - a compiled backward fails with whatever inductor raised
            compiled.fall_back(error)
        return self._forward_backward_once(clips, targets, group_size)

    def _forward_backward_once(self, clips: torch.Tensor, targets: torch.Tensor, group_size: int):
        with autocast(self.device, self.precision):
            outputs = self.model(clips)
            loss = self.criterion(outputs, targets)
        scaled = loss / group_size if group_size > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss, outputs

    def _step(self) -> None:
        if self.clip_grad_norm > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.steps += 1
        if self.ema is not None:
            self.ema.update_parameters(unwrap_model(self.model))


def _wait_for_device(device: torch.device) -> None:
    """Until the work queued on `device` is done (CUDA runs asynchronously; the CPU already has)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
                  data_time: float, new_clips: int) -> dict:
    summed = all_reduce_sum(torch.cat([totals, torch.tensor([float(n_clips)], dtype=torch.float64,
                                                            device=device)]))
    loss_sum, correct, count = summed.tolist()
    count = max(count, 1.0)
    return {"loss": loss_sum / count, "acc": correct / count, "lr": lr, "clips": int(count), "time": elapsed,
            "clips_per_s": new_clips / max(elapsed, 1e-9), "data_share": data_time / max(elapsed, 1e-9)}


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


def build_optimizer(net: nn.Module, opt: argparse.Namespace) -> torch.optim.Optimizer:
    """SGD or AdamW (--optimizer) over every parameter, or over those from --ft_begin_module on when fine-tuning.

    --weight_decay applies to every parameter unless --no_decay_bn_bias (the default for AdamW) leaves the
    BatchNorm and bias parameters out of it (see :func:`decay_param_groups`). --layer_decay splits those
    groups further by depth stage, each with its own LR (see :func:`layer_decay_param_groups`).
    """
    params = (model_lib.get_fine_tuning_parameters(net, opt.ft_begin_module) if opt.pretrain_path is not None
              else list(net.parameters()))
    if opt.no_decay_bn_bias:
        params = decay_param_groups(net, params, opt.weight_decay)
    if opt.layer_decay != 1:
        groups = params if opt.no_decay_bn_bias else [{"params": params, "weight_decay": opt.weight_decay}]
        params = layer_decay_param_groups(net, groups, opt.learning_rate, opt.layer_decay)
    if opt.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
    return torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum,
                           dampening=0.0 if opt.nesterov else opt.dampening, weight_decay=opt.weight_decay,
                           nesterov=opt.nesterov)


def decay_param_groups(net: nn.Module, params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """Two parameter groups of ``params``: with ``weight_decay``, and without it for the parameters of
    BatchNorm layers and every bias (decaying those only shrinks the normalisation, it does not regularise)."""
    exempt = set()
    for module in net.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.modules.batchnorm._BatchNorm) or name == "bias":
                exempt.add(id(param))
    return [{"params": [p for p in params if id(p) not in exempt], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}]


def layer_decay_param_groups(net: nn.Module, groups: list[dict], lr: float, layer_decay: float) -> list[dict]:
    """``groups`` split by the model's depth stages (models.common.DEPTH_STAGES): stage k counted back from the
    head (head 0, layer4 1, ..., stem 5) trains with ``lr * layer_decay ** k``. Each group keeps its other
    settings (weight decay) and gains ``stage``; empty ones (frozen stages, no bias) are left out.

    The schedulers multiply every group's LR by the same factor, so the ratios hold over the run (the plateau
    scheduler stops cutting a group whose cut would be smaller than its eps, 1e-8: only at tiny LRs).
    """
    by_stage = unwrap_model(net).parameters_by_depth_stage()
    stage_of = {id(p): stage for stage, params in by_stage.items() for p in params}
    split = []
    for depth, stage in enumerate(reversed(by_stage)):
        for group in groups:
            params = [p for p in group["params"] if stage_of[id(p)] == stage]
            if params:
                split.append({**group, "params": params, "lr": lr * layer_decay ** depth, "stage": stage})
    return split


def log_param_groups(optimizer: torch.optim.Optimizer) -> None:
    """One line per parameter group: its stage, LR, parameter count and weight decay."""
    for group in optimizer.param_groups:
        log.info("parameter group %s: lr %.4g, %d parameters, weight decay %g", group.get("stage", "all"),
                 group["lr"], sum(p.numel() for p in group["params"]), group["weight_decay"])


def run_logger(opt: argparse.Namespace, dist: DistInfo, name: str, header: list[str],
               resume: Resume | None, *, resume_batch: int = 0) -> Logger | None:
    """A TSV log in --result_path on the main process (None elsewhere); a resumed run drops later rows
    (a per-batch log keeps the first ``resume_batch`` batches of the epoch it resumes in)."""
    if not dist.is_main:
        return None
    return Logger(Path(opt.result_path) / name, header, resume_after_epoch=resume.epoch if resume else None,
                  resume_after_batch=resume_batch)


def report_data_problems(loader, before: dict[str, int], *, phase: str, epoch: int, device: torch.device) -> dict:
    """Log the bad frames/videos met during one pass (summed over ranks); returns the new cumulative counts."""
    problems = dataset.data_problems(loader)
    now = problems.counts()
    delta = problems.delta(now, before)
    summed = all_reduce_sum(torch.tensor(list(delta.values()), dtype=torch.float64, device=device)).tolist()
    found = {kind: int(n) for kind, n in zip(delta, summed) if n}
    if found:
        log.warning("%s epoch %d: data problems %s (skipped or padded)", phase, epoch,
                    ", ".join(f"{kind} {n}" for kind, n in found.items()))
    return now


class Trainer:
    """Optimiser, scheduler, loader and logs of a training run, and what a checkpoint needs from them.

    Logs are opened by :meth:`open_logs` once the run is known to start (a refused run writes nothing).
    """

    def __init__(self, opt: argparse.Namespace, net: nn.Module, dist: DistInfo, *, resume: Resume | None):
        model_lib.check_batch_norm_can_train(net, opt)
        self.opt, self.dist = opt, dist
        self.optimizer = build_optimizer(net, opt)  # before wrapping: fine-tuning freezes the bare model's stages
        if opt.layer_decay != 1:
            log_param_groups(self.optimizer)
        self.ema = build_ema(net, opt.ema_decay)
        self.mixer = mixer_from_opts(opt, unwrap_model(net).get_classifier().out_features)
        self.eraser = eraser_from_opts(opt)
        self.optimizer_steps = 0  # over the whole run; with --accumulate_grad_batches N, one per N batches
        self.compile_report = None  # with --compile: logs compile time and cache use once per epoch
        self.first_step_logged = False  # the time to the process's first optimiser step is logged once
        self.model = self._wrap(net)
        self.scheduler = build_scheduler(self.optimizer, opt)
        self.scaler = torch.amp.GradScaler(dist.device.type) if opt.precision == "fp16" else None
        self.loader, self.sampler = dataset.build_train_loader(opt, dist)
        self.bn_loader, self.bn_sampler = (dataset.build_bn_stats_loader(opt, dist, self.loader) if opt.precise_bn
                                           else (None, None))
        self.control = StepControl(checkpoint_minutes=opt.checkpoint_minutes, is_main=dist.is_main)
        self.begin_epoch = 1
        self.start = EpochProgress()  # where begin_epoch starts (mid-epoch after a stop)
        self.resume = resume
        if resume is not None:
            self._restore(resume)
        self.train_logger = self.batch_logger = None
        self.class_names = dataset.get_class_names(opt)
        self.clip_spec = ClipSpec.from_options(opt, self.class_names)  # saved in every checkpoint

    def open_logs(self) -> None:
        """train.log and train_batch.log: new, or kept up to the resumed position."""
        resume = self.resume
        self.train_logger = run_logger(self.opt, self.dist, "train.log", ["epoch", "loss", "acc", "lr"], resume)
        self.batch_logger = run_logger(self.opt, self.dist, "train_batch.log",
                                       ["epoch", "batch", "iter", "loss", "acc", "lr"], resume,
                                       resume_batch=self.start.batch)

    @contextlib.contextmanager
    def stop_signals(self):
        """Around the epoch loop: SIGTERM/SIGUSR1/Ctrl-C ask for a clean stop (see engine.preemption)."""
        self.control.install()
        try:
            yield
        finally:
            self.control.uninstall()

    def stop_if_asked(self) -> None:
        """Before the first step (every rank together): a stop signal that came during start-up ends the run
        here with :class:`Preempted`; nothing new to save, the checkpoint it resumed from (if any) holds it all."""
        if not self.control.stop_requested():
            return
        signum = self.control.signum
        if self.resume is None:
            raise Preempted(signum, f"stopped by {signal_name(signum)} before training started; nothing to save; "
                                    "rerun the same command to start")
        where = (f"after batch {self.start.batch} of epoch {self.begin_epoch}" if self.start.batch
                 else f"after epoch {self.begin_epoch - 1}")
        raise Preempted(signum, f"stopped by {signal_name(signum)} {where}, before training went on; nothing new "
                                f"to save ({self.resume.path} holds it all); rerun the same command with "
                                "--resume_path auto to continue")

    def _wrap(self, net: nn.Module) -> nn.Module:
        if self.opt.compile:
            self.compile_report = CompileReport(use_compile_cache(self.opt.result_path))
            net = compile_model(net)
        if self.dist.distributed:
            device_ids = [self.dist.device] if self.dist.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
        return net

    def _restore(self, resume: Resume) -> None:
        payload, opt = resume.payload, self.opt
        self.begin_epoch = resume.epoch + 1
        if payload.field("optimizer") is not None:
            try:
                self.optimizer.load_state_dict(payload.field("optimizer"))
            except (ValueError, KeyError) as e:
                log.warning("optimizer state of %s does not fit (%s); starting with a fresh optimizer", resume.path, e)
        saved_sched = payload.options.get("lr_scheduler", opt.lr_scheduler)
        saved_state = payload.field("scheduler")
        if saved_state is not None and saved_sched == opt.lr_scheduler:
            self.scheduler.load_state_dict(saved_state)
        elif saved_state is not None:
            log.warning("checkpoint used --lr_scheduler %s; starting a fresh %s schedule", saved_sched,
                        opt.lr_scheduler)
        if opt.overwrite_milestones:
            self.scheduler.milestones = Counter(opt.multistep_milestones)
        if saved_state is not None and saved_sched == opt.lr_scheduler and payload.is_original_format:
            self._catch_up_original_scheduler()
        if self.scaler is not None and payload.field("scaler") is not None:
            self.scaler.load_state_dict(payload.field("scaler"))
        self.start = self._mid_epoch_start(resume)
        self._restore_recipe(resume)
        where = f" after batch {self.start.batch}" if self.start.batch else ""
        log.info("resuming training at epoch %d%s", self.begin_epoch, where)

    def _catch_up_original_scheduler(self) -> None:
        """The original saved its scheduler before the end-of-epoch step: take that step now (plateau needs
        the validation loss it did not save, so it continues without that one step)."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            log.warning("original-format checkpoint: the plateau scheduler misses the step of its last epoch")
            return
        self.scheduler.step()

    def _mid_epoch_start(self, resume: Resume) -> EpochProgress:
        """This rank's position and meters in the epoch a stopped run was in the middle of."""
        mid = resume.payload.mid_epoch
        if not mid or not mid.get("batch"):
            return EpochProgress()
        here = {"world_size": self.dist.world_size, "process_batch_size": self.loader.batch_size}
        saved = {key: mid.get(key) for key in here}
        if saved != here:
            log.warning("%s stopped in epoch %d with %s; this run has %s, so epoch %d starts again from its "
                        "beginning", resume.path, self.begin_epoch, saved, here, self.begin_epoch)
            return EpochProgress()
        loss_sum, correct, clips = mid["meters"][self.dist.rank]
        return EpochProgress(int(mid["batch"]), float(loss_sum), float(correct), int(clips))

    def _restore_recipe(self, resume: Resume) -> None:
        restore_ema(self.ema, resume.payload, source=str(resume.path))
        self.optimizer_steps = resume.payload.optimizer_steps

    @property
    def eval_model(self) -> nn.Module:
        """What validation and inference use: the EMA of the weights when --ema_decay is on, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def train_epoch(self, epoch: int, criterion: nn.Module, normalizer) -> dict:
        start = self.start if epoch == self.begin_epoch else EpochProgress()
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch, start=start.batch * self.loader.batch_size)
        n_batches = start.batch + len(self.loader)
        lr = max(g["lr"] for g in self.optimizer.param_groups)

        def log_batches(rows: list[dict]) -> None:
            for row in rows:
                self.batch_logger.log({"epoch": epoch, "iter": (epoch - 1) * n_batches + row["batch"], "lr": lr,
                                       **row})

        def checkpoint(progress: EpochProgress, action: Action) -> None:
            self._save_latest(epoch - 1, progress, action)

        before = dataset.data_problems(self.loader).counts()
        result = train_one_epoch(self.model, self.loader, criterion, self.optimizer, self.dist.device,
                                 epoch=epoch, normalizer=normalizer, precision=self.opt.precision,
                                 scaler=self.scaler, log_interval=self.opt.log_interval,
                                 show_progress=self.dist.is_main,
                                 on_batches=log_batches if self.batch_logger is not None else None,
                                 start=start, control=self.control, on_checkpoint=checkpoint,
                                 mixer=self.mixer, clip_grad_norm=self.opt.clip_grad_norm, ema=self.ema,
                                 accumulate=self.opt.accumulate_grad_batches,
                                 on_first_step=None if self.first_step_logged else self._log_first_step,
                                 eraser=self.eraser)
        self.optimizer_steps += result["steps"]
        log.info("train epoch %d: loss %.4f acc %.4f lr %g, %d optimiser steps (%d in all) (%.1f clips/s, "
                 "data wait %.0f%%)", epoch, result["loss"], result["acc"], result["lr"], result["steps"],
                 self.optimizer_steps, result["clips_per_s"], 100 * result["data_share"])
        report_data_problems(self.loader, before, phase="train", epoch=epoch, device=self.dist.device)
        if self.train_logger is not None:
            self.train_logger.log({"epoch": epoch, **result})
        if self.bn_loader is not None:
            self._recompute_bn_stats(epoch, normalizer)
        return dict(result)

    def _recompute_bn_stats(self, epoch: int, normalizer) -> None:
        """--precise_bn: the BatchNorm statistics of the model (and of its EMA) from the first batches of a
        separate pass over this epoch's training clips (engine.precise_bn)."""
        self.bn_sampler.set_epoch(epoch)
        models = [unwrap_model(self.model)] + ([self.ema.module] if self.ema is not None else [])
        n = recompute_bn_stats(models, itertools.islice(self.bn_loader, self.opt.precise_bn), self.dist.device,
                               normalizer=normalizer, precision=self.opt.precision)
        log.info("precise BN: BatchNorm statistics of the model%s recomputed over %d training batches",
                 " and its EMA" if self.ema is not None else "", n)

    def _log_first_step(self, data_wait_s: float) -> None:
        """How long the process took to its first optimiser step, and how much of that went to waiting for data
        (start-up cost: imports, CUDA, model, loader, cuDNN autotuning or compilation)."""
        self.first_step_logged = True
        total = seconds_since_process_start()
        log.info("first optimiser step done %.2f s after the process started (%.2f s of it waiting for data, "
                 "%.2f s without)", total, data_wait_s, total - data_wait_s)

    def end_epoch(self, epoch: int, val_loss: float | None) -> None:
        """Step the scheduler, then checkpoint: a resumed run continues with exactly the next epoch's LR.

        A stop signal that came during validation (or a due rolling checkpoint) is acted on here.
        """
        step_scheduler(self.scheduler, val_loss)
        if self.compile_report is not None:
            self.compile_report.log_new()  # the epoch's training and validation graphs
        saved = None
        if epoch % self.opt.checkpoint == 0:
            saved = self._save(f"save_{epoch}.pth", self.payload(epoch))
            self.control.saved()
        action = self.control.poll()
        if action is Action.STOP or (action is Action.SAVE and saved is None):
            self._save_latest(epoch, EpochProgress(), action, saved=saved)

    def finish(self, last_epoch: int) -> None:
        """The final state as latest.pth unless save_{last_epoch}.pth has it: a rerun then knows it is done."""
        if last_epoch % self.opt.checkpoint and self.opt.checkpoint_minutes > 0:
            self._save(LATEST_NAME, self.payload(last_epoch))

    def _save_latest(self, done_epochs: int, progress: EpochProgress, action: Action, *,
                     saved: Path | None = None) -> None:
        """Write latest.pth at ``progress`` (every rank takes part: the meters of all ranks go into it);
        for a stop, wait until it is written, then raise :class:`Preempted`."""
        meters = gather_objects([progress.loss_sum, progress.correct, progress.clips])
        mid_epoch = {"batch": progress.batch, "world_size": self.dist.world_size,
                     "process_batch_size": self.loader.batch_size, "meters": meters}
        if saved is None:
            saved = self._save(LATEST_NAME, self.payload(done_epochs, mid_epoch=mid_epoch,
                                                          steps_in_epoch=progress.steps))
        self.control.saved()
        if action is not Action.STOP:
            return
        self.control.barrier()
        signum = self.control.signum
        where = (f"after batch {progress.batch} of epoch {done_epochs + 1}" if progress.batch
                 else f"after epoch {done_epochs}")
        raise Preempted(signum, f"stopped by {signal_name(signum)} {where}; saved {saved}; "
                                "rerun the same command with --resume_path auto to continue")

    def _save(self, name: str, payload: Checkpoint) -> Path | None:
        if not self.dist.is_main:
            return None
        path = save_checkpoint(Path(self.opt.result_path) / name, payload)
        log.info("saved %s", path)
        return path

    def payload(self, epoch: int, *, steps_in_epoch: int = 0, **extra) -> Checkpoint:
        """The checkpoint: training_payload's keys, the EMA (when on) and the optimiser steps so far."""
        return training_payload(epoch, model=self.model, arch=self.opt.arch,
                                model_kwargs=model_lib.model_kwargs_from_opts(self.opt), optimizer=self.optimizer,
                                scheduler=self.scheduler, scaler=self.scaler, class_names=self.class_names,
                                options=opts_to_plain(self.opt), clip_spec=self.clip_spec.to_dict(),
                                optimizer_steps=self.optimizer_steps + steps_in_epoch, **ema_payload(self.ema), **extra)

