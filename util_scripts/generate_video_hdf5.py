"""Store every video as one HDF5 file ``DST/<class>/<video>.hdf5`` of JPEG-encoded frames.

Usage: ``python -m util_scripts.generate_video_hdf5 SRC DST DATASET [--size 240] [--fps -1] [--n_jobs -1]
[--video_extensions EXT ...]``

The file holds one dataset, ``video``: a 1-D array of variable-length uint8 arrays, element i
being the complete JPEG file of frame i+1 (the layout the original loader reads). Frames are
encoded in memory in a single pass and the file is written under a hidden temporary name,
then renamed, so an existing ``.hdf5`` is always complete and is skipped on a rerun. Exit code:
0 when every video was converted or skipped, 1 if some could not be decoded (listed at the end),
2 for bad arguments, 130 after Ctrl-C (the files in progress are removed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from datasets.layout import HDF5_FRAMES_KEY
from datasets.readers import Hdf5Reader
from util_scripts.common import (
    ItemResult,
    VideoItem,
    atomic_file,
    encode_jpeg,
    iter_frames,
    remove_partials,
    run_cli,
    run_conversion,
)


def write_jpeg_hdf5(path: Path, jpegs: Sequence[bytes]) -> None:
    """Write ``jpegs`` as the vlen-uint8 dataset ``video`` of a new HDF5 file at ``path``."""
    data = np.empty(len(jpegs), dtype=object)
    for i, jpeg in enumerate(jpegs):
        data[i] = np.frombuffer(jpeg, dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset(HDF5_FRAMES_KEY, data=data, dtype=h5py.vlen_dtype(np.dtype("uint8")))


def convert_video(item: VideoItem, *, dst_root: Path, size: int, fps: float, quality: int, threads: int) -> ItemResult:
    """Write the HDF5 file of one video; skip it if the file already exists."""
    final = Hdf5Reader.location(dst_root / item.rel)
    if final.is_file():
        return ItemResult(item, "skipped")
    jpegs = [encode_jpeg(image, quality) for image in iter_frames(item.src, size=size, fps=fps, threads=threads)]
    if not jpegs:
        raise ValueError("no frame could be decoded")
    remove_partials(final)
    with atomic_file(final) as tmp:
        write_jpeg_hdf5(tmp, jpegs)
    return ItemResult(item, "done", n_frames=len(jpegs))


def main(argv: Sequence[str] | None = None) -> int:
    return run_conversion(argv, convert_video, description=__doc__.splitlines()[0], desc="hdf5",
                          what="hdf5 files written to {dst}")

if __name__ == "__main__":
    run_cli(main)
