"""torchvision's video ResNet files (r3d_18, mc3_18, r2plus1d_18) load into our models with identical logits."""

from __future__ import annotations

import functools
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checkpoint import load_checkpoint
from datasets.spatial_transforms import get_mean_std
from errors import UserError
from models import build_model
from models import factory as model_lib
from models.torchvision_weights import convert_torchvision_state_dict, detect_torchvision_arch
from opts import parse_opts
from tests.conftest import ROOT, dataset_args, run_main

# Key names, shapes and parameter counts of torchvision 0.28's video models (compact copy of the shared file).
REFERENCE = ROOT / "tests" / "data" / "torchvision_video_keys.json.gz"
SHARED_REFERENCE = ROOT.parent / "shared" / "reference" / "torchvision_video_keys.json"
TV_MODELS = ("r3d_18", "mc3_18", "r2plus1d_18")
EXPECTED_FLAGS = {
    "r3d_18": "--model resnet --model_depth 18",
    "mc3_18": "--model mc3 --model_depth 18",
    "r2plus1d_18": "--model resnet2p1d --model_depth 18",
}
STEM_FLAGS = "--conv1_t_size 3 --conv1_t_stride 1 --no_max_pool --resnet_shortcut B"


@functools.cache
def load_reference() -> dict:
    return json.loads(gzip.decompress(REFERENCE.read_bytes()))


def random_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict with torchvision's keys, order and shapes; BN variances positive as real ones are."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in load_reference()[name]["state_dict"]:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


def our_model(arch, **overrides):
    return build_model(arch.family, arch.depth, **{**arch.model_kwargs, **overrides})


@pytest.mark.skipif(not SHARED_REFERENCE.is_file(), reason="shared reference not available")
def test_compact_reference_matches_the_shared_file():
    shared = json.loads(SHARED_REFERENCE.read_text())
    for name in TV_MODELS:
        assert load_reference()[name]["state_dict"] == shared[name]["state_dict"]
        assert load_reference()[name]["n_params"] == shared[name]["n_params"]


@pytest.mark.parametrize("name", TV_MODELS)
def test_detect_and_convert_load_strictly_with_torchvisions_parameter_count(name):
    tv_state = random_state_dict(name)
    arch = detect_torchvision_arch(tv_state)
    assert arch is not None and arch.name == name and arch.depth == 18 and arch.n_classes == 400
    assert arch.flags.startswith(f"{EXPECTED_FLAGS[name]} {STEM_FLAGS}")
    assert arch.flags.endswith("--n_pretrain_classes 400")
    converted = convert_torchvision_state_dict(tv_state, arch)
    net = our_model(arch)
    expected = net.state_dict()
    assert sorted(converted) == sorted(expected)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    net.load_state_dict(converted, strict=True)
    assert sum(p.numel() for p in net.parameters()) == load_reference()[name]["n_params"]
    # Values are moved, not changed: every torchvision tensor appears once under its new name.
    assert sorted(v.data_ptr() for v in converted.values()) == sorted(v.data_ptr() for v in tv_state.values())


def test_r2plus1d_options_shape_the_stem_and_blocks_like_torchvision():
    net = build_model("resnet2p1d", 18, conv1_t_size=3, conv1_mid_planes=45, block_mid_planes="per_block")
    assert net.conv1_s.weight.shape == (45, 3, 1, 7, 7) and net.conv1_t.weight.shape == (64, 45, 3, 1, 1)
    # First block of layer2: both factorised convs take the block's middle width, 64*128*27 // (64*9 + 3*128).
    assert net.layer2[0].conv1_s.weight.shape[0] == net.layer2[0].conv2_s.weight.shape[0] == 230
    default = build_model("resnet2p1d", 18)
    assert default.layer2[0].conv2_s.weight.shape[0] == 288  # the original's per-conv rule is unchanged
    with torch.device("meta"):  # bottleneck: torchvision sizes the middle from the block input (256 -> 64)
        assert build_model("resnet2p1d", 50, block_mid_planes="per_block").layer1[1].conv2_s.weight.shape[0] == 177
        assert build_model("resnet2p1d", 50).layer1[1].conv2_s.weight.shape[0] == 144
    with pytest.raises(ValueError, match="per_conv, per_block"):
        build_model("resnet2p1d", 18, block_mid_planes="tv")


def test_mc3_keeps_time_after_layer1():
    net = build_model("mc3", 18, conv1_t_size=3, no_max_pool=True)
    assert net.layer1[0].conv1.kernel_size == (3, 3, 3)
    assert net.layer2[0].conv1.kernel_size == (1, 3, 3) and net.layer2[0].conv1.stride == (1, 2, 2)
    assert net.layer2[0].downsample[0].stride == (1, 2, 2)
    with torch.no_grad():
        x = net.layer3(net.layer2(net.layer1(net.relu(net.bn1(net.conv1(torch.randn(1, 3, 8, 32, 32)))))))
        assert net.layer4.eval()(x).shape == (1, 512, 8, 2, 2)  # time is never strided; 32 -> 16 -> 8 -> 4 -> 2


