"""checkpoint.py: atomic writes, safe loads (no code execution), prefix clean-up, unwrapping."""

from __future__ import annotations

import errno
import os
import pickle

import pytest
import torch
from torch import nn

from checkpoint import find_resume, load_checkpoint, save_checkpoint, strip_wrapper_prefixes, unwrap_model
from errors import UserError


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
