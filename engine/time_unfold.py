"""3D convolutions on the RGB clip rewritten as 2D convolutions over time-stacked frames, for int8 export.

ONNX Runtime's int8 convolution (QLinearConv, run channels-last) is fast for the 3D convolutions inside a network
(4-5x its fp32 kernel for resnet-18's 64-channel 3x3x3 layers on an AVX-512 VNNI CPU) but very slow when the input
has only a few channels: resnet's 7x7x7 stem on the 3-channel clip took 130 ms of a 145 ms int8 resnet-18 call at
16x112 (its fp32 kernel: 40 ms). The same stem as a 2D convolution over frames that carry their kt temporal
neighbours as channels (3 x 7 = 21) runs in 9 ms in int8.

`TimeUnfoldedConv` computes exactly what its Conv3d did (equal up to float rounding): the clip is padded in time,
the kt frames each output frame reads are stacked as channels (tap-major), and one Conv2d with the Conv3d's weights
rearranged to match ((co, ci, kt, kh, kw) -> (co, kt * ci, kh, kw)) runs over all output frames as one batch.
`unfold_input_convs` traces a copy of the model (torch.fx) and replaces each eligible convolution, folding the
BatchNorm, the ReLU and the spatial part of the max-pool that follow it into the 2D step: left after the reshape
back to 3D, they would stop ONNX Runtime from fusing them into the int8 kernel and from running the pool
channels-last (together about 18 of 39 ms per clip for resnet-18 at batch 8, ORT's profile). The original model
is not touched.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Input channels up to which a Conv3d is unfolded: RGB (3) or flow (2) stems; 64-channel layers stay 3D.
MAX_UNFOLDED_INPUT_CHANNELS = 4


class TimeUnfoldedConv(nn.Module):
    """A Conv3d (groups 1, no dilation), optionally followed by a ReLU and a MaxPool3d, computed as a Conv2d over
    time-stacked frames; the pool is split into its spatial part, run on the 2D frames, and its temporal part."""

    def __init__(self, conv: nn.Conv3d, *, relu: bool = False, pool: nn.MaxPool3d | None = None):
        super().__init__()
        self.pool = None if pool is None else tuple(_triple(getattr(pool, name))
                                                    for name in ("kernel_size", "stride", "padding"))
        self.pool_ceil_mode = pool is not None and pool.ceil_mode
        co, ci, kt, kh, kw = conv.weight.shape
        self.kt, self.st, self.pt = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        self.relu = relu
        self.conv = nn.Conv2d(kt * ci, co, (kh, kw), stride=conv.stride[1:], padding=conv.padding[1:],
                              bias=conv.bias is not None)
        with torch.no_grad():
            # input channel k * ci + c of the 2D convolution is channel c of temporal tap k
            self.conv.weight.copy_(conv.weight.transpose(1, 2).reshape(co, kt * ci, kh, kw))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Python ints, so an export freezes every size but the batch: a shape computed in the graph would make ONNX
        # Runtime dequantise the int8 activations just to read their shape, and hide the layout from its optimiser.
        c, t, h, w = (int(size) for size in x.shape[1:])
        frames = (t + 2 * self.pt - self.kt) // self.st + 1
        # Channels-last before the taps are stacked (the last dimension), so ONNX Runtime's own channels-last layout
        # for the int8 convolution cancels the final permute instead of transposing the 7x larger stacked frames.
        padded = F.pad(x, (0, 0, 0, 0, self.pt, self.pt)).permute(0, 2, 3, 4, 1)
        last = self.st * (frames - 1) + 1
        # (n, frames, h, w, kt, c): for tap i, the frame each output frame reads through it
        stacked = torch.stack([padded[:, i:i + last:self.st] for i in range(self.kt)], dim=4)
        images = stacked.reshape(-1, h, w, self.kt * c).permute(0, 3, 1, 2)
        y = self.conv(images)
        if self.relu:
            y = F.relu(y)
        if self.pool is not None:  # max is separable: the spatial window per frame, then the temporal one
            (kt, *k), (st, *s), (pt, *p) = self.pool
            y = F.max_pool2d(y, k, s, p, ceil_mode=self.pool_ceil_mode)
        y = y.reshape(-1, frames, *(int(size) for size in y.shape[1:])).permute(0, 2, 1, 3, 4)
        if self.pool is not None:
            y = F.max_pool3d(y, (kt, 1, 1), (st, 1, 1), (pt, 0, 0), ceil_mode=self.pool_ceil_mode)
        return y


def _triple(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * 3


def _splittable(pool: nn.MaxPool3d) -> bool:
    """A max-pool `TimeUnfoldedConv` can split into its spatial and temporal parts."""
    return _triple(pool.dilation) == (1, 1, 1) and not pool.return_indices


def unfoldable(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv3d) and module.in_channels <= MAX_UNFOLDED_INPUT_CHANNELS
            and module.groups == 1 and module.dilation == (1, 1, 1) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def unfold_input_convs(model: nn.Module) -> fx.GraphModule:
    """An eval-mode copy of ``model`` (traced) in which every Conv3d on few input channels is a `TimeUnfoldedConv`,
    with the BatchNorm3d and the ReLU that directly follow it folded in."""
    traced = fx.symbolic_trace(copy.deepcopy(model).eval())
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not unfoldable(modules[node.target]):
            continue
        conv = modules[node.target]
        bn = _sole_user(node, modules, nn.BatchNorm3d)
        if bn is not None and modules[bn.target].track_running_stats:
            conv = fuse_conv_bn_eval(conv, modules[bn.target])
            _bypass(traced, bn, node)
        relu = _sole_user(node, modules, nn.ReLU)
        if relu is not None:
            _bypass(traced, relu, node)
        pool = _sole_user(node, modules, nn.MaxPool3d)
        if pool is not None and not _splittable(modules[pool.target]):
            pool = None
        if pool is not None:
            _bypass(traced, pool, node)
        parent, _, attribute = node.target.rpartition(".")
        setattr(traced.get_submodule(parent), attribute,
                TimeUnfoldedConv(conv, relu=relu is not None, pool=None if pool is None else modules[pool.target]))
    traced.recompile()
    return traced


def _sole_user(node: fx.Node, modules: dict[str, nn.Module], kind: type[nn.Module]) -> fx.Node | None:
    """The node that alone reads ``node``'s output, when it calls a module of type ``kind``."""
    if len(node.users) != 1:
        return None
    (user,) = node.users
    return user if user.op == "call_module" and isinstance(modules[user.target], kind) else None


def _bypass(traced: fx.GraphModule, node: fx.Node, replacement: fx.Node) -> None:
    node.replace_all_uses_with(replacement)
    traced.graph.erase_node(node)
