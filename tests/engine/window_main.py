"""Test harness: run main.py as a script and act at a chosen moment of the run (no test hook in production code).

    python tests/engine/window_main.py <main.py flags>

main.py runs as ``__main__`` (runpy), exactly as ``python main.py`` runs it. Before that, one function is
wrapped so that, when the run enters the window for the TOOLKIT_TEST_CALL-th time (default 1) on rank
TOOLKIT_TEST_RANK (default: any), the process does TOOLKIT_TEST_ACTION:

- a signal name (SIGTERM, SIGUSR1, SIGINT): the process sends it to itself (``signal.raise_signal``), so it
  lands right there, every time;
- ``wait:PATH``: create PATH.reached, then wait until PATH exists (a test holds the run in the window); after
  WAIT_LIMIT_S the process exits with status 97.

TOOLKIT_TEST_WINDOW, the moment:

- ``imports``: main.py's first import of torch (its heavy imports; main.py catches signals before them);
- ``setup``: building the model (models.factory.model_for_run);
- ``batch``: preparing a training batch (engine.training.prepare_batch);
- ``validation``: a validation pass (engine.validation.evaluate);
- ``save``: half-way through writing a checkpoint file (torch.save);
- ``inference``: the inference after the epochs (engine.inference.infer_subset);
- ``predict``: --predict, as a video's result is stored (predict.runner.result_entry);
- ``teardown``: leaving the process group as the process ends (engine.distributed.shutdown).
"""

from __future__ import annotations

import importlib.abc
import io
import os
import runpy
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WINDOW = os.environ["TOOLKIT_TEST_WINDOW"]
ACTION = os.environ["TOOLKIT_TEST_ACTION"]
CALL = int(os.environ.get("TOOLKIT_TEST_CALL", "1"))
RANK = os.environ.get("TOOLKIT_TEST_RANK")
WAIT_LIMIT_S = 600
_calls = 0


def _act() -> None:
    global _calls
    if RANK is not None and os.environ.get("RANK", "0") != RANK:
        return
    _calls += 1
    if _calls != CALL:
        return
    if ACTION.startswith("wait:"):
        release = Path(ACTION[len("wait:"):])
        Path(f"{release}.reached").touch()
        deadline = time.monotonic() + WAIT_LIMIT_S
        while not release.exists():
            if time.monotonic() > deadline:  # the test is gone: do not wait forever
                os._exit(97)
            time.sleep(0.05)
        return
    signal.raise_signal(getattr(signal, ACTION))


def _wrap(module, name: str) -> None:
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        _act()
        return original(*args, **kwargs)

    setattr(module, name, wrapped)


class _OnTorchImport(importlib.abc.MetaPathFinder):
    """Acts when torch is first imported, then leaves the import to the normal finders."""

    def find_spec(self, name, path, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            _act()
        return None


def _half_way_save(real_save):
    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        _act()
        f.write(data[len(data) // 2:])

    return save


def _arm() -> None:
    if WINDOW == "imports":  # nothing imported here: main.py's own imports come first
        sys.meta_path.insert(0, _OnTorchImport())
        return
    # Imported here, not at the top: the 'imports' window needs torch not yet imported when main.py starts.
    import torch

    from engine import distributed, inference, training, validation
    from models import factory
    from predict import runner

    targets = {"setup": (factory, "model_for_run"), "batch": (training, "prepare_batch"),
               "validation": (validation, "evaluate"), "inference": (inference, "infer_subset"),
               "teardown": (distributed, "shutdown"), "predict": (runner, "result_entry")}
    if WINDOW == "save":
        torch.save = _half_way_save(torch.save)
    else:
        _wrap(*targets[WINDOW])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _arm()
    sys.argv = [str(ROOT / "main.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "main.py"), run_name="__main__")