def test_other_layouts_are_not_torchvision():
    assert detect_torchvision_arch(build_model("resnet", 10, n_classes=3).state_dict()) is None
    assert detect_torchvision_arch({"stem.0.weight": torch.zeros(1)}) is None


def _save(tmp_path: Path, name: str) -> tuple[Path, dict]:
    state = random_state_dict(name, seed=1)
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)  # a plain state_dict, as torchvision's download
    return path, state


def _opts(flags: str, *extra: str):
    return parse_opts(["--result_path", "r", "--n_classes", "5", *flags.split(), *extra])


@pytest.mark.parametrize("name", ["mc3_18", "r2plus1d_18"])
def test_load_pretrained_model_converts_with_the_documented_flags(tmp_path, name):
    path, tv_state = _save(tmp_path, name)
    arch = detect_torchvision_arch(tv_state)
    opt = _opts(arch.flags, "--pretrain_path", str(path))
    net = model_lib.load_pretrained_model(model_lib.generate_model(opt), path, opt.n_finetune_classes)
    assert net.fc.out_features == 5
    converted = convert_torchvision_state_dict(tv_state, arch)
    for key, value in net.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, converted[key]), key


def test_wrong_flags_name_the_right_ones(tmp_path):
    path, tv_state = _save(tmp_path, "r2plus1d_18")
    # The right family and stem, but without the torchvision widths.
    opt = _opts("--model resnet2p1d --model_depth 18 --conv1_t_size 3 --no_max_pool --n_pretrain_classes 400",
                "--pretrain_path", str(path))
    with pytest.raises(UserError) as err:
        model_lib.load_pretrained_model(model_lib.generate_model(opt), path, opt.n_finetune_classes)
    message = str(err.value)
    assert "\n" not in message and "torchvision's r2plus1d_18" in message
    assert detect_torchvision_arch(tv_state).flags in message
    assert "--conv1_mid_planes 45 --block_mid_planes per_block" in message


def test_torchvision_mean_dataset_is_torchvisions_normalisation():
    norm = load_reference()["r3d_18"]["normalisation"]
    assert get_mean_std(1, "torchvision") == (norm["mean"], norm["std"])
    opt = parse_opts(["--result_path", "r", "--mean_dataset", "torchvision"])
    assert opt.mean == norm["mean"] and opt.std == norm["std"]
    # With 0-255 inputs both statistics scale, so the normalised values are the same.
    mean255, std255 = get_mean_std(255, "torchvision")
    x = torch.tensor(0.3)
    assert torch.allclose((x * 255 - mean255[0]) / std255[0], (x - norm["mean"][0]) / norm["std"][0])


@pytest.fixture(scope="module")
def torchvision_outputs(tmp_path_factory):
    """Random-weight torchvision models' state_dicts, inputs and logits, made in a separate process."""
    out = tmp_path_factory.mktemp("torchvision")
    script = Path(__file__).with_name("torchvision_logits.py")
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode == 3:
        pytest.skip("torchvision's video models cannot be imported")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.mark.parametrize("name", TV_MODELS)
def test_logits_equal_torchvisions_model(torchvision_outputs, name):
    saved = torch.load(torchvision_outputs / f"{name}.pt", weights_only=True)
    tv_state = saved["state_dict"]
    assert [[k, list(v.shape)] for k, v in tv_state.items()] == load_reference()[name]["state_dict"]
    arch = detect_torchvision_arch(tv_state)
    ours = our_model(arch)
    ours.load_state_dict(convert_torchvision_state_dict(tv_state, arch), strict=True)
    with torch.no_grad():
        got = ours.eval()(saved["x"])
    torch.testing.assert_close(got, saved["logits"], atol=1e-5, rtol=1e-5)


def test_cli_finetunes_from_a_torchvision_r3d_file(tiny_dataset, tmp_path):
    path, tv_state = _save(tmp_path, "r3d_18")
    arch = detect_torchvision_arch(tv_state)
    out = tmp_path / "out"
    args = dataset_args(tiny_dataset, out, n_classes=2)
    args[args.index("--resnet_widen_factor") + 1] = "1"  # torchvision's widths
    proc = run_main([*args, *arch.flags.split(), "--pretrain_path", path,
                     "--mean_dataset", "torchvision", "--ft_begin_module", "fc", "--n_epochs", 1,
                     "--checkpoint", 1, "--no_val"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torchvision's r3d_18" in proc.stdout + proc.stderr
    saved = load_checkpoint(out / "save_1.pth")
    assert saved["arch"] == "resnet-18" and saved["model_kwargs"]["n_classes"] == 2
    assert json.loads((out / "opts.json").read_text())["mean"] == load_reference()["r3d_18"]["normalisation"]["mean"]
    converted = convert_torchvision_state_dict(tv_state, arch)
    tuned = saved["state_dict"]
    assert tuned["fc.weight"].shape == (2, 512)
    frozen = [n for n, _ in our_model(arch).named_parameters() if not n.startswith("fc.")]
    assert len(frozen) == 60
    for name in frozen:
        assert torch.equal(tuned[name], converted[name]), name
