"""The file types the data may be stored as (`--file_type`): name -> reader class, the one registry.

Everything that depends on the file type asks the reader class registered here (see
datasets.file_reader.FileReader): the `--file_type` choices, where the dataset looks for a video, its
frame numbering and count, the loader's reader. A new file type is one FileReader subclass plus one line here.
"""

from __future__ import annotations

from datasets.file_reader import FileReader
from datasets.readers import Hdf5Reader, JpegDirReader
from datasets.video_files import VideoFileReader

FILE_READERS: dict[str, type[FileReader]] = {
    "jpg": JpegDirReader,
    "hdf5": Hdf5Reader,
    "video": VideoFileReader,
}


def file_types() -> tuple[str, ...]:
    """The registered names, in registry order (read when asked, so a type registered later counts)."""
    return tuple(FILE_READERS)


def flow_file_types() -> tuple[str, ...]:
    """The names of the file types that can hold optical flow (--input_type flow)."""
    return tuple(name for name, reader in FILE_READERS.items() if reader.holds_flow)
