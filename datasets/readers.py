"""Frame readers: fetch the encoded JPEG bytes of given frame indices, and decode them only as large as needed.

Readers implement datasets.file_reader.FileReader (registered in datasets.file_types) and return one
entry per requested index: the encoded bytes, or None when the frame is missing (they never raise for
a missing frame; the clip loader repairs and counts).
- `JpegDirReader` (--file_type jpg): <dir>/image_00001.jpg ... (1-based indices).
- `Hdf5Reader` (--file_type hdf5): <base>.hdf5, dataset 'video' of vlen uint8 JPEG bytes (0-based).
- `FlowHdf5Reader`: datasets 'video_u' and 'video_v' -> (u_bytes, v_bytes) per frame.
- `datasets.video_files.VideoFileReader` (--file_type video): decoded PyAV frames instead of bytes.
The HDF5 file is opened per read, so nothing is shared across worker processes.
`decode_frame` and `frame_size` take what any reader fetched: JPEG bytes, an av.VideoFrame or a uint8 array.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from datasets.file_reader import FileReader
from datasets.layout import HDF5_FLOW_KEYS, HDF5_FRAMES_KEY, HDF5_SUFFIX, frame_path
from datasets.video_files import displayed_size, upright_image
from errors import ReadError, UserError

try:  # libjpeg-turbo with DCT-domain downscaling; optional
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

logger = logging.getLogger(__name__)

Encoded = bytes | tuple[bytes, bytes]


class JpegDirReader(FileReader):
    """Frames stored as <video_dir>/image_00001.jpg ... (datasets.layout.frame_name), numbered from 1."""

    first_frame = 1
    stored_as = "frame folders"

    @classmethod
    def is_stored(cls, path: Path) -> bool:
        return Path(path).is_dir()

    def count_frames(self, path: Path) -> int:
        """Files whose name contains 'image', not hidden (the original's count)."""
        try:
            return sum(1 for name in os.listdir(path) if _is_frame_name(name))
        except OSError as e:
            raise UserError(f"cannot list the frame folder {path}: {e}") from None

    def fetch(self, path: Path, indices: Sequence[int]) -> list[Encoded | None]:
        out: list[Encoded | None] = []
        for i in indices:
            try:
                out.append(frame_path(path, i).read_bytes())
            except OSError:
                out.append(None)
        return out

    @classmethod
    def videos_in(cls, folder: Path, filenames: Sequence[str]) -> list[Path]:
        """A folder holding frames is one video."""
        return [Path(folder)] if any(_is_frame_name(name) for name in filenames) else []

    def problem(self, path: Path) -> str | None:
        """No first frame, or a first frame that is not an image."""
        first = frame_path(path, self.first_frame)
        if not first.is_file():
            return f"no {first.name}"
        try:
            with Image.open(first) as img:
                img.load()
        except Exception as e:  # noqa: BLE001 - Pillow raises many error types for broken images
            return f"{first.name} cannot be decoded: {e}"
        return None


def _is_frame_name(name: str) -> bool:
    return "image" in name and not name.startswith(".")


class Hdf5Reader(FileReader):
    """Frames stored as encoded bytes in HDF5 datasets (one per channel group) of <base>.hdf5, numbered from 0."""

    channels = 3
    holds_flow = True
    stored_as = "hdf5 files"
    keys: tuple[str, ...] = (HDF5_FRAMES_KEY,)

    @classmethod
    def for_annotation_file(cls, annotation_path: Path, *, flow: bool = False) -> Hdf5Reader:
        return FlowHdf5Reader() if flow else Hdf5Reader()

    @classmethod
    def location(cls, base: Path) -> Path:
        base = Path(base)
        return base.with_name(base.name + HDF5_SUFFIX)

    @classmethod
    def is_stored(cls, path: Path) -> bool:
        return Path(path).is_file()

    def count_frames(self, path: Path) -> int:
        """Length of the frames dataset ('video', else 'video_u' for a flow-only file)."""
        try:
            with h5py.File(path, "r") as f:
                key = HDF5_FRAMES_KEY if HDF5_FRAMES_KEY in f else HDF5_FLOW_KEYS[0]
                return len(f[key])
        except (OSError, KeyError) as e:
            raise UserError(f"cannot read hdf5 video {path}: {e}") from None

    def fetch(self, path: Path, indices: Sequence[int]) -> list[Encoded | None]:
        try:
            with h5py.File(path, "r") as f:
                datasets = [f[k] for k in self.keys]
                n = min(len(d) for d in datasets)
                return [self._element(datasets, i, n) for i in indices]
        except (OSError, KeyError, ValueError) as e:
            raise ReadError(f"cannot read {path}: {e}") from None

    def _element(self, datasets: list, i: int, n: int) -> Encoded | None:
        if not 0 <= i < n:
            return None
        try:
            parts = [d[i].tobytes() for d in datasets]
        except (OSError, ValueError):
            return None
        return parts[0] if len(parts) == 1 else tuple(parts)


class FlowHdf5Reader(Hdf5Reader):
    """Optical flow: grayscale JPEG frames in 'video_u' and 'video_v' -> 2 channels (u, v)."""

    channels = 2
    keys = HDF5_FLOW_KEYS


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG header, without decoding pixels."""
    if simplejpeg is not None:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return width, height
        except (ValueError, RuntimeError):
            pass
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def decode_jpeg(data: bytes, *, gray: bool = False, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode JPEG bytes to an RGB (or 'L') PIL image of at least `min_size` (DCT-domain downscaling).

    `min_size=None` decodes at full size. Raises OSError/ValueError on corrupt data.
    """
    if simplejpeg is not None:
        try:
            kw = {"min_width": min_size[0], "min_height": min_size[1]} if min_size else {}
            arr = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "RGB", **kw)
            return Image.fromarray(arr[..., 0] if gray else arr, "L" if gray else "RGB")
        except (ValueError, RuntimeError):
            pass  # not a baseline JPEG simplejpeg handles (or corrupt): let Pillow decide
    img = Image.open(io.BytesIO(data))
    if min_size is not None:
        img.draft("L" if gray else "RGB", min_size)
    return img.convert("L" if gray else "RGB")


