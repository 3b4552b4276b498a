"""kinetics_json, ucf101_json, hmdb51_json, mit_json and add_fps_into_activitynet_json on official-format inputs."""

import json
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np
import pytest

from errors import UserError
from tests.support import read_only_folder, run_tool
from util_scripts import add_fps_into_activitynet_json, hmdb51_json, kinetics_json, mit_json, ucf101_json


def make_jpg_video(root: Path, label: str, video_id: str, n_frames: int) -> None:
    folder = root / label / video_id
    folder.mkdir(parents=True)
    for i in range(1, n_frames + 1):
        (folder / f"image_{i:05d}.jpg").write_bytes(b"")
    (folder / ".DS_Store").write_bytes(b"")  # hidden files are not frames


def make_jpg_videos(root: Path, n_frames: dict[str, int]) -> Path:
    """A frame folder ``root/<label>/<id>`` for each ``{"<label>/<id>": number of frames}``; returns ``root``."""
    for name, n in n_frames.items():
        make_jpg_video(root, *name.split("/"), n)
    return root


def make_hdf5_video(root: Path, label: str, video_id: str, n_frames: int) -> None:
    (root / label).mkdir(parents=True, exist_ok=True)
    data = np.empty(n_frames, dtype=object)
    for i in range(n_frames):
        data[i] = np.frombuffer(b"\xff\xd8fake", dtype=np.uint8)
    with h5py.File(root / label / f"{video_id}.hdf5", "w") as f:
        f.create_dataset("video", data=data, dtype=h5py.vlen_dtype(np.dtype("uint8")))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------- Kinetics


@pytest.fixture
def kinetics_csvs(tmp_path):
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    (csv_dir / "kinetics-400_train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "zumba,zz1,5,15,train,0\n"
        '"abseiling",ab1,14,24,train,0\n'
        "zumba,zz2,0,10,train,0\n"
    )
    (csv_dir / "kinetics-400_val.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,ab9,3,13,val\n"
    )
    (csv_dir / "kinetics-400_test.csv").write_text("youtube_id,time_start,time_end,split\ntt1,100,110,test\n")
    return csv_dir


def test_kinetics_json_jpg(kinetics_csvs, tmp_path, capsys):
    videos = make_jpg_videos(
        tmp_path / "jpg", {"zumba/zz1_000005_000015": 7, "abseiling/ab9_000003_000013": 3, "test/tt1_000100_000110": 4}
    )
    dst = tmp_path / "k400.json"
    assert kinetics_json.main([str(kinetics_csvs), "400", str(videos), "jpg", str(dst)]) == 0
    data = load(dst)
    assert data["labels"] == ["zumba", "abseiling"]  # order of first appearance in the train CSV
    assert list(data["database"]) == [
        "zz1_000005_000015",
        "ab1_000014_000024",
        "zz2_000000_000010",
        "ab9_000003_000013",
        "tt1_000100_000110",
    ]
    db = data["database"]
    assert db["zz1_000005_000015"] == {"subset": "training", "annotations": {"label": "zumba", "segment": [1, 8]}}
    assert db["ab1_000014_000024"] == {"subset": "training", "annotations": {"label": "abseiling"}}  # not converted
    assert db["ab9_000003_000013"] == {"subset": "validation", "annotations": {"label": "abseiling", "segment": [1, 4]}}
    assert db["tt1_000100_000110"] == {"subset": "testing", "annotations": {"segment": [1, 5]}}
    captured = capsys.readouterr()
    assert "2 classes, 3 training, 1 validation, 1 testing" in captured.out
    assert "2 of 5 videos have no converted frames" in captured.err


def test_kinetics_json_hdf5_without_test_csv(kinetics_csvs, tmp_path):
    (kinetics_csvs / "kinetics-400_test.csv").unlink()
    videos = tmp_path / "hdf5"
    make_hdf5_video(videos, "zumba", "zz2_000000_000010", 6)
    dst = tmp_path / "out" / "k400.json"
    assert kinetics_json.main([str(kinetics_csvs), "400", str(videos), "hdf5", str(dst)]) == 0
    db = load(dst)["database"]
    assert db["zz2_000000_000010"]["annotations"]["segment"] == [0, 6]
    assert {e["subset"] for e in db.values()} == {"training", "validation"}


