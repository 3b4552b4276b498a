"""Live `--predict` against a local stream server, measured as a user would run it (an experiment, run by hand).

Usage: ``python -m benchmarks.live_bench [--seconds 300] [--size 640x480] [--fps 30]
[--model_depth 18] [--sample_size 112] [--sample_duration 8] [--stride 16] [--output FILE]``

ffmpeg serves a synthetic `testsrc2` stream in real time (`-re`, H.264 ultrafast/zerolatency, MPEG-TS over HTTP in
listen mode; ffmpeg cannot serve RTSP itself, it only pushes to a server); `main.py --predict URL --live_reconnect 0`
follows it in a child process until the stream ends. Reported: segments labelled and expected (stream frames /
stride), segments dropped, latency median / p90 / max (from the run's predictions.json), and the child's resident
memory (VmRSS) sampled every 5 s: after the first 30 s, at the end and its peak, to show whether memory stays flat.
Random weights: speed and memory do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.predict_bench import write_checkpoint
from datasets.video_files import parse_frame_size

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_EVERY_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int, *, seconds: float, size: str, fps: int) -> tuple[subprocess.Popen, str]:
    """The ffmpeg stream server and the URL a client opens."""
    source = ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i",
              f"testsrc2=size={size}:rate={fps}:duration={seconds}",
              "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(fps)]
    url = f"http://127.0.0.1:{port}"
    return subprocess.Popen([*source, "-f", "mpegts", "-listen", "1", url]), url


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (Linux /proc), in MB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def follow(url: str, checkpoint: Path, out: Path, args) -> tuple[int, list[tuple[float, float]]]:
    """Run main.py --predict on the stream; its exit status and (seconds since start, RSS MB) samples."""
    cmd = [sys.executable, "main.py", "--predict", url, "--resume_path", str(checkpoint), "--result_path", str(out),
           "--live_output", str(out / "segments.jsonl"), "--inference_stride", str(args.stride),
           "--live_reconnect", "0", "--no_cuda"]
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    start, samples = time.monotonic(), []
    while child.poll() is None:
        value = rss_mb(child.pid)
        if value is not None:
            samples.append((round(time.monotonic() - start, 1), round(value, 1)))
        time.sleep(SAMPLE_EVERY_S)
    return child.returncode, samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--size", default="640x480")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--model_depth", type=int, default=18)
    p.add_argument("--sample_size", type=int, default=112)
    p.add_argument("--sample_duration", type=int, default=8)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--work_dir", type=Path, default=None)
    p.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    args.model = "resnet"
    parse_frame_size(args.size, flag="--size")  # refuses a malformed size before anything starts
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="live_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = write_checkpoint(work / f"r3d{args.model_depth}_{args.sample_duration}x{args.sample_size}.pth", args)
    out = work / "predictions"
    server, url = serve(_free_port(), seconds=args.seconds, size=args.size, fps=args.fps)
    try:
        time.sleep(0.5)  # the server listens before the client connects
        status, samples = follow(url, checkpoint, out, args)
    finally:
        server.kill()
    results = json.loads((out / "predictions.json").read_text())["results"] if status in (0, 2) else {}
    if not results:
        print(f"main.py --predict {url} labelled nothing (exit status {status})", file=sys.stderr)
        return 1
    entry = next(iter(results.values()))
    after_30 = next((rss for t, rss in samples if t >= 30), None)
    result = {"settings": {k: str(v) for k, v in vars(args).items()}, "exit_status": status,
              "segments": len(entry["segments"]), "expected_segments": int(args.seconds * args.fps) // args.stride,
              "frames": entry["n_frames"], **{k: entry["live"][k] for k in ("dropped_segments", "latency_s")},
              "rss_mb": {"after_30s": after_30, "end": samples[-1][1] if samples else None,
                         "peak": max((rss for _, rss in samples), default=None)}, "rss_samples": samples}
    text = json.dumps(result, indent=1)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
