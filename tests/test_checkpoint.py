"""checkpoint.py: the key schema, atomic writes, safe loads (no code execution), prefix clean-up, unwrapping."""

from __future__ import annotations

import errno
import os
import pickle
import re

import pytest
import torch
from torch import nn

from checkpoint import (
    FIELDS,
    FORMAT_VERSION,
    Checkpoint,
    find_resume,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    strip_wrapper_prefixes,
    unwrap_model,
)
from errors import UserError
from tests.conftest import ROOT, dataset_args, run_main


def small_state() -> dict:
    return {"conv.weight": torch.arange(6.0).reshape(2, 3), "bn.num_batches_tracked": torch.tensor(3)}


def test_save_then_load_round_trip_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "save_5.pth"
    save_checkpoint(path, {"epoch": 5, "arch": "resnet-18", "state_dict": small_state()})
    assert os.listdir(path.parent) == ["save_5.pth"]
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 5 and loaded["arch"] == "resnet-18"
    assert torch.equal(loaded["state_dict"]["conv.weight"], small_state()["conv.weight"])


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "save_1.pth"
    save_checkpoint(path, {"epoch": 1, "state_dict": small_state()})
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(path, {"epoch": 2, "state_dict": small_state(), "bad": Unpicklable()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["save_1.pth"]


def test_bare_state_dict_is_wrapped(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(small_state(), path)
    loaded = load_checkpoint(path)
    assert list(loaded) == ["state_dict"]
    assert torch.equal(loaded["state_dict"]["bn.num_batches_tracked"], torch.tensor(3))


def test_strip_wrapper_prefixes():
    state = {"module.conv1.weight": 1, "_orig_mod.fc.bias": 2, "module._orig_mod.layer1.0.bn1.weight": 3, "fc.w": 4}
    assert strip_wrapper_prefixes(state) == {"conv1.weight": 1, "fc.bias": 2, "layer1.0.bn1.weight": 3, "fc.w": 4}


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_truncated_or_corrupt_file_is_a_user_error(tmp_path, keep):
    good = tmp_path / "good.pth"
    save_checkpoint(good, {"state_dict": small_state()})
    data = good.read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    with pytest.raises(UserError, match="bad.pth"):
        load_checkpoint(bad)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


@pytest.mark.parametrize("content", [b"\x80\x02garbage" * 10, b"this is not a checkpoint at all" * 10])
def test_garbage_file_is_a_user_error(tmp_path, content):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(content)
    with pytest.raises(UserError, match="garbage.pth"):
        load_checkpoint(garbage)


def test_dict_without_state_dict_is_a_user_error(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "weights": [1, 2]}, path)
    with pytest.raises(UserError, match="no 'state_dict'"):
        load_checkpoint(path)


class RunsCode:
    """Unpickling this object would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_executing_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": small_state(), "extra": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    assert not marker.exists()
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unwrap_model_sees_through_wrappers():
    model = nn.Linear(2, 2)
    assert unwrap_model(model) is model
    assert unwrap_model(torch.compile(model)) is model
    assert unwrap_model(nn.DataParallel(model)) is model


def test_disk_full_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "save_1.pth"
    save_checkpoint(path, {"epoch": 1, "state_dict": small_state()})
    before = path.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        class Full:
            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def flush(self):
                pass

        real_save(obj, Full(), *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match="No space left on device; the checkpoints written before it are intact"):
        save_checkpoint(path, {"epoch": 2, "state_dict": small_state()})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["save_1.pth"]


def test_ctrl_c_during_a_write_is_a_plain_keyboard_interrupt(tmp_path, monkeypatch):
    real_save = torch.save

    def interrupted(obj, f, *args, **kwargs):
        class Interrupted:
            def write(self, data):
                raise KeyboardInterrupt

            def flush(self):
                pass

        real_save(obj, Interrupted(), *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        save_checkpoint(tmp_path / "save_1.pth", {"epoch": 1, "state_dict": small_state()})
    assert info.value.__context__ is None or info.value.__suppress_context__  # no chained RuntimeError shown
    assert os.listdir(tmp_path) == []


def test_checkpoints_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "save_1.pth", {"epoch": 1, "state_dict": small_state()})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_auto_resume_takes_the_checkpoint_furthest_on(tmp_path):
    save_checkpoint(tmp_path / "save_2.pth", {"epoch": 2, "state_dict": small_state()})
    save_checkpoint(tmp_path / "latest.pth", {"epoch": 2, "state_dict": small_state(), "mid_epoch": {"batch": 3}})
    found = find_resume("auto", tmp_path)
    assert found.path.name == "latest.pth" and found.progress == (2, 3)
    save_checkpoint(tmp_path / "save_3.pth", {"epoch": 3, "state_dict": small_state()})
    assert find_resume("auto", tmp_path).path.name == "save_3.pth"
    (tmp_path / "save_3.pth").write_bytes(b"torn")  # unreadable: the next best one
    assert find_resume("auto", tmp_path).path.name == "latest.pth"


# ---- the schema: every key a checkpoint holds is defined once, in checkpoint.FIELDS ----------------------------

PRODUCT_DIRS = ("datasets", "models", "engine", "predict", "util_scripts", "benchmarks")
CHECKPOINT_ONLY_KEYS = sorted(set(FIELDS) - {"epoch", "arch", "options", "class_names"})  # also log/option names


def test_a_training_run_writes_only_schema_keys_of_their_types(tiny_dataset, tmp_path):
    proc = run_main([*dataset_args(tiny_dataset, tmp_path), "--n_epochs", 1, "--checkpoint", 1, "--ema_decay", 0.5])
    assert proc.returncode == 0, proc.stderr
    saved = load_checkpoint(tmp_path / "save_1.pth")
    assert isinstance(saved, Checkpoint) and set(saved) <= set(FIELDS)
    assert all(isinstance(value, FIELDS[key].type) for key, value in saved.items())
    assert saved.format_version == FORMAT_VERSION and not saved.is_original_format
    assert saved.epoch == 1 and saved.arch == "resnet-10" and saved.optimizer_steps > 0 and saved.ema_updates > 0
    assert saved.eval_weights("ema")[1] == "ema" and saved.eval_weights("raw")[0] is saved.state_dict


def test_make_checkpoint_refuses_keys_outside_the_schema_and_wrong_types():
    made = make_checkpoint(epoch=2, state_dict=small_state(), scaler=None)
    assert set(made) == {"epoch", "state_dict", "format_version"}  # None values are left out
    with pytest.raises(ValueError, match="best_prec1"):
        make_checkpoint(state_dict=small_state(), best_prec1=0.5)
    with pytest.raises(ValueError, match="epoch"):
        make_checkpoint(state_dict=small_state(), epoch="2")


def test_older_files_read_through_the_schema(tmp_path):
    original = tmp_path / "original.pth"  # what 3D-ResNets-PyTorch's main.py wrote
    save_checkpoint(original, {"epoch": 200, "arch": "resnet-50", "state_dict": small_state(), "optimizer": {},
                               "scheduler": {}})
    loaded = load_checkpoint(original)
    assert loaded.is_original_format and loaded.format_version == 0 and loaded.epoch == 200
    assert loaded.options == {} and loaded.class_names is None and loaded.model_kwargs is None
    assert loaded.eval_weights("ema")[1] == "raw"  # no EMA in the file: its raw weights
    ours_v2 = tmp_path / "v2.pth"  # before format_version was written: the newest key says at least 2
    save_checkpoint(ours_v2, {"epoch": 1, "state_dict": small_state(), "options": {}, "rng": {},
                              "mid_epoch": {"batch": 3}})
    assert load_checkpoint(ours_v2).format_version == 2 and load_checkpoint(ours_v2).mid_epoch == {"batch": 3}
    bare = tmp_path / "bare.pth"
    torch.save(small_state(), bare)
    assert load_checkpoint(bare).format_version == 0 and load_checkpoint(bare).arch is None
    foreign = tmp_path / "foreign.pth"  # a value of another type reads as absent, as the model loader expects
    save_checkpoint(foreign, {"state_dict": small_state(), "arch": 50, "epoch": "ten"})
    assert load_checkpoint(foreign).arch is None and load_checkpoint(foreign).epoch == 0


def test_no_product_module_reads_checkpoint_keys_by_name():
    """Everything outside checkpoint.py asks the Checkpoint's properties (one reader)."""
    keys = "|".join(CHECKPOINT_ONLY_KEYS)
    pattern = re.compile(rf"""(\[|\.get\()["']({keys})["']""")
    files = [p for d in PRODUCT_DIRS for p in (ROOT / d).rglob("*.py")] + list(ROOT.glob("*.py"))
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files if p.name != "checkpoint.py"
            for m in pattern.finditer(p.read_text())]
    assert hits == []
