"""Multi-label targets, average precision, direction-aware flips and time spans of own-data annotations."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import main
from datasets.annotations import VideoRecord, read_records
from datasets.spatial_transforms import get_spatial_transform
from datasets.targets import DirectionFlip, direction_flip, mirrored_name, multi_hot, video_target
from datasets.temporal_transforms import get_temporal_transform
from datasets.video_dataset import VideoClipDataset, collate_clips
from opts import parse_opts
from tests.conftest import random_model_checkpoint
from tests.datagen import write_video_file
from utils import average_precision, count_correct, mean_average_precision

# ---------------------------------------------------------------- average precision (hand-computed)


def test_average_precision_hand_computed():
    # hits at ranks 1 and 3: (1/1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert average_precision([0.1, 0.9, 0.5], [0, 1, 1]) == pytest.approx(1.0)
    # tied scores are one threshold: 0.5 -> P 1/2 at R 1/2; 0.2 -> P 2/3 at R 1
    assert average_precision([0.5, 0.5, 0.2], [1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    # the worst ranking of 1 positive among 4: 1/4
    assert average_precision([0.4, 0.3, 0.2, 0.1], [0, 0, 0, 1]) == pytest.approx(0.25)
    assert average_precision([0.3, 0.2], [0, 0]) is None  # no positive: no AP


def test_mean_average_precision_leaves_out_classes_without_positives():
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.1, 0.6, 0.9]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    value, per_class = mean_average_precision(scores, targets)
    # class 0: ranks 0.9 (hit), 0.8 (miss), 0.1 (hit) -> (1 + 2/3) / 2; class 1: 0.7 first -> 1; class 2: none
    assert per_class == [pytest.approx(5 / 6), pytest.approx(1.0), None]
    assert value == pytest.approx((5 / 6 + 1) / 2)


def test_count_correct_with_multi_hot_targets_is_top1_hit_any_label():
    outputs = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    targets = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # the last: a video without actions
    assert count_correct(outputs, targets).item() == 1
    assert count_correct(outputs, targets, k=2).item() == 2


# ---------------------------------------------------------------- multi-hot targets


def test_multi_hot_takes_the_actions_a_clip_overlaps():
    actions = [(0, 0, 10), (2, 8, 20), (1, 30, 40)]  # (class, first, end_exclusive)
    assert multi_hot(actions, [0, 2, 4], 4).tolist() == [1, 0, 0, 0]
    assert multi_hot(actions, [5, 9], 4).tolist() == [1, 0, 1, 0]  # frames 5..9 touch both
    assert multi_hot(actions, [10, 12], 4).tolist() == [0, 0, 1, 0]  # action 0 ended before frame 10
    assert multi_hot(actions, [20, 25, 29], 4).tolist() == [0, 0, 0, 0]  # between actions
    assert multi_hot(actions, [0, 39], 4).tolist() == [1, 1, 1, 0]
    assert multi_hot((), [0, 1], 3).tolist() == [0, 0, 0]  # a video without actions


def test_video_target_is_every_action_or_the_label():
    charades = VideoRecord("v", Path("v"), 0, (0, 50), actions=((0, 0, 10), (3, 40, 50)))
    assert video_target(charades, 4).tolist() == [1, 0, 0, 1]
    single = VideoRecord("w", Path("w"), 2, (1, 9))
    assert video_target(single, 4).tolist() == [0, 0, 1, 0]
    empty = VideoRecord("x", Path("x"), -1, (0, 9))
    assert video_target(empty, 4).tolist() == [0, 0, 0, 0]


class StubLoader:
    """Stands in for ClipLoader: black clips, and remembers the flip it was asked for."""

    def __init__(self):
        self.flips = []
        self.problems = None

    def load_views(self, record, clips, rng, *, flip=None):
        self.flips.append(flip)
        return [[np.zeros((len(c), 4, 4, 3), np.uint8) for c in clips]]


def test_dataset_multi_hot_targets_per_clip_and_collated():
    records = [VideoRecord("a", Path("a"), 1, (0, 100), actions=((1, 0, 30), (2, 60, 100))),
               VideoRecord("b", Path("b"), -1, (0, 40))]
    val = VideoClipDataset(records, StubLoader(), get_temporal_transform("val", sample_duration=4, n_val_samples=3),
                           target="multi_hot", n_classes=3)
    clips, targets = collate_clips([val[0], val[1]])
    assert clips.shape[0] == 6 and targets.dtype == torch.float32
    # video a: clips start at 0, 48, 96 -> action 1, nothing, action 2; video b has no actions: zeros
    assert targets.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    train = VideoClipDataset(records, StubLoader(), get_temporal_transform("train", sample_duration=4,
                                                                           sampling="segment"),
                             target="multi_hot", n_classes=3)
    _, target = train[0]
    assert target.tolist() == [0, 1, 1]  # segment clips span the whole video: both actions
    with pytest.raises(ValueError, match="n_classes"):
        VideoClipDataset(records, StubLoader(), train.temporal, target="multi_hot")


# ---------------------------------------------------------------- direction-aware flips

CLASSES = ["Pushing something from left to right", "Pushing something from right to left",
           "Turning the camera left while filming something", "Holding something",
           "Moving something to the Right", "Moving something to the Left"]


def test_direction_flip_pairs_mirrored_class_names():
    assert mirrored_name("Pushing something from left to right") == "Pushing something from right to left"
    assert mirrored_name("Moving something to the Right") == "Moving something to the Left"
    assert mirrored_name("Copyright notices") == "Copyright notices"  # whole words only
    flips = direction_flip(CLASSES)
    assert flips.swap == {0: 1, 1: 0, 4: 5, 5: 4}
    assert flips.keep == {2}  # "Turning the camera left" has no "right" partner here
    assert flips.label(0, True) == 1 and flips.label(0, False) == 0 and flips.label(3, True) == 3
    assert direction_flip(["a", "b"]) == DirectionFlip()


def test_dataset_flipped_clips_take_the_mirrored_label():
    records = [VideoRecord(f"v{i}", Path(f"v{i}"), label, (1, 9)) for i, label in enumerate([0, 2, 3] * 20)]
    loader = StubLoader()
    ds = VideoClipDataset(records, loader, get_temporal_transform("train", sample_duration=4),
                          direction_flip=direction_flip(CLASSES), seed=3)
    labels = [ds[i][1] for i in range(len(ds))]
    for record, flip, label in zip(records, loader.flips, labels):
        if record.label == 0:  # swappable: flipped clips are "right to left"
            assert label == (1 if flip else 0)
        elif record.label == 2:  # a direction class without a partner: never flipped
            assert flip is False and label == 2
        else:  # no direction: flipped or not, same label
            assert label == 3
    assert {f for r, f in zip(records, loader.flips) if r.label != 2} == {True, False}
    assert [ds[i][1] for i in range(len(ds))] == labels  # reproducible


def test_spatial_transform_honours_a_forced_flip():
    t = get_spatial_transform("train", sample_size=8, hflip=True)
    assert all(t.sample(16, 16, random.Random(s), flip=False).flip is False for s in range(10))
    assert all(t.sample(16, 16, random.Random(s), flip=True).flip is True for s in range(10))
    assert {t.sample(16, 16, random.Random(s)).flip for s in range(20)} == {True, False}


# ---------------------------------------------------------------- time spans of annotations -> frames


def _write(path: Path, database: dict, labels=("a", "b", "c")) -> Path:
    path.write_text(json.dumps({"labels": list(labels), "database": database}))
    return path


def _frame_folder(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(1, n + 1):
        (folder / f"image_{i:05d}.jpg").write_bytes(b"")


def test_segment_seconds_narrow_the_record(tmp_path):
    _frame_folder(tmp_path / "v" / "clip", 40)
    ann = _write(tmp_path / "a.json", {
        "clip#t=1,2.5": {"subset": "training", "video_path": "clip", "fps": 10,
                         "annotations": {"label": "a", "segment_seconds": [1.0, 2.5]}},
        "clip#t=3.5,9": {"subset": "training", "video_path": "clip", "fps": 10,
                         "annotations": {"label": "b", "segment_seconds": [3.5, 9]}},  # runs past the end
        "clip#t=5,6": {"subset": "training", "video_path": "clip", "fps": 10,
                       "annotations": {"label": "b", "segment_seconds": [5, 6]}},  # after the end: skipped
        "nofps": {"subset": "training", "video_path": "clip", "annotations": {"label": "c", "segment_seconds": [0, 1]}},
    })
    records, _ = read_records(ann, tmp_path / "v", dataset="kinetics", subset="training")
    # jpg frames are 1-based: seconds [1, 2.5) at 10 fps = frames 11..25
    assert [(r.video_id, r.segment) for r in records] == [("clip#t=1,2.5", (11, 26)), ("clip#t=3.5,9", (36, 41)),
                                                          ("nofps", (1, 41))]  # no frame rate: the whole video


def test_charades_actions_become_frame_spans(tmp_path):
    _frame_folder(tmp_path / "v" / "A", 20)  # 20 frames over 10 s: 2 fps from the duration
    ann = _write(tmp_path / "c.json", {
        "A": {"subset": "validation", "video_path": "A", "duration": 10.0, "annotations": {
            "label": "b", "actions": [{"label": "b", "segment_seconds": [0, 2.2]},
                                      {"label": "c", "segment_seconds": [5, 10]}]}},
        "B": {"subset": "validation", "video_path": "A", "duration": 10.0, "annotations": {"actions": []}},
    })
    records, _ = read_records(ann, tmp_path / "v", dataset="charades", subset="validation")
    assert records[0].actions == ((1, 1, 6), (2, 11, 21))
    assert records[1].actions == () and records[1].label == -1


def test_options_multi_label_implied_by_charades_and_segment_stride_refused(capsys):
    assert parse_opts(["--result_path", "r", "--dataset", "charades"]).multi_label is True
    assert parse_opts(["--result_path", "r", "--dataset", "ssv2"]).multi_label is False
    assert parse_opts(["--result_path", "r"]).temporal_sampling == "dense"
    with pytest.raises(SystemExit):
        parse_opts(["--result_path", "r", "--temporal_sampling", "segment", "--sample_t_stride", "2"])
    assert "--sample_t_stride does not apply to --temporal_sampling segment" in capsys.readouterr().err


def test_predict_uses_a_multi_label_segment_checkpoint_as_trained(tmp_path):
    """--predict takes --multi_label and --temporal_sampling from the checkpoint: sigmoid scores (independent
    per class) and one clip of segment centres spanning the video."""
    flags = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--sample_size", "32",
             "--sample_duration", "4", "--n_classes", "3", "--multi_label", "--temporal_sampling", "segment"]
    ckpt = random_model_checkpoint(tmp_path, flags, ["sit", "stand", "cup"])
    video = tmp_path / "v.mp4"
    write_video_file(video, [np.full((32, 40, 3), 10 * i, np.uint8) for i in range(20)], fps=10)
    out = tmp_path / "out"
    assert main.main(["--predict", str(video), "--resume_path", str(ckpt), "--result_path", str(out),
                      "--output_topk", "0"]) == 0
    entry = json.loads((out / "predictions.json").read_text())["results"][str(video)]
    scores = [item["score"] for item in entry["result"]]
    assert len(scores) == 3 and all(0 < s < 1 for s in scores)
    assert abs(sum(scores) - 1) > 0.05  # sigmoids, not a softmax
    [segment] = entry["segments"]  # one clip: the centres of 4 segments of the 20 frames (2, 7, 12, 17)
    assert segment["segment"][0] == pytest.approx(0.2) and segment["segment"][1] == pytest.approx(1.8)
