"""What each flag does when training resumes with another value than the checkpoint's run had: the table.

- KEEP: the checkpoint's value stays. The run continues with the state the checkpoint carries (optimiser and LR
  schedule, EMA, data order), so a new value would be ignored by that state anyway; the options are set to
  the checkpoint's value before anything is built, so opts.json and later checkpoints say what is used.
- TAKE: the command line's value applies from now on (how long to train, where the data is, augmentation,
  logging, devices, inference).
- REFUSE: the flag defines the trained model, its input or its optimiser; another value is another run.
  The run stops with one line listing every such difference (exit status 2) before it writes anything.

Every difference is said at start, one line per flag. Checkpoints without options (the original's) are not
compared. tests/engine/test_resume.py checks that every flag of opts.py has a row.
"""

from __future__ import annotations

import argparse
import logging
from enum import Enum
from pathlib import Path

from errors import UserError
from opts import opts_to_plain

log = logging.getLogger(__name__)


class Policy(Enum):
    KEEP = "kept from the checkpoint"
    TAKE = "taken from the command line"
    REFUSE = "refused"


KEEP, TAKE, REFUSE = Policy.KEEP, Policy.TAKE, Policy.REFUSE

RESUME_POLICY: dict[str, Policy] = {
    # The model, the clips it sees and their normalisation, the task and the optimiser's kind.
    "model": REFUSE, "model_depth": REFUSE, "conv1_t_size": REFUSE, "conv1_t_stride": REFUSE, "no_max_pool": REFUSE,
    "resnet_shortcut": REFUSE, "resnet_widen_factor": REFUSE, "conv1_mid_planes": REFUSE,
    "block_mid_planes": REFUSE, "wide_resnet_k": REFUSE, "resnext_cardinality": REFUSE,
    "n_classes": REFUSE,  # compared as the task's class count (the fine-tuned head's with --pretrain_path)
    "sample_size": REFUSE, "sample_duration": REFUSE, "sample_t_stride": REFUSE, "temporal_sampling": REFUSE,
    "input_type": REFUSE, "mean_dataset": REFUSE, "value_scale": REFUSE, "no_mean_norm": REFUSE,
    "no_std_norm": REFUSE, "multi_label": REFUSE, "dataset": REFUSE, "optimizer": REFUSE,
    "ft_begin_module": REFUSE,  # which parameters the optimiser (and its state) holds
    # Carried on by the checkpoint's optimiser, LR scheduler, EMA and sampler state.
    "learning_rate": KEEP, "momentum": KEEP, "dampening": KEEP, "weight_decay": KEEP, "nesterov": KEEP,
    "no_decay_bn_bias": KEEP, "plateau_patience": KEEP, "ema_decay": KEEP,
    "layer_decay": KEEP,  # the LR of each parameter group, carried on by the optimiser's state
    "multistep_milestones": KEEP,  # TAKE with --overwrite_milestones (see _TAKEN_WITH)
    "manual_seed": KEEP,  # seeds every epoch's shuffle: the resumed run keeps the interrupted run's order
    "repeated_aug": KEEP,  # shapes every epoch's order (and the items a mid-epoch resume skips)
    # Apply from now on.
    "n_epochs": TAKE, "lr_scheduler": TAKE,  # another scheduler starts afresh (with a warning)
    "warmup_epochs": TAKE, "overwrite_milestones": TAKE, "batch_size": TAKE, "accumulate_grad_batches": TAKE,
    "precision": TAKE, "compile": TAKE, "label_smoothing": TAKE, "mixup_alpha": TAKE, "cutmix_alpha": TAKE,
    "mix_prob": TAKE, "mix_switch_prob": TAKE, "clip_grad_norm": TAKE, "train_crop": TAKE,
    "precise_bn": TAKE, "tracker": TAKE,  # a new tracker run starts when the tracker changes
    "train_crop_min_scale": TAKE, "train_crop_min_ratio": TAKE, "no_hflip": TAKE, "colorjitter": TAKE,
    "train_t_crop": TAKE, "root_path": TAKE, "video_path": TAKE, "annotation_path": TAKE, "result_path": TAKE,
    "file_type": TAKE, "n_threads": TAKE, "normalize_in_workers": TAKE, "exact_decode": TAKE, "accimage": TAKE,
    "pretrain_path": TAKE, "n_pretrain_classes": TAKE,  # not read: the weights come from the checkpoint
    "resume_path": TAKE, "no_train": TAKE, "no_val": TAKE, "n_val_samples": TAKE, "checkpoint": TAKE,
    "checkpoint_minutes": TAKE, "deterministic": TAKE, "tensorboard": TAKE, "log_interval": TAKE,
    "eval_weights": TAKE, "inference": TAKE, "inference_subset": TAKE, "inference_stride": TAKE,
    "inference_crop": TAKE, "inference_align_last_window": TAKE, "inference_no_average": TAKE, "output_video": TAKE,
    "save_features": TAKE,
    "inference_batch_size": TAKE, "output_topk": TAKE, "inference_n_clips": TAKE, "inference_n_crops": TAKE,
    "live_output": TAKE, "live_stall_seconds": TAKE, "live_reconnect": TAKE,
    "predict": TAKE, "class_names": TAKE, "no_cuda": TAKE, "distributed": TAKE, "dist_url": TAKE,
    "world_size": TAKE, "batchnorm_sync": TAKE, "dist_timeout": TAKE,
    "randaugment": TAKE, "random_erasing": TAKE,  # augmentation, like --colorjitter
}
# A KEEP flag that the command line decides when this other flag is given.
_TAKEN_WITH = {"multistep_milestones": "overwrite_milestones"}
# Differ by nature between the first run and a resumed one: not worth a line.
_UNREPORTED = ("resume_path",)


