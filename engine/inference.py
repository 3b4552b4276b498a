"""Sliding-window inference: clip softmax scores -> per-video (or per-clip) top-k JSON, as the original.

Output schema (``{subset}.json``):
    averaged: {"results": {video_id: [{"label": name, "score": float}, ...]}}
    --inference_no_average: {"results": {video_id: [{"segment": [begin, end], "result": [...]}, ...]}}
With --multi_label the scores are per-class sigmoids (they do not sum to 1; --output_topk 0 lists every
class, as mAP evaluation needs) and the printed video-level metric is mAP.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from datasets import factory as dataset
from datasets.annotations import read_records
from datasets.layout import SUBSET_NAMES
from datasets.targets import video_target
from engine.distributed import DistInfo, barrier, broadcast_buffers, gather_objects
from engine.features import ClassifierInputCapture, write_features
from engine.forward import autocast, class_scores, prepare_batch
from engine.scoring import VideoScoreAggregator
from utils import mean_average_precision

log = logging.getLogger(__name__)



def run_inference(model: nn.Module, loader: Iterable, device: torch.device, *, class_names: Sequence[str],
                  normalizer: Callable | None = None, precision: str = "fp32",
                  show_progress: bool = True, log_interval: int = 10,
                  multi_label: bool = False,
                  features: VideoScoreAggregator | None = None) -> VideoScoreAggregator:
    """Softmax scores (``multi_label``: sigmoid scores) of every clip of ``loader``, collected per video; with
    ``features`` (engine.features' collector) also every clip's classifier input."""
    model.eval()
    aggregator = VideoScoreAggregator(class_names)
    n_batches, start = len(loader), time.perf_counter()
    capture = ClassifierInputCapture(model) if features is not None else contextlib.nullcontext()
    with torch.inference_mode(), capture:
        for i, (clips, targets) in enumerate(loader, start=1):
            clips, _ = prepare_batch(clips, None, device, normalizer, keep_layout=True)
            with autocast(device, precision):
                outputs = model(clips)
            scores = class_scores(outputs, multi_label)
            aggregator.update(scores, [t[0] for t in targets], [t[1] for t in targets])
            if features is not None:
                features.update(capture.take(), [t[0] for t in targets], [t[1] for t in targets])
            if show_progress and (i % log_interval == 0 or i == n_batches):
                log.info("inference [%d/%d] %.1f s", i, n_batches, time.perf_counter() - start)
    return aggregator


def write_results(path: str | Path, results: dict) -> Path:
    """Write the results JSON (no indentation, like the original)."""
    path = Path(path)
    with open(path, "w") as f:
        json.dump(results, f)
    return path


def eval_view(net: nn.Module) -> nn.Module:
    """The module to evaluate: the one inside DDP (whose own forward would sync buffers, a collective all ranks
    must join), with rank 0's BatchNorm statistics on every rank. All ranks then evaluate one model, the one a
    checkpoint holds, so a run resumed from a checkpoint validates exactly as an uninterrupted one. Every rank
    must call it (a collective) when ``net`` is wrapped in DDP."""
    if not isinstance(net, nn.parallel.DistributedDataParallel):
        return net
    broadcast_buffers(net.module)
    return net.module


def infer_subset(opt: argparse.Namespace, net: nn.Module, dist: DistInfo, normalizer) -> dict | None:
    """--inference: score --inference_subset on every rank; the main process merges the ranks' clips and writes
    {subset}.json (in dataset order) and prints the accuracies when the videos have labels.

    Returns, on the main process of a single-label run with labelled videos, the accuracy report with the class
    names (labels) and the top-1 confusion matrix of the videos (confusion); None elsewhere."""
    log.info("inference on the %s subset", opt.inference_subset)
    loader = dataset.build_inference_loader(opt, dist)
    class_names = dataset.get_class_names(opt)
    features = VideoScoreAggregator([]) if opt.save_features else None
    aggregator = run_inference(eval_view(net), loader, dist.device, class_names=class_names,
                               normalizer=normalizer, precision=opt.precision, show_progress=dist.is_main,
                               log_interval=opt.log_interval, multi_label=opt.multi_label, features=features)
    parts = gather_objects(aggregator.clips)
    feature_parts = gather_objects(features.clips) if features is not None else []
    summary = None
    if dist.is_main:
        merged = merge_ranks(parts, class_names)
        records = _inference_records(opt, loader)
        merged.reorder([r.video_id for r in records])
        path = write_results(Path(opt.result_path) / f"{opt.inference_subset}.json",
                             merged.finalize(opt.output_topk, average=not opt.inference_no_average))
        log.info("wrote %s (%d videos)", path, len(merged.clips))
        if opt.multi_label:
            report_video_map(opt, merged, records)
        else:
            labels = {r.video_id: r.label for r in records}
            report = report_video_accuracy(opt, merged, labels)
            if report is not None:
                summary = {**report, "labels": class_names, "confusion": merged.confusion(labels)}
        if features is not None:
            _write_subset_features(opt, feature_parts, [r.video_id for r in records])
    barrier()
    return summary


def _write_subset_features(opt: argparse.Namespace, parts: list, video_order: Sequence[str]) -> Path:
    """--save_features: every rank's clip embeddings merged into {subset}_features.h5 (engine.features layout,
    segments in frames like {subset}.json)."""
    merged = merge_ranks(parts, [])
    path = write_features(Path(opt.result_path) / f"{opt.inference_subset}_features.h5", merged,
                          video_order=video_order, unit="frames", source=str(opt.resume_path or ""))
    log.info("wrote %s (%d videos)", path, len(merged.clips))
    return path


def merge_ranks(parts: Sequence[dict], class_names: Sequence[str]) -> VideoScoreAggregator:
    """One aggregator of every rank's gathered ``clips``."""
    merged = VideoScoreAggregator(class_names)
    for clips in parts:
        part = VideoScoreAggregator(class_names)
        part.clips = clips
        merged.merge(part)
    return merged


