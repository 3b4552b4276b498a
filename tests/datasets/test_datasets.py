"""Annotation parsing, readers and bad-data handling on tiny datasets written by tests/datagen.py."""

import json
import logging

import numpy as np
import pytest

import datasets.video_files as vf
from datasets.annotations import read_records
from datasets.factory import build_dataset
from datasets.problems import DataProblems
from datasets.video_files import VideoFileReader
from errors import UserError
from tests.conftest import frame_numbers, make_opt
from tests.datagen import decode_frame_number, make_frame_dataset

KINDS = ["kinetics", "mit", "ucf101", "hmdb51", "activitynet"]


@pytest.mark.parametrize("file_type", ["jpg", "hdf5", "video"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_dataset_kind_and_layout_gives_labelled_clips_of_the_right_frames(tmp_path, kind, file_type):
    ds = make_frame_dataset(tmp_path, dataset=kind, file_type=file_type, n_frames=[9, 12], content="index")
    opt = make_opt(ds, dataset=kind, file_type=file_type)
    train = build_dataset(opt, "train")
    assert len(train) == len(ds.ids("training")) == 4
    base = 1 if file_type == "jpg" else 0
    for record in train.records:
        info = ds.videos[record.video_id]
        assert record.label == info.label and record.path == info.path
        assert record.segment == (base, base + info.n_frames)
    clip, label = train[0]
    info = ds.videos[train.records[0].video_id]
    assert clip.shape == (4, 16, 16, 3) and str(clip.dtype) == "torch.uint8" and label == info.label
    middle = info.n_frames // 2 - 1  # center crop of 1..n, size 4, as 1-based frame numbers
    assert frame_numbers(clip) == list(range(middle, middle + 4))
    assert int(np.asarray(clip)[..., 2].mean().round()) == pytest.approx(40 * info.label, abs=2)


def test_validation_clips_and_labels(tmp_path):
    ds = make_frame_dataset(tmp_path, n_frames=10, content="index")
    val = build_dataset(make_opt(ds), "val")
    clips, targets = val[0]
    assert len(clips) == 2 and targets == [val.records[0].label] * 2
    assert [frame_numbers(c) for c in clips] == [[1, 2, 3, 4], [6, 7, 8, 9]]  # even crop: stride ceil(5/1)


def test_inference_targets_are_segments_and_testing_subset_has_no_labels(tmp_path):
    ds = make_frame_dataset(tmp_path, n_frames=6, content="index", with_test_subset=True, file_type="hdf5")
    test = build_dataset(make_opt(ds, file_type="hdf5", inference_subset="test"), "inference")
    assert {r.video_id for r in test.records} == set(ds.ids("testing"))
    assert all(r.label == -1 for r in test.records)
    clips, targets = test[0]
    vid = test.records[0].video_id
    assert targets == [[vid, [0, 4]], [vid, [4, 6]]]  # 0-based hdf5 frames, last window loop-padded
    assert frame_numbers(clips[1]) == [5, 6, 5, 6]


def test_flow_hdf5_gives_two_channels(tmp_path):
    ds = make_frame_dataset(tmp_path, file_type="hdf5", input_type="flow", n_frames=8, content="index")
    train = build_dataset(make_opt(ds, file_type="hdf5", input_type="flow"), "train")
    clip, _ = train[0]
    assert clip.shape == (4, 16, 16, 2)
    info = ds.videos[train.records[0].video_id]
    u = [int(round(float(f[..., 0].float().mean()) / 8)) for f in clip]
    assert u == [3, 4, 5, 6]  # u = red channel = 8 * frame number
    assert float(clip[..., 1].float().mean()) == pytest.approx(16 * info.number, abs=2)


def test_flow_needs_hdf5(tmp_path):
    ds = make_frame_dataset(tmp_path, n_frames=4)
    with pytest.raises(UserError, match="hdf5"):
        build_dataset(make_opt(ds, input_type="flow"), "train")


def test_subset_with_fewer_than_five_videos_loads(tmp_path):
    ds = make_frame_dataset(tmp_path, n_classes=1, videos_per_class=1, n_frames=3)
    records, names = read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training")
    assert len(records) == 1 and names == ["class_0"]


def test_activitynet_classes_are_taxonomy_leaves_and_segments_come_from_seconds(tmp_path):
    ds = make_frame_dataset(tmp_path, dataset="activitynet", n_frames=20, fps=10.0)
    data = json.loads(ds.annotation_path.read_text())
    vid = ds.ids("training")[0]
    data["database"][vid]["annotations"] = [{"segment": [0.25, 1.3], "label": "class_1"},
                                            {"segment": [0.0, 0.5], "label": "class_0"}]  # 5 frames: too short
    ds.annotation_path.write_text(json.dumps(data))
    records, names = read_records(ds.annotation_path, ds.video_path, dataset="activitynet", subset="training")
    assert names == ["class_0", "class_1"]
    mine = [r for r in records if r.video_id == vid]
    assert len(mine) == 1 and mine[0].label == 1 and mine[0].fps == 10.0
    assert mine[0].segment == (3, 14) and mine[0].path == ds.video_path / f"v_{vid}"
    untrimmed, _ = read_records(ds.annotation_path, ds.video_path, dataset="activitynet", subset="training",
                                untrimmed=True)
    assert [r.segment for r in untrimmed if r.video_id == vid] == [(1, 21)]


def test_activitynet_needs_fps(tmp_path):
    ds = make_frame_dataset(tmp_path, dataset="activitynet", n_frames=10)
    data = json.loads(ds.annotation_path.read_text())
    for entry in data["database"].values():
        del entry["fps"]
    ds.annotation_path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="fps"):
        read_records(ds.annotation_path, ds.video_path, dataset="activitynet", subset="training")


def test_entry_video_path_is_used_verbatim(tmp_path):
    ds = make_frame_dataset(tmp_path, n_frames=4)
    data = json.loads(ds.annotation_path.read_text())
    vid = ds.ids("training")[0]
    moved = tmp_path / "elsewhere"
    ds.videos[vid].path.rename(moved)
    data["database"][vid]["video_path"] = str(moved)
    ds.annotation_path.write_text(json.dumps(data))
    records, _ = read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training")
    assert next(r for r in records if r.video_id == vid).path == moved


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p, d: p.write_text("{not json"), "not valid JSON"),
        (lambda p, d: p.write_text("[]"), "no 'database'"),
        (lambda p, d: p.unlink(), "not found"),
        (lambda p, d: d["database"]["kinetics_c0_v0"]["annotations"].update(label="nope"), "'nope'"),
        (lambda p, d: d["database"]["kinetics_c0_v0"]["annotations"].update(segment="x"), "segment"),
        (lambda p, d: d.pop("labels"), "labels"),
        (lambda p, d: d["labels"].append(d["labels"][0]), r"'labels' of .* class 'class_0' twice \(entries 1 and 3\)"),
    ],
)
def test_bad_annotation_files_raise_user_errors_naming_the_file(tmp_path, mutate, message):
    ds = make_frame_dataset(tmp_path, n_frames=3)
    data = json.loads(ds.annotation_path.read_text())
    mutate(ds.annotation_path, data)
    if ds.annotation_path.exists() and ds.annotation_path.read_text().startswith("{\""):
        ds.annotation_path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message) as err:
        read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training")
    assert str(ds.annotation_path) in str(err.value)


