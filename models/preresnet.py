"""Pre-activation 3D ResNet: BN and ReLU come before each conv inside the blocks.

The stem and skeleton are ResNet's (the stem is not pre-activated, as in the original). The
original could not build this family (a keyword mismatch); the key names here are the ones its
blocks intended: bn1, conv1, bn2, conv2[, bn3, conv3][, downsample].
"""

from __future__ import annotations

import torch
from torch import nn

from .common import RESNET_STAGES, STAGE_WIDTHS, ResidualBlock, conv1x1x1, conv3x3x3, lookup_depth, scaled_widths
from .resnet import ResNet


class PreActBasicBlock(ResidualBlock):
    """bn-relu-conv twice, plus the shortcut; no activation after the sum."""

    expansion = 1
    relu_after_sum = False

    def build(self, in_planes: int, planes: int, stride: int) -> None:
        self.bn1 = nn.BatchNorm3d(in_planes)
        self.conv1 = conv3x3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in-place: x is still needed for the shortcut.
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return self.add_shortcut(out, x)


class PreActBottleneck(ResidualBlock):
    """Pre-activated 1x1x1 / 3x3x3 (strided) / 1x1x1 bottleneck with expansion 4."""

    expansion = 4
    relu_after_sum = False

    def build(self, in_planes: int, planes: int, stride: int) -> None:
        self.bn1 = nn.BatchNorm3d(in_planes)
        self.conv1 = conv1x1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm3d(planes)
        self.conv3 = conv1x1x1(planes, planes * self.expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return self.add_shortcut(out, x)


def generate_model(model_depth: int, *, widen_factor: float = 1.0, **kwargs) -> ResNet:
    """Pre-activation 3D ResNet of depth 10..200."""
    kind, layers = lookup_depth("preresnet", model_depth, RESNET_STAGES)
    block = PreActBasicBlock if kind == "basic" else PreActBottleneck
    return ResNet(block, layers, scaled_widths(STAGE_WIDTHS, widen_factor), **kwargs)
