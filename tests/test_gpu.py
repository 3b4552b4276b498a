"""On a CUDA device: training with the CUDA defaults (bf16, channels_last_3d) and --compile, CUDA vs CPU logits of
every model family, nvjpeg decode vs CPU decode, pinned uint8 batches, resume, predict/export of a CUDA run and
--batchnorm_sync in a one-process NCCL group.

Every test is marked `gpu` and skipped without CUDA (`pytest -m gpu` selects them on a GPU machine;
benchmarks/gpu_check.sh runs them there). Data and runs are tiny, as in the CPU tests.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from torch import nn

import main
from benchmarks.data import SyntheticSpec, make_synthetic_dataset
from benchmarks.gpu_decode import EncodedClipDataset, decode_batch, nvjpeg_available
from checkpoint import load_checkpoint
from datasets import factory as dataset
from engine.distributed import DistInfo
from engine.forward import prepare_batch
from models import MODEL_DEPTHS, build_model
from opts import parse_opts
from tests.conftest import dataset_args, log_rows, run_main
from tests.conftest import family_clip as _clip
from tests.conftest import smallest_family_model as _model
from tests.datagen import frame_image, write_video_file
from util_scripts import export_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = torch.device("cuda")
DEFAULT_PRECISION = "bf16"  # main.py's default on CUDA
TORCHRUN_ONE = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
# Deterministic cuBLAS for --deterministic runs (otherwise use_deterministic_algorithms only warns).
DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def cuda_args(ds, result_path: Path, *extra) -> list:
    """The CPU tests' tiny run, on the default device (CUDA): --no_cuda removed, nothing else changed."""
    return [a for a in dataset_args(ds, result_path) if a != "--no_cuda"] + list(extra)


