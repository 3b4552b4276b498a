"""Extract the frames of every video into ``DST/<class>/<video>/image_00001.jpg, ...``.

Usage: ``python -m util_scripts.generate_video_jpgs SRC DST DATASET [--size 240] [--fps -1] [--n_jobs -1]
[--video_extensions EXT ...]``

A video whose output folder already holds frames is skipped, and folders are written under a
hidden temporary name and renamed when complete, so rerunning after an interruption converts
only what is missing. Videos that cannot be decoded are listed at the end; the exit code is
then 1 (0 when every video was converted or already complete, 2 for bad arguments). Ctrl-C stops
every worker, removes the folders of the videos in progress, says in one line how many videos
were finished and exits with 130.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datasets.layout import frame_name
from util_scripts.common import (
    ItemResult,
    VideoItem,
    atomic_dir,
    encode_jpeg,
    iter_frames,
    remove_partials,
    run_cli,
    run_conversion,
)


def is_complete(folder: Path) -> bool:
    """A frame folder is complete once it exists with frames: it only appears by an atomic rename."""
    return (folder / frame_name(1)).is_file()


def convert_video(item: VideoItem, *, dst_root: Path, size: int, fps: float, quality: int, threads: int) -> ItemResult:
    """Write the frames of one video; skip it if its folder is already complete."""
    final = dst_root / item.rel
    if is_complete(final):
        return ItemResult(item, "skipped")
    remove_partials(final)
    n_frames = 0
    with atomic_dir(final) as tmp:
        for n_frames, image in enumerate(iter_frames(item.src, size=size, fps=fps, threads=threads), start=1):
            (tmp / frame_name(n_frames)).write_bytes(encode_jpeg(image, quality))
        if n_frames == 0:
            raise ValueError("no frame could be decoded")
    return ItemResult(item, "done", n_frames=n_frames)


def main(argv: Sequence[str] | None = None) -> int:
    return run_conversion(argv, convert_video, description=__doc__.splitlines()[0], desc="jpg",
                          what="frames written to {dst}")

if __name__ == "__main__":
    run_cli(main)
