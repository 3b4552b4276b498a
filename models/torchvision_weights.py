"""Pretrained files of torchvision's video ResNets (r3d_18, mc3_18, r2plus1d_18) as our models' state_dicts.

torchvision saves plain state_dicts whose modules are nn.Sequential (``stem.0``, ``layer1.0.conv1.0``,
...). Each of its video models is one of our families with fixed options; the layers match one to
one, so converting is renaming keys (shapes and values are untouched) and the logits are identical.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .common import RESNET_STAGES


@dataclass(frozen=True)
class TorchvisionArch:
    """A torchvision video ResNet layout and the family/options that rebuild it here."""

    name: str  # torchvision's builder, e.g. "r3d_18"
    family: str  # our --model
    depth: int  # our --model_depth
    n_classes: int
    extra_flags: tuple[str, ...] = ()  # family options beyond the shared stem flags

    @property
    def flags(self) -> str:
        """The main.py flags that build the matching model (for fine-tuning from this file)."""
        return " ".join(
            [
                f"--model {self.family} --model_depth {self.depth}",
                "--conv1_t_size 3 --conv1_t_stride 1 --no_max_pool --resnet_shortcut B",
                *self.extra_flags,
                f"--n_pretrain_classes {self.n_classes}",
            ]
        )

    @property
    def model_kwargs(self) -> dict:
        """Keyword arguments for ``models.build_model(family, depth, **kwargs)``."""
        kwargs = {"n_classes": self.n_classes, "conv1_t_size": 3, "no_max_pool": True, "shortcut_type": "B"}
        if self.family == "resnet2p1d":
            kwargs.update(conv1_mid_planes=R2PLUS1D_STEM_MID_PLANES, block_mid_planes="per_block")
        return kwargs


# torchvision's R(2+1)D stem has a fixed 45-channel middle, not the parameter-matching width.
R2PLUS1D_STEM_MID_PLANES = 45
_R2PLUS1D_FLAGS = (f"--conv1_mid_planes {R2PLUS1D_STEM_MID_PLANES}", "--block_mid_planes per_block")
_TV_PREFIX = {"resnet": "r3d", "mc3": "mc3", "resnet2p1d": "r2plus1d"}


def detect_torchvision_arch(state_dict: Mapping[str, torch.Tensor]) -> TorchvisionArch | None:
    """The torchvision video ResNet whose state_dict this is, or None for any other layout.

    Recognised by torchvision's ``stem.0.weight``: a factorised stem (``stem.3.weight``) means
    R(2+1)D, spatial-only (1x3x3) convs in layer2 mean MC3, full 3D convs mean R3D. The depth comes
    from the number of blocks per stage, the class count from ``fc.weight``.
    """
    if not all(isinstance(state_dict.get(k), torch.Tensor) for k in ("stem.0.weight", "fc.weight")):
        return None
    kind = "bottleneck" if any(re.match(r"layer\d+\.\d+\.conv3\.", k) for k in state_dict) else "basic"
    if "stem.3.weight" in state_dict:
        family = "resnet2p1d"
    else:
        # conv2 is the 3x3 conv of both block kinds; MC3 makes it (1, 3, 3) from layer2 on.
        layer2_conv = state_dict.get("layer2.0.conv2.0.weight")
        spatial_only = isinstance(layer2_conv, torch.Tensor) and layer2_conv.ndim == 5 and layer2_conv.shape[2] == 1
        family = "mc3" if spatial_only else "resnet"
    counts = tuple(
        len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{stage}.")}) for stage in range(1, 5)
    )
    depth = next((d for d, entry in RESNET_STAGES.items() if entry == (kind, counts)), None)
    if depth is None or (family == "mc3" and kind != "basic"):
        return None
    return TorchvisionArch(
        name=f"{_TV_PREFIX[family]}_{depth}",
        family=family,
        depth=depth,
        n_classes=int(state_dict["fc.weight"].shape[0]),
        extra_flags=_R2PLUS1D_FLAGS if family == "resnet2p1d" else (),
    )


def convert_torchvision_state_dict(
    state_dict: Mapping[str, torch.Tensor], arch: TorchvisionArch
) -> dict[str, torch.Tensor]:
    """``state_dict`` renamed to our module names for ``arch`` (tensors are shared, not copied)."""
    factorised = {m.group(1) for k in state_dict if (m := re.match(r"(layer\d+\.\d+\.conv\d)\.0\.0\.", k))}
    return {_rename(key, arch, factorised): value for key, value in state_dict.items()}


# torchvision's Sequential index -> our module name, per stem layout.
_STEM_3D = {"0": "conv1", "1": "bn1"}
_STEM_2P1D = {"0": "conv1_s", "1": "bn1_s", "3": "conv1_t", "4": "bn1_t"}


def _rename(key: str, arch: TorchvisionArch, factorised: set[str]) -> str:
    if key.startswith("stem."):
        _, index, rest = key.split(".", 2)
        stem = _STEM_2P1D if arch.family == "resnet2p1d" else _STEM_3D
        return f"{stem[index]}.{rest}"
    match = re.fullmatch(r"(layer\d+\.\d+\.)conv(\d)\.(.+)", key)
    if match is None:  # fc.*, layerN.M.downsample.* keep their names
        return key
    prefix, n, rest = match.groups()
    if f"{prefix}conv{n}" in factorised:
        # conv{n} = Sequential(Conv2Plus1D(conv_s, bn_s, relu, conv_t), bn_t, relu)
        renames = {"0.0.": f"conv{n}_s.", "0.1.": f"bn{n}_s.", "0.3.": f"conv{n}_t.", "1.": f"bn{n}_t."}
    else:
        # conv{n} = Sequential(conv, bn[, relu])
        renames = {"0.": f"conv{n}.", "1.": f"bn{n}."}
    for old, new in renames.items():
        if rest.startswith(old):
            return prefix + new + rest[len(old):]
    return key
