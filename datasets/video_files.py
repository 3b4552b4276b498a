"""Decoding video files with PyAV: frames as a person sees them, numbered by presentation order.

The rules every reader of video files in the project follows (`--file_type video`, the frame
extraction scripts, `--predict`, `util_scripts.check_videos`):

- Frame i (0-based) is the i-th displayed frame in presentation order: the container's packets of
  the video stream sorted by presentation timestamp (pts). Its time is its pts (seconds after frame 0).
  Nothing is duplicated or dropped to reach a constant frame rate.
- Frames are upright: a rotation stored in the display matrix (phone videos) is applied, so widths,
  heights and crops are those of the displayed picture.
- Damage is contained: a packet that fails to decode loses only the frames it carries; decoding goes
  on with the next packet.

API:
- `probe_video(path) -> VideoMeta`: frame count, displayed size, rotation and the frame timing
  (`VideoMeta.frame_pts(i)`, `frame_index(pts)`, `frame_time(i)`).
- `VideoMetaCache`: probe results kept in a JSON file beside the annotation file.
- `decode_frames(container, stream)`: every decodable frame, packet by packet, in presentation order.
- `upright_array(frame, size)` / `upright_image(frame, min_size)`: an av.VideoFrame as an upright RGB
  array / PIL image, scaled by swscale (in the stored orientation) before it is turned.
- `VideoFileReader` (--file_type video, a datasets.file_reader.FileReader): `fetch(path, indices)` gives the
  av.VideoFrames of given frame numbers, seeking per clip; frame counts and timings come from the probe cache.
- `stream_frames(path, meta)`: (frame number, seconds, av.VideoFrame) of every frame in one sequential pass.
- `scan_video(path) -> VideoScan`: decodes everything and reports damage (for check_videos).
- `announced_seconds(path)` / `is_truncated(announced, found, fps)`: the container's own duration, and
  whether the frames found fall short of it.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image

from datasets.file_reader import FileReader
from datasets.layout import VideoFileFinder, has_video_extension
from errors import ReadError, UserError
from utils import atomic_file

logger = logging.getLogger(__name__)

SEEK_GAP_FRAMES = 48  # wanted frames further apart than this are reached by a new seek, not by decoding through
SEEK_MARGIN_FRAMES = 2  # seek this many frames before the first wanted one
REORDER_SLACK_FRAMES = 16  # frames decoded past a run's end before its missing frames are given up
CFR_TOLERANCE = 0.25  # a stream is constant-rate when every pts is within this fraction of a frame of its grid
MAX_DEMUX_ERRORS = 16  # consecutive demuxer errors after which the rest of a file is given up
CACHE_VERSION = 2  # bump when VideoMeta changes meaning: older cache entries are probed again
TRUNCATION_SLACK = 0.05  # a video is truncated when more than 5 % (and 2 frames) of the announced length is gone


class NoVideoStream(ValueError):
    """The file opens but holds no video stream (e.g. audio only)."""

    def __init__(self):
        super().__init__("no video stream")


def video_stream(container, path: Path | str = ""):
    """The first video stream of an open container; NoVideoStream when it has none."""
    if not container.streams.video:
        raise NoVideoStream()
    return container.streams.video[0]


def normalized_rotation(degrees) -> int:
    """0, 90, 180 or 270: counter-clockwise turn that makes the stored picture upright."""
    return int(round(float(degrees or 0) / 90)) * 90 % 360


@dataclass(frozen=True)
class VideoMeta:
    """What probing a video file tells: frame count, displayed geometry and frame timing.

    Timing: constant-rate streams keep `start_pts` and `pts_step` (frame i at start_pts + round(i * pts_step));
    variable-rate ones keep the pts of every frame in `pts`. All pts are in the stream's time base.
    """

    n_frames: int
    fps: float
    width: int  # displayed (after rotation)
    height: int
    rotation: int = 0  # degrees counter-clockwise applied to the stored picture for display
    start_pts: int = 0
    pts_step: float = 1.0
    time_base: float = 0.0  # seconds per pts tick (0: unknown, times then come from fps)
    pts: tuple[int, ...] | None = None  # variable frame rate: pts of every frame, sorted
    _index: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.pts is not None:
            object.__setattr__(self, "pts", tuple(self.pts))

    @property
    def vfr(self) -> bool:
        return self.pts is not None

    def frame_pts(self, i: int) -> int:
        """Presentation timestamp of frame i (clamped to the last frame)."""
        i = min(max(i, 0), max(self.n_frames - 1, 0))
        if self.pts is not None:
            return self.pts[i] if self.pts else self.start_pts
        return self.start_pts + round(i * self.pts_step)

    def frame_index(self, pts: int | None) -> int | None:
        """Frame number of a decoded frame's pts; None when it is not a frame of the table."""
        if pts is None:
            return None
        if self.pts is not None:
            if self._index is None:
                object.__setattr__(self, "_index", {p: k for k, p in enumerate(self.pts)})
            return self._index.get(pts)
        k = round((pts - self.start_pts) / self.pts_step)
        return k if 0 <= k < self.n_frames and abs(pts - self.frame_pts(k)) <= self.pts_step / 2 else None

    def frame_time(self, i: int) -> float:
        """Seconds from frame 0 to frame i (its presentation time)."""
        if self.time_base <= 0:
            return i / self.fps
        return (self.frame_pts(i) - self.start_pts) * self.time_base

    @property
    def duration(self) -> float:
        """Seconds from frame 0 to the end of the last frame (the last frame lasts one average frame)."""
        if self.n_frames == 0:
            return 0.0
        return self.frame_time(self.n_frames - 1) + 1 / self.fps

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("_index")
        return d


