"""Every family x depth runs forward/backward on a tiny clip; options, precision, layout and compile work (fp32,
channels_last_3d and bf16 on the CPU and, marked gpu, on CUDA against the CPU's fp32)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import MODEL_DEPTHS, MODEL_FAMILIES, build_model
from models.common import DEPTH_STAGES, ZeroPadShortcut
from tests.conftest import DEVICES, smallest_family_model

ALL_MODELS = [(family, depth) for family, depths in MODEL_DEPTHS.items() for depth in depths]
SMALLEST = [(family, depths[0]) for family, depths in MODEL_DEPTHS.items()]
STEM_NAMES = {"resnet2p1d": ["conv1_s", "bn1_s", "conv1_t", "bn1_t"], "densenet": ["conv1", "norm1"]}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These tensors are tiny: intra-op threads only add barrier overhead, and on shared CI cores
    # their spin-waiting made this module 5-10x slower. Restored afterwards for other modules.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def clip(family: str, *, batch: int = 2, channels: int = 3) -> torch.Tensor:
    # Batch 2: train-mode BN needs more than one value per channel once layer4 is 1x1x1.
    # DenseNet halves time in three transitions after the stem pool, so it needs 16 frames.
    frames = 16 if family == "densenet" else 8
    return torch.randn(batch, channels, frames, 32, 32)


def small_kwargs(family: str, depth: int) -> dict:
    # Deep wide ResNets at k=2 hold 300M+ parameters; k=1 keeps the same code path but fits CI memory.
    return {"k": 1} if family == "wideresnet" and depth > 50 else {}


def test_registry_lists_every_family_and_depth():
    assert sorted(MODEL_FAMILIES) == ["densenet", "mc3", "preresnet", "resnet", "resnet2p1d", "resnext", "wideresnet"]
    assert MODEL_DEPTHS["resnet"] == (10, 18, 34, 50, 101, 152, 200)
    assert MODEL_DEPTHS["resnet2p1d"] == (10, 18, 34, 50, 101, 152, 200)
    assert set(MODEL_DEPTHS["preresnet"]) >= {18, 34, 50, 101, 152, 200}
    assert MODEL_DEPTHS["wideresnet"][0] == 50
    assert MODEL_DEPTHS["resnext"] == (50, 101, 152, 200)
    assert MODEL_DEPTHS["densenet"] == (121, 169, 201, 264)
    assert MODEL_DEPTHS["mc3"] == (10, 18, 34)


@pytest.mark.parametrize(("family", "depth"), ALL_MODELS, ids=[f"{f}-{d}" for f, d in ALL_MODELS])
def test_forward_backward_and_head_reset(family, depth):
    torch.manual_seed(0)
    model = build_model(family, depth, n_classes=5, **small_kwargs(family, depth))
    assert model.arch == f"{family}-{depth}"
    x = clip(family)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 5
    model.reset_classifier(7)
    new_head = model.get_classifier()
    assert new_head is not head and new_head.out_features == 7 and new_head.in_features == head.in_features
    with torch.no_grad():
        assert model(x).shape == (2, 7)

    names = model.stage_names()
    assert names[: len(STEM_NAMES.get(family, ["conv1", "bn1"]))] == STEM_NAMES.get(family, ["conv1", "bn1"])
    assert names[-1] == ("classifier" if family == "densenet" else "fc")


@pytest.mark.parametrize("family", ["resnet", "resnet2p1d", "preresnet", "densenet"])
def test_flow_input_has_two_channels(family):
    depth = MODEL_DEPTHS[family][0]
    model = build_model(family, depth, n_classes=4, n_input_channels=2)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv3d))
    assert first_conv.in_channels == 2
    assert model(clip(family, channels=2)).shape == (2, 4)


def test_resnet2p1d_stem_width_ignores_input_channels_like_the_original():
    # The original sizes the (2+1)D stem for 3 channels even for flow; checkpoints depend on it.
    assert build_model("resnet2p1d", 18, n_input_channels=2).conv1_s.weight.shape == (110, 2, 1, 7, 7)


def test_stem_options_change_shapes():
    model = build_model("resnet", 18, n_classes=3, conv1_t_size=3, conv1_t_stride=2, no_max_pool=True)
    assert model.conv1.weight.shape == (64, 3, 3, 7, 7)
    assert model.conv1.stride == (2, 2, 2)
    assert isinstance(model.maxpool, nn.Identity)
    assert model(clip("resnet")).shape == (2, 3)


def test_widen_factor_scales_stage_widths():
    model = build_model("resnet", 18, widen_factor=0.5)
    assert model.conv1.weight.shape[0] == 32
    assert model.fc.in_features == 256


def test_wideresnet_and_resnext_widths():
    wide = build_model("wideresnet", 50, k=2, n_classes=10)
    assert wide.conv1.weight.shape == (128, 3, 7, 7, 7) and wide.fc.in_features == 2048
    resnext = build_model("resnext", 50, cardinality=16, n_classes=10)
    assert resnext.layer1[0].conv2.groups == 16
    assert resnext.layer1[0].conv2.weight.shape == (64, 4, 3, 3, 3)  # mid = 16 * 128 // 32
    assert resnext.fc.in_features == 2048


@pytest.mark.parametrize("depth", [18, 50])
def test_shortcut_a_has_no_projection_weights(depth):
    model = build_model("resnet", depth, shortcut_type="A", n_classes=3)
    assert not any("downsample" in k for k in model.state_dict())
    assert isinstance(model.layer2[0].downsample, ZeroPadShortcut)
    assert model(clip("resnet")).shape == (2, 3)


def test_shortcut_a_passes_gradient_deliberate_fix():
    # The original concatenated detached data here, so no gradient reached the block input.
    shortcut = ZeroPadShortcut(out_planes=8, stride=2)
    x = torch.randn(1, 4, 4, 6, 6, requires_grad=True)
    y = shortcut(x)
    assert y.shape == (1, 8, 2, 3, 3)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2, ::2]) and not y[:, 4:].any()
    y.sum().backward()
    assert x.grad[:, :, ::2, ::2, ::2].eq(1).all()
    assert x.grad.sum() == y[:, :4].numel()


def test_bad_family_or_depth_lists_valid_values():
    with pytest.raises(ValueError, match="10, 18, 34, 50, 101, 152, 200"):
        build_model("resnet", 42)
    with pytest.raises(ValueError, match="121, 169, 201, 264"):
        build_model("densenet", 50)
    with pytest.raises(ValueError, match="densenet, mc3, preresnet, resnet"):
        build_model("vgg", 16)


def test_init_follows_the_original():
    model = build_model("resnet", 10)
    assert model.bn1.weight.eq(1).all() and model.bn1.bias.eq(0).all()
    # kaiming_normal_(fan_out, relu): std = sqrt(2 / (out_channels * kernel volume))
    w = model.layer3[0].conv2.weight
    expected_std = (2 / (w.shape[0] * 27)) ** 0.5
    assert abs(w.std().item() - expected_std) / expected_std < 0.05
    assert build_model("densenet", 121).classifier.bias.eq(0).all()


@pytest.fixture
def no_tf32():
    """Plain fp32 convolutions and matmuls on CUDA (TF32 keeps only 10 mantissa bits), restored afterwards."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("family", "depth"), SMALLEST, ids=[f"{f}-{d}" for f, d in SMALLEST])
