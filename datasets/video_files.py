"""Decoding video files with PyAV: frames as a person sees them, numbered by presentation order.

The rules every reader of video files in the project follows (`--file_type video`, the frame
extraction scripts, `--predict`, `util_scripts.check_videos`):

- Frame i (0-based) is the i-th displayed frame. Nothing is duplicated or dropped to reach a constant frame rate.
  When the container's presentation timestamps (pts) can tell the display order (every packet has one, no two
  are equal, and they do not merely repeat the decoding order), frames are numbered by pts: the packets sorted by
  pts, found by a demux without decoding. Otherwise (duplicate or missing pts, pts in decoding order as AVI keeps
  them for B-frames, pts that jump backwards) the probe decodes the file once and frames are numbered in the
  order the decoder shows them, as the ffmpeg command line does; each decoded frame is then recognised by the
  byte position of its packet (it travels with the frame as `frame.opaque`), so numbers survive seeks.
- A frame's time is its pts (seconds after frame 0); with unusable timestamps, the sorted pts of the decoded
  frames, or i / fps when some frame has none.
- Frames are upright: a rotation stored in the display matrix (phone videos) is applied, so widths,
  heights and crops are those of the displayed picture.
- Damage is contained: a packet that fails to decode loses only the frames it carries; decoding goes
  on with the next packet.

API:
- `probe_video(path) -> VideoMeta`: frame count, displayed size, rotation, how frames are numbered
  (`VideoMeta.numbering`, `timestamp_fault`), the frame timing (`frame_pts(i)`, `frame_time(i)`) and keyframes.
- `FrameNumbers(meta)`: the frame number of each decoded frame of one decode pass.
- `VideoMetaCache`: probe results kept in a JSON file beside the annotation file.
- `decoding_stream(container, threads=)`: the video stream, set up for decoding by these rules.
- `decode_frames(container, stream)`: every decodable frame, packet by packet, in the decoder's order.
- `upright_array(frame, size)` / `upright_image(frame, min_size)`: an av.VideoFrame as an upright RGB
  array / PIL image, scaled by swscale (in the stored orientation) before it is turned.
- `DecodePass(path, meta)`: a file open for decoding runs of wanted frames forward: it seeks to the keyframe
  before a run only when that saves decoding, leaves the non-reference pictures before a run undecoded, and decodes
  the H.264 reference pictures that only those use from their slice headers alone (`VideoMeta.disposable_refs`).
- `VideoFileReader` (--file_type video, a datasets.file_reader.FileReader): `fetch(path, indices)` gives the
  av.VideoFrames of given frame numbers through a `DecodePass` kept open per process for the last video (with its
  last frames); frame counts, timings and keyframes come from the probe cache.
- `stream_frames(path, meta)`: (frame number, seconds, av.VideoFrame) of every frame in one sequential pass
  (what `--predict`, the extraction scripts and `check_videos` decode).
- `DecodeAhead(frames, depth)`: runs such a pass (and whatever per-frame work is chained to it, e.g. scaling) in a
  thread of its own, at most `depth` items ahead of its consumer (`--predict` overlaps decoding with the model).
- `scan_video(path) -> VideoScan`: decodes everything and reports damage (for check_videos).
- `announced_seconds(path)` / `is_truncated(announced, found, fps)`: the container's own duration, and
  whether the frames found fall short of it.
"""

from __future__ import annotations

import base64
import bisect
import heapq
import json
import logging
import math
import os
import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from datasets.file_reader import FileReader
from datasets.h264_references import ReferenceTracker, headers_only, nal_length_size
from datasets.layout import VideoFileFinder, has_video_extension
from errors import ReadError, UserError
from utils import atomic_file

logger = logging.getLogger(__name__)
_converters = threading.local()  # per thread: a swscale context must not be shared by two threads at once

SEEK_GAP_FRAMES = 48  # wanted frames further apart than this are reached by a new seek, not by decoding through
SEEK_MARGIN_FRAMES = 2  # seek this many frames before the first wanted one
REORDER_SLACK_FRAMES = 16  # frames decoded past a run's end before its missing frames are given up
KEPT_FRAMES_BYTES = 64 << 20  # decoded frames a video reader keeps of the last video, per process
CFR_TOLERANCE = 0.25  # a stream is constant-rate when every pts is within this fraction of a frame of its grid
MP4_FAMILY_SUFFIXES = (".mp4", ".m4v", ".mov")  # opened by FFmpeg's mov demuxer
# find_stream_info's options in open_for_reading: its decoders skip every frame, and it stops reading at once
NO_DECODING_AT_OPEN = {"skip_frame": "all", "analyzeduration": "1", "probesize": "32"}
MAX_DEMUX_ERRORS = 16  # consecutive demuxer errors after which the rest of a file is given up
CACHE_VERSION = 5  # bump when VideoMeta changes meaning: older cache entries are probed again
TRUNCATION_SLACK = 0.05  # a video is truncated when more than 5 % (and 2 frames) of the announced length is gone
# swscale threads per conversion. PyAV makes a new scaler for every frame, so its default (one thread per core)
# starts a thread pool per frame, whose threads then fight the decoder's: measured 2-6 ms per 1080p frame against
# 1.3 ms with one thread, and the same pixels (slices are scaled alike whatever the thread count).
SWS_THREADS = 1

