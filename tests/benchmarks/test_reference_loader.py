"""The fast data path gives the model what the original-style per-frame float pipeline gives it.

Same crop box -> uint8 clip from the project's ClipLoader -> ClipNormalizer equals the reference
(PIL full decode, crop, resize, flip, ToTensor, normalise per frame) within resampling noise;
with JPEG draft decoding within a small tolerance. Also: workers do no float work, and the GPU-decode
geometry of benchmarks/gpu_decode.py (plain torch, checked on the CPU) matches too, as does its nvjpeg decode on
CUDA (marked gpu). The reference is benchmarks/reference_loader.py.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.data import SyntheticSpec, make_synthetic_dataset
from benchmarks.gpu_decode import EncodedClipDataset, crop_resize_clip, decode_batch, nvjpeg_available
from benchmarks.reference_loader import build_reference_dataset, load_frame, reference_clip
from datasets import factory as dataset
from datasets.annotations import VideoRecord
from datasets.clip_loader import ClipLoader
from datasets.problems import DataProblems
from datasets.readers import JpegDirReader, decode_jpeg
from datasets.spatial_transforms import ClipNormalizer, ClipParams, get_mean_std
from opts import parse_opts
from tests.conftest import ROOT, cuda_only

MEAN, STD = get_mean_std(1.0, "kinetics")
LSB = 1 / 255 / min(STD)  # one uint8 step in normalised units (about 0.0145)
W, H = 160, 120


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    """A photo-like dataset (160x120 frames) shared by the tests of this module."""
    spec = SyntheticSpec(n_classes=2, train_per_class=1, val_per_class=1, n_frames=6, size=(W, H))
    video_path, _ = make_synthetic_dataset(tmp_path_factory.mktemp("frames"), spec)
    return video_path


def _video(frames_dir: Path) -> Path:
    return next(p for p in sorted(frames_dir.rglob("bench_c0_v0")) if p.is_dir())


class _FixedSpatial:
    """Stands in for SpatialTransform: every clip gets the same parameters."""

    n_crops = 1

    def __init__(self, params: ClipParams, size: int):
        self.params, self.size = params, size

    def sample(self, width, height, rng=None):
        return self.params

    def sample_views(self, width, height, rng=None):
        return [self.params]


def _params(box_px: tuple[int, int, int, int], out: int, flip: bool) -> ClipParams:
    left, top, w, h = box_px
    return ClipParams(box=(left / W, top / H, (left + w) / W, (top + h) / H), out_size=(out, out), flip=flip)


def _fast(video: Path, params: ClipParams, *, draft: bool, indices=(1, 2, 3, 4)) -> torch.Tensor:
    loader = ClipLoader(JpegDirReader(), _FixedSpatial(params, params.out_size[0]), DataProblems(), draft=draft)
    record = VideoRecord("v", video, 0, (1, 7))
    clip = loader.load(record, [list(indices)], random.Random(0))[0]
    assert clip.dtype == np.uint8  # workers hand over uint8: no per-pixel float work there
    return ClipNormalizer(MEAN, STD)(torch.from_numpy(clip)[None])[0]


def _reference(video: Path, params: ClipParams, indices=(1, 2, 3, 4)) -> torch.Tensor:
    frames = [load_frame(video / f"image_{i:05d}.jpg") for i in indices]
    return reference_clip(frames, params, crop="random", mean=MEAN, std=STD)


@pytest.mark.parametrize("box_px,flip", [((10, 8, 100, 90), False), ((37, 5, 111, 97), True),
                                         ((0, 0, W, H), True)])
def test_exact_decode_matches_reference_pipeline(frames_dir, box_px, flip):
    video, params = _video(frames_dir), _params(box_px, 48, flip)
    fast, ref = _fast(video, params, draft=False), _reference(video, params)
    assert fast.shape == ref.shape == (3, 4, 48, 48)
    _assert_same_but_edges(fast, ref)


def _assert_same_but_edges(fast: torch.Tensor, ref: torch.Tensor) -> None:
    """Identical inside; on the outermost row/column the fast path's one resize with a box lets the filter
    read the real pixels just outside the crop, where crop-then-resize repeats the edge (resampling noise)."""
    inner = (fast - ref)[..., 1:-1, 1:-1].abs()
    assert inner.max().item() <= 1e-5
    diff = (fast - ref).abs()
    assert diff.max().item() <= 8 * LSB
    assert diff.mean().item() <= 0.2 * LSB


def test_draft_decode_is_close_to_reference(frames_dir):
    video, params = _video(frames_dir), _params((8, 4, 144, 112), 32, False)  # 4x smaller: draft applies
    assert params.decode_size(W, H)[0] * 2 <= W
    fast, exact, ref = (_fast(video, params, draft=True), _fast(video, params, draft=False),
                        _reference(video, params))
    assert not torch.equal(fast, exact)  # draft decoding really was used
    diff = (fast - ref).abs()
    assert diff.mean().item() <= 3 * LSB  # DCT-domain downscale: a little smoother, never a different image
    assert diff.max().item() <= 40 * LSB


def test_dataset_items_equal_reference_items_for_same_seed(frames_dir, tmp_path):
    annotation = frames_dir.parent / "kinetics.json"
    argv = ["--video_path", str(frames_dir), "--annotation_path", str(annotation), "--result_path", str(tmp_path),
            "--n_classes", "2", "--sample_size", "32", "--sample_duration", "4", "--no_cuda", "--exact_decode"]
    opt = parse_opts(argv)
    fast_ds, ref_ds = dataset.build_dataset(opt, "train"), build_reference_dataset(opt, "train")
    normalizer = dataset.build_input_normalizer(opt)
    for key in [(0, 0), (1, 0), (0, 3), (1, 7)]:
        clip, label = fast_ds[key]
        ref, ref_label = ref_ds[key]
        assert clip.dtype == torch.uint8 and label == ref_label
        # Same seed -> same temporal window, crop box and flip on both paths.
        _assert_same_but_edges(normalizer(clip[None])[0], ref)


def test_reference_center_crop_is_close_to_single_resample(frames_dir, tmp_path):
    argv = ["--video_path", str(frames_dir), "--annotation_path", str(frames_dir.parent / "kinetics.json"),
            "--result_path", str(tmp_path), "--n_classes", "2", "--sample_size", "32", "--sample_duration", "4",
            "--no_cuda", "--exact_decode"]
    opt = parse_opts(argv)
    fast, _ = dataset.build_dataset(opt, "val")[0]
    ref, _ = build_reference_dataset(opt, "val")[0]
    diff = (dataset.build_input_normalizer(opt)(torch.stack(fast)) - torch.stack(ref)).abs()
    # Resize + CenterCrop in one resample instead of two (a documented deviation): resampling noise only.
    assert diff.mean().item() <= 3 * LSB


def test_gpu_decode_geometry_matches_reference(frames_dir):
    video, params = _video(frames_dir), _params((10, 8, 100, 90), 48, True)
    frames = torch.stack([torch.from_numpy(np.asarray(decode_jpeg((video / f"image_{i:05d}.jpg").read_bytes())))
                          .permute(2, 0, 1) for i in (1, 2, 3, 4)])
    clip = crop_resize_clip(frames, (10, 8, 110, 98), (48, 48), True)
    assert clip.dtype == torch.uint8 and clip.shape == (4, 48, 48, 3)
    diff = (ClipNormalizer(MEAN, STD)(clip[None])[0] - _reference(video, params)).abs()
    assert diff.mean().item() <= 1.5 * LSB  # torch antialiased bilinear vs PIL bilinear


def test_encoded_items_draw_the_same_clip_as_the_cpu_loader(frames_dir, tmp_path):
    argv = ["--video_path", str(frames_dir), "--annotation_path", str(frames_dir.parent / "kinetics.json"),
            "--result_path", str(tmp_path), "--n_classes", "2", "--sample_size", "32", "--sample_duration", "4",
            "--no_cuda", "--exact_decode"]
    fast_ds = dataset.build_dataset(parse_opts(argv), "train")
    frames, box, out_size, flip, label = EncodedClipDataset(fast_ds)[(1, 2)]
    assert len(frames) == 4 and all(f.dtype == torch.uint8 and f.dim() == 1 for f in frames)
    decoded = torch.stack([torch.from_numpy(np.asarray(decode_jpeg(f.numpy().tobytes()))).permute(2, 0, 1)
                           for f in frames])
    gpu_style = crop_resize_clip(decoded, box, out_size, flip)
    cpu_clip, cpu_label = fast_ds[(1, 2)]
    assert label == cpu_label
    assert (gpu_style.float() - cpu_clip.float()).abs().mean().item() <= 1.5


def test_nvjpeg_path_is_never_taken_on_cpu():
    code = ("import sys, torch\n"
            "from benchmarks.gpu_decode import nvjpeg_available\n"
            "import datasets.factory, engine.training, main, util_scripts.benchmark\n"
            "assert not nvjpeg_available(torch.device('cpu'))\n"
            "assert 'torchvision' not in sys.modules, 'torchvision imported on the CPU path'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert not nvjpeg_available(torch.device("cpu"))


@pytest.fixture(scope="module")
def photo_frames(tmp_path_factory) -> tuple[Path, Path]:
    spec = SyntheticSpec(n_classes=2, train_per_class=2, val_per_class=1, n_frames=8)  # 320x240 JPEGs
    return make_synthetic_dataset(tmp_path_factory.mktemp("photo"), spec)


@cuda_only
def test_nvjpeg_decode_matches_cpu_decode(photo_frames, tmp_path):
    device = torch.device("cuda")
    if not nvjpeg_available(device):
        pytest.skip("torchvision.io (nvjpeg) is not available")
    video_path, annotation_path = photo_frames
    opt = parse_opts(["--video_path", str(video_path), "--annotation_path", str(annotation_path), "--result_path",
                      str(tmp_path), "--n_classes", "2", "--sample_size", "112", "--sample_duration", "8",
                      "--batch_size", "2", "--n_threads", "1", "--exact_decode"])
    cpu_ds = dataset.build_dataset(opt, "train")
    keys = [(i, 3) for i in range(len(cpu_ds))]  # epoch 3: some crops flipped, some not
    clips, labels = decode_batch([EncodedClipDataset(cpu_ds)[k] for k in keys], device)
    assert clips.device.type == device.type and clips.dtype == torch.uint8
    for (clip, label), k in zip(zip(clips.cpu(), labels.cpu().tolist()), keys):
        cpu_clip, cpu_label = cpu_ds[k]
        assert label == cpu_label and clip.shape == cpu_clip.shape == (8, 112, 112, 3)
        diff = (clip.float() - cpu_clip.float()).abs()
        # Same frames, box and flip; nvjpeg vs libjpeg IDCT and torch vs PIL resampling differ by a level or two.
        assert diff.mean().item() <= 2.0 and diff.quantile(0.99).item() <= 16
