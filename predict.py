"""Predict action labels of arbitrary video files with a trained checkpoint, without an annotation file.

    python main.py --predict VIDEO_OR_DIR --resume_path CKPT [--result_path OUT] [--class_names FILE]

Every video (a file, or every video file under a directory) is cut into clips like inference does
(sliding windows every --inference_stride frames of --sample_duration frames taken every
--sample_t_stride frames, or --inference_n_clips evenly spaced clips, each in --inference_n_crops
crops). The top --output_topk labels per video (mean over all clips) and per time segment (in
seconds) are printed and written to OUT/predictions.json and OUT/predictions.csv.

The model is rebuilt from the checkpoint's arch and model_kwargs (checkpoints of this toolkit) or
from the flags (released checkpoints: only --model/--model_depth style flags; the class count is
read from the weights). Clip settings (size, duration, stride, normalisation) not given on the
command line are taken from the checkpoint's stored options when it has them.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import model as model_lib
from checkpoint import load_checkpoint
from dataset import build_input_normalizer, seed_worker
from datasets.annotations import VideoRecord
from datasets.clip_loader import ClipLoader
from datasets.layout import VIDEO_EXTENSIONS, has_video_extension
from datasets.problems import DataProblems
from datasets.video_files import VideoFileReader, VideoMeta, probe_video
from errors import UserError
from inference import VideoScoreAggregator, run_inference
from opts import RESUME_AUTO, resolve_input
from spatial_transforms import get_spatial_transform
from temporal_transforms import TemporalTransform, get_temporal_transform

log = logging.getLogger(__name__)

# Clip settings a checkpoint's stored options supply unless they are given on the command line.
CLIP_OPTIONS = ("sample_size", "sample_duration", "sample_t_stride", "inference_stride", "mean_dataset", "value_scale",
                "no_mean_norm", "no_std_norm")
CSV_HEADER = ["video", "scope", "start_s", "end_s", "rank", "label", "score"]


@dataclass(frozen=True)
class VideoToPredict:
    """One input video: its id in the outputs (the path), frame count and fps."""

    video_id: str
    path: Path
    meta: VideoMeta

    @property
    def duration(self) -> float:
        return self.meta.n_frames / self.meta.fps


def find_videos(path: Path) -> list[Path]:
    """`path` itself if it is a file, else every video file under the directory (recursively, sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"--predict {path}: no such file or directory")
    found = sorted(p for p in path.rglob("*") if p.is_file() and has_video_extension(p))
    if not found:
        raise UserError(f"--predict {path}: no video files ({', '.join(VIDEO_EXTENSIONS)}) under this directory")
    return found


def probe_videos(paths: Sequence[Path]) -> list[VideoToPredict]:
    """Frame count and fps of every video; unreadable ones are skipped with a warning."""
    videos = []
    for path in paths:
        try:
            meta = probe_video(path)
        except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
            log.warning("skipping %s: cannot open it as a video (%s)", path, e)
            continue
        if meta.n_frames < 1:
            log.warning("skipping %s: no video frames", path)
            continue
        videos.append(VideoToPredict(str(path), path, meta))
    if not videos:
        raise UserError("none of the given videos could be opened")
    return videos


def read_class_names(path: Path) -> list[str]:
    """One class name per non-empty line."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --class_names {path}: {e}") from None
    names = [n for n in names if n]
    if not names:
        raise UserError(f"--class_names {path} holds no names")
    return names


def take_clip_settings(opt: argparse.Namespace, payload: dict) -> None:
    """Give `opt` the clip settings of the checkpoint's options that the command line did not set; the input is RGB."""
    stored = payload.get("options") or {}
    taken = {k: stored[k] for k in CLIP_OPTIONS if k in stored and k not in opt.explicit_flags}
    if taken:
        log.info("from the checkpoint's options: %s", ", ".join(f"{k}={v}" for k, v in taken.items()))
    for name, value in taken.items():
        setattr(opt, name, value)
    opt.input_type = "rgb"
    resolve_input(opt)


def load_predictor(opt: argparse.Namespace, payload: dict, source: Path) -> tuple[nn.Module, list[str]]:
    """The model with the checkpoint's weights (eval mode, CPU) and its class names."""
    flags = {name: getattr(opt, name) for name in model_lib.MODEL_FLAGS if name in opt.explicit_flags}
    if not payload.get("arch"):  # nothing in the file names the model: the flags' (default) one
        flags.update(model=opt.model, model_depth=opt.model_depth)
    loaded = model_lib.model_from_checkpoint(payload, flags, source=f"checkpoint {source}", weights=opt.eval_weights)
    names = _class_names(opt, loaded.class_names, loaded.model.get_classifier().out_features)
    return loaded.model, names


def _class_names(opt: argparse.Namespace, stored: list[str] | None, n_classes: int) -> list[str]:
    if opt.class_names is not None:
        names = read_class_names(opt.class_names)
    elif stored:
        names = stored
    else:
        log.warning("the checkpoint has no class names and no --class_names file was given: labels are indices")
        return [str(i) for i in range(n_classes)]
    if len(names) != n_classes:
        raise UserError(f"{len(names)} class names but the model has {n_classes} classes"
                        + (f" (--class_names {opt.class_names})" if opt.class_names is not None else ""))
    return names


