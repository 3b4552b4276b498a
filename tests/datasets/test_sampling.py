"""datasets/sampling.py with --repeated_aug K: each index K times in a row, dealt out over the ranks, the epoch as
long as without repeats, mid-epoch starts exact; the K copies get different augmentations; K = 1 is unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from datasets import factory as D
from datasets.sampling import EpochShardSampler
from opts import parse_opts
from tests.conftest import make_opt

CPU = SimpleNamespace(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), is_main=True)


def _epoch(n: int, *, rank: int = 0, world_size: int = 1, repeats: int = 1, epoch: int = 3, start: int = 0):
    sampler = EpochShardSampler(n, shuffle=True, seed=5, rank=rank, world_size=world_size, repeats=repeats)
    sampler.set_epoch(epoch, start=start)
    length = len(sampler)  # before iterating: an iteration moves the sampler on to the next epoch
    return length, list(sampler)


def _copy(key: tuple) -> int:
    return key[2] if len(key) == 3 else 0


def test_off_by_default_and_one_repeat_is_todays_order():
    assert parse_opts(["--result_path", "r"]).repeated_aug == 1
    for world_size in (1, 2):
        for rank in range(world_size):
            length, keys = _epoch(11, rank=rank, world_size=world_size)
            g = torch.Generator().manual_seed(5 * 100_003 + 3)  # the permutation EpochShardSampler always drew
            order = torch.randperm(11, generator=g).tolist()
            order += order[: -(-11 // world_size) * world_size - 11]
            assert keys == [(i, 3) for i in order[rank::world_size]] and length == len(keys)


@pytest.mark.parametrize(("n", "repeats"), [(12, 3), (11, 2), (7, 3)])
def test_two_ranks_share_the_repeated_indices_and_keep_the_epoch_length(n, repeats):
    ranks = [_epoch(n, rank=r, world_size=2, repeats=repeats)[1] for r in range(2)]
    assert [len(keys) for keys in ranks] == [-(-n // 2)] * 2  # as many steps as without repeats
    assert [len(EpochShardSampler(n, shuffle=True, rank=r, world_size=2, repeats=repeats)) for r in range(2)] == [
        -(-n // 2)] * 2
    dealt = [key for pair in zip(*ranks) for key in pair]  # rank 0, rank 1, rank 0, ...: the list before dealing
    assert {k[1] for k in dealt} == {3}
    indices = [k[0] for k in dealt]
    runs = [indices[i:i + repeats] for i in range(0, len(indices), repeats)]
    assert all(len(set(run)) == 1 for run in runs)  # each index K times in a row (the last run may be cut)
    assert all([_copy(k) for k in dealt[i:i + repeats]] == list(range(len(runs[i // repeats])))
               for i in range(0, len(dealt), repeats))  # copies numbered 0..K-1, so each has its own draws
    assert len({run[0] for run in runs}) == len(runs)  # distinct indices: a shuffle of the dataset
    if repeats == 2:  # as many copies as ranks: the copies of an index go to different ranks
        assert all(len({k[0] for k in keys}) == len(keys) for keys in ranks)


def test_a_mid_epoch_start_skips_exactly_the_items_done():
    _, every = _epoch(11, rank=1, world_size=2, repeats=3)
    length, tail = _epoch(11, rank=1, world_size=2, repeats=3, start=4)
    assert tail == every[4:] and length == len(every) - 4


def test_repeats_need_shuffle():
    with pytest.raises(ValueError, match="repeats"):
        EpochShardSampler(5, shuffle=False, repeats=2)


def test_the_copies_of_a_video_get_different_augmentations(tiny_dataset):
    opt = make_opt(tiny_dataset, train_crop="random", no_hflip=False, batch_size=2, repeated_aug=2)
    loader, sampler = D.build_train_loader(opt, CPU)
    sampler.set_epoch(1)
    keys = list(sampler)
    assert keys[0][0] == keys[1][0] and len(keys[0]) == 2 and keys[1][2] == 1  # one video, copies 0 and 1
    first, second = loader.dataset[keys[0]][0], loader.dataset[keys[1]][0]
    assert not torch.equal(first, second)
    assert torch.equal(first, loader.dataset[keys[0]][0])  # each copy is reproducible
    batches = list(loader)  # the loader takes the copies' keys
    assert sum(clips.shape[0] for clips, _ in batches) == len(keys)
