"""Test harness: run main.py with one rank failing mid-epoch (no test hook in production code).

    python tests/engine/fail_rank_main.py <main.py flags>     (under torchrun or with RANK/WORLD_SIZE set)

- TOOLKIT_TEST_FAIL_RANK (default 1): the rank that fails;
- TOOLKIT_TEST_FAIL_AT_BATCH (default 2): the batch at which it fails (1-based, training and validation
  batches counted together over the whole run);
- TOOLKIT_TEST_FAIL_MODE: 'raise' (an exception, default), 'exit' (the process vanishes with os._exit,
  as if killed) or 'hang' (it stops responding, so the others wait in a collective until --dist_timeout).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine import training  # noqa: E402

FAIL_RANK = int(os.environ.get("TOOLKIT_TEST_FAIL_RANK", "1"))
FAIL_AT = int(os.environ.get("TOOLKIT_TEST_FAIL_AT_BATCH", "2"))
MODE = os.environ.get("TOOLKIT_TEST_FAIL_MODE", "raise")
_original_prepare = training.prepare_batch
_calls = 0


def _failing_prepare(*args, **kwargs):
    global _calls
    _calls += 1
    if int(os.environ.get("RANK", "0")) == FAIL_RANK and _calls == FAIL_AT:
        if MODE == "exit":
            os._exit(3)
        if MODE == "hang":
            time.sleep(3600)
        raise RuntimeError(f"injected failure at batch {_calls}")
    return _original_prepare(*args, **kwargs)


training.prepare_batch = _failing_prepare

if __name__ == "__main__":
    import main

    sys.exit(main.main(sys.argv[1:]))
