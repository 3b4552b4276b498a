"""Multi-view testing: --inference_n_clips evenly spaced clips x --inference_n_crops spatial crops, averaged."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import factory as D
from datasets.annotations import VideoRecord
from datasets.clip_loader import ClipLoader
from datasets.problems import DataProblems
from datasets.readers import decode_jpeg
from datasets.spatial_transforms import SpatialTransform, get_spatial_transform, resize_center_box, three_crop_boxes
from datasets.temporal_transforms import get_temporal_transform, uniform_clips
from engine.inference import run_inference
from engine.scoring import VideoScoreAggregator
from models import factory as model_lib
from opts import parse_opts
from tests.conftest import run_main, save_model_checkpoint
from tests.datagen import make_frame_dataset

MODEL = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--sample_size", "32",
         "--sample_duration", "8", "--no_cuda", "--n_threads", "0", "--batch_size", "2", "--n_classes", "2"]


# ---- temporal: evenly spaced clips ----

def test_uniform_clips_starts_and_counts():
    clips = uniform_clips(list(range(1, 101)), 16, 3)
    assert [c[0] for c in clips] == [1, 43, 85] and all(c == list(range(c[0], c[0] + 16)) for c in clips)
    assert uniform_clips(list(range(1, 101)), 16, 1) == [list(range(43, 59))]  # the center window
    two = uniform_clips(list(range(20)), 8, 2)
    assert two == [list(range(0, 8)), list(range(12, 20))]  # first and last full window
    assert len(uniform_clips(list(range(20)), 8, 10)) == 10  # more clips than starts: overlapping, still 10
    short = uniform_clips([0, 1, 2], 8, 4)
    assert short == [[0, 1, 2, 0, 1, 2, 0, 1]] * 4  # loop-padded, same view count for every video


def test_temporal_transform_switches_to_uniform_only_when_asked():
    sliding = get_temporal_transform("inference", sample_duration=8, inference_stride=8)
    assert sliding.kind == "sliding" and len(sliding(list(range(20)))) == 3
    uniform = get_temporal_transform("inference", sample_duration=8, sample_t_stride=2, inference_n_clips=3)
    clips = uniform(list(range(40)))
    assert uniform.multi_clip and [c[0] for c in clips] == [0, 12, 24] and clips[2][-1] == 38
    with pytest.raises(ValueError):
        get_temporal_transform("inference", sample_duration=8, inference_n_clips=-1)


# ---- spatial: three crops ----

def test_three_crop_boxes_landscape_portrait_square():
    # 80x40 -> resized 64x32; crops of 32 at x = 0, 16, 32 of the resized frame.
    boxes = three_crop_boxes(80, 40, 32)
    assert boxes == [(0.0, 0.0, 0.5, 1.0), (0.25, 0.0, 0.75, 1.0), (0.5, 0.0, 1.0, 1.0)]
    assert boxes[1] == resize_center_box(80, 40, 32)
    portrait = three_crop_boxes(40, 80, 32)
    assert portrait == [(0.0, 0.0, 1.0, 0.5), (0.0, 0.25, 1.0, 0.75), (0.0, 0.5, 1.0, 1.0)]
    assert three_crop_boxes(50, 50, 32) == [resize_center_box(50, 50, 32)] * 3
    views = get_spatial_transform("inference", sample_size=32, inference_n_crops=3).sample_views(80, 40)
    assert [v.box for v in views] == boxes and all(v.out_size == (32, 32) and not v.flip for v in views)
    with pytest.raises(ValueError):
        SpatialTransform("nocrop", 32, n_crops=3)
    with pytest.raises(ValueError):
        SpatialTransform("center", 32, n_crops=2)


class GradientReader:
    """Lossless PNG frames: R = 4 * x, G = 4 * y, B = 10 * frame index (so crops and frames are recognisable)."""

    channels = 3

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height

    def frame(self, i: int) -> np.ndarray:
        y, x = np.mgrid[0 : self.height, 0 : self.width]
        return np.stack([4 * x, 4 * y, np.full_like(x, 10 * i)], axis=-1).astype(np.uint8)

    def fetch(self, path, indices):
        out = []
        for i in indices:
            buf = io.BytesIO()
            Image.fromarray(self.frame(i)).save(buf, format="PNG")
            out.append(buf.getvalue())
        return out


@pytest.mark.parametrize("size,offsets", [((64, 32), [(0, 0), (16, 0), (32, 0)]),
                                          ((32, 64), [(0, 0), (0, 16), (0, 32)])])
def test_loader_crops_are_at_the_right_positions(size, offsets):
    reader = GradientReader(*size)
    spatial = get_spatial_transform("inference", sample_size=32, inference_n_crops=3)
    loader = ClipLoader(reader, spatial, DataProblems())
    record = VideoRecord("v", None, 0, (0, 6))
    views = loader.load_views(record, [[0, 1, 2], [3, 4, 5]], random.Random(0))
    assert len(views) == 3 and all(len(v) == 2 for v in views)
    for view, (left, top) in zip(views, offsets):
        for clip, frames in zip(view, ([0, 1, 2], [3, 4, 5])):
            expected = np.stack([reader.frame(i)[top : top + 32, left : left + 32] for i in frames])
            np.testing.assert_array_equal(clip, expected)  # no resize needed: an exact pixel copy
    with pytest.raises(ValueError):
        loader.load(record, [[0, 1]], None)


# ---- the pipeline average equals the mean of views computed one by one ----

@pytest.fixture(scope="module")
def jpg_dataset(tmp_path_factory):
    return make_frame_dataset(tmp_path_factory.mktemp("mv"), n_classes=2, videos_per_class=1, n_frames=[14, 20],
                              size=(48, 32))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(3)
    opt = parse_opts([*MODEL, "--result_path", "unused"])
    return model_lib.generate_model(opt).eval(), opt


def _view_score(net, normalizer, video_dir, frames: list[int], left: int) -> torch.Tensor:
    """One view computed on its own: decode, crop 32x32 at x=left (48x32 frames need no resize), normalise."""
    imgs = [decode_jpeg((video_dir / f"image_{i:05d}.jpg").read_bytes()) for i in frames]
    crops = [np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR, box=(left, 0, left + 32, 32)))
             for img in imgs]
    clip = torch.from_numpy(np.stack(crops))[None]
    with torch.inference_mode():
        return torch.softmax(net(normalizer(clip)), dim=1)[0]


def test_multiview_average_equals_mean_of_individual_views(jpg_dataset, tiny_model, tmp_path):
    net, _ = tiny_model
    opt = parse_opts([*MODEL, "--video_path", str(jpg_dataset.video_path), "--annotation_path",
                      str(jpg_dataset.annotation_path), "--result_path", str(tmp_path), "--inference_n_clips", "2",
                      "--inference_n_crops", "3"])
    loader = D.build_inference_loader(opt, None)
    normalizer = D.build_input_normalizer(opt)
    agg = run_inference(net, loader, torch.device("cpu"), class_names=jpg_dataset.class_names,
                        normalizer=normalizer, show_progress=False)
    assert list(agg.clips) == jpg_dataset.ids("validation")
    video_scores = agg.video_scores()
    for vid in agg.clips:
        info = jpg_dataset.videos[vid]
        assert info.n_frames == 20
        # 1-based jpg frames 1..20: clips start at 1 and 13 (first and last full 8-frame window); crops x = 0, 8, 16.
        expected = [(list(range(b, b + 8)), left) for b in (1, 13) for left in (0, 8, 16)]
        pipeline = agg.clips[vid]
        assert len(pipeline) == 2 * 3
        assert [seg for seg, _ in pipeline] == [[b, b + 8] for b, _ in ([(1, 0)] * 3 + [(13, 0)] * 3)]
        separate = [_view_score(net, normalizer, info.path, frames, left) for frames, left in expected]
        for (_, got), want in zip(pipeline, separate):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(video_scores[vid], torch.stack(separate).mean(dim=0), atol=1e-5, rtol=1e-4)
    # Per-clip output: one entry per clip (its crops averaged), not one per crop.
    per_clip = agg.finalize(2, average=False)["results"]
    for vid in agg.clips:
        assert [c["segment"] for c in per_clip[vid]] == [[1, 9], [13, 21]]
        crops = [s for seg, s in agg.clips[vid] if seg == [1, 9]]
        assert per_clip[vid][0]["result"][0]["score"] == pytest.approx(torch.stack(crops).mean(0).max().item())


def test_inference_pads_the_last_window_as_the_original_unless_asked(jpg_dataset, tmp_path):
    segments = {}
    for flags in ([], ["--inference_align_last_window"]):
        opt = parse_opts([*MODEL, "--video_path", str(jpg_dataset.video_path), "--annotation_path",
                          str(jpg_dataset.annotation_path), "--result_path", str(tmp_path), "--inference_stride", "8",
                          *flags])
        found: dict[str, list] = {}
        for _, targets in D.build_inference_loader(opt, None):
            for vid, segment in targets:
                found.setdefault(vid, []).append(segment)
        segments[tuple(flags)] = found
    validation = jpg_dataset.ids("validation")
    assert all(jpg_dataset.videos[vid].n_frames == 20 for vid in validation)
    # 8-frame windows every 8 of 1-based frames 1..20: the tail 17..20 is looped to 8 frames in val.json, as the
    # original; asked, it is the window 13..20 of real frames
    assert segments[()] == {vid: [[1, 9], [9, 17], [17, 21]] for vid in validation}
    assert segments[("--inference_align_last_window",)] == {vid: [[1, 9], [9, 17], [13, 21]] for vid in validation}


def test_clip_and_video_level_accuracy():
    agg = VideoScoreAggregator(["a", "b"])
    # Video x (label 0): views 0.6/0.4 (hit), 0.3/0.7 (miss), 0.9/0.1 (hit) -> mean 0.6 -> hit.
    agg.update(torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1]]), ["x"] * 3, [[0, 8]] * 3)
    # Video y (label 1): views 0.8/0.2 (miss), 0.4/0.6 (hit) -> mean 0.6/0.4 -> miss. Video z is unlabelled.
    agg.update(torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.5, 0.5]]), ["y", "y", "z"], [[0, 8], [8, 16], [0, 8]])
    report = agg.accuracy_report({"x": 0, "y": 1, "z": -1})
    assert report == {"clip_acc": pytest.approx(3 / 5), "clips": 5, "video_acc": 0.5, "videos": 2}
    assert agg.accuracy_report({"z": -1}) is None


def test_cli_multiview_inference_prints_both_accuracies(jpg_dataset, tiny_model, tmp_path):
    net, opt = tiny_model
    ckpt = save_model_checkpoint(tmp_path / "save_1.pth", net, opt, jpg_dataset.class_names)
    out = tmp_path / "out"
    proc = run_main([*MODEL, "--video_path", jpg_dataset.video_path, "--annotation_path", jpg_dataset.annotation_path,
                     "--result_path", out, "--resume_path", ckpt, "--no_train", "--no_val", "--inference",
                     "--inference_n_clips", 2, "--inference_n_crops", 3, "--inference_no_average"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "clip-level top-1 accuracy on val" in proc.stdout and "(12 clips, 2 clips x 3 crops)" in proc.stdout
    assert "video-level top-1 accuracy on val" in proc.stdout and "(2 videos)" in proc.stdout
    results = json.loads((out / "val.json").read_text())["results"]
    assert {vid: [c["segment"] for c in clips] for vid, clips in results.items()} == {
        vid: [[1, 9], [13, 21]] for vid in jpg_dataset.ids("validation")}


def test_option_checks(tmp_path):
    base = [*MODEL, "--result_path", str(tmp_path)]
    with pytest.raises(SystemExit):
        parse_opts([*base, "--inference_n_crops", "3", "--inference_crop", "nocrop"])
    with pytest.raises(SystemExit):
        parse_opts([*base, "--inference_n_crops", "2"])
    with pytest.raises(SystemExit):
        parse_opts([*base, "--inference_n_clips", "-1"])
    opt = parse_opts([*base, "--inference_n_clips", "4", "--inference_n_crops", "3"])
    assert (opt.inference_n_clips, opt.inference_n_crops) == (4, 3)


def test_video_confusion_matrix_counts_the_labelled_videos_by_top_1():
    agg = VideoScoreAggregator(["a", "b"])
    agg.update(torch.tensor([[0.6, 0.4], [0.8, 0.2], [0.1, 0.9], [0.5, 0.5]]), ["x", "y", "y", "z"],
               [[0, 8], [0, 8], [8, 16], [0, 8]])
    # x: a -> a; y: label b, mean 0.45/0.55 -> b; z is unlabelled
    assert agg.confusion({"x": 0, "y": 1, "z": -1}) == [[1, 0], [0, 1]]
    assert agg.confusion({"x": 1, "y": 0}) == [[0, 1], [1, 0]]
