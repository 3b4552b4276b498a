"""Datasets and DataLoaders from the options (the only data module that reads `opt`).

Batches: training and validation -> (clips, targets) with clips uint8 (N, T, H, W, C) (float32
(N, C, T, H, W) already normalised when opt.normalize_in_workers) and targets LongTensor (N,) (with
--multi_label float32 multi-hot (N, n_classes));
validation flattens all clips of its videos. Inference -> (clips, [[video_id, [begin, end]], ...]).
Sizes are per process: `opt.process_batch_size` / `opt.process_n_threads` (opts.share_per_process), else
`opt.batch_size` / `opt.n_threads`; `opt.inference_batch_size` as given. No torchvision anywhere.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.annotations import class_names, load_annotation, read_records
from datasets.clip_loader import ClipLoader
from datasets.clip_spec import ClipSpec, normalisation_stats
from datasets.file_reader import FileReader
from datasets.file_types import FILE_READERS, flow_file_types
from datasets.layout import SUBSET_NAMES
from datasets.problems import DataProblems
from datasets.readers import check_frames_fit
from datasets.sampling import EpochShardSampler
from datasets.spatial_transforms import ClipNormalizer
from datasets.targets import direction_flip
from datasets.video_dataset import VideoClipDataset, collate_clips
from errors import UserError

PREFETCH_FACTOR = 4
logger = logging.getLogger(__name__)


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed python/numpy/torch from the worker's torch seed; one compute thread per worker."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)


def build_input_normalizer(opt) -> ClipNormalizer:
    """The clip spec's normaliser, from the normalisation options alone (`clip_spec.normalisation_stats`)."""
    return ClipNormalizer(*normalisation_stats(opt), opt.value_scale)


def get_class_names(opt) -> list[str]:
    """Index -> class name from the annotation file of opt.dataset."""
    return class_names(load_annotation(opt.annotation_path), dataset=opt.dataset, path=opt.annotation_path)


def _reader(opt) -> FileReader:
    """The registered reader of --file_type, for the videos of --annotation_path (and flow when asked)."""
    reader_class = FILE_READERS.get(opt.file_type)
    if reader_class is None:
        raise UserError(f"--file_type must be one of {', '.join(FILE_READERS)}, got {opt.file_type!r}")
    flow = opt.input_type == "flow"
    if flow and not reader_class.holds_flow:
        raise UserError(f"--input_type flow needs --file_type {' or '.join(flow_file_types())} "
                        "(flow is read from video_u/video_v)")
    return reader_class.for_annotation_file(Path(opt.annotation_path), flow=flow)


def build_dataset(opt, split: str, *, problems: DataProblems | None = None) -> VideoClipDataset:
    """The dataset of `split` in {'train', 'val', 'inference'} (inference uses opt.inference_subset)."""
    subset = SUBSET_NAMES[opt.inference_subset] if split == "inference" else SUBSET_NAMES[split]
    records, _ = read_records(opt.annotation_path, opt.video_path, dataset=opt.dataset, subset=subset,
                              file_type=opt.file_type, untrimmed=split == "inference")
    spec = ClipSpec.from_options(opt)
    spatial = spec.spatial_transform(
        split, train_crop=opt.train_crop, train_crop_min_scale=opt.train_crop_min_scale,
        train_crop_min_ratio=opt.train_crop_min_ratio, hflip=not opt.no_hflip, colorjitter=opt.colorjitter,
        inference_crop=opt.inference_crop, inference_n_crops=opt.inference_n_crops, randaugment=opt.randaugment)
    temporal = spec.temporal_transform(split, train_t_crop=opt.train_t_crop, n_val_samples=opt.n_val_samples,
                                       inference_n_clips=opt.inference_n_clips,
                                       align_last=opt.inference_align_last_window)
    problems = problems or DataProblems(max_workers=_per_process(opt, "n_threads"))
    reader = _reader(opt)
    check_frames_fit(reader, records, spec.sample_size)
    loader = ClipLoader(reader, spatial, problems, draft=not opt.exact_decode)
    normalizer = spec.normalizer() if opt.normalize_in_workers else None
    multi_label = spec.multi_label
    target = "video_segment" if split == "inference" else "multi_hot" if multi_label else "label"
    flips = _direction_flip(opt) if split == "train" and not opt.no_hflip and not multi_label else None
    return VideoClipDataset(records, loader, temporal, target=target, normalizer=normalizer, seed=opt.manual_seed,
                            n_classes=n_outputs(opt), direction_flip=flips)


def n_outputs(opt) -> int:
    """Classes the model predicts (the fine-tuning head's when fine-tuning): the length of multi-hot targets."""
    return opt.n_finetune_classes if opt.pretrain_path is not None else opt.n_classes


def _direction_flip(opt):
    """Label-aware flips when class names say left/right (SSv2): a mirrored clip takes the mirrored class."""
    flips = direction_flip(get_class_names(opt))
    if not (flips.swap or flips.keep):
        return None  # no direction classes: the transform's own random flip, as always
    logger.info("horizontal flip: %d direction classes swap with their mirrored class, %d without one are never "
                "flipped", len(flips.swap), len(flips.keep))
    return flips


