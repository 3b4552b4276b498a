"""models/factory.py: building from options and checkpoint info, pretrained loading, fine-tune selection, FLOPs."""

from __future__ import annotations

import argparse

import pytest
import torch

from checkpoint import save_checkpoint
from engine.distributed import DistInfo
from errors import UserError
from models.factory import (
    build_model_from_checkpoint_info,
    check_batch_norm_can_train,
    describe_model,
    fewest_norm_values,
    generate_model,
    get_fine_tuning_parameters,
    load_pretrained_model,
    load_state_dict_compat,
    model_for_run,
    model_from_checkpoint,
    model_kwargs_from_opts,
)
from opts import build_parser, parse_opts
from tests.conftest import DEVICES, device_args


def make_opt(**overrides) -> argparse.Namespace:
    # opts.py's own defaults (the original's); n_input_channels is derived from the input there, so set it here.
    values = {**vars(build_parser().parse_args([])), "n_input_channels": 3}
    values.update(overrides)
    return argparse.Namespace(**values)


def n_params(params) -> int:
    return sum(p.numel() for p in params)


def test_model_kwargs_are_plain_and_family_specific():
    assert model_kwargs_from_opts(make_opt()) == {
        "n_classes": 400,
        "n_input_channels": 3,
        "conv1_t_size": 7,
        "conv1_t_stride": 1,
        "no_max_pool": False,
        "shortcut_type": "B",
        "widen_factor": 1.0,
    }
    wide = model_kwargs_from_opts(make_opt(model="wideresnet", model_depth=50, wide_resnet_k=3))
    assert wide["k"] == 3 and "widen_factor" not in wide
    resnext = model_kwargs_from_opts(make_opt(model="resnext", model_depth=101, resnext_cardinality=16))
    assert resnext["cardinality"] == 16
    dense = model_kwargs_from_opts(make_opt(model="densenet", model_depth=121))
    assert "shortcut_type" not in dense and "widen_factor" not in dense
    # The original treats every value other than 'A' as B.
    assert model_kwargs_from_opts(make_opt(resnet_shortcut="b"))["shortcut_type"] == "B"


def test_generate_model_uses_the_options():
    opt = make_opt(
        model="resnet",
        model_depth=10,
        n_classes=11,
        n_input_channels=2,
        conv1_t_size=3,
        conv1_t_stride=2,
        no_max_pool=True,
        resnet_shortcut="A",
        resnet_widen_factor=0.5,
    )
    with torch.device("meta"):
        model = generate_model(opt)
    assert model.arch == "resnet-10"
    assert model.conv1.weight.shape == (32, 2, 3, 7, 7) and model.conv1.stride == (2, 2, 2)
    assert model.fc.out_features == 11
    assert not any("downsample" in k for k in model.state_dict())
    with torch.device("meta"):
        resnext = generate_model(make_opt(model="resnext", model_depth=50, resnext_cardinality=8))
        dense = generate_model(make_opt(model="densenet", model_depth=169, n_classes=5))
    assert resnext.layer1[0].conv2.groups == 8
    assert dense.classifier.out_features == 5


def test_generate_model_rejects_bad_depth_and_family_clearly():
    with pytest.raises(UserError, match="valid depths: 50, 101, 152, 200"):
        generate_model(make_opt(model="resnext", model_depth=18))
    with pytest.raises(UserError, match="valid models"):
        generate_model(make_opt(model="vgg"))


def test_rebuild_from_checkpoint_info_round_trip():
    opt = make_opt(model="resnet2p1d", model_depth=10, n_classes=9, conv1_t_size=5)
    torch.manual_seed(0)
    original = generate_model(opt)
    rebuilt = build_model_from_checkpoint_info("resnet2p1d-10", model_kwargs_from_opts(opt))
    load_state_dict_compat(rebuilt, original.state_dict())
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), original.eval()(x))
    with pytest.raises(UserError, match="cannot parse arch"):
        build_model_from_checkpoint_info("resnet50", {})


FT_CASES = [("fc", 2, 51_813), ("layer4", 17, None), ("layer3", 32, None), ("conv1", 62, 33_255_717), ("", 62, None)]


