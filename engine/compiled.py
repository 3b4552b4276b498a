"""--compile: the model under torch.compile, with the eager model as the way back, and a compile cache that
outlives the job.

A compile, or a compiled call, that fails (dynamo, AOTAutograd or inductor; at the first call or at a later
recompile, in training, validation or inference) costs one warning line, never the run: :class:`CompiledModel`
goes back to the eager model, which holds the very same parameters and buffers, for the rest of the run. A
forward that failed is made again eagerly at once; a training step whose compiled backward failed is made again
by the trainer (``engine.training``), after :meth:`CompiledModel.fall_back` has put the BatchNorm statistics back
to what they were before that step's forward. The gradients need nothing: the model is compiled as one graph
(``fullgraph=True``), so its backward is a single autograd node and a failure inside it has accumulated no
gradient yet (and the optimiser steps only after a backward that succeeded).

Inductor's own caches (the FX graph cache and the AOTAutograd cache, both on by default) are kept in
``<result_path>/compile_cache`` (see :func:`use_compile_cache`) rather than in /tmp, which a requeued job on
another node does not find: a resumed run loads its compiled graphs instead of compiling them from zero.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

CACHE_DIR_NAME = "compile_cache"
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # torch's variable: inductor, AOTAutograd and triton keep their files there
# Read when this module is imported, before torch._dynamo is: importing that fills the variable with torch's
# default (/tmp/torchinductor_$USER), after which a folder the user chose can no longer be told apart.
USER_CACHE_DIR = os.environ.get(CACHE_ENV)


def use_compile_cache(result_path: str | os.PathLike) -> Path:
    """Point torch's compile caches at ``<result_path>/compile_cache``, or at the TORCHINDUCTOR_CACHE_DIR the user
    set, and return the folder; inductor reads the variable at each cache lookup."""
    folder = USER_CACHE_DIR or str(Path(result_path).resolve() / CACHE_DIR_NAME)
    os.environ[CACHE_ENV] = folder
    return Path(folder)


def compile_model(net: nn.Module) -> nn.Module:
    """``CompiledModel(net)``, or ``net`` itself when torch.compile refuses at once (a Python version dynamo does
    not support raises there, not at the first call)."""
    try:
        return CompiledModel(net)
    except Exception as error:  # noqa: BLE001 - any refusal leaves the eager model, which always runs
        _warn_compile_failed(error)
        return net


def _warn_compile_failed(error: BaseException) -> None:
    log.warning("warning: --compile failed (%s); continuing without compiling, with the same weights and "
                "optimiser state", first_line(error))


class CompiledModel(nn.Module):
    """``net`` under ``torch.compile(fullgraph=True)`` until a compile or a compiled call fails, then ``net`` itself.

    The compiled module is registered as ``_orig_mod`` (torch.compile's own name), so ``unwrap_model`` and
    the ``_orig_mod.`` key prefixes that checkpoints already strip see through this wrapper too.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self._orig_mod = torch.compile(net, fullgraph=True)
        self.active = True  # False once a failure sent the model back to eager
        self._buffers_before: list[torch.Tensor] | None = None  # BatchNorm statistics before the last training forward

    @property
    def eager(self) -> nn.Module:
        return self._orig_mod._orig_mod

    def forward(self, *args, **kwargs):
        if self.active:
            if self.training and torch.is_grad_enabled():
                self._remember_buffers()
            try:
                return self._orig_mod(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - whatever a compiler raised, the eager model can run
                self.fall_back(error)
        return self.eager(*args, **kwargs)

    def fall_back(self, error: Exception) -> None:
        """Go back to the eager model for good after ``error``: the buffers a failed training step may have
        updated are restored, the failure is named in one line."""
        if not self.active:
            return
        if self._buffers_before is not None:
            torch._foreach_copy_(list(self.eager.buffers()), self._buffers_before)
        self.active, self._buffers_before = False, None
        _warn_compile_failed(error)

    def _remember_buffers(self) -> None:
        # One fused copy per step into tensors allocated once: the statistics a failed step must not change twice.
        buffers = list(self.eager.buffers())
        if self._buffers_before is None:
            self._buffers_before = [b.clone() for b in buffers]
        elif buffers:
            torch._foreach_copy_(self._buffers_before, buffers)


def compiled_part(model: nn.Module) -> CompiledModel | None:
    """The :class:`CompiledModel` of a training model (inside DDP when distributed), or None without --compile."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return inner if isinstance(inner, CompiledModel) else None


def first_line(error: BaseException) -> str:
    """``Type: first line`` of the exception that started a chain (dynamo re-raises a backend's error
    ``from`` it, under a first line that says only which backend failed)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class CompileReport:
    """Compile time and cache use since the last report, from torch's own counters, as one log line."""

    KEYS = {"graph cache hits": ("inductor", "fxgraph_cache_hit"),
            "graph cache misses": ("inductor", "fxgraph_cache_miss"),
            "autograd cache hits": ("aot_autograd", "autograd_cache_hit"),
            "autograd cache misses": ("aot_autograd", "autograd_cache_miss")}

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir
        self.last = self._now()

    @classmethod
    def _now(cls) -> dict[str, float]:
        # torch._dynamo is reached as an attribute (torch imports it on first use), not imported at the top:
        # importing it takes seconds that a run without --compile should not pay.
        utils = torch._dynamo.utils
        now = {name: utils.counters[group][key] for name, (group, key) in cls.KEYS.items()}
        now["seconds"] = utils.calculate_time_spent().get("total_wall_time", 0.0)
        return now

    def log_new(self) -> dict[str, float] | None:
        """Log what was compiled since the last call (nothing when nothing was); returns those numbers."""
        now = self._now()
        new = {name: now[name] - self.last[name] for name in now}
        self.last = now
        if not any(new.values()):
            return None
        lookups = ", ".join(f"{int(new[name])} {name}" for name in self.KEYS if new[name]) or "no cache lookups"
        log.info("compiled in %.1f s: %s (cache %s)", new["seconds"], lookups, self.cache_dir)
        return new
