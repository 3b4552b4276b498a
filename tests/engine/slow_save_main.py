"""Test harness: run main.py with checkpoint writes stretched out, so a test can kill a run mid-write.

    python tests/engine/slow_save_main.py <main.py flags>

``torch.save`` is replaced (in this process only) by one that serialises to memory and then writes
the bytes in 8 pieces over TOOLKIT_TEST_SAVE_SECONDS (default 0.4 s) into the temporary file that
checkpoint.save_checkpoint renames afterwards. Production code has no test hook.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

SECONDS = float(os.environ.get("TOOLKIT_TEST_SAVE_SECONDS", "0.4"))
PIECES = 8
_real_save = torch.save


def _slow_save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)):
        return _real_save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    _real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    step = -(-len(data) // PIECES)
    for start in range(0, len(data), step):
        f.write(data[start : start + step])
        f.flush()
        time.sleep(SECONDS / PIECES)
    return None


torch.save = _slow_save

if __name__ == "__main__":
    import main

    sys.exit(main.main(sys.argv[1:]))
