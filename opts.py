"""Command-line options of main.py: every flag of the original (same spelling, type, default) plus ours.

``parse_opts(argv)`` parses and then resolves once: paths are joined onto ``--root_path``, derived
fields (``arch``, ``mean``, ``std``, ``n_input_channels``, ``n_finetune_classes``, ...) are added, every
number is checked against its range in ``NUMBER_BOUNDS`` (nan and inf never pass) and impossible combinations
are rejected with ``parser.error``. It also records ``explicit_flags``: the names of the options given on the
command line (so a tool can tell a default from a choice).

``batch_size`` and ``n_threads`` are totals over all processes; once a process knows the world size,
``share_per_process`` adds its share as ``process_batch_size`` and ``process_n_threads`` (what the data
loaders use). Nothing else is changed after parsing. ``explicit_flags`` and the per-process fields
are not options: opts.json and checkpoints leave them out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from datasets.clip_spec import resolve_input
from datasets.file_types import FILE_READERS, file_types, flow_file_types
from datasets.layout import DATASETS, MULTI_LABEL_DATASETS, SUBSET_NAMES
from datasets.live_source import STDIN, is_url
from datasets.spatial_transforms import MEAN_STD
from datasets.temporal_transforms import TEMPORAL_SAMPLINGS

# Kept in sync with models.MODEL_FAMILIES by tests/test_opts.py; a static tuple keeps `-h` free of model imports.
MODEL_CHOICES = ("densenet", "mc3", "preresnet", "resnet", "resnet2p1d", "resnext", "wideresnet")

# Paths joined onto --root_path when it is given (the original's rule; an absolute path stays absolute).
_ROOTED_PATHS = ("video_path", "annotation_path", "result_path", "resume_path", "pretrain_path", "predict")
RESUME_AUTO = "auto"
# --tracker's choices; engine/tracking.py has a backend for each but "none" (tests/engine/test_tracking.py checks).
TRACKER_CHOICES = ("none", "mlflow", "wandb")
# Fields that describe this run's processes rather than options (not written to opts.json or checkpoints).
RUNTIME_FIELDS = ("explicit_flags", "process_batch_size", "process_n_threads")


@dataclass(frozen=True)
class Bounds:
    """The values a number option accepts: from ``low`` to ``high`` (None: no bound), each end included unless
    ``*_open``. Every value must also be finite: argparse's float() takes 'nan' and 'inf', which no option means."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        """Why ``value`` is refused ('must be ... (got ...)'), or None when it is accepted."""
        if not math.isfinite(value):
            return f"must be a finite number (got {value})"
        below = self.low is not None and (value < self.low or (self.low_open and value == self.low))
        above = self.high is not None and (value > self.high or (self.high_open and value == self.high))
        return f"must be {self.describe()} (got {value})" if below or above else None

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


ANY = Bounds()  # only finite; the option is checked elsewhere (e.g. against the model family's depths)
AT_LEAST_0 = Bounds(low=0)
AT_LEAST_1 = Bounds(low=1)
POSITIVE = Bounds(low=0, low_open=True)
PROBABILITY = Bounds(low=0, high=1)
BELOW_1 = Bounds(low=0, high=1, high_open=True)  # a fraction that must leave something (smoothing, decay)
NONZERO_FRACTION = Bounds(low=0, high=1, low_open=True)  # a fraction that must keep something (crop area, ratio)

