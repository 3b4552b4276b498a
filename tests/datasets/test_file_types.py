"""datasets/file_types.py: one reader class per --file_type behind datasets.file_reader.FileReader, one registry."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datasets import factory
from datasets.annotations import candidate_paths, read_records
from datasets.file_reader import FileReader
from datasets.file_types import FILE_READERS, file_types, flow_file_types
from datasets.layout import CONVERTED_FILE_TYPES, frame_path
from datasets.readers import FlowHdf5Reader, Hdf5Reader, JpegDirReader, decode_jpeg
from datasets.video_files import VideoFileReader, VideoMetaCache
from errors import UserError
from opts import build_parser, parse_opts
from tests.conftest import ROOT, frame_numbers, make_opt
from tests.datagen import make_frame_dataset, write_video
from util_scripts import folder_json

CPU = SimpleNamespace(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), is_main=True)


# ---------------------------------------------------------------- the interface and the registry

def test_every_registered_reader_implements_the_interface():
    assert file_types() == ("jpg", "hdf5", "video")
    for name, reader_class in FILE_READERS.items():
        assert issubclass(reader_class, FileReader), name
        reader = reader_class()  # an ABC: this fails when an abstract method is missing
        assert isinstance(reader.first_frame, int) and reader.channels == 3
        assert isinstance(reader.holds_flow, bool) and isinstance(reader.probes_frames, bool)
        assert isinstance(reader.stored_as, str) and reader.stored_as


def test_the_registry_drives_the_file_type_choices(monkeypatch):
    actions = {a.dest: a for a in build_parser()._actions}
    assert tuple(actions["file_type"].choices) == tuple(FILE_READERS)
    assert set(CONVERTED_FILE_TYPES) <= set(FILE_READERS) and set(folder_json.FILE_TYPES) <= set(FILE_READERS)
    monkeypatch.setitem(FILE_READERS, "npy", NpyDirReader)
    assert parse_opts(["--result_path", "r", "--file_type", "npy", "--no_cuda"]).file_type == "npy"


def test_product_code_asks_the_registry_instead_of_comparing_file_type_names():
    # benchmarks/synthetic.py writes test data per type (encoding is not a reader's job): it may still branch.
    branch = re.compile(r"""\b(file_type|video_type)\s*(==|!=|(not\s+)?in\s*[("'])\s*""")
    product = sorted(ROOT.glob("*.py")) + sorted(p for d in ("datasets", "engine", "predict", "util_scripts",
                                                           "models") for p in (ROOT / d).rglob("*.py"))
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in product for n, line in enumerate(p.read_text().splitlines(), 1)
                 if branch.search(line)]
    assert offenders == []


# ---------------------------------------------------------------- per-type behaviour, as before the registry

def test_numbering_location_and_what_each_type_holds(tmp_path):
    base = tmp_path / "label" / "vid.x"
    assert [FILE_READERS[t].first_frame for t in ("jpg", "hdf5", "video")] == [1, 0, 0]
    assert [FILE_READERS[t].location(base) for t in ("jpg", "hdf5", "video")] == [
        base, tmp_path / "label" / "vid.x.hdf5", base]
    assert [FILE_READERS[t].probes_frames for t in ("jpg", "hdf5", "video")] == [False, False, True]
    assert flow_file_types() == ("hdf5",)
    assert [FILE_READERS[t].stored_as for t in folder_json.FILE_TYPES] == ["video files", "frame folders"]
    entry = {"video_path": "own/clip"}
    assert candidate_paths(tmp_path, "v", entry, None, dataset="kinetics", file_type="hdf5") == [
        tmp_path / "own/clip", tmp_path / "own/clip.hdf5"]
    assert candidate_paths(tmp_path, "v", {}, "a", dataset="kinetics", file_type="jpg") == [tmp_path / "a" / "v"]


def test_readers_for_an_annotation_file(tmp_path):
    annotation = tmp_path / "k.json"
    assert type(JpegDirReader.for_annotation_file(annotation)) is JpegDirReader
    assert type(Hdf5Reader.for_annotation_file(annotation)) is Hdf5Reader
    flow = Hdf5Reader.for_annotation_file(annotation, flow=True)
    assert type(flow) is FlowHdf5Reader and flow.channels == 2
    video = VideoFileReader.for_annotation_file(annotation)
    assert video.meta_cache.cache_path == VideoMetaCache.path_for(annotation) == tmp_path / "k.json.video_meta.json"


def test_count_frames_of_jpg_folders_and_hdf5_files(tmp_path):
    frames = [np.zeros((8, 8, 3), np.uint8)] * 5
    write_video(tmp_path / "jpg", frames, file_type="jpg")
    (tmp_path / "jpg" / ".image_99999.jpg").write_bytes(b"")  # hidden files are not frames
    (tmp_path / "jpg" / "notes.txt").write_bytes(b"")
    assert JpegDirReader().count_frames(tmp_path / "jpg") == 5
    write_video(tmp_path / "a.hdf5", frames, file_type="hdf5")
    write_video(tmp_path / "flow.hdf5", frames[:3], file_type="hdf5", input_type="flow")
    assert Hdf5Reader().count_frames(tmp_path / "a.hdf5") == 5
    assert Hdf5Reader().count_frames(tmp_path / "flow.hdf5") == 3
    assert JpegDirReader.is_stored(tmp_path / "jpg") and not JpegDirReader.is_stored(tmp_path / "a.hdf5")
    assert Hdf5Reader.is_stored(tmp_path / "a.hdf5") and not Hdf5Reader.is_stored(tmp_path / "jpg")


def test_count_frames_raises_a_user_error_naming_an_unreadable_video(tmp_path):
    (tmp_path / "broken.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="cannot read hdf5 video .*broken.hdf5"):
        Hdf5Reader().count_frames(tmp_path / "broken.hdf5")
    with pytest.raises(UserError, match="cannot list the frame folder .*missing"):
        JpegDirReader().count_frames(tmp_path / "missing")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(UserError, match="cannot open video .*broken.mp4"):
        VideoFileReader().count_frames(tmp_path / "broken.mp4")


@pytest.mark.parametrize(("file_type", "segment", "suffix"), [("jpg", (1, 7), ""), ("hdf5", (0, 6), ".hdf5"),
                                                              ("video", (0, 6), ".mp4")])
def test_records_keep_their_paths_and_frame_numbers(tmp_path, file_type, segment, suffix):
    ds = make_frame_dataset(tmp_path, n_classes=1, videos_per_class=1, n_frames=6, size=(16, 16),
                            file_type=file_type)
    records, _ = read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training",
                              file_type=file_type)
    vid = ds.ids("training")[0]
    assert [(r.path, r.segment) for r in records] == [(ds.video_path / "class_0" / f"{vid}{suffix}", segment)]
    assert (ds.annotation_path.parent / "kinetics.json.video_meta.json").is_file() == (file_type == "video")


def test_unknown_types_and_flow_are_refused_with_the_old_messages(tmp_path):
    ds = make_frame_dataset(tmp_path, n_classes=1, videos_per_class=1, n_frames=4, size=(16, 16))
    with pytest.raises(UserError, match=r"^unknown file type 'png'; choose from jpg, hdf5, video$"):
        factory.build_dataset(make_opt(ds, file_type="png"), "train")  # the annotation file is read first
    with pytest.raises(UserError, match=r"^--file_type must be one of jpg, hdf5, video, got 'png'$"):
        factory._reader(make_opt(ds, file_type="png"))
    with pytest.raises(UserError, match=r"^--input_type flow needs --file_type hdf5 \(flow is read from video_u/"):
        factory.build_dataset(make_opt(ds, input_type="flow"), "train")


def test_opts_refuses_flow_from_a_type_that_cannot_hold_it(capsys):
    with pytest.raises(SystemExit):
        parse_opts(["--result_path", "r", "--input_type", "flow", "--file_type", "jpg"])
    assert "--input_type flow needs --file_type hdf5" in capsys.readouterr().err


# ---------------------------------------------------------------- a new file type: one class + one registry line

class NpyDirReader(FileReader):
    """A file type the project does not have: <base>.npyframes/frame_0.npy ... raw (H, W, 3) uint8 pixels."""

    stored_as = "npy frame folders"

    @classmethod
    def location(cls, base: Path) -> Path:
        return Path(base).with_name(Path(base).name + ".npyframes")

    def count_frames(self, path: Path) -> int:
        if not Path(path).is_dir():
            raise UserError(f"no npy frame folder {path}")
        return len(list(Path(path).glob("frame_*.npy")))

    def fetch(self, path: Path, indices) -> list:
        files = [Path(path) / f"frame_{i}.npy" for i in indices]
        return [np.load(f) if f.is_file() else None for f in files]


def _jpg_to_npy(ds) -> None:
    """Rewrite every jpg folder of `ds` as an npy frame folder (0-based) and drop the JSON's jpg segments."""
    for info in ds.videos.values():
        npy = NpyDirReader.location(info.path)
        npy.mkdir()
        for i in range(info.n_frames):
            np.save(npy / f"frame_{i}.npy", np.asarray(decode_jpeg(frame_path(info.path, i + 1).read_bytes())))
        shutil.rmtree(info.path)
    data = json.loads(ds.annotation_path.read_text())
    for entry in data["database"].values():
        entry["annotations"].pop("segment", None)  # counted on disk by the reader
    ds.annotation_path.write_text(json.dumps(data))


def test_a_new_file_type_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    ds = make_frame_dataset(tmp_path, n_classes=2, videos_per_class=2, n_frames=[8, 6], size=(40, 30),
                            content="index")
    _jpg_to_npy(ds)
    monkeypatch.setitem(FILE_READERS, "npy", NpyDirReader)  # the one registry line

    loader, _ = factory.build_train_loader(make_opt(ds, file_type="npy", batch_size=2), CPU)
    assert all(r.path.suffix == ".npyframes" and r.segment[0] == 0 for r in loader.dataset.records)
    clips, targets = next(iter(loader))
    assert clips.shape == (2, 4, 16, 16, 3) and clips.dtype == torch.uint8 and targets.dtype == torch.long
    assert not any(loader.dataset.problems.counts().values())

    inference = factory.build_inference_loader(make_opt(ds, file_type="npy", inference_subset="val"), CPU)
    clips, targets = next(iter(inference))
    first_id = targets[0][0]
    assert targets[0][1] == [0, 4]  # 0-based, as the reader numbers its frames
    assert frame_numbers(clips[0]) == [1, 2, 3, 4]  # file frame k holds the jpg's frame k + 1
    assert ds.videos[first_id].subset == "validation"