def frame_timing(pts: Sequence[int]) -> tuple[int, float, tuple[int, ...] | None]:
    """(start_pts, pts_step, table): table is None when the sorted `pts` lie on a constant-rate grid."""
    if not pts:
        return 0, 1.0, None
    start = pts[0]
    if len(pts) == 1:
        return start, 1.0, None
    step = (pts[-1] - start) / (len(pts) - 1)
    if step > 0 and all(abs(p - start - k * step) <= CFR_TOLERANCE * step for k, p in enumerate(pts)):
        return start, step, None
    return start, step or 1.0, tuple(pts)


def packet_time(packet) -> int | None:
    return packet.pts if packet.pts is not None else packet.dts


def holds_frame(packet) -> bool:
    """A packet that carries a displayed frame (not the end-of-stream flush, an AVI 'drop' chunk, or a frame the
    container's edit list hides)."""
    return packet.size > 0 and not packet.is_discard


def demux_packets(container, stream) -> Iterator:
    """The stream's packets; a demuxer error skips ahead (the demuxer resyncs) instead of ending the file."""
    errors = 0
    while errors < MAX_DEMUX_ERRORS:
        try:
            for packet in container.demux(stream):
                errors = 0
                yield packet
            return
        except av.error.EOFError:
            return
        except av.error.FFmpegError as e:
            errors += 1
            logger.debug("demuxer error (%s); reading on", e)


@dataclass
class DecodeCounts:
    """What `decode_frames` went through: packets with data, frames out, packets that failed to decode."""

    packets: int = 0
    frames: int = 0
    errors: int = 0
    pts: list[int] = field(default_factory=list)  # of the packets, in file order

    def add_packet(self, packet) -> None:
        if holds_frame(packet):
            self.packets += 1
            if (t := packet_time(packet)) is not None:
                self.pts.append(t)


def decode_packet(packet, counts: DecodeCounts | None = None) -> list:
    """The frames of one packet ([] when it fails to decode: only that packet's frames are lost)."""
    try:
        frames = packet.decode()
    except av.error.FFmpegError:
        if counts is not None:
            counts.errors += 1
        return []
    if counts is not None:
        counts.frames += len(frames)
    return frames


def decode_frames(container, stream, counts: DecodeCounts | None = None) -> Iterator:
    """Every decodable frame of `stream` from the current position, packet by packet, in presentation order."""
    for packet in demux_packets(container, stream):
        if counts is not None:
            counts.add_packet(packet)
        yield from decode_packet(packet, counts)


def in_presentation_order(frames, depth: int = REORDER_SLACK_FRAMES) -> Iterator:
    """`frames` sorted by pts within a window of `depth` frames.

    A no-op for well-formed streams (decoders output presentation order); for files whose timestamps
    disagree with the decoder's output order (e.g. AVI with packed B-frames) it makes a sequential
    decode number frames exactly as `VideoFileReader` does, by pts.
    """
    heap: list = []
    for k, frame in enumerate(frames):
        heapq.heappush(heap, (frame.pts if frame.pts is not None else -1, k, frame))
        if len(heap) > depth:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