# How the frames of a file are numbered (VideoMeta.numbering); frame i is the i-th displayed frame either way.
BY_TIMESTAMPS = "timestamps"  # by the frame's pts: the packets sorted by pts are the frames in display order
BY_PACKET = "packet"  # in the decoder's order, each frame recognised by its packet's byte position (seeks work)
BY_COUNT = "count"  # in the decoder's order, counted from the start (packets without distinct positions: no seeks)


class NoVideoStream(ValueError):
    """The file opens but holds no video stream (e.g. audio only)."""

    def __init__(self):
        super().__init__("no video stream")


def video_stream(container, path: Path | str = ""):
    """The first video stream of an open container; NoVideoStream when it has none."""
    if not container.streams.video:
        raise NoVideoStream()
    return container.streams.video[0]


def decoding_stream(container, *, threads: int = 1):
    """The first video stream, ready to decode with `threads` decoder threads (0: as many as FFmpeg likes; 1 when
    one process per core runs). Each decoded frame keeps what `decode_frames` attached to its packet (its byte
    position, `frame.opaque`): the one thing that tells frames apart when their timestamps cannot."""
    stream = video_stream(container)
    if threads != 1:
        stream.thread_type = "AUTO"
    stream.codec_context.thread_count = max(0, threads)
    stream.codec_context.copy_opaque = True
    return stream


def normalized_rotation(degrees) -> int:
    """0, 90, 180 or 270: counter-clockwise turn that makes the stored picture upright."""
    return int(round(float(degrees or 0) / 90)) * 90 % 360


@dataclass(frozen=True)
class VideoMeta:
    """What probing a video file tells: frame count, displayed geometry, how frames are numbered and their timing.

    Timing: frame i at start_pts + round(i * pts_step) when the times fill a constant-rate grid, else at `pts[i]`
    (the times of all frames, sorted). All pts are in the stream's time base (`time_base`; 0 when the frames have
    no times: frame i is then at i / fps).
    Numbering (see the module docstring): BY_TIMESTAMPS finds a decoded frame's number from its pts; BY_PACKET from
    the byte position of its packet (`packet_pos[i]`: frame i's); BY_COUNT by counting from the start of the file.
    """

    n_frames: int
    fps: float
    width: int  # displayed (after rotation)
    height: int
    rotation: int = 0  # degrees counter-clockwise applied to the stored picture for display
    start_pts: int = 0
    pts_step: float = 1.0
    time_base: float = 0.0  # seconds per pts tick (0: unknown, times then come from fps)
    pts: tuple[int, ...] | None = None  # times of every frame, sorted, when they are not a full constant-rate grid
    vfr: bool = False  # the times are not on a constant-rate grid (holes left by a cut at the end do not count)
    numbering: str = BY_TIMESTAMPS
    packet_pos: tuple[int, ...] | None = None  # BY_PACKET: byte position of the packet of each frame
    timestamp_fault: str = ""  # why the container's timestamps cannot number the frames ('' when they can)
    keyframes: tuple[int, ...] | None = None  # numbers of the frames a decode can start from after a seek, sorted
    # The reference pictures that only non-reference pictures use (H.264, `datasets.h264_references`), packed
    # (`pack_disposable`; None: not looked for): decoding from after their last user on does not need them
    disposable_refs: str | None = None
    _index: dict = field(default=None, init=False, repr=False, compare=False)
    _disposable: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("pts", "packet_pos", "keyframes"):  # lists when read back from the JSON cache
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def seekable(self) -> bool:
        """Frames can be reached by a seek (needs times to seek to and frames recognisable afterwards)."""
        return self.numbering != BY_COUNT and self.time_base > 0

    def frame_pts(self, i: int) -> int:
        """Presentation timestamp of frame i (clamped to the last frame)."""
        i = min(max(i, 0), max(self.n_frames - 1, 0))
        if self.pts is not None:
            return self.pts[i] if self.pts else self.start_pts
        return self.start_pts + round(i * self.pts_step)

    def frame_index(self, pts: int | None) -> int | None:
        """BY_TIMESTAMPS: frame number of a decoded frame's pts; None when it is not a frame of the table."""
        if pts is None:
            return None
        if self.pts is not None:
            return self._lookup(self.pts).get(pts)
        k = round((pts - self.start_pts) / self.pts_step)
        return k if 0 <= k < self.n_frames and abs(pts - self.frame_pts(k)) <= self.pts_step / 2 else None

    def packet_index(self, pos: int | None) -> int | None:
        """BY_PACKET: frame number of the frame decoded from the packet at byte `pos`; None when not listed."""
        return None if pos is None or self.packet_pos is None else self._lookup(self.packet_pos).get(pos)

    def _lookup(self, keys: tuple[int, ...]) -> dict[int, int]:
        if self._index is None:  # built once: readers ask for every decoded frame
            object.__setattr__(self, "_index", {key: k for k, key in enumerate(keys)})
        return self._index

    def header_bytes_if_unused(self, i: int, first: int) -> int | None:
        """When frame i is a reference picture that no frame from frame `first` on depends on, the bytes of its
        slice headers (see `disposable_refs`); else None."""
        last_user, header_bytes = self.disposable().get(i, (first, None))
        return header_bytes if last_user < first else None

    def disposable(self) -> dict[int, tuple[int, int]]:
        """{frame: (the last frame that uses it (-1: none), bytes of its slice headers)} of `disposable_refs`."""
        if self._disposable is None:
            object.__setattr__(self, "_disposable", unpack_disposable(self.disposable_refs))
        return self._disposable

    def keyframe_before(self, i: int) -> int | None:
        """The number of the last keyframe at or before frame i; None when none is known there."""
        k = bisect.bisect_right(self.keyframes or (), i)
        return self.keyframes[k - 1] if k else None

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
        d.pop("_disposable")
        return d


