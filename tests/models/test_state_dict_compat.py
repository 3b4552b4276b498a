"""Our models have the original's exact state_dict (keys, order, shapes, counts) and load its files."""

from __future__ import annotations

import functools
import gzip
import json

import pytest
import torch

from errors import UserError
from models import build_model
from models.factory import load_state_dict_compat
from tests.conftest import ROOT

# Keys/shapes/param counts recorded from the original code (a compact copy of the shared reference file).
REFERENCE = ROOT / "tests" / "data" / "state_dict_keys.json.gz"
SHARED_REFERENCE = ROOT.parent / "shared" / "reference" / "state_dict_keys.json"


def meta_model(family: str, depth: int, **kwargs):
    # Meta tensors carry shapes only: building even resnet-200 costs milliseconds.
    with torch.device("meta"):
        return build_model(family, depth, **kwargs)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def load_reference() -> dict:
    return json.loads(gzip.decompress(REFERENCE.read_bytes()))


@pytest.mark.parametrize(
    "name",
    [f"resnet-{d}" for d in (10, 18, 34, 50, 101, 152, 200)]
    + [f"resnet2p1d-{d}" for d in (10, 18, 34, 50, 101, 152, 200)]
    + ["wideresnet-50"],
)
def test_keys_order_shapes_and_counts_match_the_original(name):
    entry = load_reference()[name]
    family, depth = name.rsplit("-", 1)
    kwargs = {"n_classes": entry["n_classes"]}
    if "k" in entry:
        kwargs["k"] = entry["k"]
    model = meta_model(family, int(depth), **kwargs)
    ours = [(key, list(t.shape)) for key, t in model.state_dict().items()]
    theirs = [(key, list(shape)) for key, shape in entry["state_dict"]]
    assert [k for k, _ in ours] == [k for k, _ in theirs]
    assert ours == theirs
    assert n_params(model) == entry["n_params"]


def test_reference_has_fifteen_entries():
    assert len(load_reference()) == 15
    if SHARED_REFERENCE.is_file():  # the in-repo copy must not drift from the shared original
        assert load_reference() == json.loads(SHARED_REFERENCE.read_text())


# Spec 3.4 parameter counts (trainable params, default stem); None = not given for that class count.
PARAM_COUNTS = [
    ("resnet", 10, {}, 14_604_624, 14_758_524),
    ("resnet", 18, {}, 33_409_104, 33_563_004),
    ("resnet", 34, {}, 63_718_736, 63_872_636),
    ("resnet", 50, {}, 47_018_576, 47_633_276),
    ("resnet", 101, {}, 86_064_720, 86_679_420),
    ("resnet", 152, {}, 118_223_440, 118_838_140),
    ("resnet", 200, {}, 127_423_056, 128_037_756),
    ("resnet", 18, {"shortcut_type": "A"}, None, 33_389_180),
    ("resnet", 34, {"shortcut_type": "A"}, None, 63_698_812),
    ("resnet", 50, {"shortcut_type": "A"}, None, 44_856_700),
    ("resnet2p1d", 10, {}, 14_608_044, 14_761_944),
    ("resnet2p1d", 18, {}, 33_421_164, 33_575_064),
    ("resnet2p1d", 34, {}, 63_747_500, 63_901_400),
    ("resnet2p1d", 50, {}, 47_035_382, 47_650_082),
    ("resnet2p1d", 101, {}, 86_101_110, 86_715_810),
    ("resnet2p1d", 152, {}, 118_277_110, 118_891_810),
    ("resnet2p1d", 200, {}, 127_485_942, 128_100_642),
    ("wideresnet", 50, {"k": 2}, 158_338_832, 158_953_532),
    ("preresnet", 18, {}, 33_408_208, None),
    ("preresnet", 200, {}, 127_419_088, None),
    ("resnext", 101, {"cardinality": 32}, 48_431_376, None),
    ("densenet", 121, {}, 11_696_528, None),
]


@pytest.mark.parametrize(("family", "depth", "kwargs", "n400", "n700"), PARAM_COUNTS)
def test_parameter_counts_of_spec(family, depth, kwargs, n400, n700):
    for n_classes, expected in ((400, n400), (700, n700)):
        if expected is not None:
            assert n_params(meta_model(family, depth, n_classes=n_classes, **kwargs)) == expected


ENTRY_COUNTS = [
    ("resnet", {}, {10: 74, 18: 122, 34: 218, 50: 320, 101: 626, 152: 932, 200: 1220}),
    ("resnet", {"shortcut_type": "A"}, {18: 104, 34: 200, 50: 296}),
    ("resnet2p1d", {}, {10: 128, 18: 224, 34: 416, 50: 422, 101: 830, 152: 1238, 200: 1622}),
    ("densenet", {}, {121: 727}),
]