class WindowDataset(Dataset):
    """Groups of at most `group` clips of one video per item (bounded memory for long videos).

    Items: (uint8 clips (n_clips * n_crops, T, H, W, C), [[video id, [first, last] frame]] per clip and crop), the
    inference loader's batches.
    """

    def __init__(self, videos: Sequence[VideoToPredict], loader: ClipLoader, temporal: TemporalTransform, *,
                 group: int):
        self.videos = list(videos)
        self.loader = loader
        self.items: list[tuple[int, list[list[int]]]] = []
        for v, video in enumerate(self.videos):
            clips = temporal(list(range(video.meta.n_frames)))
            self.items += [(v, clips[i : i + group]) for i in range(0, len(clips), group)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        v, clips = self.items[index]
        video = self.videos[v]
        record = VideoRecord(video.video_id, video.path, -1, (0, video.meta.n_frames), video.meta.fps)
        views = self.loader.load_views(record, clips, None)
        stacked = torch.stack([torch.from_numpy(view[k]) for k in range(len(clips)) for view in views])
        targets = [[video.video_id, [min(c), max(c)]] for c in clips for _ in views]
        return stacked, targets


def _single(batch: list):
    return batch[0]


def segment_seconds(span: Sequence[int], *, t_stride: int, n_frames: int, fps: float) -> list[float]:
    """[start, end] in seconds of a clip covering frames span[0]..span[1]; the end includes the t_stride - 1
    frames skipped after the last sampled one, so consecutive windows tile the video without gaps."""
    end = min(span[1] + t_stride, n_frames)
    return [round(span[0] / fps, 3), round(end / fps, 3)]


def predict_videos(net: nn.Module, videos: Sequence[VideoToPredict], opt: argparse.Namespace, *,
                   class_names: Sequence[str], device: torch.device) -> dict:
    """Scores of every clip, averaged per video and per segment, as the predictions dict (see `run`)."""
    spatial = get_spatial_transform("inference", sample_size=opt.sample_size, inference_crop=opt.inference_crop,
                                    inference_n_crops=opt.inference_n_crops)
    temporal = get_temporal_transform("inference", sample_duration=opt.sample_duration,
                                      sample_t_stride=opt.sample_t_stride, inference_stride=opt.inference_stride,
                                      inference_n_clips=opt.inference_n_clips)
    loader = ClipLoader(VideoFileReader(), spatial, DataProblems(max_workers=opt.n_threads))
    group = max(1, opt.inference_batch_size // opt.inference_n_crops)
    data = WindowDataset(videos, loader, temporal, group=group)
    batches = DataLoader(data, batch_size=1, collate_fn=_single, num_workers=opt.n_threads,
                         worker_init_fn=seed_worker)
    scores = run_inference(net.to(device), batches, device, class_names=class_names,
                           normalizer=build_input_normalizer(opt), precision=opt.precision, show_progress=False)
    scores.reorder([video.video_id for video in videos])
    return _results(videos, scores, opt)


def _results(videos: Sequence[VideoToPredict], scores: VideoScoreAggregator, opt: argparse.Namespace) -> dict:
    # --output_topk <= 0 means all classes of the checkpoint's model (opts leaves it unresolved for --predict).
    k = opt.output_topk if opt.output_topk > 0 else len(scores.class_names)

    def top(values: torch.Tensor) -> list[dict]:
        return [{**t, "score": round(t["score"], 6)} for t in scores.top(values, k)]

    per_video = scores.video_scores()
    results = {}
    for video in videos:
        segments = [{"segment": segment_seconds(span, t_stride=opt.sample_t_stride, n_frames=video.meta.n_frames,
                                                fps=video.meta.fps),
                     "result": top(s)} for span, s in scores.segment_scores(video.video_id)]
        results[video.video_id] = {"duration": round(video.duration, 3), "fps": video.meta.fps,
                                   "n_frames": video.meta.n_frames, "result": top(per_video[video.video_id]),
                                   "segments": segments}
    return {"results": results}


def write_predictions(out_dir: Path, predictions: dict) -> tuple[Path, Path]:
    """predictions.json (the dict) and predictions.csv (one row per video/segment and rank)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "predictions.json", out_dir / "predictions.csv"
    json_path.write_text(json.dumps(predictions, indent=1))
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for vid, entry in predictions["results"].items():
            rows = [("video", [0.0, entry["duration"]], entry["result"])]
            rows += [("segment", seg["segment"], seg["result"]) for seg in entry["segments"]]
            for scope, (start, end), top in rows:
                for rank, item in enumerate(top, start=1):
                    writer.writerow([vid, scope, start, end, rank, item["label"], item["score"]])
    return json_path, csv_path


def print_predictions(predictions: dict) -> None:
    for vid, entry in predictions["results"].items():
        labels = ", ".join(f"{t['label']} {t['score']:.3f}" for t in entry["result"])
        print(f"{vid} ({entry['duration']:.2f} s): {labels}")
        for seg in entry["segments"]:
            labels = ", ".join(f"{t['label']} {t['score']:.3f}" for t in seg["result"])
            print(f"  {seg['segment'][0]:8.2f} - {seg['segment'][1]:8.2f} s: {labels}")


def run(opt: argparse.Namespace) -> int:
    """`main.py --predict`: predict, print, write predictions.json/.csv; returns the exit code."""
    if str(opt.resume_path) == RESUME_AUTO:
        raise UserError("--predict needs an explicit --resume_path checkpoint file (not 'auto')")
    payload = load_checkpoint(opt.resume_path)
    take_clip_settings(opt, payload)
    net, class_names = load_predictor(opt, payload, Path(opt.resume_path))
    videos = probe_videos(find_videos(Path(opt.predict)))
    device = torch.device("cuda" if torch.cuda.is_available() and not opt.no_cuda else "cpu")
    log.info("predicting %d video(s) with %s on %s", len(videos), opt.resume_path, device)
    predictions = predict_videos(net, videos, opt, class_names=class_names, device=device)
    print_predictions(predictions)
    json_path, csv_path = write_predictions(Path(opt.result_path or "."), predictions)
    log.info("wrote %s and %s", json_path, csv_path)
    return 0