# The accepted range of every int and float option of main.py, in one table (tests/test_opts.py checks that
# each number option has its row). A number option missing here is still refused when not finite.
NUMBER_BOUNDS: dict[str, Bounds] = {
    "n_classes": AT_LEAST_1,
    "n_threads": AT_LEAST_0,
    "sample_size": AT_LEAST_1,
    "sample_duration": AT_LEAST_1,
    "sample_t_stride": AT_LEAST_1,
    "train_crop_min_scale": NONZERO_FRACTION,
    "train_crop_min_ratio": NONZERO_FRACTION,
    "value_scale": AT_LEAST_1,
    "model_depth": ANY,  # models.factory names the family's valid depths
    "conv1_t_size": AT_LEAST_1,
    "conv1_t_stride": AT_LEAST_1,
    "resnet_widen_factor": POSITIVE,
    "conv1_mid_planes": AT_LEAST_0,  # 0: derived
    "wide_resnet_k": AT_LEAST_1,
    "resnext_cardinality": AT_LEAST_1,
    "n_pretrain_classes": AT_LEAST_0,  # 0: no pretrained model (--pretrain_path asks for > 0)
    "learning_rate": AT_LEAST_0,
    "momentum": AT_LEAST_0,
    "dampening": AT_LEAST_0,
    "weight_decay": AT_LEAST_0,
    "multistep_milestones": AT_LEAST_1,  # epochs are numbered from 1
    "plateau_patience": AT_LEAST_0,
    "warmup_epochs": AT_LEAST_0,
    "batch_size": AT_LEAST_1,
    "n_epochs": AT_LEAST_1,
    "label_smoothing": BELOW_1,
    "mixup_alpha": AT_LEAST_0,  # 0: off
    "cutmix_alpha": AT_LEAST_0,  # 0: off
    "mix_prob": PROBABILITY,
    "mix_switch_prob": PROBABILITY,
    "clip_grad_norm": AT_LEAST_0,  # 0: off
    "ema_decay": BELOW_1,  # 0: off
    "accumulate_grad_batches": AT_LEAST_1,
    "randaugment": Bounds(low=0, high=30),  # N ops per clip (0: off) and magnitude M, both 0..30
    "random_erasing": PROBABILITY,  # 0: off
    "repeated_aug": AT_LEAST_1,  # 1: off
    "layer_decay": NONZERO_FRACTION,  # 1: off
    "precise_bn": AT_LEAST_0,  # 0: off
    "n_val_samples": AT_LEAST_1,
    "checkpoint": AT_LEAST_1,
    "checkpoint_minutes": AT_LEAST_0,  # 0: off
    "manual_seed": Bounds(low=0, high=2**32 - 1),  # what NumPy's global seed accepts
    "log_interval": AT_LEAST_1,
    "inference_stride": AT_LEAST_1,
    "inference_batch_size": AT_LEAST_0,  # 0: --batch_size
    "output_topk": AT_LEAST_0,  # 0: every class
    "inference_n_clips": AT_LEAST_0,  # 0: sliding windows
    "inference_n_crops": ANY,  # argparse choices
    "world_size": Bounds(low=-1),  # nodes; -1 (the original's default) and 0 mean one
    "dist_timeout": AT_LEAST_1,
    "live_stall_seconds": POSITIVE,
    "live_reconnect": Bounds(low=-1),  # -1: forever
}


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("paths and data")
    g.add_argument("--root_path", default=None, type=Path,
                   help="If given, video/annotation/result/resume/pretrain/predict paths are relative to it")
    g.add_argument("--video_path", default=None, type=Path, help="Directory of frame dirs or .hdf5 files")
    g.add_argument("--annotation_path", default=None, type=Path, help="Annotation JSON file")
    g.add_argument("--result_path", default=None, type=Path,
                   help="Output directory for logs, checkpoints, opts.json (created if missing)")
    g.add_argument("--dataset", default="kinetics", type=str, choices=DATASETS, help="Dataset name")
    g.add_argument("--n_classes", default=400, type=int, help="Number of classes of the task")
    g.add_argument("--multi_label", action="store_true",
                   help="Several labels per clip (the actions it overlaps): multi-hot targets, BCE loss, sigmoid "
                        "scores, mAP in validation (implied by --dataset charades)")
    g.add_argument("--file_type", default="jpg", type=str, choices=file_types(),
                   help="jpg: frame dirs; hdf5: one file of JPEG bytes per video; video: video files (mp4, avi, ...)")
    g.add_argument("--input_type", default="rgb", type=str, choices=("rgb", "flow"),
                   help=f"rgb or flow (flow needs --file_type {' or '.join(flow_file_types())})")
    g.add_argument("--n_threads", default=4, type=int,
                   help="DataLoader workers (total; divided per process); for --predict: video decoder threads")
    g.add_argument("--normalize_in_workers", action="store_true",
                   help="Normalise clips to float in the loader workers instead of on the device")
    g.add_argument("--exact_decode", action="store_true",
                   help="Decode frames at full size before the crop (JPEG: no draft-mode downscaling; video: no "
                        "scaling while converting to RGB); slower")
    g.add_argument("--accimage", action="store_true", help="Accepted for compatibility; has no effect")