def frame_size(data) -> tuple[int, int]:
    """(width, height) of an encoded JPEG, a uint8 array (H, W[, C]) or an already decoded video frame
    (as displayed: rotation applied)."""
    if isinstance(data, bytes):
        return jpeg_size(data)
    if isinstance(data, np.ndarray):
        return data.shape[1], data.shape[0]
    return displayed_size(data)


def scales_to_any_size(data) -> bool:
    """Whether a reduced decode of `data` can take any size: a video frame (swscale), not JPEG bytes (DCT scaling
    by 1/2, 1/4, 1/8) nor pixels already decoded."""
    return not isinstance(data, (bytes, tuple, np.ndarray))


def decode_frame(data, *, gray: bool = False, min_size: tuple[int, int] | None = None) -> Image.Image:
    """JPEG bytes, a uint8 array (H, W[, C]) or a PyAV video frame (turned upright) -> PIL image of at least
    `min_size` (aspect kept)."""
    if isinstance(data, bytes):
        return decode_jpeg(data, gray=gray, min_size=min_size)
    if isinstance(data, np.ndarray):  # pixels already (a reader of raw frames): full size is at least min_size
        return Image.fromarray(data).convert("L" if gray else "RGB")
    return upright_image(data, min_size)  # a video frame: upright, downscaled by swscale


def check_frames_fit(reader, records: Sequence, sample_size: int, *, n_videos: int = 3) -> None:
    """UserError when the frames are smaller than the crop (``--sample_size``): crops would be upsampled.

    Cheap: reads only the first frame's header of up to ``n_videos`` videos and stops at the first
    readable one (bad videos are counted during the run, not here).
    """
    for record in list(records)[:n_videos]:
        try:
            data = reader.fetch(record.path, [record.segment[0]])[0]
            if data is None:
                continue
            width, height = frame_size(data[0] if isinstance(data, tuple) else data)
        except (ReadError, OSError, ValueError, SyntaxError):
            continue
        if sample_size > min(width, height):
            raise UserError(f"--sample_size {sample_size} is larger than the frames of video {record.video_id} "
                            f"({width}x{height}); use --sample_size <= {min(width, height)} or extract larger frames")
        return
