"""Predict action labels of arbitrary video files with a trained checkpoint, without an annotation file.

    python main.py --predict VIDEO_OR_DIR --resume_path CKPT [--result_path OUT] [--class_names FILE]

OUT defaults to VIDEO_OR_DIR_predictions beside the input (my_videos/ -> my_videos_predictions/, clip.mp4 ->
clip_predictions/), not the current directory, which may be a source tree.

Every video (a file, or every video file under a directory) is cut into clips like inference does
(sliding windows every --inference_stride frames of --sample_duration frames taken every
--sample_t_stride frames, or --inference_n_clips evenly spaced clips, each in --inference_n_crops
crops). The last sliding window ends at the video's last frame (real frames only, overlapping the one before)
instead of being loop-padded as in --inference; only a video shorter than one clip is looped, and its segment's
`real_share` says how much of the clip is real. The test views (--inference_n_clips, --inference_n_crops,
--inference_crop) are those the checkpoint's run was evaluated with (its stored options), unless typed
(`datasets.views`). The top --output_topk labels per video (mean over all clips) and per time segment (true
seconds, from the frames' timestamps) are printed and written to OUT/predictions.json and OUT/predictions.csv.

The model is rebuilt from the checkpoint's arch and model_kwargs (checkpoints of this toolkit) or
from the flags (released checkpoints: only --model/--model_depth style flags; the class count is
read from the weights). The clips are cut, normalised and scored by the checkpoint's clip spec
(`datasets.clip_spec`: size, frames, stride, sampling, normalisation, multi-label; derived from its stored
options for checkpoints made before the spec, the defaults for released ones); clip flags given on the
command line override it.

A long job: each video is decoded once, front to back, through a bounded window of frames
(`video_predictor.VideoPredictor`), by a thread that decodes and scales the next frames while the model scores
a batch (`decoder_threads`: FFmpeg uses every core when the model is on a GPU, --n_threads on the CPU), with a
progress bar in seconds of video. Both files are rewritten
atomically after every video, with "complete": false until the last one; Ctrl-C keeps the finished videos
(exit status 130), and running the same command again skips every video already in predictions.json with
the same path, size and modification time (results of other settings or another checkpoint are refused,
not mixed; another --output_topk only changes what is listed: the stored lists are cut to it, and the videos
whose stored list is too short are predicted again, as only the listed labels are stored). Damaged,
truncated, rotated and variable-frame-rate videos are predicted from the frames that decode; each entry
says how many seconds were decoded and lists its `problems`. Inputs that cannot be used
(no video stream, no decodable frame) are skipped with a warning and listed under "unusable".

The same pass also makes OUT/predictions.html (every video: thumbnails, segment timeline, top-k bars,
problems), and with --output_video an annotated copy of every video (OUT/annotated/<name>.mp4), with
--save_features the classifier input of every segment (OUT/features.h5): `predict_outputs.PredictOutputs`,
a listener. The page and the features file are written when the run ends (also after Ctrl-C, marked partial).

Listeners (for tools that need more than labels from the same decode pass: annotated copies, reports,
features): `run(opt, listeners=[...])` or `VideoPredictor.predict(video, listeners)` call, for every
`video_predictor.PredictionListener` given (each method optional, a no-op by default):

- `start_video(video: VideoInfo)`: before decoding; `video.path`, `video.video_id`, `video.meta`
  (`VideoMeta`: n_frames, fps, displayed width/height, rotation, vfr, frame_time(i)),
  `video.duration_seconds`.
- `frame(number, seconds, av_frame)`: every decoded frame in presentation order, at full resolution
  and as stored (`datasets.video_files.upright_array(av_frame)` turns it upright); `number` is the frame
  number (it jumps over frames lost to damage), `seconds` its presentation time.
- `segment(start_s, end_s, topk, scores, features)`: a clip has been scored (crops averaged): its time
  span in seconds, the top --output_topk labels ([{"label", "score"}]), the scores (1-D tensor over the
  classes: softmax, or sigmoids for a multi-label model) and, when the listener's class attribute
  `wants_features` is True, the input of the model's classifier (1-D tensor, mean over the crops; otherwise
  None). Segments come in time order,
  after the `frame` calls of their frames (up to one inference batch later).
- `finish_video(result: VideoResult)`: after the last segment; `result.usable`, `result.error`,
  `result.problems()`, `result.decoded_seconds`, `result.scores` (a `VideoScoreAggregator`).
Nothing is called for videos skipped as already predicted or unusable at probing.

A live source (a URL, `-`, a camera device, a FIFO: `predict.live`) is one "video" of unknown length
(`video.live`, `video.meta.n_frames` 0) whose `finish_video` gets None; its `frame` calls carry the picture only with
--output_video, else only for the first frame of every segment (None for the others: the queue stays small).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from checkpoint import Checkpoint, load_checkpoint
from datasets.annotations import check_unique_names
from datasets.clip_spec import CLIP_OPTIONS, ClipSpec
from datasets.layout import VIDEO_EXTENSIONS, has_video_extension
from datasets.live_source import is_live_source
from datasets.video_files import NoVideoStream, announced_seconds, probe_video
from datasets.views import InferenceViews
from engine.onnx_model import OnnxModel, exported_for_predict, is_onnx_file
from engine.scoring import SCORE_DIGITS, top_classes
from errors import UserError
from models import factory as model_lib
from opts import RESUME_AUTO
from predict.live import LiveLines, LivePredictor
from predict.outputs import PredictOutputs, clips_per_batch_for_annotation
from predict.video_predictor import PredictionListener, VideoInfo, VideoPredictor, VideoResult
from utils import atomic_file, beside_input

log = logging.getLogger(__name__)

# Settings that make results comparable: a rerun only reuses results made with the same ones. The input type is
# always rgb here (videos are RGB), and leaving it out keeps predictions.json files of earlier versions resumable.
RESULT_SETTINGS = (*(name for name in CLIP_OPTIONS if name != "input_type"), "inference_n_clips", "inference_n_crops",
                   "inference_crop", "class_names")
# The last sliding window ends at the last frame, so every segment is scored on real frames only (a loop-padded tail
# of a few frames weighs as much as a full window in a short video's mean); --inference keeps the original's padding
# unless --inference_align_last_window asks. A setting of the results: files made with padded tails are not mixed in.
ALIGN_LAST_WINDOW = True
CSV_HEADER = ["video", "scope", "start_s", "end_s", "rank", "label", "score", "decoded_seconds", "duration_seconds",
              "problems"]
PREDICTIONS_JSON, PREDICTIONS_CSV = "predictions.json", "predictions.csv"
RESULT_TAIL = "_predictions"  # without --result_path: my_videos/ -> my_videos_predictions/ beside it


def find_videos(path: Path) -> list[Path]:
    """`path` itself if it is a file, else every video file under the directory (recursively, sorted), except
    those in result folders of --predict below it (the annotated copies of a video predicted on its own)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"--predict {path}: no such file or directory")
    found = sorted(p for p in path.rglob("*") if p.is_file() and has_video_extension(p)
                   and not _in_result_folder(p, below=path))
    if not found:
        raise UserError(f"--predict {path}: no video files ({', '.join(VIDEO_EXTENSIONS)}) under this directory")
    return found