def _add_transform_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("clips and augmentation")
    g.add_argument("--sample_size", default=112, type=int, help="Spatial crop size (height = width)")
    g.add_argument("--sample_duration", default=16, type=int, help="Frames per clip")
    g.add_argument("--sample_t_stride", default=1, type=int, help="Temporal stride between sampled frames")
    g.add_argument("--train_crop", default="random", type=str, choices=("random", "corner", "center"),
                   help="Spatial crop in training")
    g.add_argument("--train_crop_min_scale", default=0.25, type=float, help="Min area fraction of random crop")
    g.add_argument("--train_crop_min_ratio", default=0.75, type=float, help="Min aspect ratio of random crop")
    g.add_argument("--no_hflip", action="store_true", help="Disable random horizontal flip in training")
    g.add_argument("--colorjitter", action="store_true", help="Add colour jitter in training")
    g.add_argument("--train_t_crop", default="random", type=str, choices=("random", "center"),
                   help="Temporal crop in training")
    g.add_argument("--temporal_sampling", default="dense", type=str, choices=TEMPORAL_SAMPLINGS,
                   help="dense: --sample_duration consecutive frames; segment: the video split into "
                        "--sample_duration equal segments, one frame each (random in training, the centres in "
                        "validation/inference; --inference_n_clips K: K evenly offset variants)")
    g.add_argument("--mean_dataset", default="kinetics", type=str, choices=tuple(MEAN_STD),
                   help="Dataset whose mean/std normalise the inputs")
    g.add_argument("--no_mean_norm", action="store_true", help="Do not subtract the mean")
    g.add_argument("--no_std_norm", action="store_true", help="Do not divide by the std")
    g.add_argument("--value_scale", default=1, type=int, help="1: inputs in [0,1]; 255: inputs in [0,255]")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    add_architecture_args(g)
    g.add_argument("--n_pretrain_classes", default=0, type=int, help="Classes of the --pretrain_path model")
    g.add_argument("--pretrain_path", default=None, type=Path, help="Pretrained checkpoint to fine-tune from")
    g.add_argument("--ft_begin_module", default="", type=str,
                   help="Train only from this top-level module on (e.g. layer4, fc); '' trains everything")


def add_architecture_args(g: argparse._ArgumentGroup, *, from_file: bool = False) -> None:
    """The flags that describe an architecture (but the class count and input channels), for main.py and for
    tools that load a trained file (``from_file``: --model/--model_depth then default to the file's arch)."""
    g.add_argument("--model", default=None if from_file else "resnet", type=str, choices=MODEL_CHOICES,
                   help="Model family" + (" (default: the file's arch)" if from_file else ""))
    g.add_argument("--model_depth", default=None if from_file else 18, type=int,
                   help="Depth of the model (valid values per family)")
    g.add_argument("--conv1_t_size", default=7, type=int, help="Temporal kernel size of the stem conv")
    g.add_argument("--conv1_t_stride", default=1, type=int, help="Temporal stride of the stem conv")
    g.add_argument("--no_max_pool", action="store_true", help="Remove the max-pool after the stem")
    g.add_argument("--resnet_shortcut", default="B", type=str, choices=("A", "B"),
                   help="A: zero-padding identity, B: 1x1x1 conv projection")
    g.add_argument("--resnet_widen_factor", default=1.0, type=float,
                   help="Width multiplier of resnet/resnet2p1d/mc3")
    g.add_argument("--conv1_mid_planes", default=0, type=int,
                   help="resnet2p1d: channels between the stem's spatial and temporal convs (0: derived as in "
                        "the original; torchvision's r2plus1d_18 uses 45)")
    g.add_argument("--block_mid_planes", default="per_conv", type=str, choices=("per_conv", "per_block"),
                   help="resnet2p1d: middle width of each factorised block conv from its own in/out widths "
                        "(per_conv, the original) or from the block's (per_block, torchvision)")
    g.add_argument("--wide_resnet_k", default=2, type=int, help="Width factor of wideresnet")
    g.add_argument("--resnext_cardinality", default=32, type=int, help="Groups of resnext")


