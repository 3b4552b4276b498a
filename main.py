"""Train, validate and run inference with a 3D CNN: ``python main.py --help`` lists every option.

Sequencing only: options -> process/device -> model -> data -> epoch loop -> inference. The epoch
functions, model factory and loaders live in their own modules.
"""

from __future__ import annotations

import sys

from engine import stop_signals

if __name__ == "__main__":
    # First thing, before the heavy imports: a SIGTERM/SIGUSR1 that comes while the process starts (a requeued
    # job, a launcher signalling every task) is recorded and acted on, instead of killing the process on the spot.
    stop_signals.install()

import argparse
import contextlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from checkpoint import LATEST_NAME, find_resume, newest_checkpoint_note
from datasets import factory as dataset
from engine import run_folder, tracking
from engine.distributed import (
    DistInfo,
    gather_objects,
    launch,
    mark_failed,
    parameters_in_sync,
    report_rank_failure,
)
from engine.inference import eval_view, infer_subset
from engine.onnx_model import exported_for_run, is_onnx_file
from engine.preemption import Preempted
from engine.resume_options import apply_resume_policy
from engine.setup_check import check_same_setup, data_fingerprint, model_fingerprint, setup_options
from engine.stop_signals import StopRequested, signal_name
from engine.training import Trainer, build_criterion, report_data_problems, run_logger
from engine.validation import evaluate
from errors import UserError
from models import factory as model_lib
from opts import opts_to_plain, parse_opts, save_opts, share_per_process
from predict import runner as predict
from utils import (
    RUN_LOGS,
    Logger,
    move_previous_run,
    restore_rng_state,
    seed_everything,
    tensorboard_writer,
    write_confusion_matrix,
    write_scalars,
)

log = logging.getLogger("main")
RERUN = "rerun the same command"


def main(argv: list[str] | None = None) -> int:
    # force: a fresh handler on the current stdout (an earlier in-process call may have left one on a closed stream)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    opt = None
    try:
        with stop_signals.caught():
            opt = parse_opts(argv)
            if opt.predict is not None:  # prediction on raw videos: one process, no annotation file
                return _predict(opt)
            tracking.check_available(opt.tracker)  # a missing package stops the run before any work
            status = launch(worker, opt)
            if status == 0 and stop_signals.received():
                print(f"received {signal_name(stop_signals.received())} as the run ended; its work was done, "
                      "nothing is left to do", file=sys.stderr)
            return status
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StopRequested as e:  # a signal before any work started
        print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"interrupted: {newest_checkpoint_note(getattr(opt, 'result_path', None))}", file=sys.stderr)
        return 130


def _predict(opt: argparse.Namespace) -> int:
    """--predict; a SIGTERM/SIGUSR1 stops it as Ctrl-C does (finished videos kept), with 128 + the signal."""
    with stop_signals.interruptible(f"before predicting; {RERUN}"):
        status = predict.run(opt)
    return 128 + stop_signals.received() if status == 130 and stop_signals.received() else status