def probe_video(path: Path) -> VideoMeta:
    """Frame count and timing (demuxing every packet, no decoding), rotation and size (decoding the first frame).

    Raises NoVideoStream, or av.error.FFmpegError / OSError when the file cannot be opened.
    """
    with av.open(str(path)) as container:
        stream = video_stream(container, path)
        stream.codec_context.thread_count = 1
        counts, first = DecodeCounts(), None
        for packet in demux_packets(container, stream):
            counts.add_packet(packet)
            if first is None:
                first = next(iter(decode_packet(packet)), None)
        return _meta(stream, counts, first)


def _meta(stream, counts: DecodeCounts, first) -> VideoMeta:
    pts = sorted(set(counts.pts))
    n = len(pts) if len(pts) == counts.packets else counts.packets  # no timestamps: frames are numbered as decoded
    start, step, table = frame_timing(pts) if len(pts) == n else (0, 1.0, None)
    tb = float(stream.time_base or 0)
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    if not fps and table is None and tb and step:
        fps = 1 / (step * tb)
    rotation = normalized_rotation(first.rotation) if first is not None else 0
    width, height = (first.width, first.height) if first is not None else (stream.codec_context.width,
                                                                           stream.codec_context.height)
    if rotation in (90, 270):
        width, height = height, width
    return VideoMeta(int(n), fps or 25.0, width, height, rotation, start, step, tb if len(pts) == n else 0.0, table)


class VideoMetaCache:
    """Probe results of video files, remembered in a JSON file (best effort: an unwritable place is fine)."""

    def __init__(self, cache_path: Path | None):
        self.cache_path = cache_path
        self._entries: dict[str, dict] = {}
        self._parsed: dict[str, tuple[list, VideoMeta]] = {}
        self._dirty = False
        if cache_path is not None and cache_path.is_file():
            try:
                self._entries = json.loads(cache_path.read_text())
            except (OSError, ValueError):
                self._entries = {}

    @staticmethod
    def path_for(annotation_path: Path) -> Path:
        """Where the cache of the videos of an annotation file lives."""
        return annotation_path.with_name(annotation_path.name + ".video_meta.json")

    def probe(self, path: Path) -> VideoMeta:
        """Metadata of `path`, probing it when unknown or changed; raises what `probe_video` raises."""
        st = path.stat()
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns, CACHE_VERSION]
        parsed = self._parsed.get(key)
        if parsed is not None and parsed[0] == stamp:
            return parsed[1]  # readers ask per clip: no JSON-to-object work (and pts index) each time
        entry = self._entries.get(key)
        if entry is not None and entry.get("stamp") == stamp:
            meta = VideoMeta(**entry["meta"])
        else:
            meta = probe_video(path)
            self._entries[key] = {"stamp": stamp, "meta": meta.to_json()}
            self._dirty = True
        self._parsed[key] = (stamp, meta)
        return meta

    def get(self, path: Path) -> VideoMeta | None:
        """Metadata of `path`; None (with a one-line warning) when it cannot be opened as a video."""
        try:
            return self.probe(path)
        except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
            logger.warning("cannot open video %s: %s", path, e)
            return None

    def save(self) -> None:
        if not self._dirty or self.cache_path is None:
            return
        try:
            with atomic_file(self.cache_path) as tmp:
                tmp.write_text(json.dumps(self._entries))
            self._dirty = False
        except OSError as e:
            logger.info("video metadata cache not written (%s); it will be probed again next time", e)


def displayed_size(frame, rotation: int | None = None) -> tuple[int, int]:
    """(width, height) of a decoded frame as displayed (rotation from the frame unless given)."""
    rotation = normalized_rotation(frame.rotation if rotation is None else rotation)
    return (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)


