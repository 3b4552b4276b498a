"""Train, validate and run inference with a 3D CNN: ``python main.py --help`` lists every option.

Sequencing only: options -> process/device -> model -> data -> epoch loop -> inference. The epoch
functions, model factory and loaders live in their own modules.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import dataset
import model as model_lib
from checkpoint import load_checkpoint, save_checkpoint, strip_wrapper_prefixes, unwrap_model
from datasets.annotations import read_records
from datasets.layout import SUBSET_NAMES
from distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    failed_peer,
    gather_objects,
    launch,
    mark_failed,
    parameters_in_sync,
)
from errors import UserError
from inference import VideoScoreAggregator, run_inference, write_results
from opts import RESUME_AUTO, opts_to_plain, parse_opts, save_opts
from training import build_scheduler, step_scheduler, train_one_epoch
from utils import Logger, capture_rng_state, restore_rng_state, seed_everything
from validation import evaluate

log = logging.getLogger("main")


@dataclass
class Resume:
    """A checkpoint to continue from (or only to take weights from, with --no_train)."""

    path: Path
    payload: dict = field(repr=False)

    @property
    def epoch(self) -> int:
        return int(self.payload.get("epoch", 0))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        opt = parse_opts(argv)
        if opt.predict is not None:  # prediction on raw videos: one process, no annotation file
            import predict

            return predict.run(opt, argv)
        return launch(worker, opt)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Checkpoints are written atomically, so the newest save_*.pth is complete whatever was interrupted.
        print("interrupted: the last saved checkpoint is intact; rerun with --resume_path auto to continue",
              file=sys.stderr)
        return 130


def worker(opt: argparse.Namespace, dist: DistInfo) -> int:
    """One process of the job (the only one outside distributed runs)."""
    _configure_logging(dist)
    try:
        _run(opt, dist)
    except UserError as e:
        if dist.distributed:
            mark_failed(dist.rank, str(e))
        print(f"error: {e}" if not dist.distributed else f"error (rank {dist.rank}): {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not dist.distributed:
            raise
        return _report_rank_failure(dist, e)
    return 0


def _report_rank_failure(dist: DistInfo, error: Exception) -> int:
    """A distributed process failed: name the rank that failed first, so the others do not fail silently.

    Our own failure is re-raised (with its traceback) after telling the other ranks; a consequence of
    another rank's failure (a collective whose peer is gone) is one line naming that rank.
    """
    peer = failed_peer()
    if peer is not None and not peer.startswith(f"{dist.rank}:"):
        print(f"error (rank {dist.rank}): stopping because rank {peer}", file=sys.stderr)
        return 1
    mark_failed(dist.rank, f"{type(error).__name__}: {error}")
    print(f"error (rank {dist.rank}): {type(error).__name__}: {error}", file=sys.stderr)
    raise error


def _configure_logging(dist: DistInfo) -> None:
    fmt = "%(message)s" if not dist.distributed else f"[rank {dist.rank}] %(message)s"
    logging.basicConfig(level=logging.INFO if dist.is_main else logging.WARNING, format=fmt, stream=sys.stdout,
                        force=True)


def _configure_torch(opt: argparse.Namespace, dist: DistInfo) -> None:
    seed_everything(opt.manual_seed)
    if opt.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def per_process_opts(opt: argparse.Namespace, dist: DistInfo) -> argparse.Namespace:
    """A copy of ``opt`` with this process's share of --batch_size and --n_threads (both are totals).

    The same split applies under torchrun and --distributed, so a command means the same in both.
    """
    if opt.batch_size < dist.world_size:
        raise UserError(f"--batch_size {opt.batch_size} is smaller than the {dist.world_size} processes; "
                        "it is the total over all processes")
    if opt.batch_size % dist.world_size:
        log.warning("--batch_size %d is not a multiple of %d processes; each uses %d", opt.batch_size,
                    dist.world_size, opt.batch_size // dist.world_size)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
    return argparse.Namespace(**{**vars(opt), "batch_size": opt.batch_size // dist.world_size,
                                 "n_threads": -(-opt.n_threads // max(local, 1))})


def _run(opt: argparse.Namespace, dist: DistInfo) -> None:
    _configure_torch(opt, dist)
    _check_data_paths(opt)
    if dist.is_main:
        try:
            save_opts(opt, opt.result_path)
        except OSError as e:
            raise UserError(f"cannot write into --result_path {opt.result_path}: {e.strerror or e}") from None
    data_opt = per_process_opts(opt, dist)
    resume = _find_resume(opt)
    net = _build_model(opt, resume, dist)
    _check_class_count(opt, net)
    criterion = nn.CrossEntropyLoss().to(dist.device)
    normalizer = dataset.build_input_normalizer(opt)
    trainer = None if opt.no_train else Trainer(opt, net, dist, resume=resume, data_opt=data_opt)
    val_loader = None if opt.no_val else dataset.build_val_loader(data_opt, dist)
    writer = _tensorboard(opt, dist, trainer)
    if trainer is not None and resume is not None:
        restore_rng_state(resume.payload.get("rng", {}))  # last, so setup draws do not shift the sequence
    begin = trainer.begin_epoch if trainer is not None else 1
    last = opt.n_epochs if trainer is not None else begin  # without training, validate once
    val_logger = _logger(opt, dist, "val.log", ["epoch", "loss", "acc"], resume if trainer else None)
    for epoch in range(begin, last + 1):
        metrics = trainer.train_epoch(epoch, criterion, normalizer) if trainer is not None else {}
        if val_loader is not None:
            val = _validate(trainer.model if trainer else net, val_loader, criterion, normalizer, opt=opt, dist=dist,
                            epoch=epoch, logger=val_logger)
            metrics.update({f"val_{k}": v for k, v in val.items()})
        if trainer is not None:
            trainer.end_epoch(epoch, metrics.get("val_loss"))
        _write_scalars(writer, epoch, metrics)
    if trainer is not None and dist.distributed:
        _check_ranks_in_sync(trainer.model, dist)
    if opt.inference:
        _infer(data_opt, trainer.model if trainer else net, dist, normalizer)
    if writer is not None:
        writer.close()


def _validate(net: nn.Module, loader, criterion: nn.Module, normalizer, *, opt: argparse.Namespace, dist: DistInfo,
              epoch: int, logger: Logger | None) -> dict:
    before = dataset.data_problems(loader).counts()
    val = evaluate(_eval_view(net), loader, criterion, dist.device, normalizer=normalizer, precision=opt.precision)
    log.info("validation epoch %d: loss %.4f acc %.4f (%d clips)", epoch, val["loss"], val["acc"], val["clips"])
    report_data_problems(loader, before, phase="validation", epoch=epoch, device=dist.device)
    if logger is not None:
        logger.log({"epoch": epoch, **val})
    return val


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


def _check_data_paths(opt: argparse.Namespace) -> None:
    if opt.no_train and opt.no_val and not opt.inference:
        return  # nothing reads the data
    for flag in ("annotation_path", "video_path"):
        if getattr(opt, flag) is None:
            raise UserError(f"--{flag} is required to train, validate or run inference")
    if not Path(opt.video_path).is_dir():
        raise UserError(f"--video_path {opt.video_path} is not a directory")


def _check_class_count(opt: argparse.Namespace, net: nn.Module) -> None:
    """Labels index the model's outputs: more labels than outputs would crash mid-epoch (or assert on CUDA)."""
    if opt.no_train and opt.no_val and not opt.inference:
        return
    n_labels, n_outputs = len(dataset.get_class_names(opt)), net.get_classifier().out_features
    if n_labels > n_outputs:
        flag = "--n_classes" if opt.pretrain_path is None else "--n_classes (the fine-tuning class count)"
        raise UserError(f"{opt.annotation_path} has {n_labels} labels but the model has {n_outputs} outputs; "
                        f"set {flag} to at least {n_labels}")