def worker(opt: argparse.Namespace, dist: DistInfo) -> int:
    """One process of the job (the only one outside distributed runs)."""
    _configure_logging(dist)
    stop_signals.install()  # for the rest of the process: main() did it already, except in a spawned worker
    try:
        with _result_folder_held(opt, dist):
            return _run_until_stopped(opt, dist)
    except UserError as e:
        if dist.distributed:
            mark_failed(dist.rank, str(e))
        print(f"error: {e}" if not dist.distributed else f"error (rank {dist.rank}): {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not dist.distributed:
            raise
        return report_rank_failure(dist, e)


def _run_until_stopped(opt: argparse.Namespace, dist: DistInfo) -> int:
    """The run; a stop on a signal (every rank stopped after the same step, rank 0 saved the checkpoint) is one
    line from rank 0 and the marker in --result_path that tells a launcher the job can be resumed."""
    try:
        _run(opt, dist)
    except (Preempted, StopRequested) as e:
        if dist.is_main:
            print(e, file=sys.stderr)
            run_folder.mark_resumable_stop(Path(opt.result_path), e.exit_code, str(e))
        if isinstance(e, StopRequested) and dist.distributed:  # the others may wait in a collective: name the cause
            mark_failed(dist.rank, str(e))
        return e.exit_code
    return 0


@contextlib.contextmanager
def _result_folder_held(opt: argparse.Namespace, dist: DistInfo):
    """Rank 0 holds the lock of --result_path for the run's lifetime; every rank stops when a live run holds it."""
    lock, refusal = None, None
    if dist.is_main:
        try:
            lock = run_folder.RunLock.take(Path(opt.result_path))
        except UserError as e:
            refusal = str(e)
    if dist.distributed:
        refusal = gather_objects(refusal)[0]
    if refusal is not None:
        raise UserError(refusal)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _configure_logging(dist: DistInfo) -> None:
    fmt = "%(message)s" if not dist.distributed else f"[rank {dist.rank}] %(message)s"
    logging.basicConfig(level=logging.INFO if dist.is_main else logging.WARNING, format=fmt, stream=sys.stdout,
                        force=True)


def _configure_torch(opt: argparse.Namespace, dist: DistInfo) -> None:
    seed_everything(opt.manual_seed)
    if opt.deterministic:
        # torch's reproducibility recipe in full, so the flag alone is enough: deterministic kernels where torch has
        # them (a warning where it has none), cuDNN without autotuning and in its deterministic mode, and cuBLAS's
        # fixed workspace, which cuBLAS reads when it starts: here, before any CUDA computation.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _share_per_process(opt: argparse.Namespace, dist: DistInfo) -> None:
    """Give this process its share of --batch_size and --n_threads (both are totals; see opts.share_per_process).

    The same split applies under torchrun and --distributed, so a command means the same in both.
    """
    if opt.batch_size < dist.world_size:
        raise UserError(f"--batch_size {opt.batch_size} is smaller than the {dist.world_size} processes; "
                        "it is the total over all processes")
    if opt.batch_size % dist.world_size:
        log.warning("--batch_size %d is not a multiple of %d processes; each uses %d", opt.batch_size,
                    dist.world_size, opt.batch_size // dist.world_size)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
    share_per_process(opt, world_size=dist.world_size, local_world_size=local)


def _run(opt: argparse.Namespace, dist: DistInfo) -> None:
    dataset.check_data_paths(opt)
    _share_per_process(opt, dist)
    exported = exported_for_run(opt, dist.device) if is_onnx_file(opt.resume_path) else None
    resume = exported.resume if exported is not None else find_resume(opt.resume_path, opt.result_path)
    if opt.no_train and resume is not None:  # evaluate on clips like those the checkpoint was trained on
        resume.payload.clip.apply_to(opt, source=f"checkpoint {resume.path}")
    if resume is not None and not opt.no_train:  # before anything is built or seeded from the options
        apply_resume_policy(opt, resume.payload.options, source=resume.path, report=dist.is_main)
    _configure_torch(opt, dist)
    net = exported.model if exported is not None else model_lib.model_for_run(opt, dist, resume)
    check_same_setup({"options": setup_options(opt), "model": model_fingerprint(net)}, dist)
    dataset.check_class_count(opt, net.get_classifier().out_features)
    criterion = build_criterion(opt).to(dist.device)  # validation's; training's may smooth the labels
    train_criterion = build_criterion(opt, train=True).to(dist.device)
    normalizer = dataset.build_input_normalizer(opt)
    trainer = None if opt.no_train else Trainer(opt, net, dist, resume=resume)
    if trainer is not None and trainer.ema is not None:
        log.info("EMA of the weights (decay %g): validation and inference use the averaged weights", opt.ema_decay)
    val_loader = None if opt.no_val else dataset.build_val_loader(opt, dist)
    class_names = dataset.get_class_names(opt) if not (opt.no_train and opt.no_val) else None
    check_same_setup(data_fingerprint(class_names, trainer and trainer.loader, val_loader), dist)
    # A signal during start-up stops the run before anything is written.
    if trainer is not None:
        trainer.stop_if_asked()
    else:
        stop_signals.raise_if_received(f"before the evaluation; nothing to save: {RERUN}")
    if _nothing_to_train(opt, trainer):
        return
    _start_outputs(opt, dist, trainer)  # the run is known to start: only now is anything written
    writer = (tensorboard_writer(opt.result_path, trainer.begin_epoch if trainer is not None else 1)
              if opt.tensorboard and dist.is_main else None)
    tracker = (tracking.open_tracker(opt.tracker, opts_to_plain(opt), opt.result_path,
                                     resumed=trainer is not None and trainer.resume is not None)
               if dist.is_main else None)
    if trainer is not None and resume is not None:
        restore_rng_state(resume.payload.rng)  # last, so setup draws do not shift the sequence
    begin = trainer.begin_epoch if trainer is not None else 1
    last = opt.n_epochs if trainer is not None else begin  # without training, validate once
    val_columns = ["epoch", "loss", "acc", "map"] if opt.multi_label else ["epoch", "loss", "acc"]
    val_logger = run_logger(opt, dist, "val.log", val_columns, resume if trainer else None)
    # Training acts on a stop signal at its step boundaries; an evaluation alone has nothing to save: it stops.
    with trainer.stop_signals() if trainer is not None else stop_signals.interruptible(
            f"during the evaluation; nothing of it is saved: {RERUN}"):
        for epoch in range(begin, last + 1):
            metrics = trainer.train_epoch(epoch, train_criterion, normalizer) if trainer is not None else {}
            if val_loader is not None:
                val = _validate(trainer.eval_model if trainer else net, val_loader, criterion, normalizer, opt=opt,
                                dist=dist, epoch=epoch, logger=val_logger)
                metrics.update({f"val_{k}": v for k, v in val.items()})
            if trainer is not None:
                trainer.end_epoch(epoch, metrics.get("val_loss"))
            write_scalars(writer, epoch, metrics)
            tracking.log_epoch(tracker, epoch, metrics)
        if trainer is not None:
            trainer.finish(last)
    if trainer is not None and dist.distributed:
        _check_ranks_in_sync(trainer.model, dist)
    if opt.inference:
        then = f"training is done and saved: {RERUN} with --resume_path auto" if trainer is not None else RERUN
        with stop_signals.interruptible(f"at the inference; {then} to run it"):
            report = infer_subset(opt, trainer.eval_model if trainer else net, dist, normalizer)
        _track_confusion(opt, tracker, report)
    if writer is not None:
        writer.close()
    if tracker is not None:
        tracker.finish()


def _nothing_to_train(opt: argparse.Namespace, trainer: Trainer | None) -> bool:
    """Say so when there is nothing to do; True when the run can stop here."""
    if trainer is None:
        if opt.resume_path is None and opt.pretrain_path is None:
            log.warning("warning: evaluating a randomly initialised model (no --resume_path or --pretrain_path)")
        return False
    if trainer.begin_epoch <= opt.n_epochs:
        return False
    log.warning("nothing to train: %s already finished epoch %d and --n_epochs is %d; raise --n_epochs to "
                "train further", trainer.resume.path, trainer.begin_epoch - 1, opt.n_epochs)
    return not opt.inference


def _start_outputs(opt: argparse.Namespace, dist: DistInfo, trainer: Trainer | None) -> None:
    """opts.json, and the previous run's logs and checkpoints moved aside when this one starts afresh."""
    if dist.is_main:
        try:
            if trainer is None or trainer.resume is None:
                moved = _move_previous_run(opt, trainer)
                if moved is not None:
                    log.warning("moved the previous run's logs and checkpoints to %s", moved)
            save_opts(opt, opt.result_path)
        except OSError as e:
            raise UserError(f"cannot write into --result_path {opt.result_path}: {e.strerror or e}") from None
    if trainer is not None:
        trainer.open_logs()


def _move_previous_run(opt: argparse.Namespace, trainer: Trainer | None) -> Path | None:
    """A fresh training run moves every log and checkpoint of an earlier one aside; an evaluation only the
    validation log it would overwrite."""
    if trainer is None:
        return move_previous_run(Path(opt.result_path), [] if opt.no_val else ["val.log"])
    return move_previous_run(Path(opt.result_path), [*RUN_LOGS, "opts.json", LATEST_NAME], patterns=["save_*.pth"])


def _validate(net: nn.Module, loader, criterion: nn.Module, normalizer, *, opt: argparse.Namespace, dist: DistInfo,
              epoch: int, logger: Logger | None) -> dict:
    before = dataset.data_problems(loader).counts()
    val = evaluate(eval_view(net), loader, criterion, dist.device, normalizer=normalizer, precision=opt.precision)
    extra = f" mAP {val['map']:.4f}" if "map" in val else ""
    log.info("validation epoch %d: loss %.4f acc %.4f%s (%d clips)", epoch, val["loss"], val["acc"], extra,
             val["clips"])
    report_data_problems(loader, before, phase="validation", epoch=epoch, device=dist.device)
    if logger is not None:
        logger.log({"epoch": epoch, "map": float("nan"), **val})  # map: multi-label runs (nan if no clip)
    return val


def _track_confusion(opt: argparse.Namespace, tracker: tracking.Tracker | None, report: dict | None) -> None:
    """With a tracker: the inference subset's top-1 confusion matrix (<subset>_confusion.csv and .png in
    --result_path, as eval_accuracy writes them), the PNG sent to the tracker (single-label runs with labels)."""
    if tracker is None or report is None:
        return
    prefix = Path(opt.result_path) / f"{opt.inference_subset}_confusion"
    for path in write_confusion_matrix(prefix, report["labels"], report["confusion"]):
        if path.suffix == ".png":
            tracker.log_image(path)


def _check_ranks_in_sync(net: nn.Module, dist: DistInfo) -> None:
    if not parameters_in_sync(net):
        raise UserError(f"model weights differ between the {dist.world_size} ranks after training")
    log.info("weights identical on all %d ranks", dist.world_size)


if __name__ == "__main__":
    sys.exit(main())