def upright_array(frame, size: tuple[int, int] | None = None, *, rotation: int | None = None):
    """RGB uint8 (H, W, 3) array of an av.VideoFrame as displayed, at displayed `size` (width, height) if given.

    Scaling happens in swscale together with the YUV -> RGB conversion, on the stored picture; the turn
    (display matrix; `rotation` overrides the frame's own) is applied last.
    """
    rotation = normalized_rotation(frame.rotation if rotation is None else rotation)
    if size is None:
        arr = frame.to_ndarray(format="rgb24")
    else:
        width, height = (size[1], size[0]) if rotation in (90, 270) else size
        arr = frame.to_ndarray(format="rgb24", width=width, height=height)
    return np.ascontiguousarray(np.rot90(arr, rotation // 90)) if rotation else arr


def upright_image(frame, min_size: tuple[int, int] | None = None, *, rotation: int | None = None):
    """PIL RGB image of an av.VideoFrame as displayed, at least `min_size` (width, height), aspect ratio kept."""
    size = None
    if min_size is not None:
        width, height = displayed_size(frame, rotation)
        scale = max(min_size[0] / width, min_size[1] / height)
        size = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
    return Image.fromarray(upright_array(frame, size, rotation=rotation))


def stream_frames(path: Path, meta: VideoMeta | None = None, *,
                  threads: int = 1) -> Iterator[tuple[int, float, object]]:
    """Every decodable frame of a video in one sequential pass: (frame number, seconds, av.VideoFrame), in
    presentation order. Numbers follow the module's rule, so they match `VideoFileReader.fetch`; frames lost
    to damage are skipped (numbers then jump). `meta`: the video's probe result (probed when None)."""
    meta = meta or probe_video(path)
    with av.open(str(path)) as container:
        stream = video_stream(container)
        if threads != 1:
            stream.thread_type = "AUTO"
        stream.codec_context.thread_count = max(0, threads)
        expected = 0
        for frame in in_presentation_order(decode_frames(container, stream)):
            index = meta.frame_index(frame.pts) if frame.pts is not None else expected  # no timestamps: count
            if index is None:
                continue
            expected = index + 1
            yield index, meta.frame_time(index), frame


def _runs(indices: Sequence[int]) -> list[list[int]]:
    """Sorted unique indices split where the gap is large enough to make a new seek worthwhile."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i - runs[-1][-1] <= SEEK_GAP_FRAMES:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


class VideoFileReader(FileReader):
    """Decoded frames (av.VideoFrame) of a video file for 0-based frame numbers; None for frames past the end
    or destroyed by damage. Videos are <base>.<ext> for any common extension; their frame count and timing
    are probed from the file (the annotation's frame segments are not used) and cached.

    Args:
        meta_cache: where the frame timing of each video comes from (probed on first use when None).
    """

    channels = 3
    probes_frames = True
    stored_as = "video files"

    def __init__(self, meta_cache: VideoMetaCache | None = None):
        self.meta_cache = meta_cache if meta_cache is not None else VideoMetaCache(None)
        self._finder = VideoFileFinder()

    @classmethod
    def for_annotation_file(cls, annotation_path: Path, *, flow: bool = False) -> VideoFileReader:
        """Frame timings probed when the annotation file is read are cached beside it, for every later run."""
        return cls(VideoMetaCache(VideoMetaCache.path_for(Path(annotation_path))))

    def find(self, candidates: Sequence[Path]) -> Path | None:
        """The video file of the first candidate base path that has one (its extension is found on disk)."""
        return next((p for c in candidates if (p := self._finder.find(c)) is not None), None)

    def count_frames(self, path: Path) -> int:
        meta = self.meta_cache.get(path)  # warns when the file cannot be opened
        if meta is None:
            raise UserError(f"cannot open video {path}")
        return meta.n_frames

    def fps(self, path: Path) -> float | None:
        meta = self.meta_cache.get(path)
        return meta.fps if meta else None

    def save_cache(self) -> None:
        self.meta_cache.save()

    def fetch(self, path: Path, indices: Sequence[int]):
        try:
            meta = self.meta_cache.probe(path)
            container = av.open(str(path))
        except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
            raise ReadError(f"cannot decode {path}: {e}") from None
        found: dict[int, object] = {}
        with container:
            stream = video_stream(container, path)
            stream.codec_context.thread_count = 1  # one decode thread per DataLoader worker
            for k, run in enumerate(_runs(i for i in indices if 0 <= i < meta.n_frames)):
                found.update(_decode_run(container, stream, meta, run, seek=k > 0 or run[0] > SEEK_GAP_FRAMES))
        return [found.get(i) for i in indices]

    @classmethod
    def videos_in(cls, folder: Path, filenames: Sequence[str]) -> list[Path]:
        """Every visible file with a video extension (any letter case)."""
        return [Path(folder) / name for name in sorted(filenames)
                if not name.startswith(".") and has_video_extension(name)]

    def problem(self, path: Path) -> str | None:
        """Cannot open, no video stream, or no decodable frame."""
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    return "no video stream"
                for _ in container.decode(video=0):
                    return None
                return "no decodable frame"
        except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
            return f"cannot decode: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def _decode_run(container, stream, meta: VideoMeta, run: list[int], *, seek: bool) -> dict[int, object]:
    """Seek to the keyframe before run[0] (unless decoding from the start is as cheap), then decode forward
    until run[-1]; frames are identified by their pts."""
    if seek:
        # A few frames early: some demuxers (AVI) seek by decoding timestamp, which runs ahead of the pts.
        target = meta.frame_pts(run[0] - SEEK_MARGIN_FRAMES)
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError as e:
            logger.debug("seek failed (%s); decoding from the start", e)
            try:
                container.seek(meta.start_pts, stream=stream, backward=True)
            except av.error.FFmpegError:
                return {}  # the run's frames are missing (repaired and counted by the clip loader)
    wanted, out = set(run), {}
    for frame in decode_frames(container, stream):
        index = meta.frame_index(frame.pts)
        if index is None:
            continue
        if index in wanted:
            out[index] = frame
            if len(out) == len(wanted):
                break
        if index > run[-1] + REORDER_SLACK_FRAMES:  # the rest of the run was destroyed by damage
            break
    return out


def announced_duration(container, stream) -> float:
    """Seconds the container announces for `stream` (its own duration, else the file's); 0.0 when unknown."""
    tb = float(stream.time_base or 0)
    if stream.duration and tb:
        return stream.duration * tb
    return container.duration / 1_000_000 if container.duration else 0.0


def announced_seconds(path: Path) -> float:
    """`announced_duration` of a file's video stream (0.0 when unknown or the file cannot be opened)."""
    try:
        with av.open(str(path)) as container:
            return announced_duration(container, video_stream(container))
    except Exception:  # noqa: BLE001 - PyAV raises many error types for broken files
        return 0.0


def is_truncated(announced: float, found: float, fps: float) -> bool:
    """More than a little of the announced seconds is missing from the `found` seconds of frames."""
    return announced > 0 and announced - found > max(2 / (fps or 25.0), TRUNCATION_SLACK * announced)


@dataclass
class VideoScan:
    """The result of decoding a whole video file (`scan_video`)."""

    path: str
    error: str = ""  # why the file cannot be used at all ('' when it opens and has a video stream)
    no_video_stream: bool = False
    n_frames: int = 0  # frames in the container (packets with data)
    n_decoded: int = 0
    decode_errors: int = 0  # packets that failed to decode
    claimed_frames: int = 0  # the container's frame count (0: unknown)
    claimed_duration: float = 0.0  # seconds, the container's
    duration: float = 0.0  # seconds covered by the frames found
    fps: float = 0.0
    width: int = 0  # displayed
    height: int = 0
    rotation: int = 0
    vfr: bool = False


def scan_video(path: Path, *, threads: int = 1) -> VideoScan:
    """Open and decode every packet of `path`; never raises for a bad file (the reason is in `error`).

    `threads`: decoder threads (0: as many as FFmpeg likes; 1 when one process per core runs).
    """
    scan = VideoScan(str(path))
    try:
        with av.open(str(path)) as container:
            stream = video_stream(container, path)
            if threads != 1:
                stream.thread_type = "AUTO"
            stream.codec_context.thread_count = max(0, threads)
            counts, first = DecodeCounts(), None
            for frame in decode_frames(container, stream, counts):
                first = first or frame
            meta = _meta(stream, counts, first)
            scan.claimed_duration = announced_duration(container, stream)
            scan.claimed_frames = int(stream.frames or 0)
    except NoVideoStream:
        scan.error, scan.no_video_stream = "no video stream", True
        return scan
    except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
        scan.error = str(e).splitlines()[0] if str(e) else type(e).__name__
        return scan
    scan.n_frames, scan.n_decoded, scan.decode_errors = meta.n_frames, counts.frames, counts.errors
    scan.duration, scan.fps, scan.vfr = meta.duration, meta.fps, meta.vfr
    scan.width, scan.height, scan.rotation = meta.width, meta.height, meta.rotation
    return scan