def _in_result_folder(file: Path, *, below: Path) -> bool:
    return any((folder / PREDICTIONS_JSON).is_file() for folder in file.parents if below in folder.parents)


def read_class_names(path: Path) -> list[str]:
    """One class name per non-empty line."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --class_names {path}: {e}") from None
    names = [n for n in names if n]
    if not names:
        raise UserError(f"--class_names {path} holds no names")
    check_unique_names(names, where=f"--class_names {path}")
    return names


def checkpoint_clip_spec(opt: argparse.Namespace, payload: Checkpoint, source: Path) -> ClipSpec:
    """The checkpoint's clip spec with the clip flags of the command line on top, also set on `opt`; RGB only."""
    spec = payload.clip.apply_to(opt, source=f"checkpoint {source}")
    if spec.input_type != "rgb":
        raise UserError(f"checkpoint {source} takes {spec.input_type} input, but videos are read as RGB frames")
    return spec


def checkpoint_views(opt: argparse.Namespace, payload: Checkpoint, source: Path, spec: ClipSpec) -> InferenceViews:
    """The test views the checkpoint's run was evaluated with (its stored options; the defaults for files without
    options) with the view flags of the command line on top, also set on `opt`; the log says which are used."""
    where = f"checkpoint {source}"
    stored = InferenceViews.from_options(payload.options, source=where)
    return stored.apply_to(opt, source=where, temporal_sampling=spec.temporal_sampling)