def pack_disposable(entries: Sequence[tuple[int, int, int]]) -> str:
    """(frame, last user, header bytes) triples, sorted by frame, as a short string for the JSON cache: frames as
    steps from the one before, users relative to their frame, zlib, base64 (75 triples of a 10-s 720p camera file
    take 64 characters instead of 1150 as JSON lists, and stay one string in memory until a reader needs them)."""
    table = np.asarray(entries, dtype=np.int64).reshape(-1, 3)
    steps = table.copy()
    steps[1:, 0] = np.diff(table[:, 0])
    steps[:, 1] -= table[:, 0]
    return base64.b64encode(zlib.compress(steps.astype("<i4").tobytes(), 9)).decode("ascii")


def unpack_disposable(packed: str | None) -> dict[int, tuple[int, int]]:
    """{frame: (last user, header bytes)} of `pack_disposable`'s string ({} for None or '')."""
    if not packed:
        return {}
    steps = np.frombuffer(zlib.decompress(base64.b64decode(packed)), dtype="<i4").reshape(-1, 3).astype(np.int64)
    frames = np.cumsum(steps[:, 0])
    return {int(f): (int(f + user), int(size)) for f, user, size in zip(frames, steps[:, 1], steps[:, 2])}


def frame_timing(pts: Sequence[int]) -> tuple[int, float, tuple[int, ...] | None, bool]:
    """(start_pts, pts_step, table, vfr) of sorted `pts`: table is None when they fill a constant-rate grid."""
    if not pts:
        return 0, 1.0, None, False
    start = pts[0]
    if len(pts) == 1:
        return start, 1.0, None, False
    step = (pts[-1] - start) / (len(pts) - 1)
    if step > 0 and all(abs(p - start - k * step) <= CFR_TOLERANCE * step for k, p in enumerate(pts)):
        return start, step, None, False
    return start, step or 1.0, tuple(pts), not constant_rate_cut_short(pts)


def constant_rate_cut_short(pts: Sequence[int]) -> bool:
    """Sorted `pts` on a constant-rate grid whose only holes are among the last REORDER_SLACK_FRAMES frames: a file
    cut in the middle of a group of pictures keeps its last reference frames but loses frames displayed before
    them. Checked frame to frame (no drift on millisecond time bases), at the typical frame interval."""
    gaps = np.diff(np.asarray(pts, dtype=np.float64))
    if not (gaps > 0).all():
        return False
    step = float(np.median(gaps))
    slots = np.round(gaps / step)
    if (np.abs(gaps - slots * step) > CFR_TOLERANCE * step).any():
        return False
    return bool((slots[:-REORDER_SLACK_FRAMES] == 1).all())


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
class PacketLog:
    """The pts of the packets with a frame, as demuxed (no decoding), in file order; those of keyframes apart."""

    pts: list[int | None] = field(default_factory=list)
    keyframe_pts: list[int | None] = field(default_factory=list)

    def add(self, packet) -> None:
        if holds_frame(packet):
            self.pts.append(packet.pts)
            if packet.is_keyframe:
                self.keyframe_pts.append(packet.pts)

    @property
    def n_packets(self) -> int:
        return len(self.pts)

    @property
    def missing_pts(self) -> int:
        """Packets without a pts."""
        return self.pts.count(None)

    @property
    def duplicate_pts(self) -> int:
        """Packets whose pts an earlier packet already has."""
        known = [p for p in self.pts if p is not None]
        return len(known) - len(set(known))

    def timestamp_fault(self, *, decoder_reorders: bool) -> str:
        """Why the pts cannot number the frames ('' when they can). `decoder_reorders`: the codec shows pictures
        in another order than it decodes them (B-frames)."""
        n = self.n_packets
        if self.missing_pts:
            return f"{self.missing_pts} of {n} frames have no timestamp"
        if self.duplicate_pts:
            return f"{self.duplicate_pts} of {n} frames repeat the timestamp of another"
        # A stable sort: order[r] is the file position of the packet displayed r-th.
        order = np.argsort(np.asarray(self.pts, dtype=np.int64), kind="stable")
        if decoder_reorders and n > 2 and (order == np.arange(n)).all():
            return "the timestamps follow the decoding order, not the display order (B-frames)"
        if n and np.abs(order - np.arange(n)).max() > REORDER_SLACK_FRAMES:
            return "the timestamps jump backwards (they leave the decoding order by more than a few frames)"
        return ""


@dataclass
class DecodeCounts:
    """What a decode pass went through: packets that failed to decode, frames no number fits."""

    failed: set = field(default_factory=set)  # byte positions of the packets whose decoding reported an error
    unnumbered: int = 0  # decoded frames the probe's numbering does not place (lost to every reader)

    @property
    def errors(self) -> int:
        """Packets that failed to decode."""
        return len(self.failed)


