"""3D ResNet and the families that share its skeleton by swapping blocks: wide ResNet and ResNeXt.

Module names (conv1, bn1, layer1..4, fc, downsample.0/.1) are the original's, so its released
checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .common import (
    BOTTLENECK_DEPTHS,
    RESNET_STAGES,
    STAGE_WIDTHS,
    ClassifierHeadMixin,
    ResidualBlock,
    conv1x1x1,
    conv3x3x3,
    init_weights,
    lookup_depth,
    make_shortcut,
    scaled_widths,
    stem_conv,
)


class BasicBlock(ResidualBlock):
    """Two 3x3x3 convs (or ``conv``-built ones) with an identity or projection shortcut."""

    expansion = 1

    def build(self, in_planes: int, planes: int, stride: int, *, conv: Callable[..., nn.Conv3d] = conv3x3x3) -> None:
        self.conv1 = conv(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.add_shortcut(out, x)


class Bottleneck(ResidualBlock):
    """1x1x1 reduce, 3x3x3 (strided, optionally grouped), 1x1x1 expand to ``planes * expansion``."""

    expansion = 4

    def build(
        self, in_planes: int, planes: int, stride: int, *, mid_planes: int | None = None, groups: int = 1
    ) -> None:
        mid = planes if mid_planes is None else mid_planes
        self.conv1 = conv1x1x1(in_planes, mid)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = conv3x3x3(mid, mid, stride, groups=groups)
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = conv1x1x1(mid, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.add_shortcut(out, x)


class WideBottleneck(Bottleneck):
    """Wide ResNet bottleneck: stages are k times wider, so the block only expands by 2."""

    expansion = 2


class ResNeXtBottleneck(Bottleneck):
    """ResNeXt bottleneck: grouped 3x3x3 conv with ``cardinality`` groups, expansion 2."""

    expansion = 2

    def build(self, in_planes: int, planes: int, stride: int, *, cardinality: int = 32) -> None:
        # Group width follows the original: cardinality * planes // 32 channels in the grouped conv.
        super().build(in_planes, planes, stride, mid_planes=cardinality * planes // 32, groups=cardinality)


class ResNet(ClassifierHeadMixin, nn.Module):
    """3D ResNet skeleton: stem, four stages of residual blocks, global average pool, linear head.

    Args:
        block: block class (with an ``expansion`` attribute) used in every stage.
        layers: number of blocks in each of the four stages.
        widths: stage widths before block expansion; the stem has ``widths[0]`` channels.
        n_classes: size of the classifier output.
        n_input_channels: 3 for RGB, 2 for optical flow.
        conv1_t_size: temporal kernel size of the stem conv.
        conv1_t_stride: temporal stride of the stem conv.
        no_max_pool: skip the stem max-pool.
        shortcut_type: 'A' (parameter-free zero padding) or 'B' (1x1x1 conv + BN) projections.
        block_kwargs: extra keyword arguments for every block (e.g. ``cardinality``).
        stem_kwargs: extra keyword arguments for the stem builder of a subclass.
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: tuple[int, ...],
        widths: list[int],
        *,
        n_classes: int = 400,
        n_input_channels: int = 3,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        no_max_pool: bool = False,
        shortcut_type: str = "B",
        block_kwargs: dict | None = None,
        stem_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self._build_stem(
            n_input_channels,
            widths[0],
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            **(stem_kwargs or {}),
        )
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if no_max_pool else nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        in_planes = widths[0]
        for index, (planes, n_blocks) in enumerate(zip(widths, layers, strict=True)):
            stage = self._make_stage(
                index,
                block,
                in_planes,
                planes,
                n_blocks,
                shortcut_type=shortcut_type,
                block_kwargs=block_kwargs or {},
            )
            self.add_module(f"layer{index + 1}", stage)
            in_planes = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(in_planes, n_classes)
        init_weights(self)

    def _build_stem(self, n_input_channels: int, width: int, *, conv1_t_size: int, conv1_t_stride: int) -> None:
        self.conv1 = stem_conv(n_input_channels, width, conv1_t_size=conv1_t_size, conv1_t_stride=conv1_t_stride)
        self.bn1 = nn.BatchNorm3d(width)

    def _forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def _make_stage(
        self,
        index: int,
        block: type[nn.Module],
        in_planes: int,
        planes: int,
        n_blocks: int,
        *,
        shortcut_type: str,
        block_kwargs: dict,
    ) -> nn.Sequential:
        """Stage ``index`` (0-based) of ``n_blocks`` blocks; the first one strides and projects the shortcut."""
        stride, shortcut_stride, stage_kwargs = self._stage_options(index)
        kwargs = {**block_kwargs, **stage_kwargs}
        out_planes = planes * block.expansion
        downsample = make_shortcut(shortcut_type, in_planes, out_planes, shortcut_stride)
        blocks = [block(in_planes, planes, stride=stride, downsample=downsample, **kwargs)]
        blocks += [block(out_planes, planes, **kwargs) for _ in range(1, n_blocks)]
        return nn.Sequential(*blocks)

    def _stage_options(self, index: int) -> tuple[int, tuple[int, int, int], dict]:
        """Block stride, the (t, h, w) stride it amounts to (for the shortcut) and extra block kwargs.

        The first stage keeps the resolution, the others halve T, H and W.
        """
        stride = 1 if index == 0 else 2
        return stride, (stride, stride, stride), {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self._forward_stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def generate_model(
    model_depth: int,
    *,
    widen_factor: float = 1.0,
    **kwargs,
) -> ResNet:
    """Plain 3D ResNet of depth 10..200; ``widen_factor`` scales every stage width."""
    kind, layers = lookup_depth("resnet", model_depth, RESNET_STAGES)
    block = BasicBlock if kind == "basic" else Bottleneck
    return ResNet(block, layers, scaled_widths(STAGE_WIDTHS, widen_factor), **kwargs)


def generate_wide_model(model_depth: int, *, k: int = 2, **kwargs) -> ResNet:
    """Wide 3D ResNet: bottleneck stages ``k`` times wider than ResNet's, block expansion 2."""
    _, layers = lookup_depth("wideresnet", model_depth, {d: RESNET_STAGES[d] for d in BOTTLENECK_DEPTHS})
    return ResNet(WideBottleneck, layers, scaled_widths(STAGE_WIDTHS, k), **kwargs)


def generate_resnext_model(model_depth: int, *, cardinality: int = 32, **kwargs) -> ResNet:
    """3D ResNeXt with ``cardinality`` groups in every 3x3x3 conv; stage widths 128..1024."""
    _, layers = lookup_depth("resnext", model_depth, {d: RESNET_STAGES[d] for d in BOTTLENECK_DEPTHS})
    return ResNet(
        ResNeXtBottleneck,
        layers,
        [128, 256, 512, 1024],
        block_kwargs={"cardinality": cardinality},
        **kwargs,
    )