def policy(name: str, opt: argparse.Namespace) -> Policy:
    """What happens to flag ``name`` on resume, with these options."""
    if name in _TAKEN_WITH and getattr(opt, _TAKEN_WITH[name]):
        return TAKE
    return RESUME_POLICY[name]


def apply_resume_policy(opt: argparse.Namespace, saved: dict, *, source: Path, report: bool = True) -> None:
    """Compare ``opt`` with ``saved`` (the options of the checkpoint training resumes from): set KEEP flags to
    the checkpoint's values, log one line per difference (when ``report``), and raise :class:`UserError` naming
    every REFUSE flag that differs."""
    given = opts_to_plain(opt)
    refused = []
    for name in RESUME_POLICY:
        if name not in saved or name in _UNREPORTED:  # a checkpoint of an older version: unknown, not compared
            continue
        new, old = _compared(name, given), _compared(name, saved)
        if new == old:
            continue
        rule = policy(name, opt)
        if rule is REFUSE:
            refused.append(f"--{name} {_shown(new)} (the checkpoint's run: {_shown(old)})")
        elif rule is KEEP:
            setattr(opt, name, saved[name])
            if report:
                log.warning("resume: --%s %s given, %s kept from the checkpoint (its optimiser, schedule and data "
                            "order carry on)", name, _shown(new), _shown(old))
        elif report:
            log.info("resume: --%s %s taken from the command line (the checkpoint's run: %s)", name, _shown(new),
                     _shown(old))
    if refused and saved.get("arch", given["arch"]) != given["arch"]:
        refused.insert(0, f"it holds a {saved['arch']} model, the flags ask for {given['arch']}")
    if refused:
        raise UserError(f"cannot resume {source} with another model, input or optimiser: {'; '.join(refused)}; give "
                        "the checkpoint's values, or start a new run in another --result_path (--pretrain_path "
                        "starts it from these weights)")


def _compared(name: str, options: dict):
    if name == "n_classes":  # with --pretrain_path, n_classes is the pretrained head's; the task's is this
        return options.get("n_finetune_classes") or options.get("n_classes")
    return options.get(name)


def _shown(value) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    return str(value)