@pytest.mark.parametrize(("family", "kwargs", "counts"), ENTRY_COUNTS)
def test_state_dict_entry_counts_of_spec(family, kwargs, counts):
    for depth, expected in counts.items():
        assert len(meta_model(family, depth, **kwargs).state_dict()) == expected


def test_intended_key_names_of_the_fixed_families():
    pre = list(meta_model("preresnet", 50).state_dict())
    assert pre[6:12] == [
        "layer1.0.bn1.weight",
        "layer1.0.bn1.bias",
        "layer1.0.bn1.running_mean",
        "layer1.0.bn1.running_var",
        "layer1.0.bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
    ]
    assert "layer1.0.downsample.0.weight" in pre
    resnext = meta_model("resnext", 101).state_dict()
    assert resnext["conv1.weight"].shape == (128, 3, 7, 7, 7)
    assert resnext["layer1.0.conv2.weight"].shape == (128, 4, 3, 3, 3)
    assert resnext["fc.weight"].shape == (400, 2048)
    dense = list(meta_model("densenet", 121).state_dict())
    assert dense[0] == "features.conv1.weight"
    assert "features.denseblock1.denselayer1.norm1.weight" in dense
    assert "features.transition1.conv.weight" in dense
    assert dense[-7:-2] == [
        f"features.norm5.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]
    assert dense[-2:] == ["classifier.weight", "classifier.bias"]


@pytest.fixture(scope="module")
def r10_state():
    torch.manual_seed(0)
    return build_model("resnet", 10, n_classes=7).state_dict()


def fresh_r10(**kwargs):
    return build_model("resnet", 10, n_classes=kwargs.pop("n_classes", 7), **kwargs)


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(r10_state, prefix):
    model = fresh_r10()
    load_state_dict_compat(model, {prefix + k: v for k, v in r10_state.items()})
    for key, value in model.state_dict().items():
        assert torch.equal(value, r10_state[key])


def test_files_without_num_batches_tracked_load(r10_state):
    model = fresh_r10()
    load_state_dict_compat(model, {k: v for k, v in r10_state.items() if not k.endswith("num_batches_tracked")})
    assert torch.equal(model.fc.weight, r10_state["fc.weight"])


def test_class_count_mismatch_names_the_counts(r10_state):
    with pytest.raises(UserError, match="fc has 7 classes but --n_classes is 9"):
        load_state_dict_compat(fresh_r10(n_classes=9), r10_state)


def test_depth_mismatch_is_named(r10_state):
    model = build_model("resnet", 18, n_classes=7)
    with pytest.raises(UserError, match=r"resnet-18.*basic blocks 1-1-1-1.*basic blocks 2-2-2-2"):
        load_state_dict_compat(model, r10_state, source_arch="resnet-10")


def test_shortcut_mismatch_is_named(r10_state):
    with pytest.raises(UserError, match="shortcut B .*shortcut A"):
        load_state_dict_compat(fresh_r10(shortcut_type="A"), r10_state)


def test_family_mismatch_is_named(r10_state):
    model = build_model("resnet2p1d", 10, n_classes=7)
    with pytest.raises(UserError, match=r"3D stem.*\(2\+1\)D stem"):
        load_state_dict_compat(model, r10_state)


def test_input_channel_mismatch_is_named(r10_state):
    with pytest.raises(UserError, match="3 input channels"):
        load_state_dict_compat(fresh_r10(n_input_channels=2), r10_state)


@pytest.mark.parametrize(("family", "depth", "file_width", "model_width", "hint"), [
    ("resnet", 10, {"widen_factor": 1.0}, {"widen_factor": 0.5}, "--resnet_widen_factor 1"),
    ("resnet", 18, {"widen_factor": 0.3}, {}, "--resnet_widen_factor 0.298828125"),  # int(512 * 0.3) = 153 wide
    ("resnet2p1d", 50, {"widen_factor": 0.25}, {}, "--resnet_widen_factor 0.25"),
    ("mc3", 10, {"widen_factor": 2.0}, {}, "--resnet_widen_factor 2"),
    ("preresnet", 10, {"widen_factor": 0.125}, {}, "--resnet_widen_factor 0.125"),
    ("wideresnet", 50, {"k": 1}, {"k": 2}, "--wide_resnet_k 1"),
])
def test_width_mismatch_names_the_width_the_file_was_trained_with(family, depth, file_width, model_width, hint):
    found = meta_model(family, depth, n_classes=5, **file_width).state_dict()
    with pytest.raises(UserError, match="--resnet_widen_factor") as err:
        load_state_dict_compat(meta_model(family, depth, n_classes=5, **model_width), found)
    assert f"the file was trained with {hint})" in str(err.value)
    # the hinted value rebuilds exactly the file's shapes (stage widths are truncated products)
    value = float(hint.split()[1])
    rebuilt = meta_model(family, depth, n_classes=5, **{next(iter(file_width)): value}).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in found.items()}