@pytest.mark.parametrize(("begin", "n_tensors", "n_values"), FT_CASES)
def test_fine_tuning_selection_matches_the_original(begin, n_tensors, n_values):
    with torch.device("meta"):
        model = generate_model(make_opt(n_classes=101))
    params = get_fine_tuning_parameters(model, begin)
    assert len(params) == n_tensors
    if n_values is not None:
        assert n_params(params) == n_values
    selected = {id(p) for p in params}
    assert all(p.requires_grad == (id(p) in selected) for p in model.parameters())


def test_fine_tuning_names_for_densenet_and_unknown_names():
    with torch.device("meta"):
        dense = generate_model(make_opt(model="densenet", model_depth=121, n_classes=10))
    assert dense.stage_names()[:3] == ["conv1", "norm1", "denseblock1"]
    assert [id(p) for p in get_fine_tuning_parameters(dense, "classifier")] == [
        id(dense.classifier.weight),
        id(dense.classifier.bias),
    ]
    assert len(get_fine_tuning_parameters(dense, "norm5")) == 4
    with pytest.raises(UserError, match="valid names: conv1, bn1, layer1, layer2, layer3, layer4, fc"):
        get_fine_tuning_parameters(generate_model(make_opt(model_depth=10)), "layer5")


def write_original_checkpoint(path, model) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [50, 100])
    save_checkpoint(
        path,
        {
            "epoch": 200,
            "arch": "resnet-18",
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
    )


def test_fine_tune_from_original_checkpoint_changes_only_fc(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "r3d18_K_200ep.pth"
    write_original_checkpoint(path, generate_model(make_opt(n_classes=700)))
    pretrained = torch.load(path, weights_only=True)["state_dict"]

    opt = make_opt(n_classes=700, n_pretrain_classes=700, pretrain_path=path, ft_begin_module="fc")
    model = load_pretrained_model(generate_model(opt), opt.pretrain_path, 101)
    assert model.fc.out_features == 101
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, pretrained[key]), key
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    params = get_fine_tuning_parameters(model, opt.ft_begin_module)
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 8, 32, 32)), torch.tensor([3, 100]))
    loss.backward()
    optimizer.step()
    changed = sorted(name for name, p in model.named_parameters() if not torch.equal(p, before[name]))
    assert changed == ["fc.bias", "fc.weight"]


def test_pretrained_class_count_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "pretrained.pth"
    with torch.device("meta"):
        small = generate_model(make_opt(model_depth=10, n_classes=400))
    save_checkpoint(
        path, {"state_dict": {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in small.state_dict().items()}}
    )
    model = generate_model(make_opt(model_depth=10, n_classes=700))
    with pytest.raises(UserError, match="fc has 400 classes but --n_pretrain_classes is 700"):
        load_pretrained_model(model, path, 101)


def test_pretrained_arch_mismatch_names_both_archs(tmp_path):
    path = tmp_path / "r2p1d.pth"
    source = generate_model(make_opt(model="resnet2p1d", model_depth=10, n_classes=5))
    save_checkpoint(path, {"arch": "resnet2p1d-10", "state_dict": source.state_dict()})
    with pytest.raises(UserError, match=r"saved from resnet2p1d-10\) does not match the model resnet-10"):
        load_pretrained_model(generate_model(make_opt(model_depth=10, n_classes=5)), path, 3)


def test_pretrained_dataparallel_file_loads(tmp_path):
    path = tmp_path / "wrapped.pth"
    source = generate_model(make_opt(model_depth=10, n_classes=5))
    save_checkpoint(path, {"state_dict": {"module." + k: v for k, v in source.state_dict().items()}})
    model = load_pretrained_model(generate_model(make_opt(model_depth=10, n_classes=5)), path, 3)
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_describe_model_counts_params_and_flops_without_touching_weights():
    model = generate_model(make_opt(model_depth=18, n_classes=400))
    before = model.conv1.weight.clone()
    info = describe_model(model, (3, 16, 112, 112))
    assert info["n_params"] == 33_409_104
    # ~8.3 GMACs for 3D ResNet-18 at 16x112x112; flop_counter reports 2 FLOPs per multiply-add.
    assert 16.0 < info["gflops"] < 17.5
    assert describe_model(model, (4, 3, 16, 112, 112))["gflops"] == pytest.approx(info["gflops"])
    assert torch.equal(model.conv1.weight, before)
    dense = describe_model(generate_model(make_opt(model="densenet", model_depth=121)), (3, 16, 112, 112))
    assert dense["n_params"] == 11_696_528 and dense["gflops"] > 1