def decode_packet(packet, counts: DecodeCounts | None = None) -> list:
    """The frames of one packet ([] when it fails to decode: only that packet's frames are lost)."""
    try:
        frames = packet.decode()
    except av.error.FFmpegError:
        if counts is not None:
            counts.failed.add(packet.pos if packet.pos is not None else object())  # no position: always a new one
        return []
    return frames


def decode_frames(container, stream, counts: DecodeCounts | None = None,
                  droppable: Callable[[object], bool] | None = None,
                  stub: Callable[[object], object | None] | None = None) -> Iterator:
    """Every decodable frame of `stream` from the current position, packet by packet, in the decoder's order. Each
    frame carries its packet's byte position as `frame.opaque` (with a stream from `decoding_stream`).

    `droppable(packet)`: True for a packet whose own frame is not wanted. The decoder then skips it when no other
    frame refers to it (a non-reference picture), which changes no other picture: leading up to a clip, about half
    of the frames of a typical H.264 file need no decoding.
    `stub(packet)`: for a droppable packet, a packet to decode in its place (None: the packet itself), for a
    reference picture that nothing wanted depends on; its decoding errors are expected and not counted."""
    dropping = None  # unknown: the first packet sets the decoder's mode either way
    for packet in demux_packets(container, stream):
        packet.opaque = packet.pos
        drop = droppable is not None and droppable(packet)
        if drop != dropping:
            dropping = drop
            stream.codec_context.skip_frame = "NONREF" if drop else "DEFAULT"
        if drop and stub is not None and (replacement := stub(packet)) is not None:
            yield from decode_packet(replacement)
        else:
            yield from decode_packet(packet, counts)


class FrameNumbers:
    """The frame number of each decoded frame of one decode pass, as the probe (`meta`) numbers them; None for a
    frame it does not list. Call `seeked()` after a seek: counting from the start (BY_COUNT) then stops."""

    def __init__(self, meta: VideoMeta):
        self.meta = meta
        self.decoded: int | None = 0  # frames since the start of the file

    def seeked(self) -> None:
        self.decoded = None

    def __call__(self, frame) -> int | None:
        if self.meta.numbering == BY_TIMESTAMPS:
            return self.meta.frame_index(frame.pts)
        if self.meta.numbering == BY_PACKET:
            return self.meta.packet_index(frame.opaque)
        if self.decoded is None:
            return None
        number, self.decoded = self.decoded, self.decoded + 1
        return number if number < self.meta.n_frames else None


def in_number_order(numbered, depth: int = REORDER_SLACK_FRAMES) -> Iterator[tuple[int, object]]:
    """(number, frame) pairs sorted by number within a window of `depth` frames.

    A no-op where the decoder shows frames in the order of their pts; for files whose pts disagree with the
    decoder's output order within a few frames, it makes a sequential decode number frames exactly as
    `VideoFileReader` does.
    """
    heap: list = []
    for k, (number, frame) in enumerate(numbered):
        heapq.heappush(heap, (number, k, frame))
        if len(heap) > depth:
            number, _, frame = heapq.heappop(heap)
            yield number, frame
    while heap:
        number, _, frame = heapq.heappop(heap)
        yield number, frame


def probe_video(path: Path) -> VideoMeta:
    """Frame count, numbering and timing (demuxing every packet; decoding every frame only when the timestamps
    cannot number them), rotation and size (from the first frame).

    Raises NoVideoStream, or av.error.FFmpegError / OSError when the file cannot be opened.
    """
    return _probe(path)[0]


def _probe(path: Path) -> tuple[VideoMeta, PacketLog]:
    with av.open(str(path)) as container:
        stream = decoding_stream(container)
        log, first, tracker = PacketLog(), None, _reference_tracker(stream)
        for packet in demux_packets(container, stream):
            log.add(packet)
            if tracker is not None and packet.size:
                tracker.add(memoryview(packet), packet.pts, keyframe=packet.is_keyframe)
            if first is None:
                first = next(iter(decode_packet(packet)), None)
        fault = log.timestamp_fault(decoder_reorders=bool(stream.codec_context.has_b_frames))
        if not fault:
            return _with_disposable_refs(_timestamp_meta(stream, log, first), tracker), log
    return _with_disposable_refs(_decode_order_meta(path, fault), tracker), log


def _reference_tracker(stream) -> ReferenceTracker | None:
    """A tracker of the reference pictures of an H.264 stream stored with length prefixes (MP4, MOV, MKV)."""
    extradata = stream.codec_context.extradata
    if stream.codec_context.name != "h264" or nal_length_size(extradata) is None:
        return None
    return ReferenceTracker(bytes(extradata))


def _with_disposable_refs(meta: VideoMeta, tracker: ReferenceTracker | None) -> VideoMeta:
    """`meta` with its `disposable_refs`, the tracker's packets turned into frame numbers by their pts (a picture or
    user without a number, e.g. hidden by an edit list, leaves its picture out). Only for frames numbered by
    timestamps: the decoder finishes a picture decoded from its headers alone when the next one starts, and gives
    it the next packet's byte position (but its own pts)."""
    if tracker is None or meta.numbering != BY_TIMESTAMPS:
        return meta
    found = []
    for key, picture in tracker.disposable().items():
        numbers = [meta.frame_index(pts) for pts in (key, *picture.users)]
        if None not in numbers:
            found.append((numbers[0], max(numbers[1:], default=-1), picture.header_bytes))
    return replace(meta, disposable_refs=pack_disposable(sorted(found)))


