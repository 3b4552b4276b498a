"""MC3: the mixed-convolution ResNet of torchvision's ``mc3_18``.

The stem and the first stage are 3D (3x3x3 convs); stages 2..4 use spatial-only (1x3x3) convs and
stride only in height and width, so the clip keeps its length after the stem. Module names are
those of the 3D ResNet (conv1, bn1, layer1..4, fc, downsample.0/.1).
"""

from __future__ import annotations

from .common import RESNET_STAGES, STAGE_WIDTHS, conv1x3x3, lookup_depth, scaled_widths
from .resnet import BasicBlock, ResNet

# Basic-block depths only: torchvision defines MC3 on the basic block.
MC3_STAGES = {depth: entry for depth, entry in RESNET_STAGES.items() if entry[0] == "basic"}


class MixedConvResNet(ResNet):
    """ResNet whose stages from ``first_2d_stage`` (0-based) on are spatial-only."""

    first_2d_stage = 1

    def _stage_options(self, index: int) -> tuple[int, tuple[int, int, int], dict]:
        if index < self.first_2d_stage:
            return super()._stage_options(index)
        # conv1x3x3 strides only in height and width, so the shortcut must too.
        return 2, (1, 2, 2), {"conv": conv1x3x3}


def generate_model(model_depth: int, *, widen_factor: float = 1.0, **kwargs) -> MixedConvResNet:
    """MC3 of depth 10, 18 or 34; ``widen_factor`` scales every stage width."""
    _, layers = lookup_depth("mc3", model_depth, MC3_STAGES)
    return MixedConvResNet(BasicBlock, layers, scaled_widths(STAGE_WIDTHS, widen_factor), **kwargs)