def _find_resume(opt: argparse.Namespace) -> Resume | None:
    if opt.resume_path is None:
        return None
    if str(opt.resume_path) != RESUME_AUTO:
        return Resume(Path(opt.resume_path), load_checkpoint(opt.resume_path))
    for stale in Path(opt.result_path).glob(".save_*.pth.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    candidates = sorted(Path(opt.result_path).glob("save_*.pth"), key=_epoch_of, reverse=True)
    for path in candidates:
        try:
            payload = load_checkpoint(path)
        except UserError as e:  # a damaged file from an earlier crash: fall back to the previous one
            log.warning("skipping %s: %s", path, e)
            continue
        log.info("resuming from %s", path)
        return Resume(path, payload)
    log.info("--resume_path auto: no checkpoint in %s, starting fresh", opt.result_path)
    return None


def _epoch_of(path: Path) -> int:
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def _build_model(opt: argparse.Namespace, resume: Resume | None, dist: DistInfo) -> nn.Module:
    """The bare model on the device: pretrained head swapped, resumed weights loaded, BN synced if asked."""
    net = model_lib.generate_model(opt)
    if opt.pretrain_path is not None:
        if resume is None:
            log.info("loading pretrained model %s", opt.pretrain_path)
            net = model_lib.load_pretrained_model(net, opt.pretrain_path, opt.n_finetune_classes)
        else:  # the resumed weights replace the pretrained ones anyway; only the head shape matters
            net.reset_classifier(opt.n_finetune_classes)
    if resume is not None:
        arch = resume.payload.get("arch")
        if arch is not None and arch != opt.arch:
            raise UserError(f"{resume.path} holds a {arch} model but the flags ask for {opt.arch} "
                            "(check --model and --model_depth)")
        model_lib.load_state_dict_compat(net, resume.payload["state_dict"], source=f"checkpoint {resume.path}",
                                         source_arch=arch)
        log.info("loaded weights of epoch %d from %s", resume.epoch, resume.path)
    sample = (1, opt.n_input_channels, opt.sample_duration, opt.sample_size, opt.sample_size)
    if dist.is_main:
        info = model_lib.describe_model(net.eval(), sample)  # eval: a 1-clip batch can't feed train-mode BN
        net.train()
        log.info("model %s: %.2f M parameters, %.2f GFLOPs per clip %s", opt.arch, info["n_params"] / 1e6,
                 info["gflops"], "x".join(map(str, sample[1:])))
    if opt.batchnorm_sync:
        if dist.device.type != "cuda" and dist.distributed:
            raise UserError("--batchnorm_sync needs CUDA devices (SyncBatchNorm does not run on the CPU)")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(dist.device)
    if dist.device.type == "cuda":
        net = net.to(memory_format=torch.channels_last_3d)
    return net


def _eval_view(net: nn.Module) -> nn.Module:
    # Evaluate the module inside DDP: its forward would sync buffers, a collective all ranks must join.
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


class Trainer:
    """Optimiser, scheduler, loader and logs of a training run, and what a checkpoint needs from them."""

    def __init__(self, opt: argparse.Namespace, net: nn.Module, dist: DistInfo, *, resume: Resume | None,
                 data_opt: argparse.Namespace):
        self.opt, self.dist = opt, dist
        params = (model_lib.get_fine_tuning_parameters(net, opt.ft_begin_module) if opt.pretrain_path is not None
                  else list(net.parameters()))
        self.model = self._wrap(net)
        self.optimizer = torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum,
                                         dampening=0.0 if opt.nesterov else opt.dampening,
                                         weight_decay=opt.weight_decay, nesterov=opt.nesterov)
        self.scheduler = build_scheduler(self.optimizer, opt)
        self.scaler = torch.amp.GradScaler(dist.device.type) if opt.precision == "fp16" else None
        self.loader, self.sampler = dataset.build_train_loader(data_opt, dist)
        self.begin_epoch = 1
        if resume is not None:
            self._restore(resume)
        self.train_logger = _logger(opt, dist, "train.log", ["epoch", "loss", "acc", "lr"], resume)
        self.batch_logger = _logger(opt, dist, "train_batch.log", ["epoch", "batch", "iter", "loss", "acc", "lr"],
                                    resume)
        self.class_names = dataset.get_class_names(opt)

    def _wrap(self, net: nn.Module) -> nn.Module:
        if self.opt.compile:
            net = torch.compile(net)
        if self.dist.distributed:
            device_ids = [self.dist.device] if self.dist.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
        return net

    def _restore(self, resume: Resume) -> None:
        payload, opt = resume.payload, self.opt
        self.begin_epoch = resume.epoch + 1
        if "optimizer" in payload:
            try:
                self.optimizer.load_state_dict(payload["optimizer"])
            except (ValueError, KeyError) as e:
                log.warning("optimizer state of %s does not fit (%s); starting with a fresh optimizer", resume.path, e)
        saved_sched = payload.get("options", {}).get("lr_scheduler", opt.lr_scheduler)
        if "scheduler" in payload and saved_sched == opt.lr_scheduler:
            self.scheduler.load_state_dict(payload["scheduler"])
        elif "scheduler" in payload:
            log.warning("checkpoint used --lr_scheduler %s; starting a fresh %s schedule", saved_sched,
                        opt.lr_scheduler)
        if opt.overwrite_milestones:
            self.scheduler.milestones = Counter(opt.multistep_milestones)
        if self.scaler is not None and "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        log.info("resuming training at epoch %d", self.begin_epoch)

    def train_epoch(self, epoch: int, criterion: nn.Module, normalizer) -> dict:
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        n_batches = len(self.loader)
        lr = max(g["lr"] for g in self.optimizer.param_groups)

        def log_batches(rows: list[dict]) -> None:
            for row in rows:
                self.batch_logger.log({"epoch": epoch, "iter": (epoch - 1) * n_batches + row["batch"], "lr": lr,
                                       **row})

        before = dataset.data_problems(self.loader).counts()
        result = train_one_epoch(self.model, self.loader, criterion, self.optimizer, self.dist.device, epoch=epoch,
                                 normalizer=normalizer, precision=self.opt.precision, scaler=self.scaler,
                                 log_interval=self.opt.log_interval, show_progress=self.dist.is_main,
                                 on_batches=log_batches if self.batch_logger is not None else None)
        log.info("train epoch %d: loss %.4f acc %.4f lr %g (%.1f clips/s, data wait %.0f%%)", epoch, result["loss"],
                 result["acc"], result["lr"], result["clips_per_s"], 100 * result["data_share"])
        report_data_problems(self.loader, before, phase="train", epoch=epoch, device=self.dist.device)
        if self.train_logger is not None:
            self.train_logger.log({"epoch": epoch, **result})
        return dict(result)

    def end_epoch(self, epoch: int, val_loss: float | None) -> None:
        """Step the scheduler, then checkpoint: a resumed run continues with exactly the next epoch's LR."""
        step_scheduler(self.scheduler, val_loss)
        if epoch % self.opt.checkpoint == 0 and self.dist.is_main:
            path = save_checkpoint(Path(self.opt.result_path) / f"save_{epoch}.pth", self.payload(epoch))
            log.info("saved %s", path)

    def payload(self, epoch: int) -> dict:
        bare = unwrap_model(self.model)
        kwargs = model_lib.model_kwargs_from_opts(self.opt)
        kwargs["n_classes"] = bare.get_classifier().out_features
        payload = {"epoch": epoch, "arch": self.opt.arch, "state_dict": strip_wrapper_prefixes(bare.state_dict()),
                   "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "rng": capture_rng_state(), "model_kwargs": kwargs, "class_names": list(self.class_names),
                   "options": opts_to_plain(self.opt)}
        if self.scaler is not None:
            payload["scaler"] = self.scaler.state_dict()
        return payload


