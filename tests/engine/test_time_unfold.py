"""Input convolutions unfolded in time for int8 export: the same function as the 3D model, in a 2D layout."""

import pytest
import torch
from torch import nn

from engine.time_unfold import TimeUnfoldedConv, unfold_input_convs
from models import build_model


def _randomise_batchnorms(model: nn.Module) -> nn.Module:
    """Running statistics away from (0, 1), so a BatchNorm folded wrongly would show."""
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(module.weight.shape, generator=generator))
    return model.eval()


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(actual, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize(("kernel", "stride", "padding", "bias"), [
    ((7, 7, 7), (1, 2, 2), (3, 3, 3), False),  # resnet's stem
    ((3, 7, 7), (2, 2, 2), (1, 3, 3), True),   # --conv1_t_size 3 --conv1_t_stride 2
    ((1, 7, 7), (1, 2, 2), (0, 3, 3), False),  # R(2+1)D's spatial stem
    ((5, 3, 3), (3, 1, 1), (0, 1, 1), True),   # a stride that does not divide the clip
])
@pytest.mark.parametrize("pool", [None, (3, 2, 1, False), (2, 2, 0, True)])
def test_an_unfolded_conv_relu_and_pool_compute_what_the_3d_ones_do(kernel, stride, padding, bias, pool):
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 8, kernel, stride=stride, padding=padding, bias=bias)
    layers = [conv, nn.ReLU()]
    if pool is not None:
        k, s, p, ceil = pool
        layers.append(nn.MaxPool3d(k, s, p, ceil_mode=ceil))
    reference = nn.Sequential(*layers).eval()
    unfolded = TimeUnfoldedConv(conv, relu=True, pool=None if pool is None else layers[-1])
    x = torch.randn(2, 3, 11, 20, 18)
    with torch.no_grad():
        expected = reference(x)
        actual = unfolded(x)
    assert actual.shape == expected.shape
    assert _close(actual, expected)


def test_a_conv_alone_is_unfolded_without_relu_or_pool():
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 4, (3, 3, 3), padding=1)
    x = torch.randn(1, 2, 6, 9, 9)  # negative outputs stay: no ReLU was taken in
    with torch.no_grad():
        assert _close(TimeUnfoldedConv(conv)(x), conv(x))


@pytest.mark.parametrize(("family", "depth", "kwargs"), [
    ("resnet", 10, {}),
    ("resnet", 10, {"no_max_pool": True}),
    ("resnet", 10, {"conv1_t_size": 3, "conv1_t_stride": 2}),
    ("resnet2p1d", 10, {}),
    ("preresnet", 18, {}),
    ("wideresnet", 50, {"k": 1}),
    ("resnext", 50, {"cardinality": 8}),
    ("densenet", 121, {}),
    ("mc3", 10, {}),
])
def test_every_family_unfolds_its_stem_and_keeps_its_outputs(family, depth, kwargs):
    torch.manual_seed(0)
    model = _randomise_batchnorms(build_model(family, depth, n_classes=5, **kwargs))
    unfolded = unfold_input_convs(model)
    stems = [m for m in unfolded.modules() if isinstance(m, TimeUnfoldedConv)]
    assert len(stems) == 1  # only the convolution on the 3-channel clip
    assert all(m.in_channels > 4 for m in unfolded.modules() if isinstance(m, nn.Conv3d))
    assert any(isinstance(m, nn.Conv3d) and m.in_channels == 3 for m in model.modules())  # the original is kept
    x = torch.randn(1, 3, 16, 64, 64)  # densenet pools down to 1x2x2
    with torch.no_grad():
        assert _close(unfolded(x), model(x))


def test_resnet_stem_takes_in_its_batchnorm_relu_and_max_pool():
    model = _randomise_batchnorms(build_model("resnet", 10, n_classes=5))
    unfolded = unfold_input_convs(model)
    (stem,) = [m for m in unfolded.modules() if isinstance(m, TimeUnfoldedConv)]
    assert stem.relu and stem.pool == ((3, 3, 3), (2, 2, 2), (1, 1, 1))
    assert stem.conv.bias is not None  # the BatchNorm, folded in
    called = {node.target for node in unfolded.graph.nodes if node.op == "call_module"}
    assert not {"bn1", "relu", "maxpool"} & called  # no longer called after the stem
    assert "relu" in {name.split(".")[-1] for name in called}  # the blocks' ReLUs are untouched


def test_grouped_and_dilated_convs_stay_3d():
    for conv in (nn.Conv3d(4, 8, 3, groups=2), nn.Conv3d(3, 8, 3, dilation=2)):
        assert not any(isinstance(m, TimeUnfoldedConv) for m in unfold_input_convs(nn.Sequential(conv)).modules())


def test_a_pool_that_returns_indices_or_dilates_stays_outside_the_stem():
    for pool in (nn.MaxPool3d(3, 2, 1, return_indices=True), nn.MaxPool3d(3, 2, 2, dilation=2)):
        model = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), pool).eval()
        (stem,) = [m for m in unfold_input_convs(model).modules() if isinstance(m, TimeUnfoldedConv)]
        assert stem.relu and stem.pool is None
