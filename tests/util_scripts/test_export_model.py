"""util_scripts.export_model: TorchScript and ONNX files that reproduce the eager model's logits."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.onnx_export import dataset_clips
from engine.onnx_model import load_exported
from errors import UserError
from models import build_model
from models import factory as model_lib
from opts import parse_opts
from tests.conftest import dataset_args, random_model_checkpoint, save_model_checkpoint
from tests.support import run_tool
from util_scripts import export_model

# Small clips keep the test fast; widen_factor 0.25 keeps every layer of the depth at a quarter width.
SMALL = ["--sample_duration", "8", "--sample_size", "32"]


def needs_onnx():
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"ONNX export/check unavailable: {', '.join(missing)} not installed")


def write_our_checkpoint(path: Path, family: str, depth: int) -> torch.nn.Module:
    kwargs = {"n_classes": 5, "widen_factor": 0.25}
    torch.manual_seed(0)
    model = build_model(family, depth, **kwargs)
    save_checkpoint(
        path, {"epoch": 1, "arch": f"{family}-{depth}", "model_kwargs": kwargs, "state_dict": model.state_dict()}
    )
    return model


@pytest.mark.parametrize(("family", "depth"), [("resnet", 18), ("resnet2p1d", 18)])
def test_torchscript_and_onnx_match_eager(tmp_path, family, depth):
    needs_onnx()
    ckpt = tmp_path / "save_1.pth"
    write_our_checkpoint(ckpt, family, depth)
    args = export_model.build_parser().parse_args([str(ckpt), "--output_dir", str(tmp_path / "out"), *SMALL])
    results = export_model.export_all(args)
    assert set(results) == {"torchscript", "onnx"}
    for path, diff in results.values():
        assert path.is_file()
        assert diff < 1e-4


def test_original_format_file_uses_flags_and_reads_class_count(tmp_path, capsys):
    ckpt = tmp_path / "r2p1d18_K_200ep.pth"
    torch.manual_seed(0)
    model = build_model("resnet2p1d", 18, n_classes=7, widen_factor=0.25)
    save_checkpoint(
        ckpt,
        {
            "epoch": 200,
            "arch": "resnet2p1d-18",
            "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
        },
    )
    code = export_model.main([str(ckpt), "--formats", "torchscript", "--resnet_widen_factor", "0.25", *SMALL])
    assert code == 0
    assert "torchscript" in capsys.readouterr().out
    traced = torch.jit.load(str(tmp_path / "r2p1d18_K_200ep.pt"))
    x = torch.randn(3, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model.eval()(x), atol=1e-4, rtol=1e-4)


def test_file_without_arch_needs_model_flags(tmp_path):
    ckpt = tmp_path / "bare.pth"
    torch.save(build_model("resnet", 10, n_classes=3).state_dict(), ckpt)
    with pytest.raises(UserError, match="--model and --model_depth"):
        export_model.main([str(ckpt), "--formats", "torchscript", *SMALL])
    with pytest.raises(UserError, match="does not match the model resnet-18"):
        export_model.main([str(ckpt), "--model", "resnet", "--model_depth", "18", "--formats", "torchscript", *SMALL])


def test_cli_reports_user_errors_in_one_line(tmp_path):
    proc = run_tool("export_model", tmp_path / "missing.pth", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_example_clip_has_the_checkpoints_clip_spec(tmp_path, caplog):
    flags = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--n_classes", "3",
             "--sample_duration", "8", "--sample_size", "32"]
    ckpt = random_model_checkpoint(tmp_path, flags, ["a", "b", "c"])
    with caplog.at_level(logging.INFO, logger="util_scripts.export_model"):
        assert export_model.main([str(ckpt), "--formats", "torchscript"]) == 0
    assert "on example clips of 3x8x32x32" in caplog.text

    def shape(payload, *flags):
        args = export_model.build_parser().parse_args(["x.pth", *flags])
        return export_model.example_shape(args, Checkpoint(payload).clip, {"n_input_channels": 3})

    payload = load_checkpoint(ckpt)
    assert shape(payload) == (1, 3, 8, 32, 32)
    assert shape(payload, "--sample_duration", "4") == (1, 3, 4, 32, 32)  # the flags override
    del payload["clip_spec"]
    assert shape(payload) == (1, 3, 8, 32, 32)  # an older checkpoint: from its options
    assert shape({"state_dict": {}}) == (1, 3, 16, 112, 112)  # the original's format: its defaults


@pytest.fixture(scope="module")
def memorised_checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    """A tiny model of the tiny dataset trained (deterministically) until it knows its clips: confident logits,
    as a trained model has, where int8 should keep the top-1."""
    folder = tmp_path_factory.mktemp("trained")
    flags = [str(a) for a in dataset_args(tiny_dataset, folder)]
    ckpt = random_model_checkpoint(folder, flags, ["class_0", "class_1"])
    payload = load_checkpoint(ckpt)
    clips = [c for subset in ("training", "validation")
             for c in dataset_clips(payload, subset=subset, n_clips=4, source="test")]
    x, y = torch.cat([c for c, _ in clips]), torch.tensor([label for _, label in clips])
    opt = parse_opts([*flags, "--no_cuda"])
    torch.manual_seed(0)
    net = model_lib.generate_model(opt)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):  # enough to fit these 8 clips (loss about 0.01); 3D conv backward is slow on the CPU
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return save_model_checkpoint(ckpt, net.eval(), opt, ["class_0", "class_1"])


def test_optimize_and_quantize_write_files_parity_and_accuracy(memorised_checkpoint, tmp_path, capsys):
    needs_onnx()
    out = tmp_path / "out"
    code = export_model.main([str(memorised_checkpoint), "--format", "onnx", "--optimize", "--quantize", "int8",
                              "--calibration_clips", "8", "--accuracy_clips", "8", "--output_dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "save_1_export.json").read_text())
    files = report["files"]
    assert set(files) == {"onnx", "onnx_optimized", "onnx_int8"}
    for fmt, entry in files.items():
        assert Path(entry["path"]).is_file()
        assert fmt == "onnx_int8" or entry["max_abs_diff"] < 1e-4
    int8 = report["int8"]
    assert int8["calibration"] == {"subset": "training", "clips": 8}
    accuracy = int8["accuracy"]
    assert accuracy["clips"] == accuracy["labelled_clips"] == 8
    assert accuracy["top1_agreement"] >= 0.75  # int8 keeps the top-1 of most clips
    assert "int8 on 8 validation clips" in printed and "same top-1" in printed
    # the int8 file runs through the same runner as main.py and names what it is
    loaded = load_exported(out / "save_1_int8.onnx")
    assert loaded.export_info["precision"] == "int8" and loaded.export_info["calibration"]["clips"] == 8
    assert loaded.model(torch.randn(2, 3, 8, 32, 32)).shape == (2, 2)
    # the 7x7x7 stem on the 3-channel clip is a 2D convolution over time-stacked frames (engine.time_unfold)
    onnx = pytest.importorskip("onnx")
    shapes = [list(init.dims) for init in onnx.load(str(out / "save_1_int8.onnx")).graph.initializer]
    assert [3 * 7, 7, 7] in [dims[1:] for dims in shapes if len(dims) == 4]
    assert not [dims for dims in shapes if len(dims) == 5 and dims[1] == 3]


def test_deploy_flags_are_checked_in_one_line(tmp_path):
    ckpt = tmp_path / "save_1.pth"
    write_our_checkpoint(ckpt, "resnet", 10)
    with pytest.raises(UserError, match="--quantize makes an ONNX Runtime file: add --format onnx"):
        export_model.main([str(ckpt), "--format", "torchscript", "--quantize", "int8"])
    with pytest.raises(UserError, match="--optimize makes an ONNX Runtime file"):
        export_model.main([str(ckpt), "--formats", "torchscript", "--optimize"])
    with pytest.raises(UserError, match="--calibration_clips must be at least 1"):
        export_model.main([str(ckpt), "--format", "onnx", "--quantize", "int8", "--calibration_clips", "0"])
    needs_onnx()  # a checkpoint without a dataset to calibrate on
    with pytest.raises(UserError, match="stores no --video_path: give --video_path"):
        export_model.main([str(ckpt), "--format", "onnx", "--quantize", "int8", "--output_dir", str(tmp_path), *SMALL])
    assert not list(tmp_path.glob("*.onnx"))  # refused before anything was written
