"""The stop signals of the process, caught from its first moment: SIGTERM, SIGUSR1 and Ctrl-C only ask.

main.py installs the handler before its heavy imports, so a signal that comes during start-up, set-up,
validation, a checkpoint write or teardown never kills the process on the spot. Where it lands decides
what it does:

- by default it is only recorded (:func:`received`): the training loop acts on it at its next step boundary
  (engine.preemption.StepControl, which also asks once before the first step), and one that comes once the
  work is done ends nothing early (main.py says so);
- inside :func:`interruptible` (evaluation, inference, --predict: nothing a checkpoint could keep) it raises
  :class:`StopRequested` at once. That is a KeyboardInterrupt, so the code that cleans up after Ctrl-C
  cleans up after it too; the exit status is still 128 + the signal.

A second Ctrl-C always raises KeyboardInterrupt at once. This module imports nothing heavy (no torch):
main.py imports it first.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class StopRequested(KeyboardInterrupt):
    """A stop signal inside :func:`interruptible`; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, note: str):
        super().__init__(f"stopped by {signal_name(signum)} {note}")
        self.signum = signum
        self.exit_code = 128 + signum


class _Catcher:
    """What the handler knows: the first stop signal, whether to raise it, who to tell."""

    def __init__(self) -> None:
        self.previous: dict[int, object] | None = None  # the handlers before install(); None: not installed
        self.signum = 0
        self.interrupt_note: str | None = None  # inside interruptible(): raise, with this note
        self.listener: Callable[[int], None] | None = None


_catcher = _Catcher()


def install() -> bool:
    """Catch the stop signals from now on (main thread only, as Python requires), with no signal recorded yet.

    Returns False, changing nothing, when they are already caught (main.py did it at process start)."""
    if _catcher.previous is not None:
        return False
    _catcher.signum = 0
    _catcher.previous = {sig: signal.signal(sig, _on_signal) for sig in STOP_SIGNALS}
    return True


def uninstall() -> None:
    """Give the stop signals back to the handlers :func:`install` found, and forget a recorded signal."""
    for sig, handler in (_catcher.previous or {}).items():
        signal.signal(sig, handler)
    _catcher.previous = None
    _catcher.signum = 0
    _catcher.listener = None


@contextlib.contextmanager
def caught() -> Iterator[None]:
    """Catch the stop signals for the duration (a no-op where they are caught already: at the process start,
    the catch lasts until the process ends; an in-process caller such as a test gets its handlers back)."""
    installed = install()
    try:
        yield
    finally:
        if installed:
            uninstall()


def received() -> int:
    """The first stop signal received (0: none)."""
    return _catcher.signum


def on_first_signal(listener: Callable[[int], None] | None) -> None:
    """Call ``listener(signum)`` (from the handler) when the first stop signal comes; None: nobody."""
    _catcher.listener = listener


@contextlib.contextmanager
def interruptible(note: str) -> Iterator[None]:
    """A stretch with nothing to checkpoint: a stop signal, received before or during it, raises
    :class:`StopRequested` saying ``stopped by <signal> <note>``."""
    raise_if_received(note)
    outer, _catcher.interrupt_note = _catcher.interrupt_note, note
    try:
        yield
    finally:
        _catcher.interrupt_note = outer


def raise_if_received(note: str) -> None:
    """Raise :class:`StopRequested` (``stopped by <signal> <note>``) if a stop signal has come."""
    if _catcher.signum:
        raise StopRequested(_catcher.signum, note)


def _on_signal(signum: int, frame) -> None:
    if signum == signal.SIGINT and _catcher.signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now, whatever is half done
    if _catcher.signum:
        return  # already stopping
    _catcher.signum = signum
    if _catcher.interrupt_note is not None:
        raise StopRequested(signum, _catcher.interrupt_note)
    if _catcher.listener is not None:
        _catcher.listener(signum)
    else:
        hint = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        log.warning("received %s: stopping at the next safe point%s", signal_name(signum), hint)