@pytest.fixture
def no_tf32():
    """Plain fp32 convolutions and matmuls on CUDA (TF32 keeps only 10 mantissa bits), restored afterwards."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _check_run(out: Path, ds, proc) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((out / "opts.json").read_text())["precision"] == DEFAULT_PRECISION
    train, val = log_rows(out / "train.log"), log_rows(out / "val.log")
    assert [r[0] for r in train[1:]] == ["1"] and [r[0] for r in val[1:]] == ["1"]
    assert all(torch.isfinite(torch.tensor(float(r[1]))) for r in train[1:] + val[1:])  # losses are numbers
    results = json.loads((out / "val.json").read_text())["results"]
    assert list(results) == ds.ids("validation")
    ckpt = load_checkpoint(out / "save_1.pth")  # loads on the CPU, without any module. prefix
    assert ckpt["epoch"] == 1 and not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["state_dict"])


@pytest.fixture(scope="module")
def cuda_run(tiny_dataset, tmp_path_factory):  # noqa: F811
    """One epoch of training + validation + inference with the CUDA defaults; reused by predict/export."""
    out = tmp_path_factory.mktemp("cuda_run")
    proc = run_main(cuda_args(tiny_dataset, out, "--n_epochs", 1, "--checkpoint", 1, "--inference"))
    _check_run(out, tiny_dataset, proc)
    return out


def test_train_validate_infer_with_cuda_defaults(cuda_run):
    assert (cuda_run / "save_1.pth").is_file()


def test_model_is_channels_last_on_cuda(tiny_dataset, tmp_path):  # noqa: F811

    opt = parse_opts([str(a) for a in cuda_args(tiny_dataset, tmp_path)])
    net = main._build_model(opt, None, DistInfo(device=DEVICE))
    assert next(net.parameters()).device.type == DEVICE.type
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("family", sorted(MODEL_DEPTHS))
def test_cuda_logits_match_cpu_fp32(family, no_tf32):
    model, x = _model(family).eval(), _clip(family, batch=2)
    with torch.no_grad():
        cpu = model(x)
        on_device = copy.deepcopy(model).to(DEVICE)
        fp32 = on_device(x.to(DEVICE)).cpu()
        fast = on_device.to(memory_format=torch.channels_last_3d)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            bf16 = fast(x.to(DEVICE).contiguous(memory_format=torch.channels_last_3d)).float().cpu()
    scale = cpu.abs().max().item()
    torch.testing.assert_close(fp32, cpu, atol=1e-4 * max(scale, 1.0), rtol=1e-3)
    # bf16 keeps about 3 significant digits: the logits agree to a few percent of their range.
    assert (bf16 - cpu).abs().max().item() <= 0.05 * scale + 1e-3


@pytest.fixture(scope="module")
def photo_frames(tmp_path_factory) -> tuple[Path, Path]:
    spec = SyntheticSpec(n_classes=2, train_per_class=2, val_per_class=1, n_frames=8)  # 320x240 JPEGs
    return make_synthetic_dataset(tmp_path_factory.mktemp("photo"), spec)


def _photo_opts(photo_frames, tmp_path: Path, *extra: str):
    video_path, annotation_path = photo_frames
    return parse_opts(["--video_path", str(video_path), "--annotation_path", str(annotation_path), "--result_path",
                       str(tmp_path), "--n_classes", "2", "--sample_size", "112", "--sample_duration", "8",
                       "--batch_size", "2", "--n_threads", "1", *extra])


def test_gpu_decode_matches_cpu_decode(photo_frames, tmp_path):
    if not nvjpeg_available(DEVICE):
        pytest.skip("torchvision.io (nvjpeg) is not available")
    cpu_ds = dataset.build_dataset(_photo_opts(photo_frames, tmp_path, "--exact_decode"), "train")
    keys = [(i, 3) for i in range(len(cpu_ds))]  # epoch 3: some crops flipped, some not
    clips, labels = decode_batch([EncodedClipDataset(cpu_ds)[k] for k in keys], DEVICE)
    assert clips.device.type == DEVICE.type and clips.dtype == torch.uint8
    for (clip, label), k in zip(zip(clips.cpu(), labels.cpu().tolist()), keys):
        cpu_clip, cpu_label = cpu_ds[k]
        assert label == cpu_label and clip.shape == cpu_clip.shape == (8, 112, 112, 3)
        diff = (clip.float() - cpu_clip.float()).abs()
        # Same frames, box and flip; nvjpeg vs libjpeg IDCT and torch vs PIL resampling differ by a level or two.
        assert diff.mean().item() <= 2.0 and diff.quantile(0.99).item() <= 16


def test_loader_yields_pinned_uint8_batches(photo_frames, tmp_path):
    opt = _photo_opts(photo_frames, tmp_path)
    loader, sampler = dataset.build_train_loader(opt, DistInfo(device=DEVICE))
    sampler.set_epoch(1)
    clips, targets = next(iter(loader))
    assert clips.dtype == torch.uint8 and clips.shape == (2, 8, 112, 112, 3)
    assert clips.is_pinned() and targets.is_pinned()
    normalizer = dataset.build_input_normalizer(opt)
    on_device, on_targets = prepare_batch(clips, targets, DEVICE, normalizer)
    assert on_device.device.type == on_targets.device.type == DEVICE.type
    assert on_device.dtype == torch.float32 and on_device.shape == (2, 3, 8, 112, 112)
    torch.testing.assert_close(on_device.cpu(), normalizer(clips), atol=1e-5, rtol=0)
    del loader  # stops its persistent worker


def test_resume_on_cuda_equals_uninterrupted(tiny_dataset, tmp_path):  # noqa: F811
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    schedule = ["--multistep_milestones", 1, "--checkpoint", 1, "--manual_seed", 7, "--deterministic"]
    runs = [run_main(cuda_args(tiny_dataset, straight, "--n_epochs", 2, *schedule), env=DETERMINISTIC_ENV),
            run_main(cuda_args(tiny_dataset, resumed, "--n_epochs", 1, *schedule), env=DETERMINISTIC_ENV),
            run_main(cuda_args(tiny_dataset, resumed, "--n_epochs", 2, *schedule, "--resume_path", "auto"),
                     env=DETERMINISTIC_ENV)]
    for proc in runs:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming training at epoch 2" in runs[2].stdout
    for name in ("train.log", "val.log"):
        a, b = log_rows(straight / name), log_rows(resumed / name)
        assert [r[0] for r in a] == [r[0] for r in b] and len(a) == 3
        for x, y in zip(a[1:], b[1:]):
            assert [float(v) for v in x] == pytest.approx([float(v) for v in y], rel=1e-3, abs=1e-4)
    a, b = load_checkpoint(straight / "save_2.pth"), load_checkpoint(resumed / "save_2.pth")
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-3, atol=1e-4, msg=key)


def test_predict_from_a_cuda_run_matches_cpu(cuda_run, tmp_path):
    video = tmp_path / "clip.mp4"
    write_video_file(video, [frame_image("shapes", label=1, number=1, frame=k, size=(48, 32)) for k in range(1, 21)])
    scores = {}
    for name, extra in (("cuda", []), ("cpu", ["--no_cuda"])):
        proc = run_main(["--predict", video, "--resume_path", cuda_run / "save_1.pth", "--result_path",
                         tmp_path / name, "--n_threads", 0, *extra])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"on {name}" in proc.stdout
        entry = json.loads((tmp_path / name / "predictions.json").read_text())["results"][str(video)]
        assert entry["segments"]
        scores[name] = {t["label"]: t["score"] for t in entry["result"]}
    assert set(scores["cuda"]) == set(scores["cpu"]) == {"class_0", "class_1"}
    for label, score in scores["cpu"].items():  # bf16 on CUDA vs fp32 on the CPU
        assert scores["cuda"][label] == pytest.approx(score, abs=0.05)


def test_export_a_cuda_run(cuda_run, tmp_path):
    formats = ["torchscript"] + (["onnx"] if all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))
                                 else [])
    args = export_model.build_parser().parse_args([str(cuda_run / "save_1.pth"), "--output_dir", str(tmp_path),
                                                   "--sample_size", "32", "--sample_duration", "8",
                                                   "--formats", *formats])
    results = export_model.export_all(args)
    assert set(results) == set(formats)
    for path, diff in results.values():
        assert path.is_file() and diff < 1e-4


def test_batchnorm_sync_under_torchrun_one_process(tiny_dataset, tmp_path):  # noqa: F811
    proc = run_main(cuda_args(tiny_dataset, tmp_path, "--n_epochs", 1, "--checkpoint", 1, "--batchnorm_sync"),
                    launcher=TORCHRUN_ONE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = load_checkpoint(tmp_path / "save_1.pth")["state_dict"]
    plain = build_model("resnet", 10, n_classes=2, widen_factor=0.25).state_dict()
    assert set(state) == set(plain)  # SyncBatchNorm saves BatchNorm3d's keys: loadable without the flag
    assert len(log_rows(tmp_path / "train.log")) == 2


def test_sync_batchnorm_in_a_one_process_nccl_group(tmp_path, no_tf32):
    backend = "nccl" if DEVICE.type == "cuda" else "gloo"
    tdist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = build_model("resnet", 10, n_classes=3, widen_factor=0.25).to(DEVICE).train()
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
        ddp = nn.parallel.DistributedDataParallel(synced, device_ids=[DEVICE] if DEVICE.type == "cuda" else None)
        x = torch.randn(4, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        for net in (plain, ddp):
            optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
            net(x).square().mean().backward()
            optimizer.step()
        assert isinstance(synced.bn1, nn.SyncBatchNorm)
        torch.testing.assert_close(synced.bn1.running_mean, plain.bn1.running_mean, atol=1e-5, rtol=1e-4)
        for (name, p), q in zip(plain.named_parameters(), synced.parameters()):
            torch.testing.assert_close(q, p, atol=1e-4, rtol=1e-3, msg=name)
        with torch.no_grad():
            torch.testing.assert_close(ddp.module.eval()(x), plain.eval()(x), atol=1e-4, rtol=1e-3)
    finally:
        tdist.destroy_process_group()


def test_train_validate_infer_compiled(tiny_dataset, tmp_path):  # noqa: F811
    # Last in the file: inductor compilation is the slowest test here.
    proc = run_main(cuda_args(tiny_dataset, tmp_path, "--n_epochs", 1, "--checkpoint", 1, "--inference",
                              "--compile"), timeout=600)
    _check_run(tmp_path, tiny_dataset, proc)
