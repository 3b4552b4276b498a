"""3D DenseNet-BC (121/169/201/264).

Everything but the head lives in ``features`` with the original's names (conv1, norm1,
denseblock{i}.denselayer{j}, transition{i}, norm5) and the head is ``classifier``. The original
could not build this family (it passed ``n_classes`` to a ``num_classes`` parameter).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .common import ClassifierHeadMixin, init_weights, lookup_depth, stem_conv

# depth -> dense layers in each of the four blocks
DENSENET_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
    264: (6, 12, 64, 48),
}


class DenseLayer(nn.Sequential):
    """BN-ReLU-1x1x1 conv to ``bn_size * growth_rate``, BN-ReLU-3x3x3 conv to ``growth_rate``; concat."""

    def __init__(self, in_features: int, *, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.add_module("norm1", nn.BatchNorm3d(in_features))
        self.add_module("relu1", nn.ReLU(inplace=True))
        self.add_module("conv1", nn.Conv3d(in_features, bn_size * growth_rate, kernel_size=1, bias=False))
        self.add_module("norm2", nn.BatchNorm3d(bn_size * growth_rate))
        self.add_module("relu2", nn.ReLU(inplace=True))
        self.add_module("conv2", nn.Conv3d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False))
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # norm1/relu1 must not run in place: x is also part of the concatenated output.
        out = self.conv1(torch.relu(self.norm1(x)))
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return torch.cat([x, out], 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1x1 conv that changes the channel count, then 2x2x2 average pooling."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm3d(in_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv3d(in_features, out_features, kernel_size=1, bias=False))
        self.add_module("pool", nn.AvgPool3d(kernel_size=2, stride=2))


class DenseNet(ClassifierHeadMixin, nn.Module):
    """3D DenseNet-BC.

    Args:
        block_config: dense layers in each dense block.
        n_classes: size of the classifier output.
        n_input_channels: 3 for RGB, 2 for optical flow.
        conv1_t_size: temporal kernel size of the stem conv.
        conv1_t_stride: temporal stride of the stem conv.
        no_max_pool: skip the stem max-pool.
        growth_rate: channels each dense layer adds.
        num_init_features: channels of the stem conv.
        bn_size: bottleneck width multiplier inside a dense layer.
        drop_rate: dropout after each dense layer.
    """

    classifier_name = "classifier"

    def __init__(
        self,
        block_config: tuple[int, ...],
        *,
        n_classes: int = 400,
        n_input_channels: int = 3,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        no_max_pool: bool = False,
        growth_rate: int = 32,
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        stem = [
            ("conv1", stem_conv(n_input_channels, num_init_features, conv1_t_size=conv1_t_size,
                                conv1_t_stride=conv1_t_stride)),
            ("norm1", nn.BatchNorm3d(num_init_features)),
            ("relu1", nn.ReLU(inplace=True)),
        ]
        if not no_max_pool:
            stem.append(("pool1", nn.MaxPool3d(kernel_size=3, stride=2, padding=1)))
        self.features = nn.Sequential(OrderedDict(stem))
        n_features = num_init_features
        for i, n_layers in enumerate(block_config, start=1):
            block = nn.Sequential()
            for j in range(1, n_layers + 1):
                layer = DenseLayer(
                    n_features + (j - 1) * growth_rate, growth_rate=growth_rate, bn_size=bn_size, drop_rate=drop_rate
                )
                block.add_module(f"denselayer{j}", layer)
            self.features.add_module(f"denseblock{i}", block)
            n_features += n_layers * growth_rate
            if i != len(block_config):
                self.features.add_module(f"transition{i}", Transition(n_features, n_features // 2))
                n_features //= 2
        self.features.add_module("norm5", nn.BatchNorm3d(n_features))
        self.classifier = nn.Linear(n_features, n_classes)
        init_weights(self, zero_linear_bias=True)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        # The original's --ft_begin_module names densenet stages without the 'features.' prefix.
        stages = [(name, m) for name, m in self.features.named_children() if any(True for _ in m.parameters())]
        return stages + [("classifier", self.classifier)]

    def depth_stage(self, stage_name: str) -> str:
        # Dense block k and the transition after it form stage k; norm5 closes the last block.
        if stage_name == "norm5":
            return "layer4"
        for prefix in ("denseblock", "transition"):
            if stage_name.startswith(prefix):
                return f"layer{stage_name.removeprefix(prefix)}"
        return super().depth_stage(stage_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool3d(out, 1), 1))


def generate_model(model_depth: int, **kwargs) -> DenseNet:
    """3D DenseNet-BC of depth 121, 169, 201 or 264."""
    return DenseNet(lookup_depth("densenet", model_depth, DENSENET_BLOCKS), **kwargs)
