"""Remove the ``module.`` prefix that DataParallel/DDP adds to the keys of a checkpoint's state_dict.

Usage: ``python -m util_scripts.remove_dataparallel FILE [--dst_file_path OUT]``

Unlike the original, only keys that really start with ``module.`` (or torch.compile's
``_orig_mod.``) are changed, so running it on a clean file is harmless. The file is loaded
safely (weights only) and written atomically; other entries (epoch, optimizer, ...) are kept.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from checkpoint import load_checkpoint, save_checkpoint, strip_wrapper_prefixes
from util_scripts.common import run_cli


def remove_prefixes(src: Path, dst: Path) -> int:
    """Write ``src`` with cleaned state_dict keys to ``dst``; return how many keys changed."""
    checkpoint = load_checkpoint(src)
    state_dict = checkpoint.state_dict
    cleaned = strip_wrapper_prefixes(state_dict)
    save_checkpoint(dst, {**checkpoint, "state_dict": cleaned})  # every other key as it was, foreign ones too
    return sum(old != new for old, new in zip(state_dict, cleaned))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file_path", type=Path, help="checkpoint (.pth)")
    parser.add_argument("--dst_file_path", type=Path, default=None, help="output file (default: overwrite file_path)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dst = args.dst_file_path or args.file_path
    n_changed = remove_prefixes(args.file_path, dst)
    print(f"{n_changed} state_dict keys had a wrapper prefix; wrote {dst}")
    return 0


if __name__ == "__main__":
    run_cli(main)
