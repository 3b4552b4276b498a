"""--compile: the model under torch.compile, with the eager model as the way back.

A compile, or a compiled call, that fails (dynamo, AOTAutograd or inductor; at the first call or at a later
recompile, in training, validation or inference) costs one warning line, never the run: :class:`CompiledModel`
goes back to the eager model, which holds the very same parameters and buffers, for the rest of the run. A
forward that failed is made again eagerly at once; a training step whose compiled backward failed is made again
by the trainer (``engine.training``), after :meth:`CompiledModel.fall_back` has put the BatchNorm statistics back
to what they were before that step's forward. The gradients need nothing: the model is compiled as one graph
(``fullgraph=True``), so its backward is a single autograd node and a failure inside it has accumulated no
gradient yet (and the optimiser steps only after a backward that succeeded).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

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
        log.warning("warning: --compile failed (%s); continuing without compiling, with the same weights and "
                    "optimiser state", first_line(error))

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

