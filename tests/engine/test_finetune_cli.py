"""Fine-tuning from an original-format checkpoint through the CLI: only the new head is trained."""

from __future__ import annotations

import argparse

import torch

from checkpoint import load_checkpoint
from models import factory as model_lib
from tests.conftest import dataset_args, run_main

WIDEN = 0.25  # a resnet-18 small enough for the CPU; key names and layout are the original's


def _write_original_checkpoint(path):
    """A file shaped like the released r3d18_K_200ep.pth: epoch, arch, prefix-free state_dict, optimizer."""
    opt = argparse.Namespace(model="resnet", model_depth=18, n_classes=700, n_input_channels=3, conv1_t_size=7,
                             conv1_t_stride=1, no_max_pool=False, resnet_shortcut="B",
                             resnet_widen_factor=WIDEN, wide_resnet_k=2, resnext_cardinality=32)
    torch.manual_seed(123)
    net = model_lib.generate_model(opt)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save({"epoch": 200, "arch": "resnet-18", "state_dict": state, "optimizer": {}}, path)
    return state


def test_finetune_only_fc_changes(tiny_dataset, tmp_path):
    pretrained = _write_original_checkpoint(tmp_path / "r3d18_K_200ep.pth")
    out = tmp_path / "out"
    args = dataset_args(tiny_dataset, out, n_classes=101)
    depth = args.index("--model_depth")
    args[depth + 1] = "18"
    args[args.index("--resnet_widen_factor") + 1] = str(WIDEN)
    proc = run_main([*args, "--pretrain_path", tmp_path / "r3d18_K_200ep.pth", "--n_pretrain_classes", 700,
                     "--ft_begin_module", "fc", "--n_epochs", 1, "--checkpoint", 1, "--no_val",
                     "--learning_rate", 0.5])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = load_checkpoint(out / "save_1.pth")
    assert saved["arch"] == "resnet-18" and saved["model_kwargs"]["n_classes"] == 101
    tuned = saved["state_dict"]
    assert tuned["fc.weight"].shape == (101, pretrained["fc.weight"].shape[1])
    param_names = {name for name, _ in model_lib.build_model_from_checkpoint_info("resnet-18", saved["model_kwargs"])
                   .named_parameters()}
    frozen = sorted(n for n in param_names if not n.startswith("fc."))
    assert len(frozen) == 60  # every tensor but fc.weight / fc.bias
    for name in frozen:
        assert torch.equal(tuned[name], pretrained[name]), name
    # Only the head is in the optimizer, and it was stepped (non-zero momentum buffers).
    assert saved["optimizer"]["param_groups"][0]["params"] == [0, 1]
    momentum = saved["optimizer"]["state"]
    assert momentum[0]["momentum_buffer"].shape == (101, pretrained["fc.weight"].shape[1])
    assert all(momentum[i]["momentum_buffer"].abs().sum() > 0 for i in (0, 1))


def test_pretrain_class_mismatch_is_a_clear_error(tiny_dataset, tmp_path):
    _write_original_checkpoint(tmp_path / "r3d18.pth")
    args = dataset_args(tiny_dataset, tmp_path / "out", n_classes=101)
    args[args.index("--model_depth") + 1] = "18"
    args[args.index("--resnet_widen_factor") + 1] = str(WIDEN)
    proc = run_main([*args, "--pretrain_path", tmp_path / "r3d18.pth", "--n_pretrain_classes", 400,
                     "--n_epochs", 1])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "700" in proc.stderr and "400" in proc.stderr
