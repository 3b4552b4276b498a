"""Live video sources for `--predict`: a stream read as it arrives, through FFmpeg (PyAV), with reconnection.

A source is live when it is a URL (any scheme FFmpeg opens: rtsp://, http(s)://, udp://, srt://, ...), `-`
(standard input, e.g. `ffmpeg ... -f mpegts - | python main.py --predict -`), a character device (a V4L2 camera
such as /dev/video0) or a FIFO (named pipe). Regular files and folders are not: they keep the whole-file path
(`datasets.video_files`), which probes, numbers and times every frame before decoding.

`LiveStream(source, ...)` yields `LiveFrame`s: frames numbered 0, 1, 2, ... in arrival order over the whole run,
timed in seconds of the run's own clock (the stream's timestamps within a connection, so a burst of buffered
frames keeps its spacing; each new connection continues from the time it started, so a gap in the stream shows as
a gap in time), with the monotonic time each frame left the decoder (`arrival`, for latency). Each frame's pts and
time base are rewritten to that clock (1/90000 s), so writers of annotated copies keep the times across
reconnections.

Lost and stalled streams: a connection that ends (end of stream, a network error) or delivers no data for
`stall_s` seconds (FFmpeg's read timeout, for URLs and devices) is opened again after a back-off of
RECONNECT_FIRST_S seconds, doubled after every failed try up to RECONNECT_MAX_S, at most `reconnect` times in a
row (-1: forever); a connection that delivers frames resets the count. Pipes have no read timeout (a writer that
pauses is waited for, the stall is only reported by the consumer); a FIFO whose writer closes it is opened again
(the next writer); standard input ends the run at its end.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av

logger = logging.getLogger(__name__)

STDIN = "-"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
RECONNECT_FIRST_S = 0.5  # first back-off after a lost connection; doubled after every failed try
RECONNECT_MAX_S = 30.0  # the back-off's cap
MIN_OPEN_TIMEOUT_S = 5.0  # connecting may take longer than a stall (RTSP handshakes)
CLOCK = Fraction(1, 90000)  # time base of the rewritten frame times (MPEG's 90 kHz clock)
# Probe 0.5 s of stream, not FFmpeg's 5 s: frames start sooner, with less of a backlog to catch up on, and a writer
# that pauses early does not hold up the start. (fflags=nobuffer is not used: it drops the packets read while probing,
# the first keyframe among them, so nothing decodes until the next one.)
LIVE_OPTIONS = {"analyzeduration": "500000"}
SCHEME_OPTIONS = {"rtsp": {"rtsp_transport": "tcp"}}  # over TCP: no frames lost to UDP drops


def is_url(text: str) -> bool:
    """`scheme://...` (rtsp, http, udp, ...): a path never starts like that (kept as text, not a Path, which would
    fold the double slash)."""
    return bool(_URL.match(str(text)))


def is_live_source(source) -> bool:
    """A URL, `-` (stdin), a character device or a FIFO: read as it arrives, not as a whole file."""
    return source_kind(source) is not None


def source_kind(source) -> str | None:
    """'url', 'stdin', 'device' or 'fifo'; None for anything else (files, folders, missing paths)."""
    text = str(source)
    if text == STDIN:
        return "stdin"
    if is_url(text):
        return "url"
    try:
        mode = os.stat(text).st_mode
    except OSError:
        return None
    return "device" if stat.S_ISCHR(mode) else "fifo" if stat.S_ISFIFO(mode) else None


@dataclass(frozen=True)
class LiveFrame:
    """One decoded frame of a live source (see the module docstring)."""

    number: int
    seconds: float
    arrival: float  # time.monotonic() when the decoder gave it
    frame: av.VideoFrame
    connection: int  # which opening of the source delivered it (1, 2, ...): clips never span two


@dataclass
class StreamState:
    """What the stream went through, for the status line and the results (written by the reading thread)."""

    connections: int = 0  # connections that delivered frames
    losses: list[str] = field(default_factory=list)  # why each connection ended or failed, in order (last 20)
    ended: str = ""  # why the stream is over ('' while it runs)
    fps: float = 0.0  # the stream's announced frame rate (0: unknown)

    @property
    def reconnects(self) -> int:
        return max(0, self.connections - 1)

    def lost(self, reason: str) -> None:
        self.losses = [*self.losses[-19:], reason]


class LiveStream:
    """The frames of a live source, reconnecting as the module docstring says. Iterate it in one thread; set
    `stopping` (from any thread) to end it at the next frame or back-off."""

    def __init__(self, source, *, stall_s: float, reconnect: int, threads: int = 1,
                 stopping: threading.Event | None = None):
        self.source, self.kind = str(source), source_kind(source)
        if self.kind is None:
            raise ValueError(f"{source} is not a live source")
        self.stall_s, self.reconnect, self.threads = stall_s, reconnect, threads
        self.stopping = stopping or threading.Event()
        self.state = StreamState()
        self._number, self._end_s, self._start, self._opened = 0, 0.0, None, 0

    def __iter__(self) -> Iterator[LiveFrame]:
        failures = 0
        while not self.stopping.is_set():
            delivered = False
            try:
                with self._open() as container:
                    for frame in self._connection_frames(container):
                        if not delivered:
                            delivered, failures = True, 0
                            self.state.connections += 1
                            if self.state.connections > 1:
                                logger.info("live: reconnected to %s", self.source)
                        yield frame
                        if self.stopping.is_set():
                            return
                reason = "end of stream"
            except (av.error.FFmpegError, OSError) as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if self.stopping.is_set():
                return
            self.state.lost(reason)
            if self.kind == "stdin":  # standard input cannot be opened again
                self.state.ended = f"standard input ended ({reason})"
                return
            failures += 1
            if 0 <= self.reconnect < failures:
                self.state.ended = f"{reason}; gave up after {self.reconnect} reconnection attempt(s)"
                logger.warning("live: %s: %s", self.source, self.state.ended)
                return
            delay = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** (failures - 1))
            logger.warning("live: %s: %s; reconnecting in %.1f s (attempt %d%s)", self.source, reason, delay,
                           failures, f" of {self.reconnect}" if self.reconnect >= 0 else "")
            self.stopping.wait(delay)

    def _open(self):
        if self.kind == "stdin":
            # FFmpeg's pipe protocol reads the descriptor itself: whatever has arrived, no Python buffering.
            return av.open(f"pipe:{sys.stdin.fileno()}", container_options=dict(LIVE_OPTIONS))
        if self.kind == "fifo":  # blocks until a writer opens the pipe
            return av.open(self.source, container_options=dict(LIVE_OPTIONS))
        options = {**LIVE_OPTIONS, **SCHEME_OPTIONS.get(self.source.split(":", 1)[0].lower(), {})}
        fmt = "video4linux2" if self.kind == "device" and sys.platform.startswith("linux") else None
        timeout = (max(self.stall_s, MIN_OPEN_TIMEOUT_S), self.stall_s)  # no data for stall_s: the read fails
        return av.open(self.source, format=fmt, container_options=dict(options), timeout=timeout)

    def _connection_frames(self, container) -> Iterator[LiveFrame]:
        """The frames of one connection, on the run's clock."""
        stream = container.streams.video[0] if container.streams.video else None
        if stream is None:
            raise OSError("no video stream in the source")
        stream.codec_context.thread_count = max(1, self.threads)  # frame threads would delay every frame
        self._opened += 1
        rate = stream.average_rate or stream.guessed_rate
        self.state.fps = float(rate) if rate else self.state.fps
        first_pts, offset = None, None
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:  # a damaged packet (or one before the first keyframe): skip it
                continue
            for frame in frames:
                arrival = time.monotonic()
                if self._start is None:
                    self._start = arrival
                if offset is None:  # the connection's first frame: continue the run's clock from now
                    offset = 0.0 if self._number == 0 else max(self._end_s, arrival - self._start)
                    first_pts = frame.pts
                if frame.pts is not None and first_pts is not None and frame.time_base:
                    seconds = offset + float((frame.pts - first_pts) * frame.time_base)
                else:
                    seconds = arrival - self._start
                seconds = max(seconds, self._end_s)  # never backwards (a timestamp jump inside a connection)
                if frame.duration and frame.time_base:
                    frame.duration = round(frame.duration * frame.time_base / CLOCK)
                frame.pts, frame.time_base = round(seconds / CLOCK), CLOCK
                self._end_s = seconds + 1 / (self.state.fps or 30.0)
                yield LiveFrame(self._number, seconds, arrival, frame, self._opened)
                self._number += 1