def _add_optim_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("optimisation")
    g.add_argument("--learning_rate", default=0.1, type=float, help="Initial learning rate")
    g.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    g.add_argument("--dampening", default=0.0, type=float, help="SGD dampening (0 with --nesterov)")
    g.add_argument("--weight_decay", default=1e-3, type=float, help="Weight decay")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument("--optimizer", default="sgd", type=str, choices=("sgd", "adamw"),
                   help="sgd (with --momentum, --dampening, --nesterov) or adamw; both use --weight_decay")
    decay = g.add_mutually_exclusive_group()
    decay.add_argument("--no_decay_bn_bias", action="store_const", const=True,
                       default=argparse.SUPPRESS,
                       help="No weight decay on BatchNorm and bias parameters (default: on for adamw, off for sgd)")
    decay.add_argument("--decay_bn_bias", dest="no_decay_bn_bias", action="store_const", const=False,
                       default=argparse.SUPPRESS,
                       help="Weight decay on every parameter, BatchNorm and bias included (the default for sgd)")
    g.add_argument("--lr_scheduler", default="multistep", type=str, choices=("multistep", "plateau", "cosine"),
                   help="multistep (x0.1 at milestones), plateau (on val loss) or cosine (per epoch)")
    g.add_argument("--multistep_milestones", default=[50, 100, 150], type=int, nargs="+",
                   help="Epochs after which multistep multiplies the LR by 0.1")
    g.add_argument("--overwrite_milestones", action="store_true",
                   help="On resume, use the milestones given here instead of the checkpoint's")
    g.add_argument("--plateau_patience", default=10, type=int, help="Patience of the plateau scheduler")
    g.add_argument("--warmup_epochs", default=0, type=int, help="Linear warm-up epochs before cosine decay")
    g.add_argument("--batch_size", default=128, type=int,
                   help="GLOBAL training batch size: summed over all processes (each gets batch_size // world)")
    g.add_argument("--n_epochs", default=200, type=int, help="Last epoch to train (inclusive)")
    g.add_argument("--precision", default=None, type=str, choices=("fp32", "bf16", "fp16"),
                   help="Autocast precision (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--compile", action="store_true", help="Compile the model with torch.compile")


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("fine-tuning recipe (README: Fine-tuning recipe)")
    g.add_argument("--label_smoothing", default=0.0, type=float,
                   help="Label smoothing of the training loss (0 = plain cross-entropy; validation stays plain)")
    g.add_argument("--mixup_alpha", default=0.0, type=float,
                   help="Mixup: blend each clip with another of the batch, weight ~ Beta(alpha, alpha); 0 = off")
    g.add_argument("--cutmix_alpha", default=0.0, type=float,
                   help="CutMix: paste a box of another clip (the same box in every frame), area ~ Beta(alpha, "
                        "alpha); 0 = off")
    g.add_argument("--mix_prob", default=1.0, type=float, help="Chance that a clip is mixed (mixup/cutmix)")
    g.add_argument("--mix_switch_prob", default=0.5, type=float,
                   help="With both alphas > 0: chance that a mixed clip uses cutmix instead of mixup")
    g.add_argument("--clip_grad_norm", default=0.0, type=float,
                   help="Clip the gradients' total L2 norm to this before each optimiser step; 0 = off")
    g.add_argument("--ema_decay", default=0.0, type=float,
                   help="Keep an exponential moving average of the weights with this decay per optimiser step "
                        "(e.g. 0.999); validation, inference and checkpoints' ema_state_dict use it; 0 = off")
    g.add_argument("--accumulate_grad_batches", default=1, type=int,
                   help="One optimiser step per this many batches (gradients accumulated, averaged over batches)")
    g.add_argument("--randaugment", default=None, type=int, nargs=2, metavar=("N", "M"),
                   help="RandAugment in training: N ops drawn per clip at magnitude M (0..30; 9 is torchvision's "
                        "default), the same ops on every frame, after the crop, on uint8 (RGB only); N = 0: off")
    g.add_argument("--random_erasing", default=0.0, type=float,
                   help="Chance that a training clip gets a random box (the same in every frame) filled with "
                        "per-pixel normal noise, after normalisation; 0 = off")
    g.add_argument("--repeated_aug", default=1, type=int,
                   help="Repeated augmentation: each sampled video comes this many times per epoch, each with its "
                        "own augmentation, spread over the ranks; the epoch keeps its length; 1 = off")
    g.add_argument("--layer_decay", default=1.0, type=float,
                   help="Layer-wise LR decay: the head trains with --learning_rate, layer4 with lr * F, layer3 with "
                        "lr * F^2, ..., the stem with lr * F^5 (every model family maps its modules onto these "
                        "stages); 1 = off (one LR)")
    g.add_argument("--precise_bn", default=0, type=int,
                   help="After each training epoch (so before validation and in the checkpoint), recompute the "
                        "BatchNorm running statistics (of the EMA model too) as the average over this many training "
                        "batches, averaged over ranks; 0 = off (the running averages of training)")
    g.add_argument("--eval_weights", default="ema", type=str, choices=("ema", "raw"),
                   help="Weights of a checkpoint that --predict, --no_train and export_model use: its EMA "
                        "average when it has one (ema) or the raw trained weights (raw)")


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run control, checkpoints and logs")
    g.add_argument("--resume_path", default=None, type=Path,
                   help="Checkpoint to resume from; 'auto' = newest save_*.pth in --result_path (or start fresh); "
                        "an .onnx file of util_scripts.export_model for --predict, --no_train and --inference")
    g.add_argument("--no_train", action="store_true", help="Skip training")
    g.add_argument("--no_val", action="store_true", help="Skip validation")
    g.add_argument("--n_val_samples", default=3, type=int, help="Clips per validation video")
    g.add_argument("--checkpoint", default=10, type=int, help="Save save_{epoch}.pth every this many epochs")
    g.add_argument("--checkpoint_minutes", default=30.0, type=float,
                   help="Also keep a rolling save_latest.pth, rewritten mid-epoch at most every this many minutes, "
                        "so a hard kill loses at most that much training; 0 turns it off")
    g.add_argument("--manual_seed", default=1, type=int, help="Seed of random, numpy and torch")
    g.add_argument("--deterministic", action="store_true", help="Use deterministic algorithms (slower)")
    g.add_argument("--tensorboard", action="store_true", help="Write tensorboard scalars into --result_path")
    g.add_argument("--tracker", default="none", type=str, choices=TRACKER_CHOICES,
                   help="Also log options, per-epoch metrics and the confusion matrix to an experiment tracker "
                        "(offline: wandb in mode offline unless WANDB_MODE says otherwise; mlflow into "
                        "<result_path>/mlruns unless MLFLOW_TRACKING_URI is set); needs its package installed")
    g.add_argument("--log_interval", default=10, type=int, help="Batches between progress/log updates")


