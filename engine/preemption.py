"""Stopping a training run without losing work: signals only ask, the loop decides after an optimiser step.

SIGTERM (what schedulers and ``kill`` send), SIGUSR1 (SLURM's ``--signal=USR1@SECONDS`` warning) and Ctrl-C
are caught from the process start (engine.stop_signals) and only recorded. After each optimiser step
:meth:`StepControl.poll` combines the flags of all ranks (one tiny all-reduce on the CPU), so every rank
stops after the same step; the trainer then writes ``latest.pth`` and raises :class:`Preempted`, whose
``exit_code`` is 128 + the signal number (143 SIGTERM, 138 SIGUSR1, 130 Ctrl-C). A signal that came during
start-up is acted on before the first step (:meth:`StepControl.stop_requested`: nothing new to save), one
during validation or a checkpoint write at the next poll. A second Ctrl-C stops at once
(KeyboardInterrupt). The same poll says when the rolling ``latest.pth`` is due (every
``--checkpoint_minutes``, by rank 0's clock).

A rank stuck inside a training step (a hung peer, a dead file system) would never reach the next poll: if
a signal arrives during the training loop and no poll comes within max(STOP_GRACE_S, 3 x the longest step
so far), the process exits at once without saving, as a kill would, so a launcher's SIGTERM still ends it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from enum import Enum

import torch
import torch.distributed as dist

from engine import stop_signals

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0


class Action(Enum):
    SAVE = "save"  # write the rolling checkpoint and go on
    STOP = "stop"  # write it and stop


class Preempted(Exception):
    """Training stopped on a signal after saving; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StepControl:
    """Whether to save or stop after this step, agreed by all ranks.

    Args:
        checkpoint_minutes: minutes between rolling checkpoints (0: only when stopping).
        is_main: this process keeps the clock of the rolling checkpoint.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, *, checkpoint_minutes: float, is_main: bool = True, clock=time.monotonic):
        self.interval_s = checkpoint_minutes * 60.0
        self.is_main = is_main
        self.clock = clock
        self.signum = 0  # the first stop signal of any rank, once a poll has agreed on it
        self._last_save = self._last_poll = clock()
        self._longest_step = 0.0
        self.stepping = False  # inside the training loop (begin_steps / end_steps)
        self._watchdog: threading.Timer | None = None
        self._installed_here = False
        self._group = _cpu_group()

    def install(self) -> None:
        """Act on the stop signals (caught here if main.py has not caught them since the process start):
        one that comes while stepping arms the stuck-step watchdog. :meth:`uninstall` undoes it."""
        self._installed_here = stop_signals.install()
        stop_signals.on_first_signal(self._on_signal)

    def uninstall(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        stop_signals.on_first_signal(None)
        if self._installed_here:
            stop_signals.uninstall()
            self._installed_here = False

    def _on_signal(self, signum: int) -> None:
        hint = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        log.warning("received %s: finishing this step, then saving a checkpoint%s", signal.Signals(signum).name,
                    hint)
        if not self.stepping:
            return  # validation or a checkpoint write: they end by themselves, the next poll acts
        grace = max(STOP_GRACE_S, 3 * self._longest_step)
        self._watchdog = threading.Timer(grace, self._stuck, args=(signum, grace))
        self._watchdog.daemon = True
        self._watchdog.start()

    @staticmethod
    def _stuck(signum: int, grace: float) -> None:
        print(f"stopped by {signal.Signals(signum).name}: no step finished within {grace:.0f} s, this process "
              "seems stuck; exiting without a checkpoint", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def begin_steps(self) -> None:
        """A training loop starts: from here to :meth:`end_steps` a signal arms the stuck-step watchdog."""
        self.stepping, self._last_poll = True, self.clock()

    def end_steps(self) -> None:
        self.stepping = False

    def poll(self) -> Action | None:
        """Called by every rank after each optimiser step (and at the end of an epoch)."""
        now = self.clock()
        self._longest_step = max(self._longest_step, now - self._last_poll)
        self._last_poll = now
        if self._watchdog is not None:  # a step boundary was reached: saving may take as long as it needs
            self._watchdog.cancel()
            self._watchdog = None
        due = self.is_main and self.interval_s > 0 and self.clock() - self._last_save >= self.interval_s
        signum, due = self._agree(stop_signals.received(), int(due))
        if signum:
            self.signum = signum
            return Action.STOP
        return Action.SAVE if due else None

    def stop_requested(self) -> bool:
        """Whether any rank has received a stop signal (every rank calls it, at the same point): before the
        first step, so a signal that came during start-up stops the run before it trains."""
        signum, _ = self._agree(stop_signals.received(), 0)
        self.signum = self.signum or signum
        return bool(signum)

    def _agree(self, signum: int, due: int) -> tuple[int, int]:
        """The largest signal number and due flag over all ranks."""
        flags = torch.tensor([signum, due], dtype=torch.int64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group)
        signum, due = (int(v) for v in flags.tolist())
        return signum, due

    def saved(self) -> None:
        """A rolling checkpoint was just written: the next one is due in ``checkpoint_minutes``."""
        self._last_save = self.clock()

    def barrier(self) -> None:
        """Wait for every rank (on the CPU group): used before stopping, so no rank exits while rank 0 saves."""
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier(group=self._group)


def _cpu_group():
    """A gloo group for the per-step flags: on CUDA (nccl) they would otherwise cost a device sync."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return None
    if dist.get_backend() == "gloo":
        return None  # the default group already works on CPU tensors
    return dist.new_group(backend="gloo")