def _timestamp_meta(stream, log: PacketLog, first) -> VideoMeta:
    """BY_TIMESTAMPS: the packets' pts, sorted, are the frames' times."""
    start, step, table, vfr = frame_timing(sorted(log.pts))
    tb = float(stream.time_base or 0)
    fps = _nominal_fps(stream) or (1 / (step * tb) if table is None and tb and step else 0)
    meta = VideoMeta(log.n_packets, fps or 25.0, *_geometry(stream, first), start_pts=start, pts_step=step,
                     time_base=tb, pts=table, vfr=vfr)
    keyframes = (meta.frame_index(pts) for pts in log.keyframe_pts)
    return replace(meta, keyframes=tuple(sorted(k for k in keyframes if k is not None)))


def _decode_order_meta(path: Path, fault: str) -> VideoMeta:
    """BY_PACKET / BY_COUNT: decode the whole file once; frame i is the i-th frame the decoder shows, and the
    frames' pts, sorted, are their times (missing ones leave only the frame rate)."""
    with av.open(str(path)) as container:
        stream = decoding_stream(container)
        positions, times, keyframes, first = [], [], [], None
        for frame in decode_frames(container, stream):
            first = first or frame
            if frame.key_frame:
                keyframes.append(len(positions))
            positions.append(frame.opaque)
            times.append(frame.pts)
        timed = None not in times
        start, step, table, vfr = frame_timing(sorted(times)) if timed else (0, 1.0, None, False)
        # Each frame from a packet of its own (not so where a packet holds two pictures, as packed B-frames do).
        by_packet = None not in positions and len(set(positions)) == len(positions)
        return VideoMeta(len(positions), _nominal_fps(stream) or 25.0, *_geometry(stream, first), start_pts=start,
                         pts_step=step, time_base=float(stream.time_base or 0) if timed else 0.0, pts=table,
                         vfr=vfr, numbering=BY_PACKET if by_packet else BY_COUNT,
                         packet_pos=tuple(positions) if by_packet else None, timestamp_fault=fault,
                         keyframes=tuple(keyframes))


def _nominal_fps(stream) -> float:
    return float(stream.average_rate or stream.guessed_rate or 0)