def load_predictor(opt: argparse.Namespace, payload: Checkpoint, source: Path, spec: ClipSpec, *,
                   exported: OnnxModel | None = None) -> tuple[nn.Module, list[str]]:
    """The model with the checkpoint's weights (eval mode, CPU), or the `exported` ONNX model of an .onnx
    --resume_path, and its class names (--class_names, else the clip spec's)."""
    if exported is not None:
        return exported, _class_names(opt, spec.class_names, exported.n_classes)
    flags = {name: getattr(opt, name) for name in model_lib.MODEL_FLAGS if name in opt.explicit_flags}
    if not payload.arch:  # nothing in the file names the model: the flags' (default) one
        flags.update(model=opt.model, model_depth=opt.model_depth)
    loaded = model_lib.model_from_checkpoint(payload, flags, source=f"checkpoint {source}", weights=opt.eval_weights)
    names = _class_names(opt, spec.class_names, loaded.model.get_classifier().out_features)
    return loaded.model, names


def _class_names(opt: argparse.Namespace, stored: Sequence[str], n_classes: int) -> list[str]:
    if opt.class_names is not None:
        names = read_class_names(opt.class_names)
    elif stored:
        names = list(stored)
    else:
        log.warning("the checkpoint has no class names and no --class_names file was given: labels are indices")
        return [str(i) for i in range(n_classes)]
    if len(names) != n_classes:
        raise UserError(f"{len(names)} class names but the model has {n_classes} classes"
                        + (f" (--class_names {opt.class_names})" if opt.class_names is not None else ""))
    return names


def prepare_result_dir(path: Path) -> Path:
    """The output directory, created and checked for writing before any work."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--result_path {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise UserError(f"--result_path {path} is not writable: {e.strerror or e}") from None
    return path


def file_stamp(path: Path) -> dict:
    """What identifies a file's content for reruns: size and modification time."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def result_settings(opt: argparse.Namespace, topk: int) -> dict:
    """The settings a predictions file was made with (checkpoint file, clip settings, labels)."""
    checkpoint = Path(opt.resume_path)
    settings = {"checkpoint": str(checkpoint.resolve()), "checkpoint_file": file_stamp(checkpoint),
                "output_topk": topk, "inference_align_last_window": ALIGN_LAST_WINDOW}
    for name in RESULT_SETTINGS:
        value = getattr(opt, name)
        settings[name] = str(value) if isinstance(value, Path) else value
    return settings


