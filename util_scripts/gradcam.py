"""Grad-CAM over space and time: where in a video the model finds the evidence for a class.

    python -m util_scripts.gradcam --resume_path CKPT --video FILE --output DIR [--target_class NAME]
        [--layer layer4] [--no_cuda] [clip options of main.py, e.g. --sample_size 112 --sample_duration 16]

The clips are the checkpoint's (its clip spec, as with --predict; clip flags on the command line override it).
Dense sampling: the video is cut into consecutive windows of --sample_duration frames taken every
--sample_t_stride frames; a short last window is moved back to end at the last frame (real frames only, as
--predict cuts it), and its map is laid over the frames the window before did not cover. Segment sampling
(TSN-style): the clips --predict takes, --sample_duration segments of the whole video, one frame each (the
centres, or --inference_n_clips offset views); every frame of the video then shows the map of the clip frame
nearest to it in time. Each clip goes through the model, and the gradient of the class score (the clip's top
class, or --target_class) weights the channels of --layer's output (Grad-CAM: ReLU of the gradient-weighted sum
of activations). Scores are a softmax, or per-class sigmoids for a multi-label checkpoint. The map is upsampled
(trilinear) to the clip's time and space size, then laid over the frames: the crop the model saw
(--inference_crop: center, or nocrop for the whole frame) gets the heat map, the rest of the frame is dimmed.
Writes DIR/<video>_gradcam.mp4 (upright, the input's frame timing) and DIR/<video>_gradcam.png
(a strip of evenly spaced overlay frames).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from tqdm import tqdm

from checkpoint import load_checkpoint
from datasets.temporal_transforms import TemporalTransform
from datasets.video_files import VideoMeta, probe_video, stream_frames, upright_array
from engine.forward import class_scores, prepare_batch
from errors import UserError
from opts import parse_opts
from predict import runner as predict
from predict.annotate_video import FrameEncoder, font_for, safe_file_name
from util_scripts.common import atomic_file, run_cli

log = logging.getLogger(__name__)

STRIP_FRAMES = 8
STRIP_HEIGHT = 160
HEAT_ALPHA = 0.5


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` (e.g. layer4, layer3.1.conv2); a one-line error names the choices."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        top = [n for n, _ in model.named_children()]
        raise UserError(f"--layer {name!r} is not a layer of this model; top-level layers: {', '.join(top)}")
    return modules[name]


def grad_cam(model: nn.Module, clips: torch.Tensor, layer: nn.Module, target: int | Sequence[int] | None = None,
             *, multi_label: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM maps of normalised clips (N, C, T, H, W) for `target` (a class index per clip or for all; None:
    each clip's top class, the same for softmax and sigmoid scores).

    Returns (maps (N, T, H, W) in [0, 1] at the clip's size, target classes (N,), scores (N, classes): softmax, or
    per-class sigmoids with `multi_label`).
    """
    captured: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):
        output.register_hook(lambda grad: captured.__setitem__("grad", grad))
        captured["act"] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(clips.requires_grad_(False))
            if target is None:
                targets = logits.argmax(dim=1)
            else:
                targets = torch.as_tensor(target, device=logits.device).expand(logits.shape[0]).clone()
            model.zero_grad(set_to_none=True)
            logits.gather(1, targets[:, None]).sum().backward()
    finally:
        handle.remove()
    act, grad = captured["act"].detach(), captured["grad"].detach()
    weights = grad.mean(dim=(2, 3, 4), keepdim=True)  # one weight per channel: its mean gradient
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam.float(), size=clips.shape[2:], mode="trilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None, None]
    scores = class_scores(logits.detach(), multi_label)
    return cam / peak, targets.detach().cpu(), scores.cpu()


def heat_colors(values: np.ndarray) -> np.ndarray:
    """A blue-cyan-yellow-red colour map of values in [0, 1]: (..., 3) uint8."""
    v = np.clip(values, 0, 1)[..., None]
    stops = np.array([[0, 0, 128], [0, 160, 255], [0, 255, 160], [255, 255, 0], [255, 96, 0], [200, 0, 0]], float)
    x = v * (len(stops) - 1)
    lo = np.floor(x).astype(int).clip(0, len(stops) - 2)
    frac = x - lo
    return (stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac).astype(np.uint8)


