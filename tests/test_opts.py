"""Options: every original flag with its spelling/type/default, resolution, and rejected combinations."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import opts
from models import MODEL_FAMILIES
from opts import build_parser, parse_opts, save_opts, share_per_process

ROOT = Path(__file__).resolve().parents[1]
SPEC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "original-spec.md"  # beside the clone


def _spec_flags() -> list[tuple[str, str, str]]:
    """(flag, type, default) rows of the table in spec section 1.1."""
    text = SPEC.read_text()
    section = text[text.index("### 1.1"):text.index("### 1.2")]
    return re.findall(r"^\| (--[a-z0-9_]+) \| ([^|]+?) \| ([^|]+?) \|", section, flags=re.M)


ORIGINAL_FLAGS = _spec_flags() if SPEC.is_file() else []
needs_spec = pytest.mark.skipif(not ORIGINAL_FLAGS, reason="reference spec not available")


@needs_spec
def test_spec_table_has_66_flags():
    assert len(ORIGINAL_FLAGS) == 66


@needs_spec
def test_help_lists_every_original_flag():
    out = subprocess.run([sys.executable, "main.py", "-h"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    missing = [flag for flag, _, _ in ORIGINAL_FLAGS if not re.search(rf"{flag}\b", out.stdout)]
    assert not missing


def _expected_default(type_name: str, default: str):
    if type_name == "flag":
        return False
    if default == "None":
        return None
    if default.startswith("["):
        return json.loads(default)
    value = default.strip("'")
    return {"int": int, "float": float, "str": str, "Path": str}.get(type_name.split(",")[0], str)(value)


@needs_spec
def test_original_defaults_and_types():
    actions = {a.option_strings[0]: a for a in build_parser()._actions if a.option_strings}
    for flag, type_name, default in ORIGINAL_FLAGS:
        action = actions[flag]
        assert action.default == _expected_default(type_name, default), flag
        if type_name == "Path":
            assert action.type is Path, flag
        elif type_name == "flag":
            assert action.nargs == 0, flag
        elif type_name.startswith("int"):
            assert action.type is int, flag


def test_model_choices_match_registry():
    assert tuple(sorted(MODEL_FAMILIES)) == opts.MODEL_CHOICES


def test_resolution(tmp_path):
    opt = parse_opts(["--root_path", str(tmp_path), "--video_path", "v", "--annotation_path", "a.json",
                      "--result_path", "/abs/out", "--pretrain_path", "p.pth", "--n_pretrain_classes", "700",
                      "--n_classes", "101", "--model", "resnet2p1d", "--model_depth", "34", "--output_topk", "0",
                      "--value_scale", "255", "--no_cuda"])
    assert opt.video_path == tmp_path / "v" and opt.pretrain_path == tmp_path / "p.pth"
    assert opt.result_path == Path("/abs/out")  # an absolute path stays absolute
    assert (opt.n_classes, opt.n_finetune_classes, opt.output_topk) == (700, 101, 700)
    assert opt.arch == "resnet2p1d-34" and opt.begin_epoch == 1 and opt.n_input_channels == 3
    assert opt.inference_batch_size == opt.batch_size == 128
    assert opt.mean == pytest.approx([0.4345 * 255, 0.4051 * 255, 0.3775 * 255])
    assert opt.precision == "fp32"  # CPU default


def test_flow_keeps_two_channels():
    opt = parse_opts(["--result_path", "r", "--input_type", "flow", "--file_type", "hdf5", "--mean_dataset", "0.5"])
    assert opt.n_input_channels == 2 and opt.mean == [0.5, 0.5] and opt.std == [0.5, 0.5]


def test_resume_auto_is_not_joined(tmp_path):
    opt = parse_opts(["--root_path", str(tmp_path), "--result_path", "r", "--resume_path", "auto"])
    assert str(opt.resume_path) == "auto"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr_scheduler", "plateau", "--no_val"], "plateau needs validation"),
        (["--pretrain_path", "x.pth"], "--n_pretrain_classes"),
        (["--ft_begin_module", "fc"], "--pretrain_path"),
        (["--input_type", "flow"], "--file_type hdf5"),
        (["--warmup_epochs", "2"], "cosine"),
        (["--precision", "fp16", "--no_cuda"], "CUDA"),
        (["--sample_size", "0"], "--sample_size must be >= 1"),
        (["--overwrite_milestones", "--lr_scheduler", "cosine"], "multistep"),
        (["--model", "vgg"], "invalid choice"),
        (["--batchnorm_sync"], "distributed"),
    ],
)
def test_bad_combinations_are_parser_errors(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as e:
        parse_opts(["--result_path", "r", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_result_path_required(capsys):
    with pytest.raises(SystemExit):
        parse_opts([])
    assert "--result_path is required" in capsys.readouterr().err


def test_opts_json_written_with_plain_types(tmp_path):
    opt = parse_opts(["--result_path", str(tmp_path / "new" / "dir"), "--video_path", "v"])
    path = save_opts(opt, opt.result_path)
    saved = json.loads(path.read_text())
    assert saved["video_path"] == "v" and saved["arch"] == "resnet-18" and saved["mean"] == opt.mean
    keys = list(saved)
    assert keys.index("root_path") < keys.index("arch")  # CLI options first, derived ones after


def test_explicit_flags_name_only_what_the_command_line_gave():
    opt = parse_opts(["--result_path", "r", "--sample_size", "112", "--no_hflip"])
    assert opt.explicit_flags == {"result_path", "sample_size", "no_hflip"}  # 112 is the default, but given
    assert opt.sample_duration == 16 and opt.no_hflip and not opt.no_val  # defaults still filled in


def test_per_process_share_stays_out_of_opts_json(tmp_path):
    opt = parse_opts(["--result_path", str(tmp_path), "--batch_size", "10", "--n_threads", "5"])
    share_per_process(opt, world_size=4, local_world_size=2)
    assert (opt.batch_size, opt.process_batch_size, opt.n_threads, opt.process_n_threads) == (10, 2, 5, 3)
    saved = json.loads(save_opts(opt, tmp_path).read_text())
    assert saved["batch_size"] == 10 and not {"process_batch_size", "process_n_threads", "explicit_flags"} & set(saved)


NUMBER_ACTIONS = [a for a in build_parser()._actions if a.type in (int, float)]


def test_every_number_option_has_a_range():
    # A new int/float flag must get its row in opts.NUMBER_BOUNDS (and a row must name a real option).
    assert {a.dest for a in NUMBER_ACTIONS} == set(opts.NUMBER_BOUNDS)


def _refused_and_accepted(action) -> tuple[list[str], list[str]]:
    """Values just outside each end of the option's range (plus nan/inf for floats), and the included ends."""
    bounds = opts.NUMBER_BOUNDS[action.dest]
    refused = ["nan", "inf", "-inf"] if action.type is float else []
    accepted = []
    for end, open_, step in ((bounds.low, bounds.low_open, -1), (bounds.high, bounds.high_open, 1)):
        if end is None:
            continue
        refused.append(str(end if open_ else end + step))
        if not open_:
            accepted.append(str(end))
    return refused, accepted


@pytest.mark.parametrize("action", NUMBER_ACTIONS, ids=[a.dest for a in NUMBER_ACTIONS])
def test_every_number_option_refuses_values_outside_its_range(action, capsys):
    flag = action.option_strings[0]
    refused, accepted = _refused_and_accepted(action)
    n_values = action.nargs if isinstance(action.nargs, int) else 1  # --randaugment N M: both values
    for value in refused:
        with pytest.raises(SystemExit) as e:
            parse_opts(["--result_path", "r", flag, *[value] * n_values])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1, (value, err)
        assert flag in err, (value, err)
    for value in accepted:
        parse_opts(["--result_path", "r", flag, *[value] * n_values])  # no SystemExit (resolution may change it)


def test_a_number_option_without_a_range_must_still_be_finite(monkeypatch):
    monkeypatch.delitem(opts.NUMBER_BOUNDS, "learning_rate")
    assert opts.number_problems(build_parser(), parse_opts(["--result_path", "r"])) == []
    opt = parse_opts(["--result_path", "r", "--learning_rate", "-3"])  # no range: any finite value
    opt.learning_rate = float("nan")
    assert opts.number_problems(build_parser(), opt) == ["--learning_rate must be a finite number (got nan)"]
