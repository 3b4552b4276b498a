"""Epoch functions, meters, logs, schedulers and the clip-to-video aggregator, on tiny synthetic data."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from engine.scoring import VideoScoreAggregator
from engine.training import build_scheduler, cosine_with_warmup, step_scheduler, train_one_epoch
from engine.validation import evaluate
from errors import UserError
from tests.conftest import TinyNet
from utils import AverageMeter, Logger, accuracy, capture_rng_state, restore_rng_state


def _batches(n_batches=4, batch=2, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (batch, 2, 4, 4, 3), dtype=torch.uint8, generator=g),
             torch.randint(0, n_classes, (batch,), generator=g)) for _ in range(n_batches)]


def _to_float(clips):  # stands in for ClipNormalizer: uint8 NTHWC -> float NCTHW
    return clips.permute(0, 4, 1, 2, 3).float() / 255


def test_train_one_epoch_returns_metrics_and_batch_rows():
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    rows = []
    result = train_one_epoch(net, _batches(), nn.CrossEntropyLoss(), opt, torch.device("cpu"), epoch=1,
                             normalizer=_to_float, log_interval=3, show_progress=False, on_batches=rows.extend)
    assert [r["batch"] for r in rows] == [1, 2, 3, 4]
    assert result["clips"] == 8 and result["lr"] == 0.5
    assert result["loss"] == pytest.approx(sum(r["loss"] for r in rows) / 4, rel=1e-6)
    assert result["acc"] == pytest.approx(sum(r["acc"] for r in rows) / 4)
    assert 0 <= result["data_share"] <= 1 and result["clips_per_s"] > 0


def test_float_clips_pass_through_without_normalizer():
    net = TinyNet()
    loader = [(torch.rand(2, 3, 2, 4, 4), torch.tensor([0, 1]))]
    result = evaluate(net, loader, nn.CrossEntropyLoss(), torch.device("cpu"))
    expected = nn.CrossEntropyLoss()(net(loader[0][0]), loader[0][1]).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-6) and result["clips"] == 2


def test_evaluate_counts_every_clip_and_leaves_weights():
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = _batches(n_batches=3, batch=5)
    result = evaluate(net, batches, nn.CrossEntropyLoss(), torch.device("cpu"), normalizer=_to_float)
    assert result["clips"] == 15
    correct = sum((net(_to_float(c)).argmax(1) == t).sum().item() for c, t in batches)
    assert result["acc"] == pytest.approx(correct / 15)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_non_finite_loss_stops_training():
    net = TinyNet()
    with torch.no_grad():
        net.fc.weight.fill_(float("nan"))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(UserError, match="diverged"):
        train_one_epoch(net, _batches(), nn.CrossEntropyLoss(), opt, torch.device("cpu"), epoch=3,
                        normalizer=_to_float, show_progress=False)


def test_bf16_autocast_on_cpu_trains():
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    result = train_one_epoch(net, _batches(), nn.CrossEntropyLoss(), opt, torch.device("cpu"), epoch=1,
                             normalizer=_to_float, precision="bf16", show_progress=False)
    assert math.isfinite(result["loss"])


def test_accuracy_and_meter():
    outputs = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    targets = torch.tensor([1, 1, 0])
    assert accuracy(outputs, targets, topk=(1, 2)) == pytest.approx([1 / 3, 2 / 3])
    meter = AverageMeter()
    meter.update(1.0, n=2)
    meter.update(4.0, n=1)
    assert meter.avg == pytest.approx(2.0) and meter.val == 4.0


def test_logger_writes_crlf_tsv_and_resumes_without_duplicates(tmp_path):
    path = tmp_path / "train.log"
    log = Logger(path, ["epoch", "loss"])
    for e in (1, 2, 3):
        log.log({"epoch": e, "loss": e / 10})
    log.close()
    assert path.read_bytes().startswith(b"epoch\tloss\r\n1\t0.1\r\n")
    log = Logger(path, ["epoch", "loss"], resume_after_epoch=2)  # epoch 3 was written after the checkpoint
    log.log({"epoch": 3, "loss": 0.33})
    log.close()
    assert path.read_text().splitlines() == ["epoch\tloss", "1\t0.1", "2\t0.2", "3\t0.33"]


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def _lrs(opt_ns, n_epochs, val_losses=None):
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=opt_ns.learning_rate)
    scheduler = build_scheduler(optimizer, opt_ns)
    lrs = []
    for e in range(n_epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_scheduler(scheduler, None if val_losses is None else val_losses[e])
    return lrs


def test_schedulers():
    ns = SimpleNamespace(learning_rate=1.0, lr_scheduler="multistep", multistep_milestones=[2, 3],
                         plateau_patience=0, n_epochs=5, warmup_epochs=0)
    assert _lrs(ns, 5) == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    ns.lr_scheduler = "plateau"
    assert _lrs(ns, 3, val_losses=[1.0, 2.0, 3.0]) == pytest.approx([1, 1, 0.1])
    ns.lr_scheduler, ns.warmup_epochs = "cosine", 2
    lrs = _lrs(ns, 5)
    assert lrs[:2] == pytest.approx([1 / 3, 2 / 3]) and lrs[2] == pytest.approx(1.0)
    assert lrs[2] > lrs[3] > lrs[4] > 0


def test_cosine_reaches_zero_at_the_end():
    f = cosine_with_warmup(n_epochs=10, warmup_epochs=0)
    assert f(0) == 1.0 and f(10) == pytest.approx(0.0) and f(5) == pytest.approx(0.5)


def test_video_score_aggregator_averages_and_orders():
    agg = VideoScoreAggregator(["x", "y", "z"])
    agg.update(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]), ["v2", "v1"], [[1, 9], [1, 9]])
    agg.update(torch.tensor([[0.0, 0.9, 0.1]]), ["v2"], [[9, 17]])
    res = agg.finalize(2)["results"]
    assert list(res) == ["v2", "v1"]
    assert [d["label"] for d in res["v2"]] == ["y", "x"] and res["v2"][0]["score"] == pytest.approx(0.6)
    assert res["v1"][0] == {"label": "y", "score": pytest.approx(0.7)}
    per_clip = agg.finalize(1, average=False)["results"]["v2"]
    assert per_clip == [{"segment": [1, 9], "result": [{"label": "x", "score": pytest.approx(0.6)}]},
                        {"segment": [9, 17], "result": [{"label": "y", "score": pytest.approx(0.9)}]}]
    agg.reorder(["v1", "v2"])
    assert list(agg.finalize(1)["results"]) == ["v1", "v2"]
    assert agg.accuracy({"v1": 1, "v2": 0}) == (0.5, 2)
    assert agg.accuracy({"v1": -1}) is None
