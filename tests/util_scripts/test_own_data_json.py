"""folder_json, list_json, ssv2_json and charades_json: own data in any layout -> the standard annotation JSON."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.annotations import read_records
from errors import UserError
from tests.conftest import ROOT as REPO
from tests.datagen import make_frame_dataset, write_video_file
from tests.support import run_tool
from util_scripts import charades_json, folder_json, list_json, ssv2_json


def run_tool_ok(name: str, *args) -> subprocess.CompletedProcess:
    """run_tool, asserting that the tool succeeded (its stderr is the failure message)."""
    proc = run_tool(name, *args)
    assert proc.returncode == 0, proc.stderr
    return proc


def tiny_frames(n: int = 8, value: int = 0) -> list[np.ndarray]:
    return [np.full((32, 32, 3), (value + 20 * i) % 256, np.uint8) for i in range(n)]


def make_frame_folder(folder: Path, n: int) -> None:
    """A jpg video folder; the frames are empty files (the readers count names, they do not decode)."""
    folder.mkdir(parents=True)
    for i in range(1, n + 1):
        (folder / f"image_{i:05d}.jpg").write_bytes(b"")


def make_frame_folders(root: Path, names, n: int) -> Path:
    """make_frame_folder ``root/<name>`` of ``n`` frames for each name; returns ``root``."""
    for name in names:
        make_frame_folder(root / name, n)
    return root


@pytest.mark.parametrize("name", ["folder_json", "list_json", "ssv2_json", "charades_json"])
def test_help(name):
    proc = run_tool(name, "-h")
    assert proc.returncode == 0 and "usage:" in proc.stdout and "dst_path" in proc.stdout


# ---------------------------------------------------------------- the reader: an entry's own path


@pytest.mark.parametrize(("file_type", "suffix"), [("jpg", ""), ("hdf5", ".hdf5")])
def test_entry_video_path_is_relative_to_the_video_root(tmp_path, file_type, suffix):
    ds = make_frame_dataset(tmp_path, n_frames=4, file_type=file_type)
    data = json.loads(ds.annotation_path.read_text())
    vid = ds.ids("training")[0]
    moved = ds.video_path / "any" / "where" / f"clip{suffix}"
    moved.parent.mkdir(parents=True)
    ds.videos[vid].path.rename(moved)
    data["database"][vid]["video_path"] = "any/where/clip"  # .hdf5 is added as for the <label>/<id> layout
    ds.annotation_path.write_text(json.dumps(data))
    records, _ = read_records(ds.annotation_path, ds.video_path, dataset="kinetics", subset="training",
                              file_type=file_type)
    assert next(r for r in records if r.video_id == vid).path == moved
    assert len(records) == len(ds.ids("training"))


# ---------------------------------------------------------------- folder_json

VIDEO_TREE = {  # path under ROOT -> codec (None: not a video the tool may list)
    "walk/a.mp4": "libx264",
    "walk/outdoor/b.MOV": "libx264",
    "walk/outdoor/deep/c.webm": "libvpx",
    "walk/d.avi": "mpeg4",
    "run/e.MKV": "libx264",
    "run/f.mp4": "libx264",
    "jump/g.Mp4": "libx264",
}
READABLE = sorted(VIDEO_TREE)


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    for number, (rel, codec) in enumerate(VIDEO_TREE.items()):
        write_video_file(root / rel, tiny_frames(value=10 * number), fps=8, codec=codec)
    (root / "run" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (root / "run" / "notes.txt").write_text("not a video")
    (root / "run" / ".hidden.mp4").write_bytes(b"")
    write_video_file(root / "stray.mp4", tiny_frames(), fps=8)  # no class folder
    return root


def test_folder_json_video_tree(video_tree, tmp_path):
    out = tmp_path / "own.json"
    proc = run_tool("folder_json", video_tree, out, "--val_fraction", "0.5", "--seed", "3")
    assert proc.returncode == 1, proc.stderr  # written, but an unreadable file was left out
    assert "unreadable: run/broken.mp4: " in proc.stderr and "1 unreadable videos were left out" in proc.stderr
    assert "1 videos directly in" in proc.stderr and "stray.mp4" in proc.stderr
    data = json.loads(out.read_text())
    assert data["labels"] == ["jump", "run", "walk"]
    assert sorted(data["database"]) == READABLE
    for rel, entry in data["database"].items():
        assert entry == {"subset": entry["subset"], "video_path": rel, "annotations": {"label": rel.split("/")[0]}}
    val = Counter(e["annotations"]["label"] for e in data["database"].values() if e["subset"] == "validation")
    assert val == {"walk": 2, "run": 1}  # round(4 * 0.5), at least 1 of 2, none of a single video
    assert not (out.parent / f".{out.name}.partial-").exists() and len(list(tmp_path.iterdir())) == 1

    again = tmp_path / "again.json"
    run_tool("folder_json", video_tree, again, "--val_fraction", "0.5", "--seed", "3")
    assert json.loads(again.read_text()) == data  # the seed fixes the split

    records, names = read_records(out, video_tree, dataset="kinetics", subset="training", file_type="video")
    assert names == ["jump", "run", "walk"] and len(records) == 4
    assert {r.path for r in records} == {video_tree / rel for rel, e in data["database"].items()
                                         if e["subset"] == "training"}
    assert all(r.segment == (0, 8) for r in records)
    assert {(r.video_id, r.label) for r in records} >= {("jump/g.Mp4", 0)}


def test_folder_json_split_rules():
    items = [("a", f"a/{i}") for i in range(10)] + [("b", "b/0"), ("b", "b/1")] + [("c", "c/0")]
    subsets = folder_json.split_by_class(items, 0.2, seed=0)
    val = Counter(rel.split("/")[0] for rel, s in subsets.items() if s == "validation")
    assert val == {"a": 2, "b": 1}
    assert subsets == folder_json.split_by_class(list(reversed(items)), 0.2, seed=0)  # order does not matter
    assert set(folder_json.split_by_class(items, 0.0, seed=0).values()) == {"training"}
    assert folder_json.split_by_class(items, 0.99, seed=0)["b/0"] != folder_json.split_by_class(
        items, 0.99, seed=0)["b/1"]  # a class of 2 keeps one training video


def test_folder_json_trains_with_main(video_tree, tmp_path):
    out = tmp_path / "own.json"
    folder_json.main([str(video_tree), str(out), "--val_fraction", "0.5"])  # 4 training: full batches
    proc = subprocess.run(
        [sys.executable, "main.py", "--video_path", str(video_tree), "--annotation_path", str(out),
         "--result_path", str(tmp_path / "results"), "--file_type", "video", "--n_classes", "3",
         "--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.25", "--sample_size", "32",
         "--sample_duration", "4", "--batch_size", "2", "--n_epochs", "1", "--n_threads", "0", "--no_cuda",
         "--n_val_samples", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "results" / "train.log").is_file()


def test_folder_json_frame_folders(tmp_path):
    root = tmp_path / "frames"
    make_frame_folder(root / "cat" / "x", 5)
    make_frame_folder(root / "cat" / "sub" / "y", 7)
    make_frame_folder(root / "dog" / "z", 3)
    (root / "dog" / "z" / "image_00001.jpg").unlink()  # no first frame: unreadable

    for folder in ("cat/x", "cat/sub/y"):
        Image.new("RGB", (8, 8)).save(root / folder / "image_00001.jpg")
    make_frame_folder(root / "dog" / "w", 2)
    Image.new("RGB", (8, 8)).save(root / "dog" / "w" / "image_00001.jpg")
    out = tmp_path / "frames.json"
    assert folder_json.main([str(root), str(out), "--file_type", "jpg", "--val_fraction", "0.5"]) == 1
    data = json.loads(out.read_text())
    assert data["labels"] == ["cat", "dog"]
    assert {k: (e["video_path"], e["annotations"]) for k, e in data["database"].items()} == {
        "cat/sub/y": ("cat/sub/y", {"label": "cat", "segment": [1, 8]}),
        "cat/x": ("cat/x", {"label": "cat", "segment": [1, 6]}),
        "dog/w": ("dog/w", {"label": "dog", "segment": [1, 3]}),
    }
    records = [r for s in ("training", "validation")
               for r in read_records(out, root, dataset="kinetics", subset=s, file_type="jpg")[0]]
    assert sorted((r.video_id, r.path, r.segment) for r in records) == [
        ("cat/sub/y", root / "cat/sub/y", (1, 8)), ("cat/x", root / "cat/x", (1, 6)), ("dog/w", root / "dog/w", (1, 3))]


def test_folder_json_names_class_folders_left_without_videos(tmp_path):
    root = tmp_path / "frames"
    for folder in ("cat/x", "dog/y"):
        make_frame_folder(root / folder, 3)
        Image.new("RGB", (8, 8)).save(root / folder / "image_00001.jpg")
    make_frame_folder(root / "owl" / "z", 2)  # no first frame: unreadable, so owl has no video either
    (root / "bird").mkdir()
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("not a video")
    (root / ".cache").mkdir()  # hidden: no class folder
    out = tmp_path / "frames.json"
    proc = run_tool("folder_json", root, out, "--file_type", "jpg")
    assert proc.returncode == 1, proc.stderr  # written; owl/z was unreadable
    assert json.loads(out.read_text())["labels"] == ["cat", "dog"]
    line = next(line for line in proc.stderr.splitlines() if "class folder" in line)
    assert line == (f"warning: 3 class folders of {root} hold no readable frame folders and are left out of the "
                    f"classes: bird, emu, owl; put videos into them or remove them ({out} has 2 classes)")


def test_folder_json_errors(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    proc = run_tool("folder_json", tmp_path / "empty", tmp_path / "o.json")
    assert proc.returncode == 2 and proc.stderr.startswith("error: no readable video files found")
    assert len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(UserError, match="val_fraction"):
        folder_json.main([str(tmp_path), str(tmp_path / "o.json"), "--val_fraction", "1"])
    with pytest.raises(UserError, match="not a directory"):
        folder_json.main([str(tmp_path / "nope"), str(tmp_path / "o.json")])
    assert not (tmp_path / "o.json").exists()


# ---------------------------------------------------------------- list_json


def test_list_json_names_indices_segments(tmp_path):
    root = make_frame_folders(tmp_path / "videos", ("clips/a", "clips/b", "clips/c d", "clips/e"), 4)
    train = tmp_path / "train.csv"
    train.write_text("path,label,start,end\n"
                     "clips/a,1\n"
                     "clips/b, 0 ,1.5,3\n"
                     "clips/b,2,3.0,4.25\n"
                     "clips/c d,walking\n")  # comma separated: the path may hold a space
    val = tmp_path / "val.txt"
    val.write_text("# validation\n\nclips/e 2\r\nclips/missing 0\n")  # CRLF too; clips/missing is not on disk
    names = tmp_path / "classes.txt"
    names.write_text("jumping\nrunning\nwalking\n")
    out = tmp_path / "list.json"
    proc = run_tool_ok("list_json", train, val, root, out, "--class_names", names)
    assert "1 of 6 videos are not found" in proc.stderr
    assert json.loads(out.read_text()) == {
        "labels": ["jumping", "running", "walking"],
        "database": {
            "clips/a": {"subset": "training", "video_path": "clips/a", "annotations": {"label": "running"}},
            "clips/b#t=1.5,3": {"subset": "training", "video_path": "clips/b",
                                "annotations": {"label": "jumping", "segment_seconds": [1.5, 3.0]}},
            "clips/b#t=3,4.25": {"subset": "training", "video_path": "clips/b",
                                 "annotations": {"label": "walking", "segment_seconds": [3.0, 4.25]}},
            "clips/c d": {"subset": "training", "video_path": "clips/c d", "annotations": {"label": "walking"}},
            "clips/e": {"subset": "validation", "video_path": "clips/e", "annotations": {"label": "walking"}},
            "clips/missing": {"subset": "validation", "video_path": "clips/missing",
                              "annotations": {"label": "jumping"}},
        },
    }
    records, labels = read_records(out, root, dataset="kinetics", subset="training", file_type="jpg")
    assert labels == ["jumping", "running", "walking"]
    assert [(r.video_id, r.path, r.label) for r in records] == [
        ("clips/a", root / "clips/a", 1), ("clips/b#t=1.5,3", root / "clips/b", 0),
        ("clips/b#t=3,4.25", root / "clips/b", 2), ("clips/c d", root / "clips/c d", 2)]
    val_records, _ = read_records(out, root, dataset="kinetics", subset="validation", file_type="jpg")
    assert [r.video_id for r in val_records] == ["clips/e"]


def test_list_json_names_without_class_file(tmp_path):
    (tmp_path / "t.txt").write_text("x/1.mp4 swim\nx/2.mp4 dive\n")
    (tmp_path / "v.txt").write_text("x/3.mp4 swim\n")
    out = tmp_path / "o.json"
    assert list_json.main([str(tmp_path / "t.txt"), str(tmp_path / "v.txt"), str(tmp_path), str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["labels"] == ["dive", "swim"] and list(data["database"]) == ["x/1.mp4", "x/2.mp4", "x/3.mp4"]
    (tmp_path / "t.txt").write_text("a 10\nb 9\nc 2\n")
    list_json.main([str(tmp_path / "t.txt"), str(tmp_path / "v.txt"), str(tmp_path), str(out)])
    assert json.loads(out.read_text())["labels"] == ["10", "2", "9", "swim"]  # names and numbers: text order
    (tmp_path / "v.txt").write_text("d 1\n")  # numbers only (no class file): numeric order
    list_json.main([str(tmp_path / "t.txt"), str(tmp_path / "v.txt"), str(tmp_path), str(out)])
    assert json.loads(out.read_text())["labels"] == ["1", "2", "9", "10"]


@pytest.mark.parametrize(("train", "extra", "message"), [
    ("a 0\nb\n", [], "t.txt:2: expected 'path label'"),
    ("a 0\nb 1 2.0\n", [], "t.txt:2: expected 'path label'"),
    ("a 0\nb 1 x 3\n", [], "t.txt:2: start and end must be seconds"),
    ("a 0\nb 1 3 2\n", [], "t.txt:2: segment needs 0 <= start < end"),
    ("a 0\na 1\n", [], "t.txt:2: 'a' is listed twice (also at"),
    ("a 0\nb 7\n", ["--class_names"], "t.txt:2: label '7' is neither a class name nor an index 0..1"),
    (b"a 0\nb\xe9 1\n", [], "t.txt:2: not UTF-8 text (byte 0xe9); save the list file as UTF-8"),
])
def test_list_json_bad_lines(tmp_path, train, extra, message):
    (tmp_path / "t.txt").write_bytes(train if isinstance(train, bytes) else train.encode())
    (tmp_path / "v.txt").write_text("c 0\n")
    (tmp_path / "names.txt").write_text("zero\none\n")
    extra = [*extra, str(tmp_path / "names.txt")] if extra else []
    proc = run_tool("list_json", tmp_path / "t.txt", tmp_path / "v.txt", tmp_path, tmp_path / "o.json", *extra)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.json").exists()


def test_list_json_class_names_file_with_a_name_twice_is_refused(tmp_path):
    (tmp_path / "t.txt").write_text("a 0\n")
    (tmp_path / "v.txt").write_text("c 0\n")
    (tmp_path / "names.txt").write_text("zero\none\nzero\n")
    proc = run_tool("list_json", tmp_path / "t.txt", tmp_path / "v.txt", tmp_path, tmp_path / "o.json",
                    "--class_names", tmp_path / "names.txt")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "names.txt names class 'zero' twice (entries 1 and 3)" in proc.stderr
    assert not (tmp_path / "o.json").exists()


# ---------------------------------------------------------------- ssv2_json

SSV2_LABELS = {"Approaching something with your camera": "1", "Putting something on something": "0",
               "Pushing something from left to right": "2"}


@pytest.fixture
def ssv2_files(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "something-something-v2-labels.json").write_text(json.dumps(SSV2_LABELS))
    (ann / "something-something-v2-train.json").write_text(json.dumps([
        {"id": "78687", "label": "putting a cup on a table", "template": "Putting [something] on [something]",
         "placeholders": ["a cup", "a table"]},
        {"id": "42326", "label": "pushing a pen from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a pen"]},
    ]))
    (ann / "something-something-v2-validation.json").write_text(json.dumps([
        {"id": "1420", "label": "approaching a box with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["a box"]},
    ]))
    (ann / "something-something-v2-test.json").write_text(json.dumps([{"id": "9999"}]))
    videos = make_frame_folders(tmp_path / "videos", ("78687", "42326", "1420", "9999"), 6)
    write_video_file(videos / "78687.webm", tiny_frames(6), fps=8, codec="libvpx")
    return ann, videos


def test_ssv2_json(ssv2_files, tmp_path):
    ann, videos = ssv2_files
    out = tmp_path / "ssv2.json"
    run_tool_ok("ssv2_json", ann, videos, out)
    assert json.loads(out.read_text()) == {
        "labels": ["Putting something on something", "Approaching something with your camera",
                   "Pushing something from left to right"],
        "database": {
            "78687": {"subset": "training", "video_path": "78687",
                      "annotations": {"label": "Putting something on something"}},
            "42326": {"subset": "training", "video_path": "42326",
                      "annotations": {"label": "Pushing something from left to right"}},
            "1420": {"subset": "validation", "video_path": "1420",
                     "annotations": {"label": "Approaching something with your camera"}},
            "9999": {"subset": "testing", "video_path": "9999", "annotations": {}},
        },
    }
    train, names = read_records(out, videos, dataset="kinetics", subset="training", file_type="jpg")
    assert [(r.video_id, r.label, r.path, r.segment) for r in train] == [
        ("78687", 0, videos / "78687", (1, 7)), ("42326", 2, videos / "42326", (1, 7))]
    test, _ = read_records(out, videos, dataset="kinetics", subset="testing", file_type="jpg")
    assert [(r.video_id, r.label) for r in test] == [("9999", -1)]
    webm, _ = read_records(out, videos, dataset="kinetics", subset="training", file_type="video")
    assert [(r.video_id, r.path, r.segment) for r in webm] == [("78687", videos / "78687.webm", (0, 6))]


def test_ssv2_json_errors(ssv2_files, tmp_path):
    ann, videos = ssv2_files
    (ann / "something-something-v2-test.json").unlink()  # optional
    assert ssv2_json.main([str(ann), str(videos), str(tmp_path / "o.json")]) == 0
    assert len(json.loads((tmp_path / "o.json").read_text())["database"]) == 3
    (ann / "something-something-v2-validation.json").write_text(json.dumps([{"id": "1", "template": "Eating [x]"}]))
    with pytest.raises(UserError, match="video 1 has template 'Eating \\[x\\]', which is not in the labels file"):
        ssv2_json.main([str(ann), str(videos), str(tmp_path / "o.json")])
    (ann / "something-something-v2-labels.json").write_text(json.dumps({"a": "0", "b": "2"}))
    with pytest.raises(UserError, match="indices are not 0..1"):
        ssv2_json.main([str(ann), str(videos), str(tmp_path / "o.json")])


# ---------------------------------------------------------------- charades_json

CHARADES_HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"


@pytest.fixture
def charades_files(tmp_path):
    cdir = tmp_path / "Charades"
    cdir.mkdir()
    (cdir / "Charades_v1_classes.txt").write_text("c000 Holding some clothes\nc001 Putting clothes somewhere\n"
                                                  "c002 Taking some clothes from somewhere\n")
    (cdir / "Charades_v1_train.csv").write_text(
        CHARADES_HEADER
        + '46GP8,HR43,Kitchen,6,7,Yes,"A person cooks, then eats.",food;stove,"A person cooks.",'
          '"c001 11.90 21.20;c000 0.00 12.60",24.83\n'
        + "N11GT,0KZ7,Stairs,6,7,Yes,A person walks.,stairs,A person walks.,,18.50\n")
    (cdir / "Charades_v1_test.csv").write_text(
        CHARADES_HEADER + 'YSKX3,E4W3,Bedroom,5,6,Yes,Folding.,clothes,Folding.,"c002 3.00 5.50",30.12\n')
    videos = make_frame_folders(tmp_path / "videos", ("46GP8", "N11GT", "YSKX3"), 5)
    return cdir, videos


def test_charades_json(charades_files, tmp_path):
    cdir, videos = charades_files
    out = tmp_path / "charades.json"
    proc = run_tool_ok("charades_json", cdir, videos, out)
    assert "1 videos have no action" in proc.stdout
    assert json.loads(out.read_text()) == {
        "labels": ["Holding some clothes", "Putting clothes somewhere", "Taking some clothes from somewhere"],
        "database": {
            "46GP8": {"subset": "training", "video_path": "46GP8", "duration": 24.83, "annotations": {
                "label": "Holding some clothes",  # the longest action (12.6 s > 9.3 s)
                "actions": [{"label": "Putting clothes somewhere", "segment_seconds": [11.9, 21.2]},
                            {"label": "Holding some clothes", "segment_seconds": [0.0, 12.6]}]}},
            "N11GT": {"subset": "training", "video_path": "N11GT", "duration": 18.5, "annotations": {"actions": []}},
            "YSKX3": {"subset": "validation", "video_path": "YSKX3", "duration": 30.12, "annotations": {
                "label": "Taking some clothes from somewhere",
                "actions": [{"label": "Taking some clothes from somewhere", "segment_seconds": [3.0, 5.5]}]}},
        },
    }
    val, names = read_records(out, videos, dataset="kinetics", subset="validation", file_type="jpg")
    assert names[2] == "Taking some clothes from somewhere"
    assert [(r.video_id, r.label, r.path, r.segment) for r in val] == [("YSKX3", 2, videos / "YSKX3", (1, 6))]
    train, _ = read_records(out, videos, dataset="kinetics", subset="training", file_type="jpg")
    assert [(r.video_id, r.label) for r in train] == [("46GP8", 0), ("N11GT", -1)]


def test_charades_json_errors(charades_files, tmp_path):
    cdir, videos = charades_files
    csv = cdir / "Charades_v1_test.csv"
    csv.write_text(CHARADES_HEADER + "YSKX3,E4W3,Bedroom,5,6,Yes,x,y,z,c099 1.0 2.0,30.12\n")
    with pytest.raises(UserError, match="Charades_v1_test.csv:2: unknown action class 'c099'"):
        charades_json.main([str(cdir), str(videos), str(tmp_path / "o.json")])
    csv.write_text(CHARADES_HEADER + "YSKX3,E4W3,Bedroom,5,6,Yes,x,y,z,c001 1.0,30.12\n")
    with pytest.raises(UserError, match="Charades_v1_test.csv:2: expected actions like"):
        charades_json.main([str(cdir), str(videos), str(tmp_path / "o.json")])
    csv.write_text("id,actions\nYSKX3,\n")
    with pytest.raises(UserError, match="missing column.*length"):
        charades_json.main([str(cdir), str(videos), str(tmp_path / "o.json")])
    (cdir / "Charades_v1_classes.txt").write_text("c000 Holding some clothes\nc001 Holding some clothes\n")
    with pytest.raises(UserError, match=r"Charades_v1_classes.txt names class 'Holding some clothes' twice"):
        charades_json.main([str(cdir), str(videos), str(tmp_path / "o.json")])
    assert not (tmp_path / "o.json").exists()