def _geometry(stream, first) -> tuple[int, int, int]:
    """(width, height, rotation) as displayed, from the first decoded frame (the stream's size without one)."""
    rotation = normalized_rotation(first.rotation) if first is not None else 0
    width, height = (first.width, first.height) if first is not None else (stream.codec_context.width,
                                                                           stream.codec_context.height)
    return (height, width, rotation) if rotation in (90, 270) else (width, height, rotation)


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
    width, height = (None, None) if size is None else (size[1], size[0]) if rotation in (90, 270) else size
    # One reused scaler of SWS_THREADS threads: PyAV's default starts a thread pool for every frame, which costs more
    # than converting a small frame, oversubscribes a worker per core, and does not survive a fork.
    arr = _reformatter().reformat(frame, width, height, format="rgb24", threads=SWS_THREADS).to_ndarray()
    return np.ascontiguousarray(np.rot90(arr, rotation // 90)) if rotation else arr


def _reformatter() -> VideoReformatter:
    """This thread's swscale context, reused frame after frame (the pixels of `frame.to_ndarray`, which sets up a
    new context for every frame)."""
    if not hasattr(_converters, "reformatter"):
        _converters.reformatter = VideoReformatter()
    return _converters.reformatter


def upright_image(frame, min_size: tuple[int, int] | None = None, *, rotation: int | None = None):
    """PIL RGB image of an av.VideoFrame as displayed, at least `min_size` (width, height), aspect ratio kept."""
    size = None
    if min_size is not None:
        width, height = displayed_size(frame, rotation)
        scale = max(min_size[0] / width, min_size[1] / height)
        size = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
    return Image.fromarray(upright_array(frame, size, rotation=rotation))


def stream_frames(path: Path, meta: VideoMeta | None = None, *, threads: int = 1,
                  counts: DecodeCounts | None = None) -> Iterator[tuple[int, float, object]]:
    """Every decodable frame of a video in one sequential pass: (frame number, seconds, av.VideoFrame), in
    number order. Numbers follow the module's rule, so they match `VideoFileReader.fetch`; frames lost to damage
    are skipped (numbers then jump). `meta`: the video's probe result (probed when None); `counts`: filled with
    what the pass went through (frames no number fits are counted there, and skipped)."""
    meta = meta or probe_video(path)
    counts = counts if counts is not None else DecodeCounts()
    with av.open(str(path)) as container:
        stream = decoding_stream(container, threads=threads)
        last = -1
        for number, frame in in_number_order(_numbered(decode_frames(container, stream, counts), meta, counts)):
            if number <= last:  # a second frame for one number, or one too late for the window: no place for it
                counts.unnumbered += 1
                continue
            last = number
            yield number, meta.frame_time(number), frame
    if threads != 1 and last < meta.n_frames - 1:
        # With several threads PyAV stops draining the decoder at the end of the file when a frame there fails
        # (a cut file), and the good frames still inside are lost: decode the end again with one thread.
        for number, frame in _frames_after(path, meta, last, counts):
            yield number, meta.frame_time(number), frame


def _frames_after(path: Path, meta: VideoMeta, last: int, counts: DecodeCounts) -> list[tuple[int, object]]:
    """(number, frame) of the frames after frame `last` that decode, in order, decoded with one thread. Packets
    that fail again count once (by byte position) in `counts`."""
    with DecodePass(path, meta, counts=counts) as decoder:
        found = decoder.decode(list(range(last + 1, meta.n_frames)))
    return [(number, found[number]) for number in sorted(found)]


class DecodeAhead:
    """The items of `frames` (e.g. `stream_frames`, each frame already scaled), produced by a thread of its own at
    most `depth` items ahead of the consumer: PyAV releases the GIL while it decodes and scales, so decoding goes on
    while the consumer works (a model's forward pass). Memory stays bounded: `depth` items wait in the queue, one
    more in the thread. Use it as a context manager and iterate it once; an error of the pass (av.error.FFmpegError,
    OSError, ...) is raised by the iteration, in the consumer's thread, after the items that came before it.
    Leaving the block early (a break, Ctrl-C, an error of the consumer) stops the thread and closes `frames` there.
    """

    _END = object()  # the pass is over
    POLL_S = 0.1  # how often a thread waiting for room in the queue looks whether it is still wanted

    def __init__(self, frames: Iterator, depth: int):
        if depth < 1:
            raise ValueError("DecodeAhead needs room for at least one item")
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self._frames = frames
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="decode-ahead", daemon=True)

    def __enter__(self) -> DecodeAhead:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator:
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, _PassFailed):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the thread (it ends at its next item) and drop what it had queued."""
        self._stopping.set()
        while self._thread.is_alive():
            self._drain()
            self._thread.join(self.POLL_S)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return

    def _produce(self) -> None:
        try:
            for item in self._frames:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, who raises it
            self._put(_PassFailed(error))
        finally:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()  # in this thread: the generator's `with av.open(...)` closes the file here

    def _put(self, item) -> bool:
        """Queue `item` once there is room; False when the consumer has gone."""
        while not self._stopping.is_set():
            try:
                self.queue.put(item, timeout=self.POLL_S)
                return True
            except queue.Full:
                continue
        return False


@dataclass(frozen=True)
class _PassFailed:
    error: BaseException


def _numbered(frames, meta: VideoMeta, counts: DecodeCounts) -> Iterator[tuple[int, object]]:
    """(number, frame) of the frames of a pass from the start of the file; frames without a number are counted."""
    numbers = FrameNumbers(meta)
    for frame in frames:
        number = numbers(frame)
        if number is None:
            counts.unnumbered += 1
        else:
            yield number, frame


def _runs(indices: Sequence[int], meta: VideoMeta) -> list[list[int]]:
    """Sorted unique indices split where the gap is large enough to make a new seek worthwhile (one run, decoded
    from the start, when the file cannot be seeked)."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and (i - runs[-1][-1] <= SEEK_GAP_FRAMES or not meta.seekable):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def open_for_reading(path: Path):
    """`av.open(path)` for a `DecodePass`. For the MP4 family (by its extension) without FFmpeg's format probe, and
    without the frames that opening a file decodes to learn the codec's parameters (FFmpeg's find_stream_info: for
    H.264 with B-frames, the first 6 or so pictures) which an MP4's sample description already holds: the pass
    decodes with a codec context of its own and takes the timing from the probe (`probe_video`). A file then opens
    in about 0.2 ms, instead of 6.4 (a 720p camera file), 0.8 (340x256) or 0.25 (a prepared copy). A file whose
    extension lies (an MKV named .mp4) is opened again the ordinary way."""
    if Path(path).suffix.lower() in MP4_FAMILY_SUFFIXES:
        try:
            return av.open(str(path), format="mp4", options=NO_DECODING_AT_OPEN)  # FFmpeg's mov demuxer
        except av.error.FFmpegError:
            pass
    return av.open(str(path))


