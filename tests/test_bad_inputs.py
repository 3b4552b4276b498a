"""Bad files and flags: each gives one clear line on stderr and a non-zero exit, never a traceback.

Runs `main.main(argv)` in-process (it returns the exit status; argparse errors exit with status 2).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import main
from checkpoint import save_checkpoint
from models import factory as model_lib
from tests.datagen import make_frame_dataset

TINY = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--sample_size", "16",
        "--sample_duration", "4", "--n_threads", "0", "--no_cuda", "--batch_size", "2", "--n_val_samples", "1",
        "--n_epochs", "1"]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_frame_dataset(tmp_path_factory.mktemp("data"), n_classes=2, videos_per_class=2, n_frames=6,
                              size=(24, 20))


def _checkpoint(path: Path, *, depth: int = 10, n_classes: int = 2) -> Path:
    kwargs = {"n_classes": n_classes, "n_input_channels": 3, "widen_factor": 0.125}
    net = model_lib.build_model_from_checkpoint_info(f"resnet-{depth}", kwargs)
    return save_checkpoint(path, {"epoch": 1, "arch": f"resnet-{depth}", "state_dict": net.state_dict()})


def _annotation(ds, tmp: Path, edit) -> Path:
    data = json.loads(ds.annotation_path.read_text())
    edit(data)
    path = tmp / "edited.json"
    path.write_text(json.dumps(data))
    return path


def _first_training_entry(data: dict) -> dict:
    return next(e for e in data["database"].values() if e["subset"] == "training")


def _truncated(tmp: Path) -> Path:
    good = _checkpoint(tmp / "good.pth")
    path = tmp / "truncated.pth"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path


def _write(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


def _torch_file(tmp: Path, name: str, obj) -> Path:
    torch.save(obj, tmp / name)
    return tmp / name


# (case id, function (dataset, tmp dir) -> extra argv, expected text in the one-line message)
CASES = [
    ("malformed_json", lambda ds, t: ["--annotation_path", _write(t, "a.json", b"{not json")], "is not valid JSON"),
    ("json_not_object", lambda ds, t: ["--annotation_path", _write(t, "a.json", b"[1, 2]")],
     "has no 'database' object"),
    ("labels_not_strings", lambda ds, t: ["--annotation_path", _annotation(ds, t, lambda d: d.update(labels=[1, 2]))],
     "has no 'labels' list of strings"),
    ("label_not_in_labels", lambda ds, t: ["--annotation_path", _annotation(
        ds, t, lambda d: _first_training_entry(d)["annotations"].update(label="zebra"))],
     "has label 'zebra', which is not in 'labels'"),
    ("malformed_segment", lambda ds, t: ["--annotation_path", _annotation(
        ds, t, lambda d: _first_training_entry(d)["annotations"].update(segment="abc"))], "malformed segment"),
    ("absurd_segment", lambda ds, t: ["--annotation_path", _annotation(
        ds, t, lambda d: _first_training_entry(d)["annotations"].update(segment=[1, 1e9]))],
     "has segment [1, 1000000000], but"),
    ("infinite_segment", lambda ds, t: ["--annotation_path", _annotation(
        ds, t, lambda d: _first_training_entry(d)["annotations"].update(segment=[1, float("inf")]))],
     "malformed segment [1, inf]"),
    ("annotations_not_object", lambda ds, t: ["--annotation_path", _annotation(
        ds, t, lambda d: _first_training_entry(d).update(annotations=[1]))], "malformed entry in annotation file"),
    ("no_training_videos", lambda ds, t: ["--annotation_path", _annotation(
        ds, t, lambda d: [e.update(subset="validation") for e in d["database"].values()])],
     "has no usable 'training' videos"),
    ("missing_annotation_file", lambda ds, t: ["--annotation_path", t / "none.json"], "annotation file not found"),
    ("missing_video_dir", lambda ds, t: ["--video_path", t / "no_such_dir"], "is not a directory"),
    ("video_dir_wrong_layout", lambda ds, t: ["--video_path", t], "videos of"),
    ("hdf5_type_on_jpg_dirs", lambda ds, t: ["--file_type", "hdf5"], "check --video_path, --file_type"),
    ("no_video_path_flag", lambda ds, t: ["--video_path"], "expected one argument"),
    ("missing_checkpoint", lambda ds, t: ["--resume_path", t / "none.pth"], "checkpoint not found"),
    ("resume_other_arch", lambda ds, t: ["--resume_path", _checkpoint(t / "r18.pth", depth=18)],
     "holds a resnet-18 model but the flags ask for resnet-10"),
    ("resume_other_class_count", lambda ds, t: ["--resume_path", _checkpoint(t / "c3.pth", n_classes=3)],
     "fc has 3 classes but --n_classes is 2"),
    ("pretrain_other_arch", lambda ds, t: ["--pretrain_path", _checkpoint(t / "r18.pth", depth=18),
                                          "--n_pretrain_classes", "2"], "(saved from resnet-18) does not match"),
    ("pretrain_other_class_count", lambda ds, t: ["--pretrain_path", _checkpoint(t / "c3.pth", n_classes=3),
                                                 "--n_pretrain_classes", "5"],
     "fc has 3 classes but --n_pretrain_classes is 5"),
    ("corrupt_checkpoint", lambda ds, t: ["--resume_path", _write(t, "x.pth", b"\x00garbage" * 100)],
     "the file is corrupt or not a PyTorch checkpoint"),
    ("text_file_as_checkpoint", lambda ds, t: ["--resume_path", _write(t, "t.pth", b"hello world, not weights")],
     "the file is corrupt"),
    ("truncated_checkpoint", lambda ds, t: ["--resume_path", _truncated(t)], "is corrupt or truncated"),
    ("empty_checkpoint", lambda ds, t: ["--resume_path", _write(t, "e.pth", b"")], "is corrupt or truncated"),
    ("checkpoint_not_a_dict", lambda ds, t: ["--resume_path", _torch_file(t, "l.pth", [1, 2])], "expected a dict"),
    ("checkpoint_without_state_dict", lambda ds, t: ["--resume_path", _torch_file(t, "n.pth", {"epoch": 3})],
     "has no 'state_dict' entry"),
    ("sample_size_larger_than_frames", lambda ds, t: ["--sample_size", "64"],
     "--sample_size 64 is larger than the frames of video"),
    ("more_labels_than_outputs", lambda ds, t: ["--n_classes", "1"], "has 2 labels but the model has 1 outputs"),
    ("unknown_ft_begin_module", lambda ds, t: ["--pretrain_path", _checkpoint(t / "p.pth"), "--n_pretrain_classes",
                                              "2", "--ft_begin_module", "layer9"], "layer9"),
    ("result_path_is_a_file", lambda ds, t: ["--result_path", _write(t, "file", b"")], "cannot write into"),
    ("plateau_without_val", lambda ds, t: ["--lr_scheduler", "plateau", "--no_val"], "plateau needs validation"),
    ("pretrain_without_class_count", lambda ds, t: ["--pretrain_path", t / "p.pth"], "--n_pretrain_classes"),
    ("ft_begin_without_pretrain", lambda ds, t: ["--ft_begin_module", "fc"], "only applies when fine-tuning"),
    ("flow_with_jpg", lambda ds, t: ["--input_type", "flow"], "--input_type flow needs --file_type hdf5"),
    ("fp16_on_cpu", lambda ds, t: ["--precision", "fp16"], "--precision fp16 needs a CUDA device"),
    ("zero_batch_size", lambda ds, t: ["--batch_size", "0"], "--batch_size must be >= 1"),
    ("zero_epochs", lambda ds, t: ["--n_epochs", "0"], "--n_epochs must be >= 1"),
    ("bad_depth", lambda ds, t: ["--model_depth", "11"], "valid depths"),
    ("unknown_model", lambda ds, t: ["--model", "vgg"], "invalid choice: 'vgg'"),
    ("unknown_flag", lambda ds, t: ["--lerning_rate", "0.1"], "unrecognized arguments"),
    ("not_a_number", lambda ds, t: ["--learning_rate", "fast"], "invalid float value: 'fast'"),
    ("warmup_without_cosine", lambda ds, t: ["--warmup_epochs", "2"], "only used with --lr_scheduler cosine"),
    ("negative_lr", lambda ds, t: ["--learning_rate", "-1"], "--learning_rate must be >= 0"),
    ("negative_momentum", lambda ds, t: ["--momentum", "-1"], "--momentum must be >= 0"),
    ("negative_weight_decay", lambda ds, t: ["--weight_decay", "-1"], "--weight_decay must be >= 0"),
    ("nesterov_without_momentum", lambda ds, t: ["--nesterov", "--momentum", "0"], "--nesterov needs --momentum > 0"),
    ("zero_widen_factor", lambda ds, t: ["--resnet_widen_factor", "0"], "--resnet_widen_factor must be > 0"),
    ("zero_conv1_t_size", lambda ds, t: ["--conv1_t_size", "0"], "--conv1_t_size must be >= 1"),
    ("zero_conv1_t_stride", lambda ds, t: ["--conv1_t_stride", "0"], "--conv1_t_stride must be >= 1"),
    ("zero_wide_resnet_k", lambda ds, t: ["--model", "wideresnet", "--wide_resnet_k", "0"],
     "--wide_resnet_k must be >= 1"),
    ("negative_checkpoint_minutes", lambda ds, t: ["--checkpoint_minutes", "-1"], "--checkpoint_minutes must be"),
    ("no_phase_selected", lambda ds, t: ["--no_train", "--no_val"], "nothing to do"),
    ("nan_checkpoint_minutes", lambda ds, t: ["--checkpoint_minutes", "nan"],
     "--checkpoint_minutes must be a finite number (got nan)"),
    ("nan_cutmix_alpha", lambda ds, t: ["--cutmix_alpha", "nan"], "--cutmix_alpha must be a finite number"),
    ("negative_output_topk", lambda ds, t: ["--output_topk", "-1"], "--output_topk must be >= 0 (got -1)"),
    ("negative_milestone", lambda ds, t: ["--multistep_milestones", "10", "-5"],
     "--multistep_milestones must be >= 1 (got -5)"),
    ("nan_lr", lambda ds, t: ["--learning_rate", "nan"], "--learning_rate must be a finite number (got nan)"),
    ("inf_lr", lambda ds, t: ["--learning_rate", "inf"], "--learning_rate must be a finite number (got inf)"),
    ("batch_of_one_on_tiny_maps", lambda ds, t: ["--batch_size", "1"],
     "--batch_size 1 cannot train resnet-10 on 4x16x16 clips: BatchNorm layer layer3.0.bn1 would normalise"),
    ("negative_seed", lambda ds, t: ["--manual_seed", "-1"], "--manual_seed must be in [0, 4294967295]"),
]


@pytest.mark.parametrize("make_args, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(ds, tmp_path, capsys, monkeypatch, make_args, message):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    base = ["--video_path", ds.video_path, "--annotation_path", ds.annotation_path, "--result_path",
            tmp_path / "out", "--n_classes", "2", *TINY]
    extra = make_args(ds, tmp_path)
    argv = [str(a) for a in [*base, *extra]]
    try:
        status = main.main(argv)
    except SystemExit as e:  # argparse
        status = e.code
    err = capsys.readouterr().err.strip()
    assert status not in (0, None), err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err


def test_refused_resume_writes_nothing(ds, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--video_path", ds.video_path, "--annotation_path", ds.annotation_path, "--result_path", out,
            "--n_classes", "2", *TINY, "--resume_path", _checkpoint(tmp_path / "r18.pth", depth=18)]
    assert main.main([str(a) for a in argv]) == 2
    assert "holds a resnet-18 model" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # no opts.json, no logs


def test_table_is_large_enough():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


def test_frames_of_exactly_sample_size_are_fine(ds, tmp_path, capsys):
    # The frames are 24x20: a 20-pixel crop fits, so this is no error (only larger ones are).
    argv = ["--video_path", ds.video_path, "--annotation_path", ds.annotation_path, "--result_path", tmp_path,
            "--n_classes", "2", *TINY, "--sample_size", "20", "--no_val"]
    assert main.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_batch_of_one_trains_when_every_feature_map_has_several_values(ds, tmp_path, capsys):
    # 16 frames without the stem's max-pool leave layer4 a 2x1x1 map: BatchNorm sees two values per channel.
    argv = ["--video_path", ds.video_path, "--annotation_path", ds.annotation_path, "--result_path", tmp_path,
            "--n_classes", "2", *TINY, "--batch_size", "1", "--sample_duration", "16", "--no_max_pool", "--no_val"]
    assert main.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert "4 optimiser steps" in capsys.readouterr().out  # every training video, one per batch
