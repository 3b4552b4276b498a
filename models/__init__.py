"""Model zoo: a registry of 3D CNN families, each built from a depth table.

``build_model("resnet", 50, n_classes=700)`` is the one entry point; ``MODEL_FAMILIES`` feeds
``choices=`` in the CLI. Depends only on torch.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from . import densenet, mc3, preresnet, resnet, resnet2p1d
from .common import BOTTLENECK_DEPTHS, RESNET_STAGES

MODEL_FAMILIES: dict[str, Callable[..., nn.Module]] = {}
MODEL_DEPTHS: dict[str, tuple[int, ...]] = {}


def register_family(name: str, builder: Callable[..., nn.Module], depths: tuple[int, ...]) -> None:
    """Add a family; a second registration under the same name is a programming error."""
    if name in MODEL_FAMILIES:
        raise ValueError(f"model family {name!r} is already registered")
    MODEL_FAMILIES[name] = builder
    MODEL_DEPTHS[name] = tuple(sorted(depths))


register_family("resnet", resnet.generate_model, tuple(RESNET_STAGES))
register_family("resnet2p1d", resnet2p1d.generate_model, tuple(RESNET_STAGES))
register_family("preresnet", preresnet.generate_model, tuple(RESNET_STAGES))
register_family("wideresnet", resnet.generate_wide_model, BOTTLENECK_DEPTHS)
register_family("resnext", resnet.generate_resnext_model, BOTTLENECK_DEPTHS)
register_family("densenet", densenet.generate_model, tuple(densenet.DENSENET_BLOCKS))
register_family("mc3", mc3.generate_model, tuple(mc3.MC3_STAGES))


def build_model(family: str, depth: int, **kwargs) -> nn.Module:
    """Build ``family`` at ``depth`` with the family's keyword options.

    Raises:
        ValueError: unknown family or depth (the message lists the valid ones).
    """
    if family not in MODEL_FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid families: {', '.join(sorted(MODEL_FAMILIES))}")
    if depth not in MODEL_DEPTHS[family]:
        valid = ", ".join(map(str, MODEL_DEPTHS[family]))
        raise ValueError(f"{family} has no depth {depth}; valid depths: {valid}")
    model = MODEL_FAMILIES[family](depth, **kwargs)
    # The original's arch string; lets loaders name both sides of a checkpoint mismatch.
    model.arch = f"{family}-{depth}"
    return model


__all__ = ["MODEL_DEPTHS", "MODEL_FAMILIES", "build_model", "register_family"]
