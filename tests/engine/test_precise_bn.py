"""--precise_bn N: BatchNorm statistics become the average batch statistics of N batches (of the EMA model too),
averaged over ranks; training itself (weights, RNG stream, data order) is untouched; off by default."""

from __future__ import annotations

import copy

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from datasets import factory as dataset
from engine.distributed import DistInfo
from engine.ema import build_ema
from engine.precise_bn import recompute_bn_stats
from engine.training import Trainer, build_criterion
from models import factory as model_lib
from tests.conftest import make_opt
from utils import seed_everything

CPU = torch.device("cpu")


class ConvBN(nn.Module):
    """conv -> BatchNorm -> dropout -> linear: the BatchNorm's input is easy to compute by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, kernel_size=1)
        self.bn = nn.BatchNorm3d(4)
        self.drop = nn.Dropout(0.5)  # draws from torch's RNG in training mode
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.drop(self.bn(self.conv(x))).mean(dim=(2, 3, 4)))


def _batches(n: int, seed: int, shift: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, 3, 2, 4, 4, generator=g) * (1 + k) + shift, torch.zeros(3, dtype=torch.long))
            for k in range(n)]


def _by_hand(net: ConvBN, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the batches of each batch's channel mean and unbiased variance at the BatchNorm's input."""
    with torch.no_grad():
        outs = [net.conv(clips) for clips, _ in batches]
    means = torch.stack([o.mean(dim=(0, 2, 3, 4)) for o in outs]).mean(dim=0)
    variances = torch.stack([o.var(dim=(0, 2, 3, 4), unbiased=True) for o in outs]).mean(dim=0)
    return means, variances


def test_statistics_become_the_average_batch_statistics_and_nothing_else_changes():
    torch.manual_seed(0)
    net = ConvBN().eval()
    weights = copy.deepcopy(net.state_dict())
    batches = _batches(3, seed=1)
    rng = torch.get_rng_state()
    assert recompute_bn_stats([net], batches, CPU) == 3
    mean, var = _by_hand(net, batches)
    torch.testing.assert_close(net.bn.running_mean, mean)
    torch.testing.assert_close(net.bn.running_var, var)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew, but the caller's stream is where it was
    assert not net.training and net.bn.momentum == 0.1  # mode and momentum restored
    for key, value in net.state_dict().items():
        if "bn" not in key:
            assert torch.equal(value, weights[key]), key


def test_the_ema_model_gets_the_statistics_of_its_own_weights():
    torch.manual_seed(0)
    net = ConvBN()
    ema = build_ema(net, 0.9)
    ema.update_parameters(net)
    with torch.no_grad():
        ema.module.conv.weight.mul_(2.0)  # an average that differs from the raw weights
    batches = _batches(2, seed=2)
    recompute_bn_stats([net, ema.module], batches, CPU)
    for model in (net, ema.module):
        mean, var = _by_hand(model, batches)
        torch.testing.assert_close(model.bn.running_mean, mean)
        torch.testing.assert_close(model.bn.running_var, var)
    assert not torch.allclose(net.bn.running_var, ema.module.bn.running_var)


def _rank_stats(rank: int, store_path: str, out_path: str) -> None:
    store = torch_dist.FileStore(store_path, 2)
    torch_dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same weights on both ranks
        net = ConvBN()
        recompute_bn_stats([net], _batches(2, seed=10 + rank, shift=3.0 * rank), CPU)  # different data per rank
        torch.save({"mean": net.bn.running_mean, "var": net.bn.running_var}, f"{out_path}.{rank}")
    finally:
        torch_dist.destroy_process_group()


def test_ddp_ranks_end_with_the_mean_of_their_statistics(tmp_path):
    mp.spawn(_rank_stats, args=(str(tmp_path / "store"), str(tmp_path / "stats")), nprocs=2, join=True)
    torch.manual_seed(0)
    net = ConvBN()
    per_rank = [_by_hand(net, _batches(2, seed=10 + rank, shift=3.0 * rank)) for rank in range(2)]
    for rank in range(2):
        got = torch.load(tmp_path / f"stats.{rank}")
        torch.testing.assert_close(got["mean"], (per_rank[0][0] + per_rank[1][0]) / 2)
        torch.testing.assert_close(got["var"], (per_rank[0][1] + per_rank[1][1]) / 2)
    assert not torch.allclose(per_rank[0][0], per_rank[1][0])  # the ranks did see different data


def _trained(ds, tmp_path, **flags) -> Trainer:
    opt = make_opt(ds, result_path=str(tmp_path), model_depth=10, resnet_widen_factor=0.25, n_classes=2,
                   batch_size=2, **flags)
    seed_everything(opt.manual_seed)  # as main.py: the same initial weights in every run
    trainer = Trainer(opt, model_lib.model_for_run(opt, DistInfo(), None), DistInfo(), resume=None)
    for epoch in (1, 2):
        trainer.train_epoch(epoch, build_criterion(opt, train=True), dataset.build_input_normalizer(opt))
    return trainer


def test_trainer_recomputes_after_each_epoch_without_touching_training(tiny_dataset, tmp_path):
    plain = _trained(tiny_dataset, tmp_path / "plain")
    assert plain.bn_loader is None  # off by default
    precise = _trained(tiny_dataset, tmp_path / "precise", precise_bn=1, ema_decay=0.5)
    for (name, p), q in zip(plain.model.named_parameters(), precise.model.parameters()):
        assert torch.equal(p, q), name  # same weights: same batches, same RNG stream
    # The statistics are those of epoch 2's first batch of the separate pass, for the model and for its EMA (the
    # recomputation depends only on the weights and the batch; without it they would be training's averages).
    precise.bn_sampler.set_epoch(2)
    first = next(iter(precise.bn_loader))
    normalizer = dataset.build_input_normalizer(precise.opt)
    for model in (precise.model, precise.ema.module):
        expected = copy.deepcopy(model)
        recompute_bn_stats([expected], [first], CPU, normalizer=normalizer)
        for key, value in expected.state_dict().items():
            if "running_" in key:
                torch.testing.assert_close(model.state_dict()[key], value, msg=key)
    assert not torch.allclose(plain.model.bn1.running_var, precise.model.bn1.running_var)