def _inference_records(opt: argparse.Namespace, loader) -> list:
    """The video records of the inference subset, in dataset order (for output order and labels)."""
    records = getattr(loader.dataset, "records", None)
    if records is None:
        records, _ = read_records(opt.annotation_path, opt.video_path, dataset=opt.dataset,
                                  subset=SUBSET_NAMES[opt.inference_subset], file_type=opt.file_type,
                                  untrimmed=True)
    return list(records)


def report_video_accuracy(opt: argparse.Namespace, aggregator: VideoScoreAggregator, labels: dict) -> dict | None:
    """Print clip-level and video-level top-1 accuracy (when the videos have labels); returns the report."""
    report = aggregator.accuracy_report(labels)
    if report is not None:
        views = f"{opt.inference_n_clips or 'sliding'} clips x {opt.inference_n_crops} crops"
        print(f"clip-level top-1 accuracy on {opt.inference_subset}: {report['clip_acc']:.4f} ({report['clips']} "
              f"clips, {views})")
        print(f"video-level top-1 accuracy on {opt.inference_subset}: {report['video_acc']:.4f} "
              f"({report['videos']} videos)")
    return report


def report_video_map(opt: argparse.Namespace, aggregator: VideoScoreAggregator, records: Sequence) -> float | None:
    """Print the video-level mAP of multi-label scores (targets: every action of each video) over the classes
    with a positive video; returns it (None when no scored video has an action)."""
    scores = aggregator.video_scores()
    scored = [r for r in records if r.video_id in scores]
    if not scored:
        return None
    n_classes = len(next(iter(scores.values())))
    targets = torch.stack([video_target(r, n_classes) for r in scored])
    if not targets.any():
        return None
    value, per_class = mean_average_precision(torch.stack([scores[r.video_id] for r in scored]).numpy(),
                                              targets.numpy())
    n_known = sum(ap is not None for ap in per_class)
    print(f"video-level mAP on {opt.inference_subset}: {value:.4f} ({len(scored)} videos, {n_known} classes with "
          "positives)")
    return value
