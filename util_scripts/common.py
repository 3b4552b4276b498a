"""Shared pieces of the data preparation scripts.

- where the videos of each dataset layout live (:func:`find_videos`), every video file of a folder tree
  (:func:`find_video_files`),
- decoding and resizing with PyAV in the same way as the ``ffmpeg`` command line of the
  original scripts (:func:`iter_frames`, :func:`scaled_size`),
- JPEG encoding, atomic output folders and files,
- a process pool with a progress bar that reports failed videos instead of stopping and hands each result
  over as it comes (:func:`run_over_videos`),
- the entry-point wrapper that turns :class:`errors.UserError` into one line and exit code 2, and Ctrl-C into
  one line and exit code 130.

Everything runs in-process: no ``ffmpeg``/``ffprobe`` executable is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import av.filter
from tqdm import tqdm

from datasets.layout import DATASETS, FLAT_DATASETS, RAW_VIDEO_EXTENSION, has_video_extension
from datasets.video_files import (
    BY_TIMESTAMPS,
    DecodeCounts,
    VideoMeta,
    normalized_rotation,
    probe_video,
    stream_frames,
    upright_image,
)
from errors import UserError
from utils import (  # noqa: F401 (atomic_file: the tools import it from here)
    PARTIAL_MARK,
    UNFINISHED_OUTPUTS,
    atomic_file,
    beside_input,
    new_file_mode,
    registered_unfinished,
)

logger = logging.getLogger(__name__)

# Hidden prefix of half-written outputs; never mistaken for a finished video.


@dataclass(frozen=True)
class VideoItem:
    """One video to convert.

    Attributes:
        src: the video file.
        rel: output location relative to the destination root, without extension:
            ``<class>/<stem>`` (or ``<stem>`` for ActivityNet).
    """

    src: Path
    rel: Path


@dataclass(frozen=True)
class ItemResult:
    """What happened to one video: status is 'done', 'skipped' or 'failed'."""

    item: VideoItem
    status: str
    n_frames: int = 0
    message: str = ""
    details: dict | None = None  # tool-specific findings (e.g. check_videos' scan)


def find_videos(src_dir: Path, dataset: str, extensions: Sequence[str] | None = None) -> list[VideoItem]:
    """All videos of ``src_dir`` in the layout of ``dataset`` whose extension is one of ``extensions`` (any
    letter case, dot optional; default: the dataset's own, as the original scripts took), sorted.

    ActivityNet, SSv2 and Charades keep every video directly in ``src_dir`` (output ``<stem>``); the other
    datasets have one sub-folder per class, ``test`` included (output ``<class>/<stem>``).
    Hidden files and files that are no video are ignored; video files of another extension are counted in one
    warning that says how to take them too (a download tool often saves some videos as .webm or .mkv).
    """
    if dataset not in RAW_VIDEO_EXTENSION:
        raise UserError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise UserError(f"video folder not found: {src_dir}")
    wanted = _normalized_extensions(extensions) if extensions else (RAW_VIDEO_EXTENSION[dataset],)
    if dataset in FLAT_DATASETS:
        folders = [(src_dir, Path())]
        layout = f"{src_dir}/<video>{wanted[0]}"
    else:
        class_dirs = sorted(d for d in src_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        folders = [(d, Path(d.name)) for d in class_dirs]
        layout = f"{src_dir}/<class>/<video>{wanted[0]}"
    items, others = [], []
    for folder, rel in folders:
        for path in _visible_files(folder):
            if has_video_extension(path, wanted):
                items.append(VideoItem(path, rel / path.stem))
            elif has_video_extension(path):
                others.append(path)
    if not items:
        found = f"; found {_count_by_extension(others)}: add {_extensions_flag(wanted, others)}" if others else ""
        raise UserError(f"no {'/'.join(wanted)} videos found for dataset '{dataset}' "
                        f"(expected layout: {layout}{found})")
    check_one_video_per_output(items)
    if others:
        _warn_other_extensions(src_dir, wanted, others)
    return items


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _normalized_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    """'MKV', '.mp4' -> ('.mkv', '.mp4'): lower case with a dot, as has_video_extension compares them."""
    return tuple(dict.fromkeys("." + e.lower().lstrip(".") for e in extensions))


def _count_by_extension(paths: Sequence[Path]) -> str:
    """'2 .mkv, 1 .webm': how many of the paths have each extension (lower case), by extension."""
    counts = Counter(p.suffix.lower() for p in paths)
    return ", ".join(f"{counts[ext]} {ext}" for ext in sorted(counts))


def _extensions_flag(wanted: Sequence[str], others: Sequence[Path]) -> str:
    """The --video_extensions option that takes the wanted extensions and those of the other videos."""
    return "--video_extensions " + " ".join(dict.fromkeys([*wanted, *sorted(p.suffix.lower() for p in others)]))


def _warn_other_extensions(src_dir: Path, wanted: Sequence[str], others: Sequence[Path]) -> None:
    are = "are" if len(others) > 1 else "is"
    print(f"warning: {len(others)} video file{'s' if len(others) > 1 else ''} in {src_dir} {are} not "
          f"{'/'.join(wanted)} and {are} not converted ({_count_by_extension(others)}; e.g. {others[0]}): to convert "
          f"them too, give {_extensions_flag(wanted, others)}", file=sys.stderr)


def find_video_files(root: Path) -> list[Path]:
    """Every file under ``root`` (recursively) with a video extension in any letter case, sorted; hidden files and
    everything inside hidden folders are left out (half-written outputs are hidden)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and has_video_extension(p)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def check_one_video_per_output(items: Sequence[VideoItem]) -> None:
    """UserError when two videos (x.mp4 and x.mkv) would be converted into the same output."""
    seen: dict[Path, Path] = {}
    for item in items:
        if item.rel in seen:
            raise UserError(f"{seen[item.rel]} and {item.src} would both become {item.rel}: keep one of them")
        seen[item.rel] = item.src


def scaled_size(width: int, height: int, size: int, *, multiple: int = 1) -> tuple[int, int]:
    """Output (width, height) whose SHORTER side is ``size``, aspect ratio kept, the longer side a multiple of
    ``multiple`` (2 for H.264 in yuv420p).

    Same rule as the original's ``scale=-1:size`` (landscape) / ``scale=size:-1`` (portrait or
    square) filters (``-2`` for ``multiple=2``): ffmpeg computes the free side with ``av_rescale``, i.e.
    rounding to the nearest integer (of multiples) with halves rounded up.
    """
    if width > height:
        return multiple * _round_half_up(size * width, height * multiple), size
    return size, multiple * _round_half_up(size * height, width * multiple)


def _round_half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def iter_frames(path: Path, *, size: int, fps: float = -1, threads: int = 1, multiple: int = 1) -> Iterator:
    """Decode ``path`` and yield PIL RGB images as displayed, resized so the short side is ``size``.

    Frames come out upright (a rotation in the display matrix, as phones record, is applied, as the
    ffmpeg command line does) and in display order, one image per frame: image i is the frame that
    ``--file_type video`` calls frame i, whatever the file's timestamps look like (see datasets.video_files:
    this is its sequential pass, ``stream_frames``). ``size <= 0`` keeps the original resolution; the longer side
    is a multiple of ``multiple`` (``scaled_size``). ``fps > 0`` (a float or an exact Fraction such as 30000/1001)
    resamples the frame rate with libavfilter's ``fps`` filter (the same frame selection as ``ffmpeg -vf fps=N``).
    Packets that fail to decode are skipped, as the ffmpeg command line does; a file that cannot be opened raises
    ``av.error.FFmpegError``, one with no video stream ``datasets.video_files.NoVideoStream`` (a ValueError).
    """
    meta = probe_video(path)
    graph = rotation = None
    counts = DecodeCounts()
    for number, _, frame in stream_frames(path, meta, threads=threads, counts=counts):
        if graph is None:
            rotation = normalized_rotation(frame.rotation)  # filtered frames may lose the side data
            graph = _build_graph(frame, size=size, fps=fps, rotation=rotation, multiple=multiple, threads=threads)
        graph.push(_on_probe_clock(frame, meta, number))
        yield from _drain(graph, rotation)
    if graph is not None:
        graph.push(None)
        yield from _drain(graph, rotation)
    if counts.errors:
        logger.warning("%s: skipped %d undecodable packets", path, counts.errors)


def _on_probe_clock(frame, meta: VideoMeta, number: int):
    """The frame with the time the probe gives its number, when the file's own timestamps do not number frames:
    they may repeat, be missing or run backwards, and the ``fps`` filter would pick frames by them."""
    if meta.numbering != BY_TIMESTAMPS:
        frame.pts = round(meta.frame_time(number) / frame.time_base)
    return frame


def _build_graph(first_frame, *, size: int, fps: float, rotation: int, multiple: int = 1, threads: int = 1):
    graph = av.filter.Graph()
    graph.threads = threads  # one per process when one process per core runs (the filters' default: one per core)
    chain = [graph.add_buffer(template=first_frame)]  # its size, pixel format and time base
    if fps > 0:
        chain.append(graph.add("fps", f"{fps}"))
    if size > 0:
        turned = rotation in (90, 270)  # scale the stored picture to the turned output size
        width, height = (first_frame.height, first_frame.width) if turned else (first_frame.width, first_frame.height)
        width, height = scaled_size(width, height, size, multiple=multiple)
        chain.append(graph.add("scale", f"{height}:{width}" if turned else f"{width}:{height}"))
    chain.append(graph.add("buffersink"))
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    return graph


def _drain(graph, rotation: int) -> Iterator:
    while True:
        try:
            frame = graph.pull()
        except (av.error.BlockingIOError, av.error.EOFError):
            return
        yield upright_image(frame, rotation=rotation)


def encode_jpeg(image, quality: int) -> bytes:
    """JPEG bytes of a PIL image."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def remove_partials(final: Path) -> None:
    """Delete half-written outputs of ``final`` left by an interrupted run."""
    _remove(final.parent.glob(f".{final.name}{PARTIAL_MARK}*"))


def remove_all_partials(root: Path) -> None:
    """Delete every half-written output under ``root`` (after an interruption stopped the workers, whose own
    clean-up a stop can cut short)."""
    _remove(Path(root).rglob(f".*{PARTIAL_MARK}*"))


def _remove(paths) -> None:
    for stale in list(paths):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``final`` that becomes ``final`` on success.

    On error the temporary folder is removed, so ``final`` either does not exist or is complete.
    An existing ``final`` is replaced.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = registered_unfinished(lambda: Path(tempfile.mkdtemp(prefix=f".{final.name}{PARTIAL_MARK}", dir=final.parent)))
    try:
        yield tmp
        os.chmod(tmp, new_file_mode(folder=True))  # mkdtemp makes it private
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        UNFINISHED_OUTPUTS.discard(tmp)


def check_writable_file(path: Path, *, what: str) -> None:
    """UserError, before any long work, when the output file ``path`` cannot be written: it is a folder, or its
    folder is a file or read-only. Creates the missing folders (the output goes there anyway)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; name a file")
    reason = _unwritable_folder_reason(path.parent)
    if reason is not None:
        raise UserError(f"cannot write {what} {path}: {reason}")


def _unwritable_folder_reason(folder: Path) -> str | None:
    """Why no file can be written into ``folder`` (created with its parents when missing), or None."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # the one sure test: permissions, read-only mounts, quotas
            pass
    except OSError as e:
        return f"{folder}: {e.strerror or e}"
    return None


def resolve_n_jobs(n_jobs: int) -> int:
    """-1 (or any value < 1) means one process per CPU core."""
    return n_jobs if n_jobs >= 1 else (os.cpu_count() or 1)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`run_over_videos` (its workers stopped, their unfinished outputs removed); the
    message says how far it got. Still a KeyboardInterrupt, so code that stops on one stops on it."""


def run_over_videos(
    worker: Callable[[VideoItem], ItemResult], items: Sequence[VideoItem], *, n_jobs: int, desc: str,
    rerun_hint: str = "",
    on_result: Callable[[ItemResult], None] | None = None,
) -> list[ItemResult]:
    """Run ``worker`` on every item, in ``n_jobs`` processes, with a progress bar.

    ``worker`` must be picklable (a module-level function or a ``functools.partial`` of one)
    and should return a 'failed' result rather than raise; an exception that escapes it is
    still caught and reported for that video only. ``on_result`` is called in this process with each
    result as it comes (e.g. to record finished videos while the others run, so that an interruption
    loses none of them). Ctrl-C stops every worker (each removes the temporary output of its current
    video) and raises :class:`Interrupted`, whose message counts the finished videos and ends with
    ``rerun_hint``.
    """
    n_jobs = min(resolve_n_jobs(n_jobs), max(1, len(items)))
    safe = _Guarded(worker)
    results = []
    with tqdm(total=len(items), desc=desc, unit="video", mininterval=0.5) as bar:
        if n_jobs == 1:
            mapped = map(safe, items)
            pool = None
        else:
            pool = multiprocessing.get_context().Pool(n_jobs, initializer=_leave_stopping_to_the_parent)
            mapped = pool.imap_unordered(safe, items, chunksize=1)
        try:
            for result in mapped:
                results.append(result)
                if on_result is not None:
                    on_result(result)
                bar.update()
                if result.status == "failed":
                    bar.write(f"failed: {result.item.src}: {result.message}", file=sys.stderr)
        except KeyboardInterrupt:
            interrupted = True
            if pool is not None:
                pool.terminate()  # SIGTERM: see _leave_stopping_to_the_parent
                pool.join()
        else:
            interrupted = False
            if pool is not None:  # every task done: the workers leave at the end of the task queue
                pool.close()
                pool.join()
        finally:
            if pool is not None:
                pool.terminate()  # after an error of the parent's own; a no-op after close/join or terminate
    if interrupted:
        raise Interrupted(_progress_note(results, len(items)) + (f"; {rerun_hint}" if rerun_hint else "")) from None
    return sorted(results, key=lambda r: str(r.item.rel))


def _leave_stopping_to_the_parent() -> None:
    """In each pool worker: Ctrl-C (which the terminal sends to every process) is left to the parent, which then
    stops the pool with SIGTERM; the worker removes the temporary output of its current video (atomic_dir) and
    exits at once, without a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _remove_unfinished_and_exit)


def _remove_unfinished_and_exit(signum: int, _frame) -> None:
    # os._exit, not SystemExit: an exception raised wherever the signal lands could be caught by the code it lands
    # in, or leave a pool lock held between its acquire and its `with` block, and the pool's join would wait forever.
    for tmp in list(UNFINISHED_OUTPUTS):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    os._exit(128 + signum)


def _progress_note(results: Sequence[ItemResult], total: int) -> str:
    counts = {status: sum(r.status == status for r in results) for status in ("done", "skipped", "failed")}
    return (f"stopped after {len(results)} of {total} videos ({counts['done']} done, {counts['skipped']} already "
            f"complete, {counts['failed']} failed); the unfinished ones left no output")


class _Guarded:
    """Picklable wrapper that turns an escaping exception into a 'failed' result."""

    def __init__(self, worker: Callable[[VideoItem], ItemResult]):
        self.worker = worker

    def __call__(self, item: VideoItem) -> ItemResult:
        try:
            return self.worker(item)
        except Exception as e:  # one bad video must not stop the others
            return ItemResult(item, "failed", message=f"{type(e).__name__}: {e}")


def summarize(results: Sequence[ItemResult], *, what: str) -> int:
    """Print a summary of the run; return the exit code (1 if any video failed, else 0)."""
    counts = {status: sum(r.status == status for r in results) for status in ("done", "skipped", "failed")}
    print(
        f"{what}: {counts['done']} converted, {counts['skipped']} already complete (skipped), "
        f"{counts['failed']} failed, of {len(results)} videos"
    )
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} videos could not be converted (rerun to retry only these):", file=sys.stderr)
        for r in failed:
            print(f"  {r.item.src}: {r.message}", file=sys.stderr)
        return 1
    return 0


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Call ``main(argv)``, print a UserError as ``error: ...`` and exit 2, Ctrl-C as ``interrupted: ...`` and exit
    130, else exit with its code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # Ctrl-C: one line, and the status a shell gives a job killed by SIGINT
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def build_conversion_parser(description: str):
    """Argument parser shared by generate_video_jpgs and generate_video_hdf5 (original CLI + extras)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("dir_path", type=Path, help="folder of the raw videos")
    parser.add_argument("dst_path", type=Path, help="output folder (created if missing)")
    parser.add_argument("dataset", choices=DATASETS, help="folder layout and video extension")
    own = ", ".join(f"{name} {ext}" for name, ext in RAW_VIDEO_EXTENSION.items())
    parser.add_argument("--video_extensions", nargs="+", default=None, metavar="EXT",
                        help=f"extensions of the videos to convert, any letter case (default: the dataset's: {own})")
    parser.add_argument("--n_jobs", type=int, default=-1, help="parallel processes over videos (-1: all CPU cores)")
    parser.add_argument("--fps", type=float, default=-1, help="output frame rate (-1: keep every frame)")
    parser.add_argument("--size", type=int, default=240, help="length of the SHORTER side in pixels (-1: keep)")
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality, 1-95 (ffmpeg's default output is lower)")
    return parser


def check_conversion_args(args) -> None:
    if not 1 <= args.quality <= 95:
        raise UserError(f"--quality must be in 1..95, got {args.quality}")
    if args.size == 0 or args.size < -1:
        raise UserError(f"--size must be a positive number of pixels or -1, got {args.size}")


def run_conversion(argv: Sequence[str] | None, convert_video: Callable[..., ItemResult], *, description: str,
                   desc: str, what: str) -> int:
    """The whole CLI of a video converter: parse, find the videos, convert them in parallel, summarise.

    ``convert_video(item, *, dst_root, size, fps, quality, threads)`` converts one video; ``what`` may
    contain ``{dst}`` for the output folder.
    """
    args = build_conversion_parser(description).parse_args(argv)
    check_conversion_args(args)
    items = find_videos(args.dir_path, args.dataset, args.video_extensions)
    worker = functools.partial(
        convert_video,
        dst_root=args.dst_path,
        size=args.size,
        fps=args.fps,
        quality=args.quality,
        threads=0 if args.n_jobs == 1 else 1,  # one process: let FFmpeg use every core
    )
    results = run_over_videos(worker, items, n_jobs=args.n_jobs, desc=desc,
                              rerun_hint="rerun the same command to convert the rest (finished videos are skipped)")
    return summarize(results, what=what.format(dst=args.dst_path))