def _add_inference_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("inference")
    g.add_argument("--inference", action="store_true", help="Run inference after the epoch loop")
    g.add_argument("--inference_subset", default="val", type=str, choices=tuple(SUBSET_NAMES),
                   help="Subset to run inference on; results go to {subset}.json")
    g.add_argument("--inference_stride", default=16, type=int, help="Sliding-window stride in frames")
    g.add_argument("--inference_crop", default="center", type=str, choices=("center", "nocrop"),
                   help="center crop, or resize only (nocrop)")
    g.add_argument("--inference_no_average", action="store_true", help="Write per-clip instead of per-video scores")
    g.add_argument("--inference_align_last_window", action="store_true",
                   help="Sliding windows: end the last window at the video's last frame (real frames only, overlapping "
                        "the one before) instead of loop-padding it as the original does; --predict always does")
    g.add_argument("--output_video", action="store_true",
                   help="For --predict: also write an annotated copy of every video (top-k labels of the current "
                        "segment and a timeline of top-1 labels) to annotated/<name>.mp4 in --result_path")
    g.add_argument("--save_features", action="store_true",
                   help="Also write the classifier's input (pooled embedding) of every clip/segment and its mean per "
                        "video to an HDF5 file: {subset}_features.h5 with --inference, features.h5 with --predict")
    g.add_argument("--inference_batch_size", default=0, type=int,
                   help="Videos per inference batch per process; 0 = --batch_size")
    g.add_argument("--output_topk", default=5, type=int, help="Top-k labels per video; 0 means all classes")
    g.add_argument("--inference_n_clips", default=0, type=int,
                   help="Multi-view testing: this many evenly spaced clips per video; 0 = sliding windows "
                        "every --inference_stride frames")
    g.add_argument("--inference_n_crops", default=1, type=int, choices=(1, 3),
                   help="Spatial crops per clip: 1 (--inference_crop) or 3 (left/center/right, or "
                        "top/center/bottom for portrait videos); scores are averaged over all views")
    g.add_argument("--predict", default=None, type=predict_source,
                   help="Predict top-k labels of a video file or of every video under a directory (no annotation "
                        "file); needs --resume_path; writes predictions.json/.csv/.html into --result_path (default: "
                        "<path>_predictions beside the input). A live source (a URL FFmpeg opens, '-' for stdin, a "
                        "camera device such as /dev/video0, a FIFO) is followed as it arrives: a JSON line per "
                        "segment (see --live_output)")
    g.add_argument("--class_names", default=None, type=Path,
                   help="For --predict: text file with one class name per line (for checkpoints without names)")
    g.add_argument("--live_output", default=None, type=Path,
                   help="For --predict on a live source (a URL such as rtsp:// or http://, '-' for stdin, a camera "
                        "device, a FIFO): append the JSON line of every segment to this file (default: stdout)")
    g.add_argument("--live_stall_seconds", default=10.0, type=float,
                   help="For live --predict: a URL or device that delivers no data for this many seconds is "
                        "reconnected (pipes are waited for)")
    g.add_argument("--live_reconnect", default=5, type=int,
                   help="For live --predict: reconnection attempts in a row after the stream is lost or stalls, "
                        "waiting 0.5 s, then twice as long after every failed try, at most 30 s (-1: forever; 0: "
                        "stop when the stream ends)")