def _logger(opt: argparse.Namespace, dist: DistInfo, name: str, header: list[str],
            resume: Resume | None) -> Logger | None:
    if not dist.is_main:
        return None
    return Logger(Path(opt.result_path) / name, header, resume_after_epoch=resume.epoch if resume else None)


def _tensorboard(opt: argparse.Namespace, dist: DistInfo, trainer: Trainer | None):
    if not (opt.tensorboard and dist.is_main):
        return None
    from torch.utils.tensorboard import SummaryWriter

    purge = trainer.begin_epoch if trainer is not None and trainer.begin_epoch > 1 else None
    return SummaryWriter(log_dir=str(opt.result_path), purge_step=purge)


def _write_scalars(writer, epoch: int, metrics: dict) -> None:
    if writer is None:
        return
    names = {"loss": "train/loss", "acc": "train/acc", "lr": "train/lr", "val_loss": "val/loss", "val_acc": "val/acc"}
    for key, tag in names.items():
        if key in metrics:
            writer.add_scalar(tag, metrics[key], epoch)
    writer.flush()


def _check_ranks_in_sync(net: nn.Module, dist: DistInfo) -> None:
    if not parameters_in_sync(net):
        raise UserError(f"model weights differ between the {dist.world_size} ranks after training")
    log.info("weights identical on all %d ranks", dist.world_size)