class DecodePass:
    """A video file open for decoding forward, frames numbered by the module's rule, that decodes runs of wanted
    frames and stays where it stopped for the next run.

    Before a run it seeks to the keyframe before the run's first frame only when that decodes fewer frames than
    going on from where it stands (a run further on in the same group of pictures just continues), and it leaves
    undecoded the non-reference pictures that the run does not want (those leading up to it, those between frames
    taken with a stride). The reference pictures that only such pictures use (`VideoMeta.disposable_refs`) it
    decodes from their slice headers alone (`datasets.h264_references.headers_only`): the decoder keeps its books
    on them, and conceals their content, which no wanted frame reads, at about half the cost of decoding it (at
    1280x720). None of this changes a wanted picture: the frames are those of a decode from the start.
    """

    def __init__(self, path: Path, meta: VideoMeta, *, threads: int = 1, counts: DecodeCounts | None = None):
        self.meta = meta
        self.counts = counts
        self.container = open_for_reading(path)
        try:
            self.stream = decoding_stream(self.container, threads=threads)
        except Exception:
            self.container.close()
            raise
        self.numbers = FrameNumbers(meta)
        self.done = -1  # frames up to this number do not come out any more without a seek
        self._wanted: frozenset[int] = frozenset()  # the run being decoded: packets of other frames before its
        self._first_wanted = self._last_wanted = -1  # last frame may be dropped
        self._length_size = nal_length_size(self.stream.codec_context.extradata) if meta.disposable_refs else None
        self._frames = self._decode()

    def __enter__(self) -> DecodePass:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def decode(self, run: Sequence[int]) -> dict[int, object]:
        """The frames of `run` (sorted frame numbers) that decode, by number; the others are missing."""
        self._go_to(run)
        wanted, out = self._wanted, {}
        for frame in self._frames:
            index = self.numbers(frame)
            if index is None:
                continue
            self.done = max(self.done, index)
            if index in wanted:
                out[index] = frame
                if len(out) == len(wanted):
                    break
            if index > run[-1] + REORDER_SLACK_FRAMES:  # the rest of the run was destroyed by damage
                break
        return out

    def _decode(self) -> Iterator:
        return decode_frames(self.container, self.stream, self.counts, droppable=self._unwanted,
                             stub=self._headers_only if self._length_size else None)

    def _number(self, packet) -> int | None:
        """The frame number of a packet's picture (None: not known before decoding)."""
        if self.meta.numbering == BY_TIMESTAMPS:
            return self.meta.frame_index(packet.pts)
        if self.meta.numbering == BY_PACKET:
            return self.meta.packet_index(packet.pos)
        return None  # frames counted from the start must all come out

    def _headers_only(self, packet):
        """For a droppable packet of a reference picture that no frame of the run depends on, the packet with its
        slice data cut off; None for any other."""
        number = self._number(packet)
        header_bytes = None if number is None else self.meta.header_bytes_if_unused(number, self._first_wanted)
        if header_bytes is None:
            return None
        stub = av.Packet(headers_only(bytes(packet), self._length_size, header_bytes))
        stub.stream = packet.stream
        stub.pts, stub.dts, stub.time_base, stub.opaque = packet.pts, packet.dts, packet.time_base, packet.opaque
        return stub

    def _unwanted(self, packet) -> bool:
        number = self._number(packet)
        # Not past the run's last frame: the next run (a window that follows) may want those and go on to them.
        if number is None or number in self._wanted or number > self._last_wanted:
            return False
        self.done = max(self.done, number)  # it may be gone: a later run that wants it seeks
        return True

    def _go_to(self, run: Sequence[int]) -> None:
        if self._should_seek(run[0]):
            self._seek(run[0])
        self._wanted, self._first_wanted, self._last_wanted = frozenset(run), run[0], run[-1]
        self.done = max(self.done, run[0] - 1)

    def _should_seek(self, first: int) -> bool:
        if not self.meta.seekable:
            return False
        if first <= self.done:
            return True
        keyframe = self.meta.keyframe_before(first - SEEK_MARGIN_FRAMES)
        if keyframe is None:  # keyframes unknown: seek when the gap is wide
            return first - self.done > SEEK_GAP_FRAMES
        return keyframe > self.done + 1

    def _seek(self, first: int) -> None:
        """Seek to the keyframe before frame `first`; after a failed seek, to the start of the file (and when that
        fails too, the frames of the run are missing: the clip loader repairs and counts them)."""
        self.numbers.seeked()
        self.done = -1
        # A few frames early: some demuxers (AVI) seek by decoding timestamp, which runs ahead of the pts.
        target = self.meta.frame_pts(first - SEEK_MARGIN_FRAMES)
        try:
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        except av.error.FFmpegError as e:
            logger.debug("seek failed (%s); decoding from the start", e)
            try:
                self.container.seek(self.meta.start_pts, stream=self.stream, backward=True)
            except av.error.FFmpegError:
                self._frames = iter(())
                return
        self._frames = self._decode()