class PredictionStore:
    """predictions.json / .csv of one result directory: earlier results are loaded, each finished video is
    added and both files are rewritten atomically (temporary file + rename).

    `n_classes`: the model's; a stored list of that many labels holds every class, whatever --output_topk asks.
    """

    def __init__(self, out_dir: Path, settings: dict, *, n_classes: int):
        self.json_path, self.csv_path = out_dir / PREDICTIONS_JSON, out_dir / PREDICTIONS_CSV
        self.settings = settings
        self.n_classes = n_classes
        self.results: dict[str, dict] = {}
        self.unusable: dict[str, str] = {}
        self.short_lists: set[str] = set()  # stored videos listing fewer labels than asked: predicted again
        if self.json_path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.json_path.read_text())
            results = data["results"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{self.json_path} exists but is not a predictions file ({e}); move it away or "
                            "give another --result_path") from None
        old = data.get("settings") or {}  # none in files of early versions: nothing to compare
        changed = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k)) if old else []
        if set(changed) - {"output_topk"}:  # another --output_topk only changes what is listed (_fit_lists)
            raise UserError(f"{self.json_path} holds predictions made with other settings ({', '.join(changed)}); "
                            "move it away or give another --result_path")
        self.results = dict(results)
        self._fit_lists(old.get("output_topk"))

    def _fit_lists(self, stored_topk: int | None) -> None:
        """Cut the stored lists to --output_topk; a video whose list is too short (the file keeps only the
        listed labels, not all scores) is predicted again. Checked per video, so a rerun interrupted while
        predicting them again goes on with the rest. Says what happened when --output_topk changed."""
        topk = self.settings["output_topk"]
        wanted = min(topk, self.n_classes)
        for entry in self.results.values():
            for listing in [entry, *entry.get("segments", [])]:
                listing["result"] = listing.get("result", [])[:topk]
        self.short_lists = {vid for vid, entry in self.results.items() if 0 < len(entry["result"]) < wanted}
        if stored_topk is not None and stored_topk != topk:
            why = " (only the listed labels are stored, not all scores)" if self.short_lists else ""
            log.info("--output_topk %d (%s was listed with %d): %d stored video(s) re-listed from their stored labels, "
                     "%d predicted again%s", topk, self.json_path.name, stored_topk,
                     len(self.results) - len(self.short_lists), len(self.short_lists), why)

    def done(self, video_id: str, path: Path) -> bool:
        """The video is in the results with the file's current size and modification time."""
        entry = self.results.get(video_id)
        return entry is not None and entry.get("file") == file_stamp(path) and video_id not in self.short_lists

    def add(self, video_id: str, entry: dict) -> None:
        self.unusable.pop(video_id, None)
        self.short_lists.discard(video_id)
        self.results[video_id] = entry

    def write(self, *, complete: bool) -> None:
        data = {"results": self.results, "unusable": self.unusable, "complete": complete, "settings": self.settings}
        try:
            _atomic_write(self.json_path, lambda f: json.dump(data, f, indent=1))
            _atomic_write(self.csv_path, lambda f: write_csv(f, self.results))
        except OSError as e:
            raise UserError(f"cannot write the predictions into {self.json_path.parent}: {e.strerror or e} "
                            "(the videos written before are kept)") from None


def _atomic_write(path: Path, write) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        write(f)


def write_csv(f, results: dict) -> None:
    """One row per video/segment and rank; the video's decoded/announced seconds and problems on every row."""
    writer = csv.writer(f)
    writer.writerow(CSV_HEADER)
    for vid, entry in results.items():
        extra = [entry.get("decoded_seconds", ""), entry.get("duration_seconds", ""),
                 "; ".join(entry.get("problems", []))]
        rows = [("video", [0.0, entry["duration"]], entry["result"])]
        rows += [("segment", seg["segment"], seg["result"]) for seg in entry["segments"]]
        for scope, (start, end), top in rows:
            for rank, item in enumerate(top, start=1):
                writer.writerow([vid, scope, start, end, rank, item["label"], item["score"], *extra])


def result_entry(result: VideoResult, topk: int) -> dict:
    """The JSON entry of one predicted video (the schema of predictions.json, see README)."""
    scores, video = result.scores, result.video

    def top(values: torch.Tensor) -> list[dict]:
        return top_classes(values, scores.class_names, topk, digits=SCORE_DIGITS)

    vid = video.video_id
    segments = [{"segment": list(result.segment_times[tuple(span)]), "result": top(s),
                 "real_share": round(result.segment_real_share[tuple(span)], 3)}
                for span, s in scores.segment_scores(vid)] if vid in scores.clips else []
    overall = top(scores.video_scores()[vid]) if vid in scores.clips else []
    return {"duration": round(video.meta.duration, 3), "fps": video.meta.fps, "n_frames": video.meta.n_frames,
            "result": overall, "segments": segments, "decoded_seconds": round(result.decoded_seconds, 3),
            "duration_seconds": round(video.duration_seconds, 3), "n_decoded_frames": result.n_decoded,
            "problems": result.problems(), "file": file_stamp(video.path)}