def _infer(opt: argparse.Namespace, net: nn.Module, dist: DistInfo, normalizer) -> None:
    log.info("inference on the %s subset", opt.inference_subset)
    loader = dataset.build_inference_loader(opt, dist)
    class_names = dataset.get_class_names(opt)
    aggregator = run_inference(_eval_view(net), loader, dist.device, class_names=class_names,
                               normalizer=normalizer, precision=opt.precision, show_progress=dist.is_main,
                               log_interval=opt.log_interval)
    parts = gather_objects(aggregator.clips)
    if dist.is_main:
        merged = VideoScoreAggregator(class_names)
        for clips in parts:
            part = VideoScoreAggregator(class_names)
            part.clips = clips
            merged.merge(part)
        records = _inference_records(opt, loader)
        merged.reorder([r.video_id for r in records])
        path = write_results(Path(opt.result_path) / f"{opt.inference_subset}.json",
                             merged.finalize(opt.output_topk, average=not opt.inference_no_average))
        log.info("wrote %s (%d videos)", path, len(merged.clips))
        _report_video_accuracy(opt, merged, {r.video_id: r.label for r in records})
    barrier()


def _inference_records(opt: argparse.Namespace, loader) -> list:
    """The video records of the inference subset, in dataset order (for output order and labels)."""
    records = getattr(loader.dataset, "records", None)
    if records is None:
        records, _ = read_records(opt.annotation_path, opt.video_path, dataset=opt.dataset,
                                  subset=SUBSET_NAMES[opt.inference_subset], file_type=opt.file_type,
                                  untrimmed=True)
    return list(records)


def _report_video_accuracy(opt: argparse.Namespace, aggregator: VideoScoreAggregator, labels: dict) -> dict | None:
    report = aggregator.accuracy_report(labels)
    if report is not None:
        views = f"{opt.inference_n_clips or 'sliding'} clips x {opt.inference_n_crops} crops"
        print(f"clip-level top-1 accuracy on {opt.inference_subset}: {report['clip_acc']:.4f} ({report['clips']} "
              f"clips, {views})")
        print(f"video-level top-1 accuracy on {opt.inference_subset}: {report['video_acc']:.4f} "
              f"({report['videos']} videos)")
    return report


if __name__ == "__main__":
    sys.exit(main())