def test_kinetics_json_errors(kinetics_csvs, tmp_path):
    args = [str(kinetics_csvs), "400", str(tmp_path), "jpg", str(tmp_path / "o.json")]
    (kinetics_csvs / "kinetics-400_val.csv").write_text("label,youtube_id,time_start,time_end\nyoga,y1,1,2\n")
    with pytest.raises(UserError, match=r"kinetics-400_val.csv:2: label 'yoga' is not in the class list"):
        kinetics_json.main(args)
    (kinetics_csvs / "kinetics-400_val.csv").write_text("label,youtube,time_start,time_end\nzumba,y1,1,2\n")
    with pytest.raises(UserError, match="missing column"):
        kinetics_json.main(args)
    (kinetics_csvs / "kinetics-400_val.csv").write_text("label,youtube_id,time_start,time_end\nzumba,y1,one,2\n")
    with pytest.raises(UserError, match="time_start/time_end must be numbers"):
        kinetics_json.main(args)
    (kinetics_csvs / "kinetics-400_train.csv").unlink()
    result = run_tool("kinetics_json", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: Kinetics training CSV not found:") and result.stderr.count("\n") == 1


def test_kinetics_json_video_in_two_csv_files_is_named(kinetics_csvs, tmp_path):
    with open(kinetics_csvs / "kinetics-400_val.csv", "a") as f:
        f.write("zumba,zz2,0,10,val\n")  # also in the train CSV
    result = run_tool("kinetics_json", kinetics_csvs, 400, tmp_path, "jpg", tmp_path / "k.json")
    assert result.returncode == 0, result.stderr
    assert load(tmp_path / "k.json")["database"]["zz2_000000_000010"]["subset"] == "validation"
    line = next(line for line in result.stderr.splitlines() if "more than once" in line)
    assert line.startswith("warning: ") and "1 video is listed more than once" in line
    assert "zz2_000000_000010 for training (" in line and "kinetics-400_train.csv:4) and for validation (" in line
    assert "kinetics-400_val.csv:3)" in line and "kept once, as its last listing says (validation)" in line


# ---------------------------------------------------------------- UCF-101


@pytest.fixture
def ucf_splits(tmp_path):
    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    # The official files use Windows line endings.
    (splits / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 Biking\r\n")
    (splits / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nBiking/v_Biking_g09_c02.avi 2\r\n"
    )
    (splits / "testlist01.txt").write_bytes(b"Biking/v_Biking_g01_c01.avi\r\n")
    return splits


def test_ucf101_json(ucf_splits, tmp_path, capsys):
    videos = make_jpg_videos(
        tmp_path / "jpg",
        {"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01": 5, "Biking/v_Biking_g09_c02": 2, "Biking/v_Biking_g01_c01": 3},
    )
    assert ucf101_json.main([str(ucf_splits), str(videos), str(tmp_path / "out")]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ucf101_01.json"]  # only split 1 exists
    data = load(tmp_path / "out" / "ucf101_01.json")
    assert data == {
        "labels": ["ApplyEyeMakeup", "Biking"],
        "database": {
            "v_ApplyEyeMakeup_g08_c01": {
                "subset": "training",
                "annotations": {"label": "ApplyEyeMakeup", "segment": [1, 6]},
            },
            "v_Biking_g09_c02": {"subset": "training", "annotations": {"label": "Biking", "segment": [1, 3]}},
            "v_Biking_g01_c01": {"subset": "validation", "annotations": {"label": "Biking", "segment": [1, 4]}},
        },
    }
    assert capsys.readouterr().err == ""


UCF101_SPLIT_ERRORS = [  # (file, its new content or None to remove it, the error it must give)
    ("testlist01.txt", "Skiing/v_Skiing_g01_c01.avi\n", r"testlist01.txt:1: label 'Skiing' is not in the class list"),
    ("testlist01.txt", "v_Biking_g01_c01.avi\n", r"testlist01.txt:1: expected '<Class>/<video>.avi'"),
    ("testlist01.txt", None, "no split found"),
    ("classInd.txt", "1 Biking\n2 ApplyEyeMakeup\n3 Biking\n",
     r"classInd.txt names class 'Biking' twice \(entries 1 and 3\)"),
    ("classInd.txt", "ApplyEyeMakeup\n", r"classInd.txt:1: expected '<index> <ClassName>'"),
]


def test_ucf101_json_errors(ucf_splits, tmp_path):
    """Each change to the split files (applied one after another) gives its one-line error."""
    args = [str(ucf_splits), str(tmp_path), str(tmp_path / "out")]
    for name, content, message in UCF101_SPLIT_ERRORS:
        if content is None:
            (ucf_splits / name).unlink()
        else:
            (ucf_splits / name).write_text(content)
        with pytest.raises(UserError, match=message):
            ucf101_json.main(args)


def test_ucf101_json_non_utf8_split_file_is_one_line(ucf_splits, tmp_path):
    (ucf_splits / "testlist01.txt").write_bytes(b"Biking/v_Biking_g01_c01.avi\nBiking/v_Biking_\xe9t\xe9.avi\n")
    result = run_tool("ucf101_json", ucf_splits, tmp_path, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr == (f"error: {ucf_splits / 'testlist01.txt'}:2: not UTF-8 text (byte 0xe9); save the "
                             "UCF-101 validation list as UTF-8\n")
    (ucf_splits / "classInd.txt").write_bytes(b"\xef\xbb\xbf1 ApplyEyeMakeup\n2 Biking\xff\n")  # a BOM is fine
    with pytest.raises(UserError, match=r"classInd.txt:2: not UTF-8 text \(byte 0xff\)"):
        ucf101_json.main([str(ucf_splits), str(tmp_path), str(tmp_path / "out")])


@pytest.mark.parametrize("output, message", [
    (lambda t: t / "a_file", "a_file/ucf101_01.json: {t}/a_file is a file, not a folder"),
    (lambda t: read_only_folder(t) / "out", "cannot write output file"),
], ids=["a_file", "read_only"])
def test_ucf101_json_unwritable_output_folder_is_one_line(ucf_splits, tmp_path, output, message):
    (tmp_path / "a_file").write_text("")
    result = run_tool("ucf101_json", ucf_splits, tmp_path, output(tmp_path))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and message.format(t=tmp_path) in result.stderr


# ---------------------------------------------------------------- HMDB-51


def test_hmdb51_json(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    for k in (1, 2):
        (splits / f"brush_hair_test_split{k}.txt").write_text(
            f"April_09_brush_hair_u_nm_np1_ba_goo_0.avi {k} \nBrushing_hair_h_nm_np1_le_goo_1.avi {3 - k} \n"
        )
        (splits / f"cartwheel_test_split{k}.txt").write_text("cart_1.avi 2 \ncart_2.avi 0 \ncart_3.avi 1 \n")
    videos = make_jpg_videos(
        tmp_path / "jpg", {"brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0": 4, "cartwheel/cart_3": 2}
    )
    assert hmdb51_json.main([str(splits), str(videos), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hmdb51_1.json", "hmdb51_2.json"]
    one = load(tmp_path / "out" / "hmdb51_1.json")
    assert one["labels"] == ["brush_hair", "cartwheel"]
    assert one["database"] == {
        "April_09_brush_hair_u_nm_np1_ba_goo_0": {
            "subset": "training",
            "annotations": {"label": "brush_hair", "segment": [1, 5]},
        },
        "cart_3": {"subset": "training", "annotations": {"label": "cartwheel", "segment": [1, 3]}},
        "Brushing_hair_h_nm_np1_le_goo_1": {"subset": "validation", "annotations": {"label": "brush_hair"}},
        "cart_1": {"subset": "validation", "annotations": {"label": "cartwheel"}},
    }
    two = load(tmp_path / "out" / "hmdb51_2.json")["database"]
    assert two["April_09_brush_hair_u_nm_np1_ba_goo_0"]["subset"] == "validation"
    assert two["Brushing_hair_h_nm_np1_le_goo_1"]["subset"] == "training"
    assert "cart_2" not in two  # id 0: not part of the split


def test_hmdb51_json_errors(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    with pytest.raises(UserError, match="no '<class>_test_split<K>.txt' files"):
        hmdb51_json.main([str(splits), str(tmp_path), str(tmp_path / "out")])
    (splits / "run_test_split1.txt").write_text("a.avi 3\n")
    with pytest.raises(UserError, match=r"run_test_split1.txt:1: expected '<video>.avi <0\|1\|2>'"):
        hmdb51_json.main([str(splits), str(tmp_path), str(tmp_path / "out")])


def test_ucf101_json_video_in_both_lists_is_named(ucf_splits, tmp_path, capsys):
    with open(ucf_splits / "testlist01.txt", "ab") as f:
        f.write(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\r\n")  # also in the train list
    assert ucf101_json.main([str(ucf_splits), str(tmp_path), str(tmp_path / "out")]) == 0
    db = load(tmp_path / "out" / "ucf101_01.json")["database"]
    assert db["v_ApplyEyeMakeup_g08_c01"]["subset"] == "validation" and len(db) == 3
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "more than once" in line)
    assert line.startswith("warning: ") and "ucf101_01.json: 1 video is listed more than once" in line
    assert "v_ApplyEyeMakeup_g08_c01 for training (" in line and "trainlist01.txt:1) and for validation (" in line
    assert "testlist01.txt:2)" in line and "as its last listing says (validation)" in line
    assert "remove the extra listing" in line
    assert "warning: 3 of 3 videos have no converted frames" in err  # the video listed twice counts once


def test_hmdb51_json_video_in_both_subsets_is_named(tmp_path, capsys):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "run_test_split1.txt").write_text("a.avi 1\nb.avi 2\na.avi 2\n")
    assert hmdb51_json.main([str(splits), str(tmp_path), str(tmp_path / "out")]) == 0
    assert load(tmp_path / "out" / "hmdb51_1.json")["database"]["a"]["subset"] == "validation"
    err = capsys.readouterr().err
    assert "hmdb51_1.json: 1 video is listed more than once, e.g. a for training (" in err
    assert "run_test_split1.txt:1) and for validation (" in err and "run_test_split1.txt:3)" in err


# ---------------------------------------------------------------- Moments in Time


def test_mit_json(tmp_path):
    meta = tmp_path / "moments"
    meta.mkdir()
    (meta / "moments_categories.txt").write_text("walking,0\nbarking,1\n")
    (meta / "trainingSet.csv").write_text("barking/giphy-abc.mp4,barking,3,0\nwalking/yt-xyz_1.mp4,walking,2,1\n")
    (meta / "validationSet.csv").write_text("walking/yt-val.mp4,walking,3,0\n")
    (meta / "testingSet.csv").write_text("yt-test.mp4\n")
    videos = make_jpg_videos(tmp_path / "jpg", {"barking/giphy-abc": 9, "test/yt-test": 2})
    assert mit_json.main([str(meta), str(videos), str(tmp_path / "mit.json")]) == 0
    data = load(tmp_path / "mit.json")
    assert data["labels"] == ["walking", "barking"]
    assert data["database"] == {
        "giphy-abc": {"subset": "training", "annotations": {"label": "barking", "segment": [1, 10]}},
        "yt-xyz_1": {"subset": "training", "annotations": {"label": "walking"}},
        "yt-val": {"subset": "validation", "annotations": {"label": "walking"}},
        "yt-test": {"subset": "testing", "annotations": {"segment": [1, 3]}},
    }
    (meta / "validationSet.csv").write_text("walking/yt-val.mp4\n")
    with pytest.raises(UserError, match=r"validationSet.csv:1: expected '<label>/<file>.mp4,<label>"):
        mit_json.main([str(meta), str(videos), str(tmp_path / "mit.json")])
    (meta / "moments_categories.txt").write_text("walking,0\nbarking,1\nwalking,2\n")
    with pytest.raises(UserError, match=r"moments_categories.txt names class 'walking' twice \(entries 1 and 3\)"):
        mit_json.main([str(meta), str(videos), str(tmp_path / "mit.json")])
    (meta / "moments_categories.txt").unlink()
    with pytest.raises(UserError, match="Moments in Time category file not found"):
        mit_json.main([str(meta), str(videos), str(tmp_path / "mit.json")])


# ---------------------------------------------------------------- ActivityNet fps


def write_mp4(path: Path, rate, n_frames=3) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_add_fps_into_activitynet_json(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_mp4(videos / "v_aaa.mp4", Fraction(30000, 1001))
    write_mp4(videos / "v_bbb.mp4", 25)
    write_mp4(videos / "v_zzz.mp4", 25)  # not in the JSON
    (videos / "v_ccc.mp4").write_bytes(b"broken")
    src = tmp_path / "activity_net.v1-3.min.json"
    database = {vid: {"subset": "training", "duration": 1.0, "annotations": []} for vid in ("aaa", "bbb", "ccc")}
    src.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": database}))
    dst = tmp_path / "with_fps.json"
    assert add_fps_into_activitynet_json.main([str(videos), str(src), str(dst)]) == 1  # one unreadable video
    data = load(dst)
    assert data["database"]["aaa"]["fps"] == 29.97
    assert data["database"]["bbb"]["fps"] == 25.0
    assert "fps" not in data["database"]["ccc"]
    assert data["version"] == "VERSION 1.3" and data["database"]["aaa"]["duration"] == 1.0
    captured = capsys.readouterr()
    assert "fps set for 2 of 4 videos" in captured.out
    assert "v_ccc.mp4" in captured.err and "1 videos are not in the JSON" in captured.err
    (videos / "v_ccc.mp4").unlink()
    assert add_fps_into_activitynet_json.main([str(videos), str(src)]) == 0  # overwrites json_path by default
    assert load(src)["database"]["bbb"]["fps"] == 25.0
    src.write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        add_fps_into_activitynet_json.main([str(videos), str(src)])