def probe_inputs(paths: Sequence[Path]) -> tuple[list[VideoInfo], dict[str, str]]:
    """The videos that open, and a one-line reason for every one that does not (each warned about)."""
    videos, unusable = [], {}
    for path in paths:
        try:
            meta = probe_video(path)
            reason = "" if meta.n_frames > 0 else "no video frames"
        except NoVideoStream:
            reason = "no video stream"
        except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
            reason = f"cannot open it as a video ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        if reason:
            log.warning("skipping %s: %s", path, reason)
            unusable[str(path)] = reason
        else:
            videos.append(VideoInfo(str(path), path, meta, announced_seconds(path)))
    return videos, unusable


class ProgressBar(PredictionListener):
    """tqdm bar over the seconds of video of the whole run; its rate is seconds of video per second."""

    def __init__(self, videos: Sequence[VideoInfo]):
        self.n_videos, self.count = len(videos), 0
        # a hair over the sum: the per-video updates add up to it in another order (no clamping warning)
        self.bar = tqdm(total=sum(v.meta.duration for v in videos) * (1 + 1e-9), desc="predict: ", mininterval=0.5,
                        bar_format="{desc}{percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of video "
                                   "[{elapsed}<{remaining}, {rate_fmt}]", unit="s")
        self.shown = 0.0

    def start_video(self, video: VideoInfo) -> None:
        self.count += 1
        self.bar.set_description(f"predict video {self.count}/{self.n_videos}", refresh=False)
        self.shown, self.duration = 0.0, video.meta.duration

    def frame(self, number: int, seconds: float, frame) -> None:
        if seconds > self.shown:
            self.bar.update(seconds - self.shown)
            self.shown = seconds

    def finish_video(self, result: VideoResult) -> None:
        self.bar.update(max(0.0, self.duration - self.shown))

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


def format_entry(vid: str, entry: dict) -> str:
    """The printed form of one video's predictions (video line, one line per segment)."""
    labels = ", ".join(f"{t['label']} {t['score']:.3f}" for t in entry["result"])
    lines = [f"{vid} ({entry['duration']:.2f} s): {labels}"]
    if entry.get("problems"):
        lines.append(f"  problems: {'; '.join(entry['problems'])}")
    for seg in entry["segments"]:
        labels = ", ".join(f"{t['label']} {t['score']:.3f}" for t in seg["result"])
        lines.append(f"  {seg['segment'][0]:8.2f} - {seg['segment'][1]:8.2f} s: {labels}")
    return "\n".join(lines)


def build_predictor(net: nn.Module, opt: argparse.Namespace, spec: ClipSpec, *, class_names: Sequence[str],
                    topk: int, device: torch.device) -> VideoPredictor:
    """The streaming predictor: the clip spec's inference clips, normalisation and scores, the views of `opt`."""
    spatial = spec.spatial_transform("inference", inference_crop=opt.inference_crop,
                                     inference_n_crops=opt.inference_n_crops)
    temporal = spec.temporal_transform("inference", inference_n_clips=opt.inference_n_clips,
                                       align_last=ALIGN_LAST_WINDOW)
    return VideoPredictor(net, class_names=class_names, spatial=spatial, temporal=temporal,
                          batch_size=opt.inference_batch_size, device=device, normalizer=spec.normalizer(),
                          precision=opt.precision, topk=topk, threads=decoder_threads(device, opt.n_threads),
                          multi_label=spec.multi_label)


def decoder_threads(device: torch.device, n_threads: int) -> int:
    """FFmpeg threads of the one sequential decode: every core (0: FFmpeg's choice, frame + slice threads) when the
    model runs on a GPU and the CPU has nothing else to do; --n_threads (at least 1) on the CPU, whose cores the
    model needs too."""
    return 0 if device.type == "cuda" else max(1, n_threads)


def run(opt: argparse.Namespace, listeners: Sequence[PredictionListener] = ()) -> int:
    """`main.py --predict`: predict, print, write predictions.json/.csv after every video; the exit code.
    `listeners` are told about every frame and segment (see the module docstring)."""
    try:
        return _run(opt, listeners)
    except KeyboardInterrupt:
        print("interrupted before any video was predicted", file=sys.stderr)
        return 130


