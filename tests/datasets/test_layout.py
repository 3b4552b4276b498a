"""datasets/layout.py: the one home of the on-disk layout, and the readers and tools that ask it."""

from __future__ import annotations

import os

import numpy as np

import datasets.layout as layout
from datasets.annotations import read_records
from datasets.factory import build_dataset
from opts import build_parser
from predict.runner import find_videos as predict_videos
from tests.conftest import make_opt
from tests.datagen import decode_frame_number, make_frame_dataset
from util_scripts.common import find_videos as raw_videos


def test_subset_names():
    assert [layout.subset_name(s) for s in ("train", "val", "test")] == ["training", "validation", "testing"]
    assert layout.subset_name("validation") == "validation"  # full names pass through
    assert layout.ANNOTATION_SUBSETS == ("training", "validation", "testing")


def test_opts_choices_come_from_the_layout():
    actions = {a.dest: a for a in build_parser()._actions}
    assert tuple(actions["dataset"].choices) == layout.DATASETS
    assert tuple(actions["inference_subset"].choices) == ("train", "val", "test")
    assert set(layout.RAW_VIDEO_EXTENSION) == set(layout.DATASETS)


def test_frame_names(tmp_path):
    assert layout.frame_name(1) == "image_00001.jpg" and layout.frame_name(123456) == "image_123456.jpg"
    assert layout.frame_path(tmp_path, 7) == tmp_path / "image_00007.jpg"


def test_a_broken_hdf5_video_is_skipped_by_the_dataset(tmp_path):
    ds = make_frame_dataset(tmp_path, n_classes=1, videos_per_class=2, n_frames=6, file_type="hdf5")
    vid = ds.ids("training")[0]
    ds.videos[vid].path.write_bytes(b"truncated")
    data = ds.annotation_path.read_text().replace('"segment"', '"no_segment"')  # counted on disk, not from the JSON
    ds.annotation_path.write_text(data)
    records, _ = read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training",
                              file_type="hdf5")
    assert [r.video_id for r in records] == ds.ids("training")[1:]


def test_video_extensions_match_in_any_letter_case():
    assert all(layout.has_video_extension(f"clip{ext}") for ext in (".mp4", ".MP4", ".Mov", ".AVI", ".mkv"))
    assert not layout.has_video_extension("clip.txt") and not layout.has_video_extension("mp4")
    assert layout.has_video_extension("x.AVI", (".avi",)) and not layout.has_video_extension("x.mp4", (".avi",))


def test_video_file_finder(tmp_path, monkeypatch):
    for name in ("a.MP4", "b.avi", "b.mp4", "c.Mov", "d.txt", "e"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "f.mp4").mkdir()  # a folder is not a video file
    listed = []
    scandir = os.scandir
    monkeypatch.setattr(layout.os, "scandir", lambda p: listed.append(p) or scandir(p))
    finder = layout.VideoFileFinder()
    found = {stem: finder.find(tmp_path / stem) for stem in ("a", "b", "c", "d", "e", "f", "missing")}
    assert found == {"a": tmp_path / "a.MP4", "b": tmp_path / "b.mp4", "c": tmp_path / "c.Mov", "d": None,
                     "e": tmp_path / "e", "f": None, "missing": None}
    assert len(listed) == 1  # one listing for the whole folder
    assert layout.find_video_file(tmp_path / "b") == tmp_path / "b.mp4"  # .mp4 comes before .avi
    assert layout.find_video_file(tmp_path / "nowhere" / "x") is None


def test_file_type_video_training_finds_upper_case_camera_files(tmp_path):
    ds = make_frame_dataset(tmp_path, n_classes=1, videos_per_class=2, n_frames=8, file_type="video",
                            content="index")
    first, second = ds.ids("training")
    for vid, ext in ((first, ".MP4"), (second, ".MOV")):
        ds.videos[vid].path.rename(ds.videos[vid].path.with_suffix(ext))
    train = build_dataset(make_opt(ds, file_type="video"), "train")
    assert sorted(r.path.suffix for r in train.records) == [".MOV", ".MP4"]
    clip, label = train[0]
    assert clip.shape == (4, 16, 16, 3) and label == 0
    assert train.problems.counts().get("unreadable_videos", 0) == 0
    numbers = [decode_frame_number(f) for f in np.asarray(clip)]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4


def test_predict_and_extraction_scans_find_upper_case_files(tmp_path):
    for rel in ("Jump/a.MP4", "Jump/b.mp4", "Jump/c.AVI", "Jump/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [p.name for p in predict_videos(tmp_path)] == ["a.MP4", "b.mp4", "c.AVI"]
    (tmp_path / "Jump" / ".hidden.mp4").write_bytes(b"")  # extraction skips hidden files
    assert [str(item.rel) for item in raw_videos(tmp_path, "kinetics")] == ["Jump/a", "Jump/b"]
    assert [str(item.rel) for item in raw_videos(tmp_path, "ucf101")] == ["Jump/c"]