def overlay(frame: np.ndarray, cam: np.ndarray, box: tuple[int, int, int, int], caption: str = "") -> np.ndarray:
    """`frame` (H, W, 3) with the map `cam` (h, w) in [0, 1] laid over the pixel box (x0, y0, x1, y1) it covers."""
    out = frame.astype(np.float32)
    x0, y0, x1, y1 = box
    if (x0, y0, x1, y1) != (0, 0, frame.shape[1], frame.shape[0]):
        out *= 0.5  # the model did not see this part of the frame
        out[y0:y1, x0:x1] = frame[y0:y1, x0:x1]
    scaled = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize((x1 - x0, y1 - y0), Image.BILINEAR))
    heat = heat_colors(scaled / 255.0).astype(np.float32)
    alpha = HEAT_ALPHA * (0.3 + 0.7 * scaled[..., None] / 255.0)
    out[y0:y1, x0:x1] = out[y0:y1, x0:x1] * (1 - alpha) + heat * alpha
    image = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    if caption:
        draw = ImageDraw.Draw(image)
        font = font_for(image.width, image.height)
        right, bottom = draw.textbbox((4, 2), caption, font=font)[2:]
        draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
        draw.text((4, 2), caption, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def window_clip(start: int, frames: dict[int, object], *, duration: int, t_stride: int) -> list[int]:
    """Frame numbers of a window's clip: every t_stride-th frame from `start`; a frame that is missing (past the
    end, or lost to damage) is replaced by the nearest earlier one that is there (else the first one there)."""
    have = sorted(frames)
    clip = []
    for k in range(duration):
        wanted = start + k * t_stride
        earlier = [n for n in have if n <= wanted]
        clip.append(earlier[-1] if earlier else have[0])
    return clip


class VideoGradCam:
    """Grad-CAM of one video's clips (see the module docstring); `windows` records each clip's class and score."""

    def __init__(self, model: nn.Module, layer: nn.Module, *, spatial, normalizer, device: torch.device,
                 duration: int, t_stride: int, class_names: Sequence[str], target: int | None = None,
                 multi_label: bool = False):
        self.model, self.layer, self.spatial, self.normalizer = model, layer, spatial, normalizer
        self.device, self.duration, self.t_stride = device, duration, t_stride
        self.class_names, self.target, self.multi_label = list(class_names), target, multi_label
        self.windows: list[dict] = []  # per clip: start frame (and the frames of a sampled clip), class, score

    def model_input(self, arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """The normalised clip (1, C, T, h, w) the model sees and the pixel box of the frames it covers."""
        height, width = arrays[0].shape[:2]
        params = self.spatial.sample(width, height)
        left, top, right, bottom = params.box
        box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
        crops = [np.asarray(Image.fromarray(a).crop(box).resize(params.out_size, Image.BILINEAR)) for a in arrays]
        clip = torch.from_numpy(np.stack(crops))[None]  # (1, T, h, w, C) uint8, the loaders' layout
        clips, _ = prepare_batch(clip, None, self.device, self.normalizer)
        return clips, box

    def explain(self, arrays: Sequence[np.ndarray], record: dict) -> tuple[np.ndarray, tuple[int, int, int, int], str]:
        """Grad-CAM of the clip of these frames: maps (T, h, w), the pixel box they cover and the caption (class and
        score); `record` joined by the class and score goes into `windows`."""
        clips, box = self.model_input(arrays)
        cams, targets, scores = grad_cam(self.model, clips, self.layer, self.target, multi_label=self.multi_label)
        cls = int(targets[0])
        name = self.class_names[cls] if cls < len(self.class_names) else str(cls)
        score = float(scores[0, cls])
        self.windows.append({**record, "class": name, "score": score})
        return cams[0].cpu().numpy(), box, f"{name} {score:.2f}"

    def window(self, start: int, frames: dict[int, tuple[float, object, np.ndarray]],
               before: dict[int, tuple] | None = None) -> list:
        """(number, seconds, source frame, overlay array) of a dense window's frames, in order; the clip may also
        take frames of `before` (the window before, already drawn)."""
        available = {**(before or {}), **frames}
        clip = window_clip(start, {n: f for n, f in available.items() if n >= start}, duration=self.duration,
                           t_stride=self.t_stride)
        cams, box, caption = self.explain([available[n][2] for n in clip], {"start_frame": start})
        out = []
        for number in sorted(frames):
            seconds, source, array = frames[number]
            k = min((number - start) // self.t_stride, self.duration - 1)
            out.append((number, seconds, source, overlay(array, cams[k], box, caption)))
        return out


def strip_image(frames: Sequence[np.ndarray], height: int = STRIP_HEIGHT) -> Image.Image:
    """Frames side by side, each scaled to `height`."""
    scaled = [Image.fromarray(f).resize((max(1, round(f.shape[1] * height / f.shape[0])), height)) for f in frames]
    strip = Image.new("RGB", (sum(im.width for im in scaled) + 2 * (len(scaled) - 1), height), (255, 255, 255))
    x = 0
    for im in scaled:
        strip.paste(im, (x, 0))
        x += im.width + 2
    return strip


def _decoded(video: Path, meta: VideoMeta, desc: str = "grad-cam"):
    return tqdm(stream_frames(video, meta), total=meta.n_frames, desc=desc, unit="frame", leave=False)


def dense_overlays(cam: VideoGradCam, video: Path, meta: VideoMeta) -> Iterator[tuple]:
    """(number, seconds, source frame, overlay array) of every frame, window by window in one decode pass; the
    frames of the window before are kept, so a short last window can be completed with them."""
    span = cam.duration * cam.t_stride
    pending: dict[int, tuple] = {}
    before: dict[int, tuple] = {}
    start = 0
    for number, seconds, frame in _decoded(video, meta):
        if pending and number >= start + span:
            yield from cam.window(start, pending)
            before, pending = pending, {}
        if not pending:
            start = number - number % span
        pending[number] = (seconds, frame, upright_array(frame))
    if pending:
        last = max(pending)
        if last - start + 1 < span and before:  # short: end it at the last frame, as --predict does
            start = max(min(before), last - span + 1)
        yield from cam.window(start, pending, before)


def gather_frames(video: Path, meta: VideoMeta, wanted: Iterable[int]) -> dict[int, np.ndarray]:
    """Upright arrays of the frames numbered `wanted`, in one decode pass; a number that does not decode (lost to
    damage, or past the end) takes the nearest earlier frame that does (else the first one), as `window_clip`."""
    todo, found, previous = sorted(set(wanted)), {}, None
    for number, _, frame in _decoded(video, meta, desc="grad-cam: clip frames"):
        while todo and todo[0] <= number:
            found[todo[0]] = upright_array(frame if todo[0] == number or previous is None else previous)
            todo.pop(0)
        if not todo:
            break
        previous = frame
    if previous is None and todo:
        raise UserError(f"{video}: no frame decodes")
    for missing in todo:
        found[missing] = upright_array(previous)
    return found


def sampled_overlays(cam: VideoGradCam, video: Path, meta: VideoMeta, temporal: TemporalTransform) -> Iterator[tuple]:
    """The overlays of clips that span the video (segment sampling, cut by `temporal` as --predict cuts them): one
    decode pass gathers the clips' frames and explains the clips, a second lays over every frame the map of the clip
    frame nearest to it in time."""
    clips = temporal(list(range(meta.n_frames)))
    frames = gather_frames(video, meta, (n for clip in clips for n in clip))
    explained = [cam.explain([frames[n] for n in clip], {"start_frame": clip[0], "frames": list(clip)})
                 for clip in clips]
    positions = sorted((number, j, k) for j, clip in enumerate(clips) for k, number in enumerate(clip))
    for number, seconds, frame in _decoded(video, meta):
        _, j, k = min(positions, key=lambda p: abs(p[0] - number))
        cams, box, caption = explained[j]
        yield number, seconds, frame, overlay(upright_array(frame), cams[k], box, caption)


def run_video(cam: VideoGradCam, video: Path, out_dir: Path, temporal: TemporalTransform | None = None
              ) -> tuple[Path, Path]:
    """Write the overlay video and the PNG strip of one video: dense windows, or the clips `temporal` cuts."""
    meta = probe_video(video)
    if meta.n_frames < 1:
        raise UserError(f"{video}: no video frames")
    stem = Path(safe_file_name(video.name, set(), suffix="")).stem
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = FrameEncoder(out_dir / f"{stem}_gradcam.mp4", fps=meta.fps)
    strip_at = sorted({int((k + 0.5) * meta.n_frames / STRIP_FRAMES) for k in range(min(STRIP_FRAMES, meta.n_frames))})
    strip: list[np.ndarray] = []
    overlays = dense_overlays(cam, video, meta) if temporal is None else sampled_overlays(cam, video, meta, temporal)
    try:
        for number, seconds, source, array in overlays:
            encoder.write(array, seconds, source)
            if strip_at and number >= strip_at[0]:
                strip.append(array)
                while strip_at and strip_at[0] <= number:
                    strip_at.pop(0)
        video_path = encoder.close()
    except BaseException:
        encoder.abort()
        raise
    png = out_dir / f"{stem}_gradcam.png"
    with atomic_file(png) as tmp:
        strip_image(strip).save(tmp, format="PNG")
    return video_path, png


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other options are main.py's clip and model options (e.g. --sample_size, --sample_duration, "
               "--sample_t_stride, --inference_crop, --inference_n_clips, --mean_dataset); unset clip options come "
               "from the checkpoint's clip spec.")
    parser.add_argument("--resume_path", type=Path, required=True, help="the trained checkpoint (.pth)")
    parser.add_argument("--video", type=Path, required=True, help="the video file")
    parser.add_argument("--output", type=Path, required=True, help="where the overlay video and PNG strip go")
    parser.add_argument("--target_class", default=None,
                        help="class name to explain (default: each clip's top class)")
    parser.add_argument("--layer", default="layer4",
                        help="module whose output is weighted (ResNets: layer1..layer4; DenseNet: features)")
    parser.add_argument("--no_cuda", action="store_true", help="run on the CPU")
    return parser


def _target_index(name: str | None, class_names: Sequence[str]) -> int | None:
    if name is None:
        return None
    if name not in class_names:
        raise UserError(f"--target_class {name!r} is not a class of the model "
                        f"({', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''})")
    return list(class_names).index(name)


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    if not args.video.is_file():
        raise UserError(f"--video {args.video}: no such file")
    opt = parse_opts(["--predict", str(args.video), "--resume_path", str(args.resume_path), *rest,
                      *(["--no_cuda"] if args.no_cuda else [])])
    payload = load_checkpoint(args.resume_path)
    spec = predict.checkpoint_clip_spec(opt, payload, args.resume_path)
    model, class_names = predict.load_predictor(opt, payload, args.resume_path, spec)
    target = _target_index(args.target_class, class_names)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    model = model.to(device).eval()
    cam = VideoGradCam(model, find_layer(model, args.layer),
                       spatial=spec.spatial_transform("inference", inference_crop=opt.inference_crop),
                       normalizer=spec.normalizer(), device=device, duration=spec.sample_duration,
                       t_stride=spec.sample_t_stride, class_names=class_names, target=target,
                       multi_label=spec.multi_label)
    # Segment clips span the whole video: cut them as --predict does, not as dense windows the model never saw.
    temporal = (spec.temporal_transform("inference", inference_n_clips=opt.inference_n_clips)
                if spec.temporal_sampling == "segment" else None)
    video_path, png = run_video(cam, args.video, args.output, temporal)
    for w in cam.windows:
        where = f"frames {', '.join(map(str, w['frames']))}" if "frames" in w else f"frames from {w['start_frame']}"
        print(f"{where}: {w['class']} {w['score']:.3f}")
    print(f"wrote {video_path} and {png}")
    return 0


if __name__ == "__main__":
    run_cli(main)