def test_fewest_norm_values_is_the_smallest_feature_map_of_one_clip():
    model = generate_model(make_opt(model_depth=10, resnet_widen_factor=0.125, n_classes=2)).train()
    # 16x112x112 -> layer4 maps of 1x4x4; 4x16x16 -> layer3 already 1x1x1 (its first conv has stride 2).
    assert fewest_norm_values(model, (3, 16, 112, 112))[1] == 16
    assert fewest_norm_values(model, (3, 4, 16, 16)) == ("layer3.0.bn1", 1)
    assert model.training  # left as it was


def _tiny_batch_opt(**overrides) -> argparse.Namespace:
    return make_opt(**{"model_depth": 10, "resnet_widen_factor": 0.125, "n_classes": 2, "sample_size": 16,
                       "sample_duration": 4, "arch": "resnet-10", **overrides})


def test_batch_norm_over_one_value_per_channel_is_refused_before_training():
    model = generate_model(_tiny_batch_opt())
    with pytest.raises(UserError, match=r"^--batch_size 1 cannot train resnet-10 on 4x16x16 clips: BatchNorm layer "
                                        r"layer3.0.bn1 would normalise a single value per channel; use --batch_size 2"):
        check_batch_norm_can_train(model, _tiny_batch_opt(batch_size=1))
    # The share of each process counts (--batch_size is a total) unless SyncBatchNorm pools the processes' clips.
    with pytest.raises(UserError, match=r"--batch_size 2 \(1 clip per process"):
        check_batch_norm_can_train(model, _tiny_batch_opt(batch_size=2, process_batch_size=1))
    check_batch_norm_can_train(model, _tiny_batch_opt(batch_size=2, process_batch_size=1, batchnorm_sync=True))
    check_batch_norm_can_train(model, _tiny_batch_opt(batch_size=2))
    check_batch_norm_can_train(model, _tiny_batch_opt(batch_size=1, sample_size=112, sample_duration=16))


def test_model_from_checkpoint_self_described_and_from_flags(tmp_path):
    torch.manual_seed(0)
    dense = generate_model(make_opt(model="densenet", model_depth=121, n_classes=4))
    ours = {"arch": "densenet-121", "model_kwargs": model_kwargs_from_opts(make_opt(model="densenet", model_depth=121,
                                                                                    n_classes=4)),
            "state_dict": dense.state_dict(), "class_names": ["a", "b", "c", "d"]}
    loaded = model_from_checkpoint(ours, {"model": "resnet", "model_depth": 10})  # flags ignored: the file says
    assert loaded.arch == "densenet-121" and loaded.class_names == ["a", "b", "c", "d"] and not loaded.model.training
    released = {"arch": "densenet-121", "state_dict": {f"module.{k}": v for k, v in dense.state_dict().items()}}
    loaded = model_from_checkpoint(released)  # class count read from classifier.weight
    assert loaded.model_kwargs["n_classes"] == 4 and loaded.class_names is None
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    with pytest.raises(UserError, match="give --model and --model_depth"):
        model_from_checkpoint({"state_dict": dense.state_dict()})


@pytest.mark.parametrize("device", DEVICES)
def test_model_for_run_is_channels_last_on_cuda_only(device, tiny_dataset, tmp_path):
    opt = parse_opts([str(a) for a in device_args(tiny_dataset, tmp_path, device)])
    net = model_for_run(opt, DistInfo(device=torch.device(device)), None)
    assert next(net.parameters()).device.type == device
    # channels_last_3d is CUDA's fast layout; on the CPU it measured slower (engine.forward.prepare_batch).
    layout = torch.channels_last_3d if device == "cuda" else torch.contiguous_format
    assert net.conv1.weight.is_contiguous(memory_format=layout) and net.training
