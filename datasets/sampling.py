"""Sampler that shards a dataset over ranks and tells each item its epoch (and, repeated, which copy it is)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShardSampler(Sampler):
    """Yields (index, epoch) pairs for `VideoClipDataset`, sharded over `world_size` ranks.

    Training (`shuffle=True`): a permutation seeded by (seed, epoch), identical on every rank,
    padded by wrapping around so every rank gets the same number of items (same number of steps,
    like DistributedSampler). Validation/inference (`shuffle=False`): in order, rank r takes items
    r, r + world_size, ... WITHOUT padding, so no video is counted twice; ranks may then differ by
    one item (harmless for evaluation loops that only all-reduce at the end).

    The epoch advances by itself on each new iteration; `set_epoch(e)` sets the next one (call it
    every epoch, as with DistributedSampler, so a resumed run continues the same sequence).
    `set_epoch(e, start=k)` makes the next iteration skip this rank's first k items (a run resumed in
    the middle of an epoch gets exactly the items it had not trained on, in the same order).

    Repeated augmentation (`repeats` K > 1, training only; the RASampler of DeiT and timm): each index of the
    permutation comes K times in a row, that list is dealt out to the ranks in turn (so the K copies land on
    different ranks when there are enough of them), and each rank keeps only its first ceil(n / world_size)
    items, so an epoch has as many steps as without repeats (and sees about n / K distinct items). The copies
    are told apart: copy c > 0 is yielded as (index, epoch, c), which gives it its own random draws.
    """

    def __init__(self, n_items: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 repeats: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if repeats < 1 or (repeats > 1 and not shuffle):
            raise ValueError(f"repeats must be >= 1, and 1 without shuffle; got {repeats}")
        self.repeats = repeats
        self.n_items = n_items
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use `epoch` for the next iteration (later iterations continue from epoch + 1), from item `start` on."""
        self.epoch = epoch
        self.start = start

    def _indices(self) -> list[tuple[int, int]]:
        """This rank's (index, copy) items of the epoch."""
        if not self.shuffle:
            return [(i, 0) for i in range(self.rank, self.n_items, self.world_size)]
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = [(i, copy) for i in torch.randperm(self.n_items, generator=g).tolist() for copy in range(self.repeats)]
        total = -(-len(order) // self.world_size) * self.world_size
        order += (order * (total // max(1, len(order)) + 1))[: total - len(order)]
        return order[self.rank : total : self.world_size][: -(-self.n_items // self.world_size)]

    def __iter__(self) -> Iterator[tuple[int, int] | tuple[int, int, int]]:
        epoch = self.epoch
        items = self._indices()[self.start:]
        self.epoch, self.start = epoch + 1, 0
        return iter([(i, epoch, copy) if copy else (i, epoch) for i, copy in items])

    def __len__(self) -> int:
        if self.shuffle:
            n = -(-self.n_items // self.world_size)
        else:
            n = len(range(self.rank, self.n_items, self.world_size))
        return max(n - self.start, 0)
