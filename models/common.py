"""Pieces shared by every model family: depth tables, weight init, shortcuts and the head API."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ResNet-style depth table shared by resnet, resnet2p1d, preresnet, wideresnet and resnext:
# depth -> (block kind, blocks per stage). Each family maps the kind to its own block class.
RESNET_STAGES: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
BOTTLENECK_DEPTHS = tuple(d for d, (kind, _) in RESNET_STAGES.items() if kind == "bottleneck")

STAGE_WIDTHS = (64, 128, 256, 512)


def lookup_depth(family: str, depth: int, table: dict) -> object:
    """The table entry for ``depth``; ValueError naming the valid depths otherwise."""
    if depth not in table:
        raise ValueError(f"{family} has no depth {depth}; valid depths: {', '.join(map(str, sorted(table)))}")
    return table[depth]


def scaled_widths(widths: tuple[int, ...], factor: float) -> list[int]:
    """Stage widths multiplied by ``factor`` and truncated, as the original computes them."""
    return [int(w * factor) for w in widths]


def conv1x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    """Spatial-only 3x3 conv: stride ``stride`` in height and width, none in time."""
    return nn.Conv3d(in_planes, out_planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)


def mid_planes_2p1d(in_planes: int, out_planes: int, kernel: tuple[int, int, int]) -> int:
    """Width between the spatial and temporal convs of a (2+1)D factorisation.

    Chosen so the factorised pair has about as many weights as the full 3D conv it replaces;
    the floor division reproduces the original's widths (and thus its state_dict shapes) exactly.
    """
    kt, kh, kw = kernel
    return (in_planes * out_planes * kt * kh * kw) // (in_planes * kh * kw + kt * out_planes)


class ResidualBlock(nn.Module):
    """What every residual block shares: the constructor signature, the ReLU and the shortcut sum.

    Subclasses build their own convs and norms in :meth:`build` (which receives the block's extra
    keyword options) and end ``forward`` with :meth:`add_shortcut`. ``relu`` and ``downsample`` are
    registered after the convs, so the state_dict keeps the original's key order.
    """

    expansion = 1
    # Post-activation blocks apply the ReLU after the sum; pre-activation blocks do not.
    relu_after_sum = True

    def __init__(
        self,
        in_planes: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        **options,
    ) -> None:
        super().__init__()
        self.build(in_planes, planes, stride, **options)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def build(self, in_planes: int, planes: int, stride: int) -> None:
        raise NotImplementedError

    def add_shortcut(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out`` plus the block input (projected by ``downsample`` when the shapes differ)."""
        out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out) if self.relu_after_sum else out


class ZeroPadShortcut(nn.Module):
    """Parameter-free projection shortcut (type 'A'): subsample by ``stride``, zero-pad new channels.

    Unlike the original (which concatenated ``.data`` and so cut the gradient), gradients flow
    through the identity part; the module holds no parameters or buffers, so no state_dict keys.
    """

    def __init__(self, out_planes: int, stride: int | tuple[int, int, int]) -> None:
        super().__init__()
        self.out_planes = out_planes
        self.stride = _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != (1, 1, 1):
            st, sh, sw = self.stride
            x = x[:, :, ::st, ::sh, ::sw]
        # F.pad pads the last dims first: (W, W, H, H, T, T, C_before, C_after).
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.out_planes - x.shape[1]))


def _triple(stride: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (stride, stride, stride) if isinstance(stride, int) else tuple(stride)


def make_shortcut(
    shortcut_type: str, in_planes: int, out_planes: int, stride: int | tuple[int, int, int]
) -> nn.Module | None:
    """The projection for the first block of a stage, or None when the identity fits.

    ``stride`` is one int for all three dims or a (t, h, w) tuple (mixed-convolution stages keep time).
    """
    if _triple(stride) == (1, 1, 1) and in_planes == out_planes:
        return None
    if shortcut_type == "A":
        return ZeroPadShortcut(out_planes, stride)
    if shortcut_type == "B":
        return nn.Sequential(conv1x1x1(in_planes, out_planes, stride), nn.BatchNorm3d(out_planes))
    raise ValueError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}")


def init_weights(model: nn.Module, *, zero_linear_bias: bool = False) -> None:
    """Original init: He-normal (fan_out) convs, BN weight 1 / bias 0; Linear keeps PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif zero_linear_bias and isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, 0)


# The depth stages of layer-wise LR decay (--layer_decay), from the input to the output: every family maps its
# top-level modules onto them (:meth:`ClassifierHeadMixin.depth_stage`).
DEPTH_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")


class ClassifierHeadMixin:
    """One head and stage API for every family, so fine-tuning never special-cases a model.

    Subclasses set ``classifier_name`` (the attribute holding the final nn.Linear) and may
    override :meth:`named_stages` and :meth:`depth_stage`.
    """

    classifier_name = "fc"

    def get_classifier(self) -> nn.Linear:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, n_classes: int) -> None:
        """Replace the head by a freshly initialised Linear (PyTorch default init) on the same device/dtype."""
        old = self.get_classifier()
        new = nn.Linear(old.in_features, n_classes, device=old.weight.device, dtype=old.weight.dtype)
        setattr(self, self.classifier_name, new)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        """Top-level modules that own parameters, in registration (= state_dict) order."""
        return [(name, m) for name, m in self.named_children() if _has_params(m)]

    def stage_names(self) -> list[str]:
        return [name for name, _ in self.named_stages()]

    def depth_stage(self, stage_name: str) -> str:
        """The entry of DEPTH_STAGES that the stage ``stage_name`` (one of :meth:`named_stages`) belongs to.

        ResNet-like families name their stages of blocks layer1..layer4; everything before them is the stem.
        """
        if stage_name == self.classifier_name:
            return "head"
        return stage_name if stage_name in DEPTH_STAGES else "stem"

    def parameters_by_depth_stage(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter under its depth stage, the stages in DEPTH_STAGES order (some may be empty)."""
        stages = {stage: [] for stage in DEPTH_STAGES}
        for name, module in self.named_stages():
            stages[self.depth_stage(name)].extend(module.parameters())
        return stages


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def stem_conv(n_input_channels: int, width: int, *, conv1_t_size: int, conv1_t_stride: int) -> nn.Conv3d:
    """The 3D stem convolution shared by the ResNet families and DenseNet: (t, 7, 7), spatial stride 2."""
    return nn.Conv3d(
        n_input_channels,
        width,
        kernel_size=(conv1_t_size, 7, 7),
        stride=(conv1_t_stride, 2, 2),
        padding=(conv1_t_size // 2, 3, 3),
        bias=False,
    )