def _run(opt: argparse.Namespace, listeners: Sequence[PredictionListener]) -> int:
    if str(opt.resume_path) == RESUME_AUTO:
        raise UserError("--predict needs an explicit --resume_path checkpoint file (not 'auto')")
    live = is_live_source(opt.predict)
    if live and opt.result_path is None:
        raise UserError(f"--predict {opt.predict} is a live source: give --result_path for its predictions")
    if live and opt.live_output is None:
        _log_to_stderr()  # stdout carries the segment lines, nothing else
    paths = [] if live else find_videos(Path(opt.predict))
    out_dir = prepare_result_dir(Path(opt.result_path) if opt.result_path else beside_input(opt.predict, RESULT_TAIL))
    device = _device(opt)
    exported = exported_for_predict(opt, device) if is_onnx_file(opt.resume_path) else None
    payload = exported.payload if exported is not None else load_checkpoint(opt.resume_path)
    spec = checkpoint_clip_spec(opt, payload, Path(opt.resume_path))
    checkpoint_views(opt, payload, Path(opt.resume_path), spec)
    if live:
        live_windows(opt, spec)
    net, class_names = load_predictor(opt, payload, Path(opt.resume_path), spec,
                                      exported=exported.model if exported is not None else None)
    # --output_topk 0 means all classes of the checkpoint's model (opts leaves it unresolved for --predict).
    topk = opt.output_topk if opt.output_topk > 0 else len(class_names)
    store = PredictionStore(out_dir, result_settings(opt, topk), n_classes=len(class_names))
    if live:
        return _run_live(opt, spec, net, class_names, topk, store, listeners)
    todo = [p for p in paths if not store.done(str(p), p)]
    if len(todo) < len(paths):
        log.info("%d of %d video(s) already in %s: skipped", len(paths) - len(todo), len(paths), store.json_path)
    videos, store.unusable = probe_inputs(todo)
    if not videos and len(todo) == len(paths):
        store.write(complete=True)
        raise UserError(f"none of the {len(paths)} video(s) could be used ({next(iter(store.unusable.values()))})")
    predictor = build_predictor(net, opt, spec, class_names=class_names, topk=topk, device=device)
    log.info("predicting %d video(s) with %s on %s", len(videos), opt.resume_path, device)
    if opt.output_video and videos:  # labels drawn on time: a batch's segments must come while its frames wait
        clips = clips_per_batch_for_annotation(max(v.meta.width * v.meta.height for v in videos),
                                               clip_frames=spec.sample_duration * spec.sample_t_stride,
                                               stride=spec.inference_stride)
        if clips * opt.inference_n_crops < predictor.batch_size:
            log.info("--output_video: %d clips per inference batch (frames wait in memory for their labels)", clips)
            predictor.batch_size = max(clips * opt.inference_n_crops, opt.inference_n_crops)
    outputs = PredictOutputs(out_dir, class_names=class_names, output_video=opt.output_video,
                             save_features=opt.save_features, topk=min(topk, 5), checkpoint=str(opt.resume_path))
    n_done = _predict_all(predictor, videos, store, topk, [*listeners, outputs])
    partial = "" if n_done is not None else f"interrupted; {len(store.results)} of {len(paths)} videos predicted"
    for path in outputs.close({"results": store.results}, unusable=store.unusable, partial=partial):
        log.info("wrote %s", path)
    if n_done is None:
        return 130
    log.info("%d video(s) predicted; wrote %s and %s", n_done, store.json_path, store.csv_path)
    if store.unusable:
        log.warning("%d video(s) could not be used: %s", len(store.unusable),
                    "; ".join(f"{k}: {v}" for k, v in store.unusable.items()))
    return 0


def _device(opt: argparse.Namespace) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not opt.no_cuda else "cpu")


def live_windows(opt: argparse.Namespace, spec: ClipSpec) -> None:
    """A live stream is cut into sliding windows (every --inference_stride frames): the checkpoint's evenly spaced
    views are replaced (said in the log); typed --inference_n_clips and segment sampling, which need a whole video,
    are refused."""
    if spec.temporal_sampling == "segment":
        raise UserError("live --predict needs --temporal_sampling dense clips (segment sampling spreads a clip over a "
                        "whole video, which a live stream does not have)")
    if opt.inference_n_clips:
        if "inference_n_clips" in opt.explicit_flags:
            raise UserError("live --predict cuts sliding windows every --inference_stride frames; drop "
                            "--inference_n_clips (evenly spaced clips need the whole video)")
        log.info("live input: sliding windows every %d frames instead of the checkpoint's %d evenly spaced clips",
                 opt.inference_stride, opt.inference_n_clips)
        opt.inference_n_clips = 0


