"""--precise_bn N: BatchNorm running statistics recomputed from N training batches with the final weights.

During training each BatchNorm keeps an exponential average of batch statistics taken while the weights were
still moving, so the statistics lag behind the weights that validation uses. Here every BatchNorm is reset and
sees N batches in training mode with ``momentum=None`` (torch's cumulative average: each batch's mean and
unbiased variance weigh the same); the result is then averaged over the ranks, so every rank holds the same
statistics. Nothing else changes: no gradient, no weight, no RNG state (the caller's draws continue as if this
had not run), and the statistics are saved with the model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from engine.distributed import all_reduce_sum
from engine.forward import autocast, prepare_batch
from utils import capture_rng_state, restore_rng_state


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn_stats(models: list[nn.Module], batches: Iterable, device: torch.device, *, normalizer=None,
                       precision: str = "fp32") -> int:
    """Set the running mean and variance of every BatchNorm of each of ``models`` (bare modules, not DDP, whose
    forward would broadcast rank 0's buffers) to the average of their batch statistics over ``batches``, then
    over the ranks. All models see the same batches. Returns the number of batches used."""
    layers = [batch_norms(model) for model in models]
    saved = [(model.training, [m.momentum for m in bns]) for model, bns in zip(models, layers)]
    rng = capture_rng_state()  # a model's forward may draw (dropout); the training stream must not move
    n = 0
    try:
        for bns in layers:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the batches instead of an exponential one
        for model in models:
            model.train()
        for clips, targets in batches:
            clips, _ = prepare_batch(clips, targets, device, normalizer)
            with autocast(device, precision):
                for model in models:
                    model(clips)
            n += 1
    finally:
        for model, bns, (training, momenta) in zip(models, layers, saved):
            model.train(training)
            for m, momentum in zip(bns, momenta):
                m.momentum = momentum
        restore_rng_state(rng)
    for bns in layers:
        _average_over_ranks(bns)
    return n


def _average_over_ranks(layers: list[_BatchNorm]) -> None:
    """Each rank's statistics replaced by their mean over the ranks (nothing in a single process)."""
    if not layers or not torch.distributed.is_initialized():
        return
    world_size = torch.distributed.get_world_size()
    stats = [s for m in layers for s in (m.running_mean, m.running_var)]
    flat = all_reduce_sum(torch.cat([s.reshape(-1).double() for s in stats])) / world_size
    offset = 0
    for s in stats:
        s.copy_(flat[offset:offset + s.numel()].view_as(s))
        offset += s.numel()