def test_fp32_channels_last_and_bf16_on_the_device_match_the_cpu(family, depth, device, no_tf32):
    torch.manual_seed(0)
    model = build_model(family, depth, n_classes=6, **({"k": 1} if family == "wideresnet" else {})).eval()
    x = clip(family)
    with torch.no_grad():
        reference = model(x)  # fp32 on the CPU, default layout
        on_device = copy.deepcopy(model).to(device)
        fp32 = on_device(x.to(device)).cpu()
        fast = on_device.to(memory_format=torch.channels_last_3d)
        x_fast = x.to(device).contiguous(memory_format=torch.channels_last_3d)
        out_cl = fast(x_fast).cpu()
        with torch.autocast(device, dtype=torch.bfloat16):
            out_bf16 = fast(x_fast)
    assert fast.get_classifier().weight.is_contiguous()  # Linear weights are 2D: unaffected
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    scale = reference.abs().max().item()
    # Another device sums in another order (cuDNN's algorithms): agreement to 1e-3 of the logits' range there.
    tolerance = {"atol": 1e-4, "rtol": 1e-4} if device == "cpu" else {"atol": 1e-4 * max(scale, 1.0), "rtol": 1e-3}
    torch.testing.assert_close(fp32, reference, **tolerance)
    torch.testing.assert_close(out_cl, reference, **tolerance)
    assert out_bf16.dtype == torch.bfloat16
    assert torch.isfinite(out_bf16).all()
    # bf16 keeps about 3 significant digits: the logits agree to a few percent of their range.
    assert (out_bf16.float().cpu() - reference).abs().max().item() <= 0.05 * scale + 1e-3


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = build_model("resnet", 10, n_classes=5, widen_factor=0.25).eval()
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(MODEL_FAMILIES))
def test_every_parameter_has_exactly_one_depth_stage_in_forward_order(family):
    net = smallest_family_model(family)
    stages = net.parameters_by_depth_stage()
    assert list(stages) == list(DEPTH_STAGES) and all(stages.values())  # every stage holds parameters
    owner = {}
    for stage, params in stages.items():
        for p in params:
            assert id(p) not in owner, f"a parameter is in {owner[id(p)]} and {stage}"
            owner[id(p)] = stage
    named = list(net.named_parameters())
    assert len(owner) == len(named)
    # Registration order is forward order in every family: the stages never step back towards the input.
    order = [DEPTH_STAGES.index(owner[id(p)]) for _, p in named]
    assert order == sorted(order)
    assert {owner[id(p)] for p in net.get_classifier().parameters()} == {"head"}


def test_densenet_blocks_and_transitions_map_to_their_stage():
    net = smallest_family_model("densenet")
    assert [net.depth_stage(n) for n in ("conv1", "norm1", "denseblock2", "transition2", "denseblock4", "norm5",
                                         "classifier")] == ["stem", "stem", "layer2", "layer2", "layer4", "layer4",
                                                            "head"]
