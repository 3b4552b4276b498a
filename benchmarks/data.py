"""Benchmark data side: a photo-like synthetic frame dataset, the run options, and loader-only timing.

Frames are 320x240 JPEGs of about 17 KB (quality 90): smooth random colour fields at three
scales, panned a little every frame, plus sensor-like noise, so decoding costs what real
footage costs (flat colours would decode several times faster and flatter the loaders). The same
frames (`photo_like_arrays`) make the H.264 videos of the video_loader part (benchmarks.video_loader).
"""

from __future__ import annotations

import io
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.layout import FRAME_GLOB, frame_path
from opts import parse_opts

FRAME_SIZE = (320, 240)
JPEG_QUALITY = 90
DATASET_VERSION = 2  # bump when the generator changes, so cached datasets are rebuilt
NOISE_FIELDS = 4  # independent noise fields the frames of a video take in turn
NOISE_MARGIN = 16  # pixels a noise field is larger than the frame, for its random offsets


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a generated dataset (part of its cache key)."""

    n_classes: int = 4
    train_per_class: int = 8
    val_per_class: int = 1
    n_frames: int = 32
    size: tuple[int, int] = FRAME_SIZE

    @property
    def key(self) -> str:
        w, h = self.size
        return (f"v{DATASET_VERSION}_c{self.n_classes}_t{self.train_per_class}_v{self.val_per_class}"
                f"_f{self.n_frames}_{w}x{h}")


def _field(rng: np.random.Generator, size: tuple[int, int], cells: tuple[int, int], amp: float) -> np.ndarray:
    """A smooth random RGB field: random values on a coarse grid, bicubically upsampled."""
    small = rng.uniform(-amp, amp, size=(cells[1], cells[0], 3)).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(small[..., c]).resize(size, Image.Resampling.BICUBIC))
                     for c in range(3)], axis=-1)


def photo_like_arrays(rng: np.random.Generator, n_frames: int, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """RGB uint8 (H, W, 3) frames of one 'video': a textured scene panning slowly, with sensor-like noise.

    The noise of a frame is one of NOISE_FIELDS independent fields at a random offset: fresh noise for every
    1280x720 frame would cost more than encoding the frame, and an encoder cannot predict one field from another.
    """
    w, h = size
    pan = (max(2, w // 100), max(1, h // 120))
    canvas = (w + pan[0] * n_frames, h + pan[1] * n_frames)
    scene = 128 + sum(_field(rng, canvas, cells, amp) for cells, amp in (((4, 3), 70), ((16, 12), 35), ((64, 48), 18)))
    margin = NOISE_MARGIN
    noise = [rng.normal(0, 4, (h + margin, w + margin, 3)).astype(np.float32) for _ in range(NOISE_FIELDS)]
    for t in range(n_frames):
        x, y = t * pan[0], t * pan[1]
        nx, ny = rng.integers(0, margin, 2)
        frame = scene[y:y + h, x:x + w] + noise[t % NOISE_FIELDS][ny:ny + h, nx:nx + w]
        yield np.clip(frame, 0, 255).astype(np.uint8)


def photo_like_frames(rng: np.random.Generator, n_frames: int, size: tuple[int, int]) -> Iterator[bytes]:
    """JPEG bytes of `n_frames` frames of one 'video' (`photo_like_arrays`)."""
    for frame in photo_like_arrays(rng, n_frames, size):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=JPEG_QUALITY)
        yield buf.getvalue()


def make_synthetic_dataset(cache_dir: Path, spec: SyntheticSpec = SyntheticSpec(), *,
                           seed: int = 0) -> tuple[Path, Path]:
    """Write (or reuse) a kinetics-layout jpg dataset under cache_dir; returns (video_path, annotation_path)."""
    root = Path(cache_dir) / f"bench_frames_{spec.key}_s{seed}"
    video_path, annotation_path = root / "jpg", root / "kinetics.json"
    if annotation_path.exists():  # written last, so its presence means the dataset is complete
        return video_path, annotation_path
    rng = np.random.default_rng(seed)
    names = [f"class_{c}" for c in range(spec.n_classes)]
    database = {}
    for c, name in enumerate(names):
        for k in range(spec.train_per_class + spec.val_per_class):
            video_id = f"bench_c{c}_v{k}"
            folder = video_path / name / video_id
            folder.mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(photo_like_frames(rng, spec.n_frames, spec.size), start=1):
                frame_path(folder, i).write_bytes(data)
            subset = "training" if k < spec.train_per_class else "validation"
            database[video_id] = {"subset": subset, "annotations": {"label": name, "segment": [1, spec.n_frames + 1]}}
    tmp = annotation_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"labels": names, "database": database}))
    tmp.replace(annotation_path)
    return video_path, annotation_path


def mean_frame_bytes(video_path: Path, limit: int = 64) -> float:
    """Average size of (up to `limit`) frames, to report what the loaders decoded."""
    files = sorted(Path(video_path).rglob(FRAME_GLOB))[:limit]
    return statistics.fmean(f.stat().st_size for f in files) if files else 0.0


def bench_opts(args, *, workers: int, fast: bool, compile_model: bool, result_path: Path, video_path: Path,
               annotation_path: Path, n_classes: int, device: str):
    """Training options for one benchmark configuration, resolved by the real option parser."""
    argv = ["--video_path", str(video_path), "--annotation_path", str(annotation_path), "--dataset", args.dataset,
            "--result_path", str(result_path), "--model", args.model, "--model_depth", str(args.model_depth),
            "--n_classes", str(n_classes), "--batch_size", str(args.batch_size), "--sample_size",
            str(args.sample_size), "--sample_duration", str(args.sample_duration), "--n_threads", str(workers),
            "--inference_subset", args.inference_subset, "--inference_batch_size", str(args.batch_size)]
    if device == "cpu":
        argv.append("--no_cuda")
    if not fast:  # the original: fp32, exact full decode, float normalisation in the workers
        argv += ["--precision", "fp32", "--exact_decode", "--normalize_in_workers"]
    elif compile_model:
        argv.append("--compile")
    return parse_opts(argv)


class BatchStream:
    """One endless iterator over a loader (epoch after epoch), so timing windows never restart workers."""

    def __init__(self, loader):
        self.loader = loader
        self._it = self._endless()

    def _endless(self):
        while True:
            yield from self.loader

    def close(self) -> None:
        """Stop the loader's workers now (persistent workers would otherwise outlive the measurement)."""
        self._it.close()
        close_loader(self.loader)

    def take(self, n: int) -> _Window:
        """An iterable of the next `n` batches that reports `len` (as `train_one_epoch` needs)."""
        return _Window(self._it, n)