def predict_source(text: str) -> Path | str:
    """--predict's value: a path, or a URL / '-' kept as text (a Path would fold the URL's '//')."""
    return text if text == STDIN or is_url(text) else Path(text)


def _add_device_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("devices and distributed")
    g.add_argument("--no_cuda", action="store_true", help="Run on the CPU")
    g.add_argument("--distributed", action="store_true",
                   help="One process per local GPU (not needed under torchrun, which is detected)")
    g.add_argument("--dist_url", default="tcp://127.0.0.1:23456", type=str,
                   help="Rendezvous address for --distributed (ignored under torchrun)")
    g.add_argument("--world_size", default=-1, type=int, help="Number of nodes for --distributed (-1 = 1)")
    g.add_argument("--batchnorm_sync", action="store_true", help="Synchronise BatchNorm statistics across GPUs")
    g.add_argument("--dist_timeout", default=1800, type=int,
                   help="Seconds a collective waits for a rank that hangs before the job fails")


class _OneLineErrorParser(argparse.ArgumentParser):
    """Reports a bad command line in one line (the full usage of ~70 flags would bury the message)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every flag, grouped by topic."""
    parser = _OneLineErrorParser(
        description="Train, validate and run inference with 3D CNNs for video action recognition.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for add in (_add_data_args, _add_transform_args, _add_model_args, _add_optim_args, _add_recipe_args,
                _add_run_args, _add_inference_args, _add_device_args):
        add(parser)
    return parser


