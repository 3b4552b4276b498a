"""The measured parts of the benchmark: model only, loader only, end to end, sliding-window inference.

Every part runs the project's own code (train_one_epoch, the loaders of datasets/factory.py, run_inference)
so the numbers are what a training run gets. 'original' = fp32 eager, contiguous model, the
original-style per-frame PIL/float loader (benchmarks.reference_loader); 'fast' = the project's
defaults for the device (uint8 loader with draft/simplejpeg decode, normalisation on the device,
bf16 autocast + channels_last_3d + cudnn.benchmark on CUDA, torch.compile with --compile).
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmarks.data import BatchStream, close_loader, time_loader
from benchmarks.gpu_decode import build_encoded_loader, decode_batch
from benchmarks.reference_loader import build_reference_loader
from datasets import factory as dataset
from engine.compiled import compile_model
from engine.distributed import DistInfo
from engine.inference import run_inference
from engine.training import train_one_epoch
from models import factory as model_lib


@dataclass
class PartResult:
    """clips/s of each repeat plus extras (peak memory, data-wait share, ...)."""

    rates: list[float]
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"clips_per_s": statistics.median(self.rates) if self.rates else None,
                "clips_per_s_repeats": [round(r, 2) for r in self.rates], **self.extra}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def build_net(opt, device: torch.device, *, fast: bool) -> nn.Module:
    """The model as main.py builds it: channels_last_3d on CUDA for the fast variant, compiled with --compile as
    main.py compiles it (one graph, so main.py's runs load the graphs compiled here from the shared cache)."""
    net = model_lib.generate_model(opt).to(device)
    if fast and device.type == "cuda":
        net = net.to(memory_format=torch.channels_last_3d)
    return compile_model(net) if fast and opt.compile else net


def _optimizer(opt, net: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                           weight_decay=opt.weight_decay)


def _train_windows(net, stream: BatchStream, opt, device, *, normalizer, warmup: int, steps: int,
                   repeats: int) -> tuple[list[float], list[float]]:
    """train_one_epoch over `warmup` then `repeats` windows of `steps` batches; (clips/s, data shares)."""
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = _optimizer(opt, net)
    run = dict(normalizer=normalizer, precision=opt.precision, show_progress=False, log_interval=max(steps, 1))
    train_one_epoch(net, stream.take(warmup), criterion, optimizer, device, epoch=0, **run)
    rates, shares = [], []
    for r in range(repeats):
        result = train_one_epoch(net, stream.take(steps), criterion, optimizer, device, epoch=r + 1, **run)
        _sync(device)
        rates.append(result["clips_per_s"])
        shares.append(result["data_share"])
    return rates, shares


def model_only(opt, device: torch.device, *, fast: bool, warmup: int, steps: int, repeats: int) -> PartResult:
    """Training steps (fwd + bwd + SGD) on synthetic clips already on the device."""
    torch.manual_seed(0)
    net = build_net(opt, device, fast=fast)
    normalizer = dataset.build_input_normalizer(opt)
    shape = (opt.batch_size, opt.sample_duration, opt.sample_size, opt.sample_size, opt.n_input_channels)
    clips = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    targets = torch.randint(0, opt.n_classes, (opt.batch_size,), device=device)
    if not fast:  # the original receives float clips normalised in the workers, in the default layout
        clips = normalizer(clips).contiguous()
    stream = _StaticStream((clips, targets))
    _reset_peak(device)
    rates, _ = _train_windows(net, stream, opt, device, normalizer=normalizer if fast else None, warmup=warmup,
                              steps=steps, repeats=repeats)
    return PartResult(rates, {"peak_memory_gb": _peak_gb(device)})


class _StaticStream(BatchStream):
    """The same device batch over and over (model-only timing)."""

    def __init__(self, batch):
        self.loader, self._it = None, itertools.repeat(batch)


def train_loader(opt, device: torch.device, *, fast: bool):
    """The real training loader (fast) or the original-style reference loader."""
    if fast:
        return dataset.build_train_loader(opt, DistInfo(device=device))[0]
    return build_reference_loader(opt, "train", pin_memory=device.type == "cuda")


def loader_only(opt, device: torch.device, *, fast: bool, warmup: int, steps: int, repeats: int) -> PartResult:
    """clips/s delivered by the training loader alone (batches are not even copied to the device)."""
    loader = train_loader(opt, device, fast=fast)
    rates = time_loader(loader, batch_size=opt.batch_size, warmup=warmup, steps=steps, repeats=repeats)
    workers = max(opt.n_threads, 1)
    return PartResult(rates, {"workers": opt.n_threads,
                              "clips_per_s_per_worker": statistics.median(rates) / workers})


def loader_gpu_decode(opt, device: torch.device, *, warmup: int, steps: int, repeats: int) -> PartResult:
    """Workers fetch bytes only; nvjpeg decodes, the GPU crops/resizes (CUDA + torchvision only)."""
    base = dataset.build_train_loader(opt, DistInfo(device=device))[0]
    loader = build_encoded_loader(base, workers=opt.n_threads, seed=opt.manual_seed)
    rates = time_loader(loader, batch_size=opt.batch_size, warmup=warmup, steps=steps, repeats=repeats,
                        consume=lambda batch: decode_batch(batch, device), sync=lambda: _sync(device))
    frames = [r * opt.sample_duration for r in rates]
    return PartResult(rates, {"workers": opt.n_threads, "frames_per_s": statistics.median(frames)})


def end_to_end(opt, device: torch.device, *, fast: bool, warmup: int, steps: int, repeats: int) -> PartResult:
    """train_one_epoch fed by the training loader: clips/s and the share of time spent waiting for data."""
    torch.manual_seed(0)
    net = build_net(opt, device, fast=fast)
    stream = BatchStream(train_loader(opt, device, fast=fast))
    _reset_peak(device)
    try:
        rates, shares = _train_windows(net, stream, opt, device, normalizer=dataset.build_input_normalizer(opt),
                                       warmup=warmup, steps=steps, repeats=repeats)
    finally:
        stream.close()
    return PartResult(rates, {"data_wait_share": statistics.median(shares), "peak_memory_gb": _peak_gb(device),
                              "workers": opt.n_threads})


def inference(opt, device: torch.device, *, fast: bool, repeats: int) -> PartResult:
    """Sliding-window inference (run_inference) over opt.inference_subset: clips/s of whole passes."""
    torch.manual_seed(0)
    net = build_net(opt, device, fast=fast).eval()
    if fast:
        loader = dataset.build_inference_loader(opt, DistInfo(device=device))
    else:
        loader = build_reference_loader(opt, "inference", pin_memory=device.type == "cuda")
    normalizer = dataset.build_input_normalizer(opt)
    names = [str(i) for i in range(opt.n_classes)]
    kwargs = dict(class_names=names, normalizer=normalizer, precision=opt.precision, show_progress=False)
    try:
        run_inference(net, loader, device, **kwargs)  # warm-up pass: workers, cudnn autotuning, compilation
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            agg = run_inference(net, loader, device, **kwargs)
            _sync(device)
            rates.append(sum(len(c) for c in agg.clips.values()) / (time.perf_counter() - start))
    finally:
        close_loader(loader)
    return PartResult(rates, {"workers": opt.n_threads, "clips_per_pass": sum(len(c) for c in agg.clips.values())})

