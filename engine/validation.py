"""Clip-level validation: mean loss and top-1 accuracy over every validation clip, reduced over ranks
(multi-label: also the mAP of the clips' sigmoid scores)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from engine.distributed import all_reduce_sum, gather_objects
from engine.forward import autocast, prepare_batch
from utils import count_correct, mean_average_precision


def evaluate(model: nn.Module, loader: Iterable, criterion: nn.Module, device: torch.device, *,
             normalizer: Callable | None = None, precision: str = "fp32") -> dict:
    """Evaluate ``model`` on ``loader`` under inference mode.

    Returns a dict with loss and acc (means over all clips of all ranks), clips and time. Like the
    original, these are clip-level numbers; video-level accuracy comes from inference. With multi-hot
    targets (--multi_label) acc counts clips whose top-1 class is one of their labels, and 'map' is the
    mean average precision of the clips' sigmoid scores over the classes with a positive clip.
    """
    model.eval()
    start = time.perf_counter()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct count, clips
    multi_label: list[tuple[torch.Tensor, torch.Tensor]] = []  # (sigmoid scores, targets) on the CPU
    with torch.inference_mode():
        for clips, targets in loader:
            clips, targets = prepare_batch(clips, targets, device, normalizer)
            with autocast(device, precision):
                outputs = model(clips)
            n = targets.shape[0]
            # The loss is computed in fp32 so the summed value does not depend on the autocast precision.
            loss = criterion(outputs.float(), targets)
            totals += torch.stack([loss.double() * n, count_correct(outputs, targets).double(),
                                   torch.tensor(float(n), dtype=torch.float64, device=device)])
            if targets.dim() == 2:
                multi_label.append((torch.sigmoid(outputs.float()).cpu(), targets.cpu()))
    loss_sum, correct, count = all_reduce_sum(totals).tolist()
    count = max(count, 1.0)
    result = {"loss": loss_sum / count, "acc": correct / count, "clips": int(count)}
    # every rank joins the gather (a rank may have had no batch); single-label runs gather empty lists
    pairs = [pair for part in gather_objects(multi_label) for pair in part]
    if pairs:
        result["map"] = mean_average_precision(torch.cat([s for s, _ in pairs]).numpy(),
                                               torch.cat([t for _, t in pairs]).numpy())[0]
    return {**result, "time": time.perf_counter() - start}
