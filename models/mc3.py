"""MC3: the mixed-convolution ResNet of torchvision's ``mc3_18``.

The stem and the first stage are 3D (3x3x3 convs); stages 2..4 use spatial-only (1x3x3) convs and
stride only in height and width, so the clip keeps its length after the stem. Module names are
those of the 3D ResNet (conv1, bn1, layer1..4, fc, downsample.0/.1).
"""

from __future__ import annotations

from torch import nn

from .common import RESNET_STAGES, STAGE_WIDTHS, conv1x3x3, lookup_depth, make_shortcut, scaled_widths
from .resnet import BasicBlock, ResNet

# Basic-block depths only: torchvision defines MC3 on the basic block.
MC3_STAGES = {depth: entry for depth, entry in RESNET_STAGES.items() if entry[0] == "basic"}


class MixedConvResNet(ResNet):
    """ResNet whose stages from ``first_2d_stage`` (0-based) on are spatial-only."""

    first_2d_stage = 1

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
        if index < self.first_2d_stage:
            return super()._make_stage(
                index, block, in_planes, planes, n_blocks, shortcut_type=shortcut_type, block_kwargs=block_kwargs
            )
        out_planes = planes * block.expansion
        downsample = make_shortcut(shortcut_type, in_planes, out_planes, (1, 2, 2))
        kwargs = {**block_kwargs, "conv": conv1x3x3}
        blocks = [block(in_planes, planes, stride=2, downsample=downsample, **kwargs)]
        blocks += [block(out_planes, planes, **kwargs) for _ in range(1, n_blocks)]
        return nn.Sequential(*blocks)


def generate_model(model_depth: int, *, widen_factor: float = 1.0, **kwargs) -> MixedConvResNet:
    """MC3 of depth 10, 18 or 34; ``widen_factor`` scales every stage width."""
    _, layers = lookup_depth("mc3", model_depth, MC3_STAGES)
    return MixedConvResNet(BasicBlock, layers, scaled_widths(STAGE_WIDTHS, widen_factor), **kwargs)
