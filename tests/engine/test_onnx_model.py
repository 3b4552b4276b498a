"""An exported .onnx as --resume_path: --inference, --no_train validation and --predict give what the .pth gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import main
from engine.onnx_model import METADATA_KEY, load_exported
from errors import UserError
from tests.conftest import dataset_args, random_model_checkpoint
from tests.datagen import frame_image, write_video_file
from util_scripts import export_model

onnx = pytest.importorskip("onnx")  # optional dependencies (requirements.txt installs both)
pytest.importorskip("onnxruntime")
CLASSES = ["class_0", "class_1"]


@pytest.fixture(scope="module")
def exported(tiny_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """(the .pth, its fp32 .onnx) of a random tiny model of the tiny dataset."""
    folder = tmp_path_factory.mktemp("onnx")
    ckpt = random_model_checkpoint(folder, [str(a) for a in dataset_args(tiny_dataset, folder)], CLASSES)
    assert export_model.main([str(ckpt), "--format", "onnx"]) == 0
    return ckpt, ckpt.with_suffix(".onnx")


def _results(folder: Path) -> dict:
    return json.loads((folder / "val.json").read_text())["results"]


def _assert_same_results(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for video in a:
        assert [t["label"] for t in a[video]] == [t["label"] for t in b[video]]
        assert [t["score"] for t in a[video]] == pytest.approx([t["score"] for t in b[video]], abs=1e-5)


def test_inference_and_validation_with_the_onnx_file_match_the_checkpoint(exported, tiny_dataset, tmp_path):
    ckpt, onnx_file = exported
    for name, model_file in (("pth", ckpt), ("onnx", onnx_file)):
        args = [*dataset_args(tiny_dataset, tmp_path / name), "--no_train", "--inference", "--resume_path", model_file]
        assert main.main([str(a) for a in args]) == 0
    _assert_same_results(_results(tmp_path / "pth"), _results(tmp_path / "onnx"))
    pth_log, onnx_log = ((tmp_path / n / "val.log").read_text().split() for n in ("pth", "onnx"))
    assert pth_log[:3] == onnx_log[:3] == ["epoch", "loss", "acc"]
    assert [float(v) for v in onnx_log[3:]] == pytest.approx([float(v) for v in pth_log[3:]], abs=1e-5)


def test_predict_with_the_onnx_file_matches_the_checkpoint(exported, tmp_path):
    ckpt, onnx_file = exported
    frames = [frame_image("shapes", label=k % 2, number=1, frame=k, size=(40, 32)) for k in range(1, 21)]
    video = tmp_path / "clip.mp4"
    write_video_file(video, frames, fps=10)
    found = {}
    for name, model_file in (("pth", ckpt), ("onnx", onnx_file)):
        out = tmp_path / name
        assert main.main(["--predict", str(video), "--resume_path", str(model_file), "--result_path", str(out),
                          "--no_cuda"]) == 0
        assert {p.name for p in out.iterdir()} >= {"predictions.json", "predictions.csv", "predictions.html"}
        found[name] = json.loads((out / "predictions.json").read_text())["results"][str(video)]
    pth, onx = found["pth"], found["onnx"]
    assert [s["segment"] for s in pth["segments"]] == [s["segment"] for s in onx["segments"]]
    for a, b in zip([pth, *pth["segments"]], [onx, *onx["segments"]]):
        assert [t["label"] for t in a["result"]] == [t["label"] for t in b["result"]]
        assert [t["score"] for t in a["result"]] == pytest.approx([t["score"] for t in b["result"]], abs=1e-5)


def test_the_file_carries_the_clip_spec_and_class_names(exported):
    _, onnx_file = exported
    loaded = load_exported(onnx_file)
    assert loaded.payload.clip.sample_size == 32 and loaded.payload.clip.sample_duration == 8
    assert loaded.payload.clip.class_names == tuple(CLASSES) and loaded.payload.arch == "resnet-10"
    assert loaded.export_info["precision"] == "fp32" and loaded.model.n_classes == 2


def test_onnx_files_main_py_refuses_in_one_line(exported, tiny_dataset, tmp_path, capsys):
    _, onnx_file = exported
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(onnx_file))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    base = [str(a) for a in dataset_args(tiny_dataset, tmp_path / "out")]
    cases = [([*base, "--no_train", "--resume_path", str(foreign)], "without this toolkit's metadata"),
             ([*base, "--no_train", "--resume_path", str(broken)], "ONNX Runtime cannot load"),
             ([*base, "--resume_path", str(onnx_file)], "can be evaluated (--no_train"),
             ([*base, "--no_train", "--inference", "--save_features", "--resume_path", str(onnx_file)],
              "--save_features needs the PyTorch checkpoint")]
    for argv, message in cases:
        assert main.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err
    with pytest.raises(UserError, match="without this toolkit's metadata"):
        load_exported(foreign)
    assert METADATA_KEY in {p.key for p in onnx.load(str(onnx_file)).metadata_props}

