"""The fine-tuning recipe: AdamW groups, label smoothing, video mixup/cutmix, random erasing, gradient clipping, EMA
and gradient accumulation each change exactly what they should; EMA weights reach validation, --predict and export."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from checkpoint import load_checkpoint, save_checkpoint
from engine.ema import build_ema
from engine.mixing import ClipEraser, ClipMixer, eraser_from_opts
from engine.training import build_optimizer, build_scheduler, step_scheduler, train_one_epoch
from models import factory as model_lib
from models.common import DEPTH_STAGES
from opts import parse_opts
from tests.conftest import DEVICES, TinyNet, dataset_args, log_rows, run_main
from util_scripts import export_model

CPU = torch.device("cpu")


def _batches(sizes, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 3, 2, 4, 4, generator=g), torch.randint(0, n_classes, (b,), generator=g)) for b in sizes]


def _train(net, batches, optimizer, **kwargs):
    criterion = kwargs.pop("criterion", nn.CrossEntropyLoss())
    return train_one_epoch(net, batches, criterion, optimizer, CPU, epoch=1, show_progress=False, **kwargs)


# --- mixup / cutmix -------------------------------------------------------------------------------------------


def _mix(n=8, **kwargs):
    torch.manual_seed(3)
    clips = torch.randn(n, 3, 4, 10, 12)
    labels = torch.arange(n)  # one class per clip: a soft target names the clip's partner and its lambda
    mixed, soft = ClipMixer(n, **kwargs)(clips, labels)
    return clips, mixed, soft


def _partner_and_lambda(row: torch.Tensor, i: int) -> tuple[int, float]:
    others = [j for j in torch.nonzero(row).flatten().tolist() if j != i]
    return (others[0] if others else i), row[i].item() if others else 1.0


def test_mixup_one_lambda_per_clip_same_over_all_frames():
    clips, mixed, soft = _mix(mixup_alpha=0.4)
    assert torch.allclose(soft.sum(dim=1), torch.ones(8))
    lams = []
    for i in range(8):
        j, lam = _partner_and_lambda(soft[i], i)
        lams.append(lam)
        assert (soft[i] > 0).sum() <= 2  # one pair, one lambda
        torch.testing.assert_close(mixed[i], lam * clips[i] + (1 - lam) * clips[j])  # every frame and channel
    assert len({round(v, 6) for v in lams}) > 1  # a lambda per clip, not one per batch


def test_cutmix_box_spans_all_frames_and_sets_lambda_to_the_area_kept():
    clips, mixed, soft = _mix(cutmix_alpha=1.0)
    assert torch.allclose(soft.sum(dim=1), torch.ones(8))
    n_boxes = 0
    for i in range(8):
        j, lam = _partner_and_lambda(soft[i], i)
        from_partner = mixed[i] == clips[j]
        from_self = mixed[i] == clips[i]
        assert bool((from_partner | from_self).all())  # every pixel comes from one of the two clips
        if j == i:
            continue
        box = from_partner[0, 0]
        assert bool((from_partner == box).all())  # the same box in every channel and frame
        rows, cols = torch.nonzero(box, as_tuple=True)
        if len(rows):
            n_boxes += 1
            assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a rectangle
        assert 1 - box.float().mean().item() == pytest.approx(lam, abs=1e-6)
    assert n_boxes > 0


def test_both_alphas_switch_and_mix_prob_zero_leaves_clips():
    clips, mixed, soft = _mix(n=16, mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.5)
    kinds = set()
    for i in range(16):
        j, lam = _partner_and_lambda(soft[i], i)
        if j != i and 0 < lam < 1:
            kinds.add("cutmix" if bool(((mixed[i] == clips[i]) | (mixed[i] == clips[j])).all()) else "mixup")
    assert kinds == {"mixup", "cutmix"}
    clips, mixed, soft = _mix(mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=0.0)
    assert torch.equal(mixed, clips) and torch.equal(soft, torch.eye(8))


def test_mixing_is_reproducible_from_the_torch_seed():
    assert all(torch.equal(a, b) for a, b in zip(_mix(mixup_alpha=0.4, cutmix_alpha=1.0),
                                                 _mix(mixup_alpha=0.4, cutmix_alpha=1.0)))


def test_training_with_mixing_scores_the_dominant_label():
    net = TinyNet()
    mixer = ClipMixer(3, mixup_alpha=0.4)
    rows = []
    torch.manual_seed(0)
    _train(net, _batches([4, 4]), torch.optim.SGD(net.parameters(), lr=0.0), mixer=mixer, on_batches=rows.extend)
    torch.manual_seed(0)
    expected = []
    for clips, labels in _batches([4, 4]):
        mixed, soft = mixer(clips, labels)
        outputs = net(mixed)
        expected.append((F.cross_entropy(outputs, soft).item(),
                         (outputs.argmax(1) == soft.argmax(1)).float().mean().item()))
    assert [(r["loss"], r["acc"]) for r in rows] == [pytest.approx(e, rel=1e-5) for e in expected]


# --- random erasing --------------------------------------------------------------------------------------------


def _erased(prob: float, n: int = 16, seed: int = 2, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    clips = torch.full((n, 3, 4, 20, 24), 7.0, device=device)  # no noise value is exactly 7: the erased pixels
    if device == "cuda":  # the layout the normaliser gives on CUDA
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    torch.manual_seed(seed)
    erased = ClipEraser(prob)(clips)
    return clips.cpu(), erased.cpu()


@pytest.mark.parametrize("device", DEVICES)
def test_random_erasing_is_one_box_per_clip_the_same_in_every_frame_filled_with_noise(device):
    clips, erased = _erased(1.0, device=device)
    changed = erased != clips
    for i in range(clips.shape[0]):
        box = changed[i, 0, 0]
        rows, cols = box.any(dim=1).nonzero().flatten(), box.any(dim=0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert rows.tolist() == list(range(rows[0], rows[0] + height)) and box.sum() == height * width  # a box
        assert (changed[i] == box).all()  # the same pixels in every channel and frame: a space-time tube
        assert 0.02 * 0.7 <= height * width / (20 * 24) <= 1 / 3 * 1.3 and 0.3 / 1.5 <= height / width <= 3.3 * 1.5
    noise = erased[changed]
    assert abs(noise.mean().item()) < 0.1 and abs(noise.std().item() - 1) < 0.1  # per-pixel standard normal
    assert not torch.equal(erased[0, :, 0][changed[0, :, 0]], erased[0, :, 1][changed[0, :, 1]])  # new each frame


@pytest.mark.parametrize("device", DEVICES)
def test_random_erasing_probability_and_seed(device):
    clips, untouched = _erased(0.0, device=device)
    assert torch.equal(untouched, clips)
    _, half = _erased(0.5, n=64, device=device)
    n_erased = int((half != clips[:1]).flatten(1).any(dim=1).sum())
    assert 16 < n_erased < 48
    assert torch.equal(half, _erased(0.5, n=64, device=device)[1])  # same torch seed: same boxes, same noise


def test_random_erasing_is_off_by_default_and_runs_in_training_steps_before_mixing():
    assert eraser_from_opts(parse_opts(["--result_path", "x"])) is None
    assert eraser_from_opts(parse_opts(["--result_path", "x", "--random_erasing", "0.25"])) == ClipEraser(0.25)
    calls = []

    def eraser(clips):
        calls.append("erase")
        return clips

    def mixer(clips, labels):
        calls.append("mix")
        return clips, F.one_hot(labels, 3).float()

    net = TinyNet()
    _train(net, _batches([4, 4]), torch.optim.SGD(net.parameters(), lr=0.1), eraser=eraser, mixer=mixer)
    assert calls == ["erase", "mix"] * 2


# --- label smoothing, clipping ---------------------------------------------------------------------------------


def test_label_smoothing_changes_the_loss_by_the_formula():
    torch.manual_seed(0)
    net, batches, eps = TinyNet(), _batches([5]), 0.2
    rows = []
    _train(net, batches, torch.optim.SGD(net.parameters(), lr=0.0), on_batches=rows.extend,
           criterion=nn.CrossEntropyLoss(label_smoothing=eps))
    log_p = F.log_softmax(net(batches[0][0]), dim=1)
    nll = -log_p.gather(1, batches[0][1].view(-1, 1)).mean()
    assert rows[0]["loss"] == pytest.approx(((1 - eps) * nll - eps * log_p.mean(dim=1).mean()).item(), rel=1e-6)
    assert rows[0]["loss"] != pytest.approx(nll.item(), rel=1e-3)


def test_clip_grad_norm_bounds_the_step():
    torch.manual_seed(0)
    net = TinyNet()
    clips, labels = _batches([4])[0]
    batches = [(clips * 100, labels)]  # a large gradient
    before = [p.detach().clone() for p in net.parameters()]
    _train(net, batches, torch.optim.SGD(net.parameters(), lr=1.0), clip_grad_norm=0.5)
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, net.parameters())])
    assert step.norm().item() == pytest.approx(0.5, rel=1e-5)  # lr 1, no momentum: the step is the gradient


# --- EMA ---------------------------------------------------------------------------------------------------------


def test_ema_follows_the_formula_once_per_optimiser_step():
    torch.manual_seed(0)
    net, decay = TinyNet(), 0.8
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    ema = build_ema(net, decay)
    seen = []
    optimizer.register_step_post_hook(lambda *_: seen.append(copy.deepcopy(net.state_dict())))
    result = _train(net, _batches([2] * 6), optimizer, ema=ema, accumulate=2)
    assert result["steps"] == len(seen) == 3
    expected = seen[0]
    for weights in seen[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in weights}
    for key, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    assert int(ema.n_averaged) == 3


def test_ema_includes_batchnorm_buffers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3))
    ema = build_ema(net, 0.5)
    _train(net, _batches([4, 4]), torch.optim.SGD(net.parameters(), lr=0.1), ema=ema)
    assert not torch.equal(ema.module[1].running_mean, torch.zeros(4))  # averaged, not left at the initial value
    assert not torch.equal(ema.module[1].running_mean, net[1].running_mean)


# --- accumulation ---------------------------------------------------------------------------------------------


def _final_weights(batches, accumulate):
    torch.manual_seed(0)
    net = TinyNet()
    result = _train(net, batches, torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9), accumulate=accumulate)
    return net.state_dict(), result


@pytest.mark.parametrize("n_small", [4, 3])  # 3: the last group of the epoch has one batch
def test_accumulating_n_batches_equals_one_step_over_n_times_the_batch(n_small):
    small = _batches([2] * n_small)
    big = [(torch.cat([c for c, _ in small[k:k + 2]]), torch.cat([t for _, t in small[k:k + 2]]))
           for k in range(0, n_small, 2)]
    accumulated, result = _final_weights(small, accumulate=2)
    stepped, _ = _final_weights(big, accumulate=1)
    assert result["steps"] == len(big)
    for key, value in stepped.items():
        torch.testing.assert_close(accumulated[key], value, rtol=1e-5, atol=1e-6)


def test_ddp_all_reduces_only_on_the_step_batches(tmp_path):
    store = torch_dist.FileStore(str(tmp_path / "store"), 1)
    torch_dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ddp = nn.parallel.DistributedDataParallel(TinyNet())
        calls = []

        def counting_hook(state, bucket):
            calls.append(bucket.index())
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, counting_hook)
        result = _train(ddp, _batches([2] * 5), torch.optim.SGD(ddp.parameters(), lr=0.1), accumulate=2)
    finally:
        torch_dist.destroy_process_group()
    assert result["steps"] == 3 and len(calls) == 3  # batches 2, 4 and 5 (the last, partial group)


# --- AdamW parameter groups -------------------------------------------------------------------------------------


def _optimizer_for(*flags):
    opt = parse_opts(["--result_path", "unused", "--model_depth", "10", "--resnet_widen_factor", "0.25",
                      "--n_classes", "3", *flags])
    net = model_lib.generate_model(opt)
    return net, build_optimizer(net, opt)


def _names(net, params):
    ids = {id(p) for p in params}
    return {name for name, p in net.named_parameters() if id(p) in ids}


def test_adamw_leaves_batchnorm_and_bias_out_of_weight_decay():
    net, optimizer = _optimizer_for("--optimizer", "adamw", "--weight_decay", "0.05")
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, exempt = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    assert _names(net, exempt["params"]) == {n for n in dict(net.named_parameters()) if "bn" in n or
                                             n.endswith(".bias") or "downsample.1" in n}
    assert _names(net, decayed["params"]) == {n for n, p in net.named_parameters() if p.dim() > 1}


def test_decay_flags_per_optimizer():
    _, sgd = _optimizer_for()  # today's SGD: one group, every parameter decayed
    assert isinstance(sgd, torch.optim.SGD) and len(sgd.param_groups) == 1
    assert sgd.param_groups[0]["weight_decay"] == 1e-3 and sgd.param_groups[0]["momentum"] == 0.9
    _, sgd = _optimizer_for("--no_decay_bn_bias")
    assert [g["weight_decay"] for g in sgd.param_groups] == [1e-3, 0.0]
    _, adamw = _optimizer_for("--optimizer", "adamw", "--decay_bn_bias")
    assert len(adamw.param_groups) == 1


def test_fine_tuning_groups_hold_only_the_trained_stages():
    net = model_lib.generate_model(parse_opts(["--result_path", "x", "--model_depth", "10", "--n_classes", "3",
                                               "--resnet_widen_factor", "0.25"]))
    ns = SimpleNamespace(pretrain_path="p", ft_begin_module="layer4", no_decay_bn_bias=True, optimizer="adamw",
                         learning_rate=1e-3, weight_decay=0.05, layer_decay=1.0)
    groups = build_optimizer(net, ns).param_groups
    names = _names(net, groups[0]["params"]) | _names(net, groups[1]["params"])
    assert names == {n for n in dict(net.named_parameters()) if n.startswith(("layer4.", "fc."))}


def test_recipe_flags_are_checked():
    for bad in (["--optimizer", "adamw", "--nesterov"], ["--label_smoothing", "1"], ["--mix_prob", "2"],
                ["--ema_decay", "1"], ["--accumulate_grad_batches", "0"], ["--mixup_alpha", "-1"]):
        with pytest.raises(SystemExit):
            parse_opts(["--result_path", "x", *bad])
    opt = parse_opts(["--result_path", "x"])
    assert (opt.optimizer, opt.label_smoothing, opt.mixup_alpha, opt.cutmix_alpha, opt.clip_grad_norm,
            opt.ema_decay, opt.accumulate_grad_batches, opt.no_decay_bn_bias) == ("sgd", 0, 0, 0, 0, 0, 1, False)


# --- --layer_decay ----------------------------------------------------------------------------------------------


def _assert_layer_decayed(optimizer, head_lr: float, decay: float) -> None:
    """Every group's LR is head_lr * decay ** (its stage's distance from the head), and every stage has a group."""
    depth = {stage: k for k, stage in enumerate(reversed(DEPTH_STAGES))}
    assert {g["stage"] for g in optimizer.param_groups} == set(DEPTH_STAGES)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(head_lr * decay ** depth[group["stage"]], rel=1e-12), group["stage"]


def test_layer_decay_groups_are_stage_times_decay_with_lr_decayed_per_stage():
    net, optimizer = _optimizer_for("--optimizer", "adamw", "--learning_rate", "0.1", "--weight_decay", "0.05",
                                    "--layer_decay", "0.5")
    stage_of = {id(p): stage for stage, params in net.parameters_by_depth_stage().items() for p in params}
    plain_net, plain = _optimizer_for("--optimizer", "adamw", "--learning_rate", "0.1", "--weight_decay", "0.05")
    decay_by_name = {name: g["weight_decay"] for g in plain.param_groups for name in _names(plain_net, g["params"])}
    decay_of = {id(p): decay_by_name[name] for name, p in net.named_parameters()}
    seen = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in net.parameters())  # each parameter in exactly one group
    assert len(optimizer.param_groups) == 12  # 6 stages x (decayed, exempt)
    for group in optimizer.param_groups:  # each group: one stage, one weight decay, that of the plain groups
        assert {stage_of[id(p)] for p in group["params"]} == {group["stage"]}
        assert {decay_of[id(p)] for p in group["params"]} == {group["weight_decay"]}
    _assert_layer_decayed(optimizer, 0.1, 0.5)


def test_layer_decay_is_off_by_default_and_checked():
    for flags in ([], ["--optimizer", "adamw"]):
        _, optimizer = _optimizer_for(*flags)
        _, explicit_off = _optimizer_for(*flags, "--layer_decay", "1")
        assert all("stage" not in g for g in optimizer.param_groups)
        assert len(optimizer.param_groups) == len(explicit_off.param_groups) == (2 if flags else 1)
    for bad in (["--layer_decay", "0"], ["--layer_decay", "1.5"], ["--layer_decay", "nan"], ["--precise_bn", "-1"],
                ["--tracker", "comet"]):
        with pytest.raises(SystemExit):
            parse_opts(["--result_path", "x", *bad])
    opt = parse_opts(["--result_path", "x"])
    assert (opt.layer_decay, opt.precise_bn, opt.tracker) == (1.0, 0, "none")


def test_layer_decay_leaves_frozen_stages_out():
    net = model_lib.generate_model(parse_opts(["--result_path", "x", "--model_depth", "10", "--n_classes", "3",
                                               "--resnet_widen_factor", "0.25"]))
    ns = SimpleNamespace(pretrain_path="p", ft_begin_module="layer3", no_decay_bn_bias=False, optimizer="sgd",
                         learning_rate=0.1, weight_decay=1e-3, momentum=0.9, dampening=0.0, nesterov=False,
                         layer_decay=0.5)
    optimizer = build_optimizer(net, ns)
    assert [g["stage"] for g in optimizer.param_groups] == ["head", "layer4", "layer3"]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.05, 0.025])
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in net.parameters() if p.requires_grad}


@pytest.mark.parametrize("scheduler", [["--lr_scheduler", "multistep", "--multistep_milestones", "1", "2"],
                                       ["--lr_scheduler", "cosine", "--warmup_epochs", "1", "--n_epochs", "4"],
                                       ["--lr_scheduler", "plateau", "--plateau_patience", "0"]])
def test_every_scheduler_keeps_the_layer_decay_ratios(scheduler):
    opt = parse_opts(["--result_path", "x", "--model_depth", "10", "--resnet_widen_factor", "0.25", "--n_classes",
                      "3", "--layer_decay", "0.5", *scheduler])
    net = model_lib.generate_model(opt)
    optimizer = build_optimizer(net, opt)
    sched = build_scheduler(optimizer, opt)
    head_lrs = []
    for _ in range(3):
        optimizer.step()
        step_scheduler(sched, 1.0)  # a constant validation loss: plateau decays every epoch
        head = optimizer.param_groups[0]["lr"]
        head_lrs.append(head)
        _assert_layer_decayed(optimizer, head, 0.5)
    assert len(set(head_lrs)) > 1  # the schedule did change the LR


def test_an_optimizer_state_with_stage_groups_loads_into_the_same_groups():
    net, optimizer = _optimizer_for("--layer_decay", "0.75")
    net(torch.randn(2, 3, 8, 32, 32)).sum().backward()
    optimizer.step()
    state = copy.deepcopy(optimizer.state_dict())
    _, again = _optimizer_for("--layer_decay", "0.75")
    again.load_state_dict(state)
    assert [(g["stage"], g["lr"]) for g in again.param_groups] == [(g["stage"], g["lr"])
                                                                   for g in optimizer.param_groups]


# --- EMA weights in checkpoints, validation, --predict and export ----------------------------------------------


def test_model_from_checkpoint_prefers_ema_weights():
    opt = parse_opts(["--result_path", "x", "--model_depth", "10", "--resnet_widen_factor", "0.25", "--n_classes",
                      "3"])
    raw, ema = model_lib.generate_model(opt).state_dict(), model_lib.generate_model(opt).state_dict()
    payload = {"arch": opt.arch, "model_kwargs": model_lib.model_kwargs_from_opts(opt), "state_dict": raw,
               "ema_state_dict": {f"module.{k}": v for k, v in ema.items()}}
    loaded = model_lib.model_from_checkpoint(payload)
    assert loaded.weights == "ema" and torch.equal(loaded.model.fc.weight, ema["fc.weight"])
    loaded = model_lib.model_from_checkpoint(payload, weights="raw")
    assert loaded.weights == "raw" and torch.equal(loaded.model.fc.weight, raw["fc.weight"])
    del payload["ema_state_dict"]
    assert model_lib.model_from_checkpoint(payload).weights == "raw"


def test_fine_tuning_from_a_checkpoint_starts_from_its_ema_weights(tmp_path):
    opt = parse_opts(["--result_path", "x", "--model_depth", "10", "--resnet_widen_factor", "0.25", "--n_classes",
                      "3"])
    raw, ema = model_lib.generate_model(opt).state_dict(), model_lib.generate_model(opt).state_dict()
    path = save_checkpoint(tmp_path / "save_1.pth", {"arch": opt.arch, "state_dict": raw, "ema_state_dict": ema})
    net = model_lib.load_pretrained_model(model_lib.generate_model(opt), path, 5)
    assert torch.equal(net.conv1.weight, ema["conv1.weight"]) and net.fc.out_features == 5


def test_export_model_takes_the_ema_weights_unless_asked_for_raw(tmp_path):
    opt = parse_opts(["--result_path", "x", "--model_depth", "10", "--resnet_widen_factor", "0.25", "--n_classes",
                      "3"])
    raw, ema = model_lib.generate_model(opt).state_dict(), model_lib.generate_model(opt).state_dict()
    path = save_checkpoint(tmp_path / "save_1.pth", {"arch": opt.arch, "state_dict": raw, "ema_state_dict": ema,
                                                     "model_kwargs": model_lib.model_kwargs_from_opts(opt)})
    for flags, expected in (([], ema), (["--eval_weights", "raw"], raw)):
        net, _, _ = export_model.load_model(export_model.build_parser().parse_args([str(path), *flags]))
        assert torch.equal(net.fc.weight, expected["fc.weight"])


def test_validation_uses_the_ema_weights(tiny_dataset, tmp_path):
    train, ema_eval, raw_eval = tmp_path / "train", tmp_path / "ema", tmp_path / "raw"
    proc = run_main([*dataset_args(tiny_dataset, train), "--n_epochs", 1, "--checkpoint", 1, "--ema_decay", 0.5])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validation and inference use the averaged weights" in proc.stdout
    saved = load_checkpoint(train / "save_1.pth")
    assert saved["ema_updates"] == 2 and set(saved["ema_state_dict"]) == set(saved["state_dict"])
    assert any(not torch.equal(saved["ema_state_dict"][k], v) for k, v in saved["state_dict"].items())
    vals = {}
    for out, extra, said in ((ema_eval, [], "loaded EMA weights of epoch 1"),
                             (raw_eval, ["--eval_weights", "raw"], "loaded weights of epoch 1")):
        proc = run_main([*dataset_args(tiny_dataset, out), "--no_train", "--resume_path", train / "save_1.pth", *extra])
        assert proc.returncode == 0 and said in proc.stdout, proc.stdout + proc.stderr
        vals[out] = log_rows(out / "val.log")[1][1:]
    assert vals[ema_eval] == log_rows(train / "val.log")[1][1:]
    assert vals[raw_eval] != vals[ema_eval]