@pytest.mark.parametrize("file_type, first", [("jpg", 1), ("hdf5", 0)])
def test_a_long_segment_must_lie_within_its_video(tmp_path, file_type, first):
    ds = make_frame_dataset(tmp_path, n_frames=3, file_type=file_type)
    vid = ds.ids("training")[0]

    def records_with_segment(segment):
        data = json.loads(ds.annotation_path.read_text())
        data["database"][vid]["annotations"]["segment"] = segment
        ds.annotation_path.write_text(json.dumps(data))
        return read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training",
                            file_type=file_type)[0]

    # A short overrun is taken as written: the loaders pad the clip and count the missing frames, as before.
    assert next(r for r in records_with_segment([first, 100]) if r.video_id == vid).segment == (first, 100)
    for segment in ([first, 10**9], [-10**9, first + 3]):  # [1, 1e9] used to fill the memory at the first clip
        with pytest.raises(UserError, match=rf"^video {vid} in .* has segment \[{segment[0]}, {segment[1]}\], but "
                                            rf".*{vid}\S* has 3 frames \(segment \[{first}, {first + 3}\] at most\)"):
            records_with_segment(segment)
    with pytest.raises(UserError, match="malformed segment"):
        records_with_segment([first, float("inf")])  # JSON's Infinity