def _run_live(opt: argparse.Namespace, spec: ClipSpec, net: nn.Module, class_names: list[str], topk: int,
              store: PredictionStore, listeners: Sequence[PredictionListener]) -> int:
    """--predict on a live source (predict.live): JSON lines as segments are scored; predictions.json/.csv/.html
    of the whole run when it ends (a stop signal: "complete": false, the page marked partial); exit status 130
    after a stop (main.py makes it 128 + the signal), 0 when the stream ended; a UserError when no frame came."""
    device = _device(opt)
    scorer = build_predictor(net, opt, spec, class_names=class_names, topk=topk, device=device)
    scorer.threads = 1  # one decoder thread: frame threads would hold every frame back by their number
    outputs = PredictOutputs(store.json_path.parent, class_names=class_names, output_video=opt.output_video,
                             save_features=opt.save_features, topk=min(topk, 5), checkpoint=str(opt.resume_path))
    predictor = LivePredictor(scorer, stall_s=opt.live_stall_seconds, reconnect=opt.live_reconnect,
                              keep_frames=opt.output_video)
    with _live_lines(opt.live_output) as lines:
        log.info("following %s with %s on %s (segment JSON lines to %s)", opt.predict, opt.resume_path, device,
                 opt.live_output or "stdout")
        result = predictor.run(str(opt.predict), [*listeners, outputs], lines)
        stats = result.latency_stats()
        lines.say(f"{result.stopped or 'stream ended: ' + result.ended}; "
                  f"{len(result.segments)} segments, {result.dropped_segments} dropped, {result.reconnects} "
                  f"reconnects; latency median {stats.get('median', 0):.3f} s, p90 {stats.get('p90', 0):.3f} s",
                  force=True)
    if result.video is not None:
        store.add(result.video.video_id, result.entry(class_names, topk))
    store.write(complete=not result.stopped)
    partial = f"live run {result.stopped}" if result.stopped else ""
    for path in outputs.close({"results": store.results}, unusable=store.unusable, partial=partial):
        log.info("wrote %s", path)
    log.info("wrote %s and %s", store.json_path, store.csv_path)
    if result.video is None and not result.stopped:
        raise UserError(f"no frame came from {opt.predict}: {result.ended or 'the stream ended'}")
    return 130 if result.stopped else 0


@contextlib.contextmanager
def _live_lines(path: Path | None):
    """Where the segment lines go: --live_output (appended to), else stdout."""
    if path is None:
        yield LiveLines(sys.stdout)
        return
    try:
        out = open(path, "a", encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write --live_output {path}: {e.strerror or e}") from None
    with out:
        yield LiveLines(out)


def _log_to_stderr() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def _predict_all(predictor: VideoPredictor, videos: Sequence[VideoInfo], store: PredictionStore, topk: int,
                 listeners: Sequence[PredictionListener]) -> int | None:
    """Predict and store every video; None after Ctrl-C (finished videos kept, one line said)."""
    progress = ProgressBar(videos)
    n_done = 0
    try:
        for video in videos:
            result = predictor.predict(video, [progress, *listeners])
            if result.usable:
                entry = result_entry(result, topk)
                store.add(video.video_id, entry)
                progress.write(format_entry(video.video_id, entry))
                n_done += 1
            else:
                log.warning("skipping %s: %s", video.path, result.error)
                store.unusable[video.video_id] = result.error
            store.write(complete=False)
        store.write(complete=True)
    except KeyboardInterrupt:
        progress.close()
        store.write(complete=False)  # in case the interruption came while the last finished video was written
        print(f"interrupted: {len(store.results)} finished video(s) are in {store.json_path}; run the same command "
              "again to predict the rest (videos already there with the same path, size and modification time are "
              "skipped)", file=sys.stderr)
        return None
    finally:
        progress.close()
    return n_done