def parse_opts(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default: sys.argv) and resolve derived options; exits with a message on bad input."""
    parser = build_parser()
    opt = _parse_recording_explicit(parser, argv)
    _check(parser, opt)
    _resolve(opt)
    return opt


def _parse_recording_explicit(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, setting ``opt.explicit_flags`` to the names of the options it gives."""
    defaults = vars(parser.parse_args([]))
    unset = object()
    # argparse fills in defaults only for names the namespace lacks, so preset names stay unset unless given.
    opt = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(defaults, unset)))
    explicit = frozenset(name for name, value in vars(opt).items() if value is not unset)
    for name, default in defaults.items():
        if name not in explicit:
            setattr(opt, name, default)
    opt.explicit_flags = explicit
    return opt


def share_per_process(opt: argparse.Namespace, *, world_size: int, local_world_size: int) -> None:
    """Set ``opt.process_batch_size`` and ``opt.process_n_threads``: this process's share of the totals
    --batch_size (over all processes) and --n_threads (over the processes of this node)."""
    opt.process_batch_size = opt.batch_size // world_size
    opt.process_n_threads = -(-opt.n_threads // max(local_world_size, 1))


def _cuda_wanted(opt: argparse.Namespace) -> bool:
    return not opt.no_cuda and torch.cuda.is_available()


def _check(parser: argparse.ArgumentParser, opt: argparse.Namespace) -> None:
    problems = number_problems(parser, opt)
    if opt.result_path is None and opt.predict is None:
        problems.append("--result_path is required")
    if opt.predict is not None and opt.resume_path is None:
        problems.append("--predict needs --resume_path (the checkpoint to predict with)")
    if opt.output_video and opt.predict is None:
        problems.append("--output_video needs --predict (the videos to annotate)")
    live_flags = [f"--{name}" for name in ("live_output",) if getattr(opt, name) is not None]
    if live_flags and opt.predict is None:
        problems.append(f"{' '.join(live_flags)} needs --predict (a live source)")
    if opt.save_features and opt.predict is None and not opt.inference:
        problems.append("--save_features needs --predict or --inference (the clips to embed)")
    if opt.inference_n_crops == 3 and opt.inference_crop != "center":
        problems.append("--inference_n_crops 3 needs --inference_crop center")
    if opt.lr_scheduler == "plateau" and opt.no_val:
        problems.append("--lr_scheduler plateau needs validation losses; remove --no_val")
    if opt.pretrain_path is not None and opt.n_pretrain_classes <= 0:
        problems.append("--pretrain_path needs --n_pretrain_classes (the class count of the pretrained model)")
    if opt.ft_begin_module and opt.pretrain_path is None:
        problems.append("--ft_begin_module only applies when fine-tuning; add --pretrain_path")
    if opt.input_type == "flow" and not FILE_READERS[opt.file_type].holds_flow:
        problems.append(f"--input_type flow needs --file_type {' or '.join(flow_file_types())}")
    if opt.warmup_epochs and opt.lr_scheduler != "cosine":
        problems.append("--warmup_epochs is only used with --lr_scheduler cosine")
    if opt.precision == "fp16" and not _cuda_wanted(opt):
        problems.append("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if opt.batchnorm_sync and not (opt.distributed or "WORLD_SIZE" in os.environ):
        problems.append("--batchnorm_sync needs a distributed run (--distributed or torchrun)")
    if opt.temporal_sampling == "segment" and opt.sample_t_stride != 1:
        problems.append("--sample_t_stride does not apply to --temporal_sampling segment (the segments set the gaps)")
    if opt.overwrite_milestones and opt.lr_scheduler != "multistep":
        problems.append("--overwrite_milestones only applies to --lr_scheduler multistep")
    problems += _recipe_problems(opt)
    problems += _optimizer_and_model_problems(opt)
    if problems:
        parser.error("; ".join(problems))


def number_problems(parser: argparse.ArgumentParser, opt: argparse.Namespace) -> list[str]:
    """Every int and float option checked against its NUMBER_BOUNDS row (every value of a list option), as
    messages; a number option without a row must still be finite."""
    problems = []
    for action in parser._actions:  # argparse has no public list of a parser's options
        if action.type not in (int, float):
            continue
        bounds = NUMBER_BOUNDS.get(action.dest, ANY)
        given = getattr(opt, action.dest)
        for value in given if isinstance(given, list) else [given]:
            problem = None if value is None else bounds.problem(value)
            if problem is not None:
                problems.append(f"{action.option_strings[0]} {problem}")
                break
    return problems


def _optimizer_and_model_problems(opt: argparse.Namespace) -> list[str]:
    """Combinations the optimiser would reject with a traceback, or that leave nothing to do, as messages."""
    problems = []
    if opt.nesterov and opt.momentum <= 0:
        problems.append("--nesterov needs --momentum > 0")
    if opt.no_train and opt.no_val and not opt.inference and opt.predict is None:
        problems.append("nothing to do: --no_train and --no_val without --inference; add --inference or drop one")
    return problems


def _recipe_problems(opt: argparse.Namespace) -> list[str]:
    problems = []
    if opt.optimizer != "sgd" and (opt.nesterov or opt.dampening):
        problems.append("--nesterov and --dampening apply to --optimizer sgd only")
    multi_label = opt.multi_label or opt.dataset in MULTI_LABEL_DATASETS
    if multi_label and (opt.label_smoothing or opt.mixup_alpha or opt.cutmix_alpha):
        problems.append("--label_smoothing, --mixup_alpha and --cutmix_alpha apply to single-label training; "
                        "multi-label targets (--multi_label, --dataset charades) are not mixed or smoothed")
    if opt.randaugment and opt.randaugment[0] > 0 and opt.input_type == "flow":
        problems.append("--randaugment applies to RGB clips, not to --input_type flow")
    return problems


def _resolve(opt: argparse.Namespace) -> None:
    resume_auto = opt.resume_path is not None and str(opt.resume_path) == RESUME_AUTO
    if opt.root_path is not None:
        for name in _ROOTED_PATHS:
            if isinstance(getattr(opt, name), Path) and not (name == "resume_path" and resume_auto):
                setattr(opt, name, opt.root_path / getattr(opt, name))
    if opt.pretrain_path is not None:
        # The model is built with the pretrained class count first, then its head is replaced.
        opt.n_finetune_classes = opt.n_classes
        opt.n_classes = opt.n_pretrain_classes
    if opt.output_topk == 0 and opt.predict is None:  # --predict: all classes of the checkpoint's model
        opt.output_topk = opt.n_classes
    if opt.inference_batch_size == 0:
        opt.inference_batch_size = opt.batch_size
    if opt.precision is None:
        opt.precision = "bf16" if _cuda_wanted(opt) else "fp32"
    if opt.dataset in MULTI_LABEL_DATASETS:
        opt.multi_label = True  # Charades: several actions per video
    if getattr(opt, "no_decay_bn_bias", None) is None:  # neither flag given
        opt.no_decay_bn_bias = opt.optimizer == "adamw"
    opt.arch = f"{opt.model}-{opt.model_depth}"
    opt.begin_epoch = 1  # not read here; kept because the original's opts.json has it
    resolve_input(opt)


def opts_to_plain(opt: argparse.Namespace) -> dict:
    """vars(opt) with Paths as strings: JSON-serialisable and safe inside weights_only checkpoints."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opt).items() if k not in RUNTIME_FIELDS}


def save_opts(opt: argparse.Namespace, result_path: Path) -> Path:
    """Write opts.json (one JSON object, the original's layout) into ``result_path``, creating it."""
    result_path = Path(result_path)
    result_path.mkdir(parents=True, exist_ok=True)
    path = result_path / "opts.json"
    with open(path, "w") as f:
        json.dump(opts_to_plain(opt), f)
    return path