def test_no_existing_video_is_a_user_error_naming_the_file(tmp_path):
    ds = make_frame_dataset(tmp_path, n_frames=3)
    with pytest.raises(UserError, match="none of the 4 'training' videos") as err:
        read_records(ds.annotation_path, tmp_path / "wrong_root", dataset="kinetics", subset="training")
    assert str(ds.annotation_path) in str(err.value)
    with pytest.raises(UserError, match="unknown dataset"):
        read_records(ds.annotation_path, ds.video_path, dataset="kinetic", subset="training")


def test_missing_videos_are_skipped_with_one_warning(tmp_path, caplog):
    ds = make_frame_dataset(tmp_path, n_classes=2, videos_per_class=3, n_frames=3)
    gone = ds.ids("training")[:2]
    for vid in gone:
        for f in ds.videos[vid].path.iterdir():
            f.unlink()
        ds.videos[vid].path.rmdir()
    with caplog.at_level(logging.WARNING):
        records, _ = read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training")
    assert len(records) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 of 6" in warnings[0] and gone[0] in warnings[0]


def _drop_labels(ds, video_ids) -> None:
    data = json.loads(ds.annotation_path.read_text())
    for vid in video_ids:
        del data["database"][vid]["annotations"]["label"]
    ds.annotation_path.write_text(json.dumps(data))


def test_entries_without_a_label_are_named_as_such_not_as_missing(tmp_path, caplog):
    ds = make_frame_dataset(tmp_path, n_classes=2, videos_per_class=3, n_frames=3)
    unlabelled, elsewhere = ds.ids("training")[:2], ds.ids("training")[2]
    _drop_labels(ds, [*unlabelled, elsewhere])
    data = json.loads(ds.annotation_path.read_text())
    data["database"][elsewhere]["video_path"] = "nowhere/x"  # found without its label: it is missing
    ds.annotation_path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        records, _ = read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training")
    assert sorted(r.video_id for r in records) == sorted(ds.ids("training")[3:])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert f"2 of 6 'training' entries of {ds.annotation_path} have no label" in warnings[0]
    assert unlabelled[0] in warnings[0] and "give them an annotations.label" in warnings[0]
    assert "missing" not in warnings[0] and elsewhere not in warnings[0]
    assert warnings[1].startswith("1 of 6 'training' videos listed in") and elsewhere in warnings[1]


def test_a_subset_whose_entries_have_no_label_is_an_error_that_says_so(tmp_path):
    ds = make_frame_dataset(tmp_path, n_classes=2, videos_per_class=2, n_frames=3)
    _drop_labels(ds, ds.ids("training"))
    with pytest.raises(UserError, match=r"none of the 4 'training' entries .* has a label") as err:
        read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training")
    assert "exist under" not in str(err.value)