@dataclass
class _LastVideo:
    """What a reader keeps of the video it read last, in one process: its decoder, open where it stopped, and the
    last frames it returned. The next clip of the same video (another view, an overlapping window, the next record
    of an untrimmed video) reuses both instead of opening, seeking and decoding again."""

    key: tuple  # (path, size, mtime, process id): another file, a changed file or a forked worker starts anew
    decoder: DecodePass
    kept: dict[int, object] = field(default_factory=dict)

    def keep(self, frames: dict[int, object], frame_bytes: int) -> None:
        """Keep the frames of the highest numbers (the next window comes later) within KEPT_FRAMES_BYTES."""
        newest = sorted(frames)[-max(1, KEPT_FRAMES_BYTES // max(frame_bytes, 1)):]
        self.kept = {i: frames[i] for i in newest}


def _file_key(path: Path) -> tuple:
    st = os.stat(path)
    return str(path), st.st_size, st.st_mtime_ns, os.getpid()


class VideoFileReader(FileReader):
    """Decoded frames (av.VideoFrame) of a video file for 0-based frame numbers; None for frames past the end
    or destroyed by damage. Videos are <base>.<ext> for any common extension; their frame count and timing
    are probed from the file (the annotation's frame segments are not used) and cached.

    Each fetch decodes from the keyframe before the wanted frames to the last of them (`DecodePass`), with
    `threads` decoder threads (1: one per DataLoader worker, so that workers do not compete for the cores). The
    last video stays open with its last frames: consecutive fetches from one video reuse what was decoded.

    Args:
        meta_cache: where the frame timing of each video comes from (probed on first use when None).
        threads: decoder threads (0: as many as FFmpeg likes).
    """

    channels = 3
    probes_frames = True
    stored_as = "video files"

    def __init__(self, meta_cache: VideoMetaCache | None = None, *, threads: int = 1):
        self.meta_cache = meta_cache if meta_cache is not None else VideoMetaCache(None)
        self.threads = threads
        self._finder = VideoFileFinder()
        self._last: _LastVideo | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_last": None}  # an open file does not travel to another process

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
            last = self._video(path, meta)
        except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
            raise ReadError(f"cannot decode {path}: {e}") from None
        wanted = sorted({i for i in indices if 0 <= i < meta.n_frames})
        found = {i: last.kept[i] for i in wanted if i in last.kept}
        todo = [i for i in wanted if i not in found]
        try:
            if todo and not meta.seekable and todo[0] <= last.decoder.done:
                last = self._video(path, meta, reopen=True)  # frames counted from the start: only from the start
            for run in _runs(todo, meta):
                found.update(last.decoder.decode(run))
        except BaseException:
            self._forget()  # the decoder is in an unknown state
            raise
        last.keep(found, meta.width * meta.height * 3 // 2)
        return [found.get(i) for i in indices]

    def _video(self, path: Path, meta: VideoMeta, *, reopen: bool = False) -> _LastVideo:
        """The last video when `path` is it (and unchanged, and opened by this process), else `path` opened."""
        key = _file_key(path)
        if self._last is not None and self._last.key == key and not reopen:
            return self._last
        self._forget()
        self._last = _LastVideo(key, DecodePass(path, meta, threads=self.threads))
        return self._last

    def _forget(self) -> None:
        last, self._last = self._last, None
        if last is not None and last.key[-1] == os.getpid():  # a parent's file is left to the parent
            last.decoder.close()

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
    """The result of decoding a whole video file (`scan_video`) the way every reader does."""

    path: str
    error: str = ""  # why the file cannot be used at all ('' when it opens and has a video stream)
    no_video_stream: bool = False
    n_frames: int = 0  # frames the readers number (packets with data; decodable frames when numbered by decoding)
    n_decoded: int = 0  # frames a reader gets
    decode_errors: int = 0  # packets that failed to decode
    unnumbered: int = 0  # frames that decode but that no reader can place (they are lost to every reader)
    numbering: str = BY_TIMESTAMPS  # how frames are numbered (VideoMeta.numbering)
    timestamp_fault: str = ""  # why the timestamps cannot number the frames ('' when they can)
    missing_pts: int = 0  # packets without a timestamp
    duplicate_pts: int = 0  # packets repeating the timestamp of another
    claimed_frames: int = 0  # the container's frame count (0: unknown)
    claimed_duration: float = 0.0  # seconds, the container's
    duration: float = 0.0  # seconds covered by the frames found
    fps: float = 0.0
    width: int = 0  # displayed
    height: int = 0
    rotation: int = 0
    vfr: bool = False


def scan_video(path: Path, *, threads: int = 1) -> VideoScan:
    """Probe `path` and decode it in one sequential pass, as the readers do; never raises for a bad file (the
    reason is in `error`).

    `threads`: decoder threads (0: as many as FFmpeg likes; 1 when one process per core runs).
    """
    scan = VideoScan(str(path))
    try:
        meta, log = _probe(path)
        counts = DecodeCounts()
        scan.n_decoded = sum(1 for _ in stream_frames(path, meta, threads=threads, counts=counts))
        with av.open(str(path)) as container:
            stream = video_stream(container)
            scan.claimed_duration = announced_duration(container, stream)
            scan.claimed_frames = int(stream.frames or 0)
    except NoVideoStream:
        scan.error, scan.no_video_stream = "no video stream", True
        return scan
    except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
        scan.error = str(e).splitlines()[0] if str(e) else type(e).__name__
        return scan
    scan.n_frames, scan.decode_errors, scan.unnumbered = meta.n_frames, counts.errors, counts.unnumbered
    scan.numbering, scan.timestamp_fault = meta.numbering, meta.timestamp_fault
    scan.missing_pts, scan.duplicate_pts = log.missing_pts, log.duplicate_pts
    scan.duration, scan.fps, scan.vfr = meta.duration, meta.fps, meta.vfr
    scan.width, scan.height, scan.rotation = meta.width, meta.height, meta.rotation
    return scan


def parse_frame_size(text: str, *, flag: str, example: str = "96x72", minimum: int = 2) -> tuple[int, int]:
    """'WIDTHxHEIGHT' of a video to write -> (width, height): both even (H.264's 4:2:0 chroma needs it) and at least
    `minimum`; a UserError naming `flag` otherwise."""
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise UserError(f"{flag} must look like {example}, got {text!r}") from None
    if width < minimum or height < minimum or width % 2 or height % 2:
        raise UserError(f"{flag} needs even width and height of at least {minimum}, got {text!r}")
    return width, height
