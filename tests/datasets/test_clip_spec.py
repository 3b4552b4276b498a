"""datasets.clip_spec: one frozen clip spec, built from the options, saved in every checkpoint and read back
(also from checkpoints made before it existed); main.py --no_train evaluates with the checkpoint's."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from datasets.clip_spec import CLIP_OPTIONS, DEFAULT_OPTIONS, ClipSpec
from datasets.spatial_transforms import MEAN_STD
from errors import UserError
from opts import build_parser, opts_to_plain, parse_opts
from tests.conftest import dataset_args, run_main

SEGMENT = ["--temporal_sampling", "segment", "--mean_dataset", "0.5", "--no_std_norm"]
CLASSES = ["class_0", "class_1"]


def _opts(*flags) -> object:
    return parse_opts(["--result_path", "r", "--no_cuda", *map(str, flags)])


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """One tiny epoch of segment-sampled clips with 0.5 mean and unit std: a spec far from the defaults."""
    out = tmp_path_factory.mktemp("run")
    args = [*dataset_args(tiny_dataset, out), "--n_epochs", 1, "--checkpoint", 1, "--no_val", *SEGMENT]
    proc = run_main(args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, [str(a) for a in args]


def test_defaults_are_main_pys():
    defaults = vars(build_parser().parse_args([]))
    assert DEFAULT_OPTIONS == {name: defaults[name] for name in CLIP_OPTIONS}


def test_main_py_checkpoint_holds_the_spec_of_its_options(trained):
    out, args = trained
    payload = load_checkpoint(out / "save_1.pth")  # weights_only
    spec = Checkpoint(payload).clip
    assert spec == ClipSpec.from_options(parse_opts(args), CLASSES)
    assert (spec.sample_size, spec.sample_duration, spec.temporal_sampling, spec.n_segments) == (32, 8, "segment", 8)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (1.0, 1.0, 1.0) and spec.class_names == tuple(CLASSES)
    assert payload["clip_spec"] == spec.to_dict()


def test_round_trip_through_save_and_load(tmp_path):
    spec = ClipSpec.from_options(_opts("--input_type", "flow", "--file_type", "hdf5", "--multi_label",
                                       "--temporal_sampling", "segment", "--value_scale", 255, "--no_mean_norm"),
                                 ["a", "b", "c"])
    assert spec.input_shape == (2, 16, 112, 112) and spec.mean == (0.0, 0.0) and spec.multi_label
    save_checkpoint(tmp_path / "c.pth", {"state_dict": {"w": torch.zeros(1)}, "clip_spec": spec.to_dict()})
    loaded = load_checkpoint(tmp_path / "c.pth")
    assert Checkpoint(loaded).clip == spec
    assert json.loads(json.dumps(loaded["clip_spec"])) == loaded["clip_spec"]  # plain types only
    assert ClipSpec.from_dict(spec.to_dict()) == spec


def test_checkpoint_with_options_only_gets_the_spec_they_imply(tmp_path):
    opt = _opts("--sample_size", 64, "--sample_duration", 4, "--multi_label", "--temporal_sampling", "segment",
                "--mean_dataset", "activitynet", "--no_mean_norm", "--inference_stride", 4)
    save_checkpoint(tmp_path / "old.pth", {"state_dict": {"w": torch.zeros(1)}, "options": opts_to_plain(opt),
                                           "class_names": ["x", "y"]})
    spec = load_checkpoint(tmp_path / "old.pth").clip
    assert spec == ClipSpec.from_options(opt, ["x", "y"])
    assert spec.mean == (0.0, 0.0, 0.0) and spec.std == MEAN_STD["activitynet"][1]  # not opts.json's mean
    # an option the older version did not store takes main.py's default
    partial = Checkpoint({"state_dict": {}, "options": {"sample_size": 64, "dataset": "kinetics"}}).clip
    assert partial == ClipSpec.from_options(_opts("--sample_size", 64))


def test_original_format_checkpoint_gets_the_defaults():
    spec = Checkpoint({"state_dict": {}, "epoch": 200, "arch": "resnet-50", "scheduler": {}}).clip
    assert spec == ClipSpec.from_options(_opts())
    assert (spec.sample_size, spec.sample_duration, spec.temporal_sampling, spec.multi_label) == (112, 16, "dense",
                                                                                                  False)
    assert spec.mean == MEAN_STD["kinetics"][0] and spec.class_names == ()


def test_frozen():
    spec = ClipSpec.from_options(_opts())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.sample_size = 224
    assert hash(spec) == hash(ClipSpec.from_options(_opts()))


@pytest.mark.parametrize("bad", [{"sample_size": "big"}, {"temporal_sampling": "sparse"}, {"mean": [0.5]},
                                 {"class_names": "abc"}, {"multi_label": 1}])
def test_malformed_spec_is_a_user_error(bad):
    stored = {**ClipSpec.from_options(_opts()).to_dict(), **bad}
    with pytest.raises(UserError, match="clip spec"):
        _ = Checkpoint({"state_dict": {}, "clip_spec": stored}).clip


def test_apply_to_takes_the_spec_except_typed_flags(caplog):
    stored = dataclasses.replace(ClipSpec.from_options(_opts("--sample_duration", 8, "--multi_label")),
                                 mean=(0.1, 0.2, 0.3))  # numbers a checkpoint keeps even if the table changed
    opt = _opts("--sample_size", 64)
    with caplog.at_level(logging.INFO, logger="datasets.clip_spec"):
        spec = stored.apply_to(opt, source="checkpoint c.pth")
    assert (opt.sample_size, opt.sample_duration, opt.multi_label) == (64, 8, True)
    assert spec == dataclasses.replace(stored, sample_size=64)  # the stored mean is kept
    assert "clip spec of checkpoint c.pth" in caplog.text and "overrides it: sample_size=64" in caplog.text
    # a typed normalisation flag resolves mean and std again; the input fields follow the input type
    opt = _opts("--mean_dataset", "0.5")
    spec = dataclasses.replace(stored, input_type="flow", mean=(0.1, 0.2), std=(0.3, 0.4)).apply_to(opt, source="c")
    assert spec.mean == spec.std == (0.5, 0.5) and opt.n_input_channels == 2 and opt.mean == [0.5, 0.5]


def test_no_train_evaluates_with_the_checkpoints_spec(trained, tiny_dataset, tmp_path):
    out, _ = trained
    proc = run_main([*dataset_args(tiny_dataset, tmp_path), "--no_train", "--no_val", "--inference",
                     "--inference_no_average", "--resume_path", out / "save_1.pth"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"clip spec of checkpoint {out / 'save_1.pth'}: 32x32 px, 8 segments" in proc.stdout
    results = json.loads((tmp_path / "val.json").read_text())["results"]
    # one clip of the 8 segment centres spanning the 12 frames (dense would be windows [1, 9] and [9, 13])
    assert all([e["segment"] for e in entries] == [[1, 13]] for entries in results.values())
    saved = json.loads((tmp_path / "opts.json").read_text())
    assert (saved["temporal_sampling"], saved["mean_dataset"], saved["no_std_norm"]) == ("segment", "0.5", True)