def close_loader(loader) -> None:
    """Shut down a DataLoader's (persistent) worker processes, so the next loader forks a clean process."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if hasattr(loader, "_iterator"):
        loader._iterator = None


class _Window:
    def __init__(self, it, n: int):
        self._it, self._n = it, n

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        for _ in range(self._n):
            yield next(self._it)


def time_loader(loader, *, batch_size: int, warmup: int, steps: int, repeats: int,
                consume: Callable | None = None, sync: Callable[[], None] | None = None) -> list[float]:
    """clips/s of `repeats` windows of `steps` batches each, after `warmup` batches (worker start-up).

    `consume(batch)` runs on each batch inside the timed window (e.g. GPU decode); `sync()` ends a
    window (e.g. torch.cuda.synchronize) so asynchronous device work is counted.
    """
    stream = BatchStream(loader)
    try:
        return _timed_windows(stream, batch_size=batch_size, warmup=warmup, steps=steps, repeats=repeats,
                              consume=consume, sync=sync)
    finally:
        stream.close()


def _timed_windows(stream: BatchStream, *, batch_size: int, warmup: int, steps: int, repeats: int,
                   consume: Callable | None, sync: Callable[[], None] | None) -> list[float]:
    for batch in stream.take(warmup):
        if consume is not None:
            consume(batch)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = 0
        for batch in stream.take(steps):
            if consume is not None:
                consume(batch)
            n += _batch_clips(batch, batch_size)
        if sync is not None:
            sync()
        rates.append(n / (time.perf_counter() - start))
    return rates


def _batch_clips(batch, default: int) -> int:
    clips = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(clips.shape[0]) if hasattr(clips, "shape") else default