def test_corrupt_and_missing_frames_are_replaced_and_counted(tmp_path, caplog):
    ds = make_frame_dataset(tmp_path, n_classes=1, videos_per_class=1, n_frames=8, content="index")
    video = ds.videos[ds.ids("training")[0]].path
    (video / "image_00001.jpg").write_bytes(b"this is not a jpeg")  # the first frame: sizes come from another
    (video / "image_00003.jpg").write_bytes(b"this is not a jpeg")
    truncated = (video / "image_00006.jpg").read_bytes()
    (video / "image_00006.jpg").write_bytes(truncated[: len(truncated) // 2])
    (video / "image_00005.jpg").unlink()
    train = build_dataset(make_opt(ds, sample_duration=8), "train")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            clip, _ = train[0]
    assert frame_numbers(clip) == [2, 2, 2, 4, 4, 7, 7, 8]  # nearest good frame, the earlier one on ties
    counts = train.problems.counts()
    assert counts == {"missing_frames": 2, "corrupt_frames": 6, "unreadable_videos": 0}  # two reads of the clip
    messages = [r.getMessage() for r in caplog.records]
    assert sum("missing_frames" in m for m in messages) == 1 and sum("corrupt_frames" in m for m in messages) == 1
    assert all(ds.ids("training")[0] in m for m in messages)


def test_empty_directory_and_truncated_hdf5_give_black_clips(tmp_path):
    ds = make_frame_dataset(tmp_path / "jpg", n_classes=1, videos_per_class=1, n_frames=6)
    video = ds.videos[ds.ids("training")[0]].path
    for f in video.iterdir():
        f.unlink()
    train = build_dataset(make_opt(ds), "train")
    clip, label = train[0]
    assert clip.shape == (4, 16, 16, 3) and int(clip.max()) == 0 and label == 0
    assert train.problems.counts()["unreadable_videos"] == 1

    h5 = make_frame_dataset(tmp_path / "h5", n_classes=1, videos_per_class=1, n_frames=6, file_type="hdf5")
    path = h5.videos[h5.ids("training")[0]].path
    path.write_bytes(path.read_bytes()[:300])
    train = build_dataset(make_opt(h5, file_type="hdf5"), "train")
    clip, _ = train[0]
    assert int(clip.max()) == 0 and train.problems.counts()["unreadable_videos"] == 1


def test_problem_counts_delta():
    problems = DataProblems()
    problems.record("missing_frames", "a", 2)
    before = problems.counts()
    problems.record("missing_frames", "b", 1)
    problems.record("corrupt_frames", "b", 1)
    assert DataProblems.delta(problems.counts(), before) == {"missing_frames": 1, "corrupt_frames": 1,
                                                             "unreadable_videos": 0}


def test_a_video_of_only_corrupt_frames_gives_a_black_clip(tmp_path):
    ds = make_frame_dataset(tmp_path, n_classes=1, videos_per_class=1, n_frames=5)
    for f in ds.videos[ds.ids("training")[0]].path.iterdir():
        f.write_bytes(b"\xff\xd8 broken")
    train = build_dataset(make_opt(ds), "train")
    clip, _ = train[0]
    assert clip.shape == (4, 16, 16, 3) and int(clip.max()) == 0
    assert train.problems.counts()["unreadable_videos"] == 1


def test_video_reader_seeks_to_any_frames(tmp_path):
    ds = make_frame_dataset(tmp_path, n_classes=1, videos_per_class=1, n_frames=30, file_type="video",
                            content="index")
    frames = VideoFileReader().fetch(ds.videos[ds.ids("training")[0]].path, [25, 3, 26, 30, 4])
    assert frames[3] is None  # past the end (0-based 0..29)
    numbers = [decode_frame_number(np.asarray(f.to_image())) for f in frames if f is not None]
    assert numbers == [26, 4, 27, 5]


def test_video_metadata_is_probed_once_and_cached_beside_the_annotation_file(tmp_path, monkeypatch):
    ds = make_frame_dataset(tmp_path, n_frames=[7, 11], file_type="video")
    first, _ = read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training",
                            file_type="video")
    cache = ds.annotation_path.with_name(ds.annotation_path.name + ".video_meta.json")
    assert cache.is_file() and len(json.loads(cache.read_text())) == 4
    assert [r.segment for r in first] == [(0, ds.videos[r.video_id].n_frames) for r in first]

    def no_probe(path):
        raise AssertionError(f"probed {path} again")

    monkeypatch.setattr(vf, "probe_video", no_probe)
    again, _ = read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training",
                            file_type="video")
    assert again == first


def test_video_files_with_other_extensions_are_found(tmp_path):
    ds = make_frame_dataset(tmp_path, n_classes=1, videos_per_class=2, n_frames=6, file_type="video")
    vid = ds.ids("training")[0]
    ds.videos[vid].path.rename(ds.videos[vid].path.with_suffix(".mkv"))
    records, _ = read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training",
                              file_type="video")
    assert next(r for r in records if r.video_id == vid).path.suffix == ".mkv"


def test_a_video_file_broken_after_indexing_gives_a_black_clip(tmp_path):
    ds = make_frame_dataset(tmp_path, n_classes=1, videos_per_class=1, n_frames=8, file_type="video")
    train = build_dataset(make_opt(ds, file_type="video"), "train")
    train.records[0].path.write_bytes(b"\x00" * 100)
    clip, _ = train[0]
    assert clip.shape == (4, 16, 16, 3) and int(clip.max()) == 0
    assert train.problems.counts()["unreadable_videos"] == 1