def _loader(dataset: VideoClipDataset, sampler: EpochShardSampler, *, batch_size: int, opt, dist,
            collate_fn=None, drop_last: bool = False, persistent: bool = True) -> DataLoader:
    workers = _per_process(opt, "n_threads")
    device = getattr(dist, "device", None)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
        drop_last=drop_last, pin_memory=device is not None and torch.device(device).type == "cuda",
        persistent_workers=persistent and workers > 0, prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(opt.manual_seed))


def _per_process(opt, name: str) -> int:
    """This process's share of a total option (set by opts.share_per_process), else the option itself."""
    return getattr(opt, f"process_{name}", getattr(opt, name))


def _world(dist) -> tuple[int, int]:
    return (dist.rank, dist.world_size) if dist is not None else (0, 1)


def build_train_loader(opt, dist) -> tuple[DataLoader, EpochShardSampler]:
    """Shuffled training loader and its sampler (never None: call sampler.set_epoch(epoch) each epoch)."""
    dataset = build_dataset(opt, "train")
    rank, world_size = _world(dist)
    sampler = EpochShardSampler(len(dataset), shuffle=True, seed=opt.manual_seed, rank=rank, world_size=world_size,
                                repeats=opt.repeated_aug)
    batch_size = _per_process(opt, "batch_size")
    # A last batch of one clip would crash BatchNorm in training mode; every rank has as many items, so all drop it.
    drop_last = batch_size > 1 and len(sampler) % batch_size == 1
    return _loader(dataset, sampler, batch_size=batch_size, opt=opt, dist=dist, drop_last=drop_last), sampler


def build_bn_stats_loader(opt, dist, train_loader: DataLoader) -> tuple[DataLoader, EpochShardSampler]:
    """A second loader of the training clips for --precise_bn, and its sampler: set_epoch(epoch) gives the clips
    of that epoch's first batches (what they are depends only on the seed and the epoch, so a resumed run sees
    the same). Its own sampler and generator leave the training loader's order alone; its workers live only
    while it is read (it reads a few batches per epoch)."""
    rank, world_size = _world(dist)
    sampler = EpochShardSampler(len(train_loader.dataset), shuffle=True, seed=opt.manual_seed, rank=rank,
                                world_size=world_size)
    loader = _loader(train_loader.dataset, sampler, batch_size=train_loader.batch_size, opt=opt, dist=dist,
                     drop_last=train_loader.drop_last, persistent=False)
    return loader, sampler


def build_val_loader(opt, dist) -> DataLoader:
    """Validation loader: batch_size // n_val_samples videos (at least 1) per batch, clips flattened."""
    dataset = build_dataset(opt, "val")
    rank, world_size = _world(dist)
    sampler = EpochShardSampler(len(dataset), shuffle=False, seed=opt.manual_seed, rank=rank, world_size=world_size)
    videos = max(1, _per_process(opt, "batch_size") // opt.n_val_samples)
    return _loader(dataset, sampler, batch_size=videos, opt=opt, dist=dist, collate_fn=collate_clips)


def build_inference_loader(opt, dist) -> DataLoader:
    """Sliding-window loader over opt.inference_subset: inference_batch_size videos per batch."""
    dataset = build_dataset(opt, "inference")
    rank, world_size = _world(dist)
    sampler = EpochShardSampler(len(dataset), shuffle=False, seed=opt.manual_seed, rank=rank, world_size=world_size)
    videos = opt.inference_batch_size or _per_process(opt, "batch_size")
    return _loader(dataset, sampler, batch_size=videos, opt=opt, dist=dist, collate_fn=collate_clips)


def data_problems(loader: DataLoader) -> DataProblems:
    """The bad-data counters of a loader built here: `.counts()` -> {'missing_frames': n, ...} (cumulative)."""
    return loader.dataset.problems


def check_data_paths(opt) -> None:
    """--annotation_path and --video_path exist when anything reads the data."""
    if opt.no_train and opt.no_val and not opt.inference:
        return  # nothing reads the data
    for flag in ("annotation_path", "video_path"):
        if getattr(opt, flag) is None:
            raise UserError(f"--{flag} is required to train, validate or run inference")
    if not Path(opt.video_path).is_dir():
        raise UserError(f"--video_path {opt.video_path} is not a directory")


def check_class_count(opt, n_outputs: int) -> None:
    """Labels index the model's outputs: more labels than outputs would crash mid-epoch (or assert on CUDA)."""
    if opt.no_train and opt.no_val and not opt.inference:
        return
    n_labels = len(get_class_names(opt))
    if n_labels > n_outputs:
        flag = "--n_classes" if opt.pretrain_path is None else "--n_classes (the fine-tuning class count)"
        raise UserError(f"{opt.annotation_path} has {n_labels} labels but the model has {n_outputs} outputs; "
                        f"set {flag} to at least {n_labels}")
