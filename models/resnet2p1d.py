"""R(2+1)D: the 3D ResNet with every full 3D conv factorised into a spatial then a temporal conv.

Names follow the original (conv1_s/bn1_s/conv1_t/bn1_t, ...) so its r2p1d checkpoints load strictly.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import (
    RESNET_STAGES,
    STAGE_WIDTHS,
    ResidualBlock,
    conv1x1x1,
    conv1x3x3,
    lookup_depth,
    mid_planes_2p1d,
    scaled_widths,
)
from .resnet import ResNet

# How the middle width of a factorised (2+1)D conv inside a block is chosen (see generate_model).
MID_PLANES_RULES = ("per_conv", "per_block")


def conv3x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False)


class BasicBlock2p1d(ResidualBlock):
    """Basic block whose two 3x3x3 convs are each a (1,3,3) spatial + (3,1,1) temporal pair."""

    expansion = 1

    def build(self, in_planes: int, planes: int, stride: int, *, block_mid_planes: str = "per_conv") -> None:
        mid1 = mid_planes_2p1d(in_planes, planes, (3, 3, 3))
        self.conv1_s = conv1x3x3(in_planes, mid1, stride)
        self.bn1_s = nn.BatchNorm3d(mid1)
        self.conv1_t = conv3x1x1(mid1, planes, stride)
        self.bn1_t = nn.BatchNorm3d(planes)
        mid2 = mid1 if _per_block(block_mid_planes) else mid_planes_2p1d(planes, planes, (3, 3, 3))
        self.conv2_s = conv1x3x3(planes, mid2)
        self.bn2_s = nn.BatchNorm3d(mid2)
        self.conv2_t = conv3x1x1(mid2, planes)
        self.bn2_t = nn.BatchNorm3d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1_s(self.conv1_s(x)))
        out = self.relu(self.bn1_t(self.conv1_t(out)))
        out = self.relu(self.bn2_s(self.conv2_s(out)))
        out = self.bn2_t(self.conv2_t(out))
        return self.add_shortcut(out, x)


class Bottleneck2p1d(ResidualBlock):
    """Bottleneck whose 3x3x3 conv is factorised; the 1x1x1 convs stay as they are."""

    expansion = 4

    def build(self, in_planes: int, planes: int, stride: int, *, block_mid_planes: str = "per_conv") -> None:
        self.conv1 = conv1x1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm3d(planes)
        mid = mid_planes_2p1d(in_planes if _per_block(block_mid_planes) else planes, planes, (3, 3, 3))
        self.conv2_s = conv1x3x3(planes, mid, stride)
        self.bn2_s = nn.BatchNorm3d(mid)
        self.conv2_t = conv3x1x1(mid, planes, stride)
        self.bn2_t = nn.BatchNorm3d(planes)
        self.conv3 = conv1x1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2_s(self.conv2_s(out)))
        out = self.relu(self.bn2_t(self.conv2_t(out)))
        out = self.bn3(self.conv3(out))
        return self.add_shortcut(out, x)


class ResNet2p1d(ResNet):
    """ResNet skeleton with a factorised stem: (1,7,7) spatial conv, then (t,1,1) temporal conv."""

    def _build_stem(
        self,
        n_input_channels: int,
        width: int,
        *,
        conv1_t_size: int,
        conv1_t_stride: int,
        conv1_mid_planes: int = 0,
    ) -> None:
        # The original sizes the stem for 3 input channels even for flow input; keep it for shapes.
        mid = conv1_mid_planes or mid_planes_2p1d(3, width, (conv1_t_size, 7, 7))
        self.conv1_s = nn.Conv3d(n_input_channels, mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)
        self.bn1_s = nn.BatchNorm3d(mid)
        self.conv1_t = nn.Conv3d(
            mid,
            width,
            (conv1_t_size, 1, 1),
            stride=(conv1_t_stride, 1, 1),
            padding=(conv1_t_size // 2, 0, 0),
            bias=False,
        )
        self.bn1_t = nn.BatchNorm3d(width)

    def _forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1_s(self.conv1_s(x)))
        return self.relu(self.bn1_t(self.conv1_t(x)))


def _per_block(rule: str) -> bool:
    if rule not in MID_PLANES_RULES:
        raise ValueError(f"block_mid_planes must be one of {', '.join(MID_PLANES_RULES)}, got {rule!r}")
    return rule == "per_block"


def generate_model(
    model_depth: int,
    *,
    widen_factor: float = 1.0,
    conv1_mid_planes: int = 0,
    block_mid_planes: str = "per_conv",
    **kwargs,
) -> ResNet2p1d:
    """R(2+1)D of depth 10..200.

    Args:
        widen_factor: scales every stage width.
        conv1_mid_planes: channels between the stem's spatial and temporal convs; 0 derives them with
            the parameter-matching rule (the original). torchvision's r2plus1d_18 uses 45.
        block_mid_planes: 'per_conv' (the original) sizes each factorised conv's middle from its own
            input/output widths; 'per_block' (torchvision) sizes it from the block's input and output
            widths, which differs in the first block of a stage.
    """
    kind, layers = lookup_depth("resnet2p1d", model_depth, RESNET_STAGES)
    block = BasicBlock2p1d if kind == "basic" else Bottleneck2p1d
    _per_block(block_mid_planes)  # reject a bad rule before building
    return ResNet2p1d(
        block,
        layers,
        scaled_widths(STAGE_WIDTHS, widen_factor),
        block_kwargs={"block_mid_planes": block_mid_planes},
        stem_kwargs={"conv1_mid_planes": conv1_mid_planes},
        **kwargs,
    )
