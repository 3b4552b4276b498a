"""Tiny synthetic video datasets on disk, in the original's layouts, for the tests and bench_accuracy.

    from benchmarks.synthetic import make_frame_dataset
    ds = make_frame_dataset(tmp_path, n_classes=2, videos_per_class=2, n_frames=10, size=(32, 24))
    ds.video_path, ds.annotation_path, ds.class_names, ds.videos['kinetics_c0_v0'].label

Layouts:
- jpg: <root>/<label>/<id>/image_00001.jpg ... (segment [1, n + 1]); test videos under <root>/test/<id>.
- hdf5: <root>/<label>/<id>.hdf5 with dataset 'video' (vlen uint8 JPEG bytes, segment [0, n]); flow
  ('input_type="flow"') has 'video_u' and 'video_v' (grayscale JPEGs).
- video: <root>/<label>/<id>.mp4 (H.264 via PyAV, `fps` frames per second, keyframe every 8 frames).
- activitynet: official-style JSON (taxonomy, segments in seconds, fps), videos in <root>/v_<id>[.hdf5].

Content:
- 'shapes' (default): a square of the class's colour moving in the class's direction over a dark
  background, with a per-video phase, so a model can learn the classes from a few videos.
- 'index': every frame is one uniform colour: R = 8 * frame_number (1-based), G = 16 * video
  number, B = 40 * label; `decode_frame_number(clip)` recovers the frame numbers after JPEG.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import av
import h5py
import numpy as np
from PIL import Image

from datasets.file_types import FILE_READERS
from datasets.layout import HDF5_FLOW_KEYS, HDF5_FRAMES_KEY, frame_name

SPLITS = ("training", "validation")
WRITTEN_EXTENSION = {"video": ".mp4"}  # the container written for video files (readers take any extension)
_DIRECTIONS = [(1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)]


@dataclass
class VideoInfo:
    """What make_frame_dataset wrote for one video."""

    video_id: str
    label: int  # -1 for test videos
    subset: str
    n_frames: int
    path: Path  # frame directory or .hdf5 file
    number: int  # running number (G channel of 'index' content)


@dataclass
class SyntheticDataset:
    """Paths and ground truth of a generated dataset."""

    video_path: Path
    annotation_path: Path
    class_names: list[str]
    videos: dict[str, VideoInfo] = field(default_factory=dict)

    def ids(self, subset: str) -> list[str]:
        return [v.video_id for v in self.videos.values() if v.subset == subset]


def frame_image(content: str, *, label: int, number: int, frame: int, size: tuple[int, int]) -> np.ndarray:
    """One RGB frame (H, W, 3) uint8; `frame` is the 1-based frame number."""
    width, height = size
    if content == "index":
        color = ((8 * frame) % 256, (16 * number) % 256, (40 * max(label, 0)) % 256)
        return np.broadcast_to(np.array(color, np.uint8), (height, width, 3)).copy()
    img = np.full((height, width, 3), 30, np.uint8)
    side = max(2, min(width, height) // 3)
    dx, dy = _DIRECTIONS[max(label, 0) % len(_DIRECTIONS)]
    step = max(1, min(width, height) // 10)
    x = int((number * 5 + frame * step * dx) % (width - side))
    y = int((number * 3 + frame * step * dy) % (height - side))
    hue = (max(label, 0) * 0.37) % 1.0
    color = [int(127 + 120 * math.cos(2 * math.pi * (hue + k / 3))) for k in range(3)]
    img[y : y + side, x : x + side] = color
    return img


def encode_jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_frame_number(frame: np.ndarray) -> int:
    """Frame number of an 'index' frame (H, W, C) uint8 from its mean red value."""
    return int(round(float(frame[..., 0].mean()) / 8))


def write_video_file(path: Path, frames: list[np.ndarray], *, fps: float = 10.0, codec: str = "libx264") -> None:
    """Encode frames (H, W, 3) uint8 into a real compressed video file with PyAV (even sizes for yuv420p)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=int(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":  # near-lossless and a keyframe every 8 frames, so seeking is exercised
            stream.options = {"crf": "1", "g": "8", "keyint_min": "8", "sc_threshold": "0"}
        for arr in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode())


def write_video(path: Path, frames: list[np.ndarray], *, file_type: str, input_type: str = "rgb",
                fps: float = 10.0) -> None:
    """Write frames as a jpg directory (path = the directory), an .hdf5 file or a video file (path = the file)."""
    if file_type == "video":
        write_video_file(path, frames, fps=fps)
        return
    if file_type == "jpg":
        path.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(frames, start=1):
            (path / frame_name(i)).write_bytes(encode_jpeg(frame))
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if input_type == "flow":  # u from the red channel, v from the green one
            for key, ch in zip(HDF5_FLOW_KEYS, (0, 1)):
                _vlen(f, key, [encode_jpeg(np.ascontiguousarray(fr[..., ch])) for fr in frames])
        else:
            _vlen(f, HDF5_FRAMES_KEY, [encode_jpeg(fr) for fr in frames])


def _vlen(f, key: str, blobs: list[bytes]) -> None:
    ds = f.create_dataset(key, (len(blobs),), dtype=h5py.vlen_dtype(np.dtype("uint8")))
    for i, b in enumerate(blobs):
        ds[i] = np.frombuffer(b, np.uint8)


def _video_id(dataset: str, label: int, k: int) -> str:
    if dataset in ("ucf101", "hmdb51"):
        return f"v_c{label}_g{k:02d}_c01"
    return f"{dataset}_c{label}_v{k}"


def make_frame_dataset(
    root: Path | str,
    *,
    n_classes: int = 2,
    videos_per_class: int = 2,
    n_frames: int | list[int] = 10,
    size: tuple[int, int] = (32, 24),
    file_type: str = "jpg",
    dataset: str = "kinetics",
    input_type: str = "rgb",
    with_test_subset: bool = False,
    content: str = "shapes",
    fps: float = 10.0,
) -> SyntheticDataset:
    """Write a dataset under `root` (videos in root/videos, JSON in root/<dataset>.json) and describe it.

    Each class gets `videos_per_class` training videos and one validation video; with
    `with_test_subset`, one unlabelled testing video per class too. `n_frames` is one count for
    all videos or a list cycled over them; `size` is (width, height), even for file_type 'video'.
    """
    root = Path(root)
    video_root = root / "videos"
    names = [f"class_{c}" for c in range(n_classes)]
    counts = n_frames if isinstance(n_frames, list) else [n_frames]
    result = SyntheticDataset(video_root, root / f"{dataset}.json", names)
    plan = [(s, c, k) for c in range(n_classes) for s, k in
            [("training", k) for k in range(videos_per_class)] + [("validation", videos_per_class)]]
    if with_test_subset:
        plan += [("testing", c, videos_per_class + 1) for c in range(n_classes)]
    for number, (subset, c, k) in enumerate(plan):
        label = -1 if subset == "testing" else c
        vid = _video_id(dataset, c, k) if subset != "testing" else f"test_{number}"
        n = counts[number % len(counts)]
        path = _video_location(video_root, dataset, vid, names[c] if label >= 0 else "test", file_type)
        frames = [frame_image(content, label=c, number=number, frame=i, size=size) for i in range(1, n + 1)]
        write_video(path, frames, file_type=file_type, input_type=input_type, fps=fps)
        result.videos[vid] = VideoInfo(vid, label, subset, n, path, number)
    data = _activitynet_json(result, fps) if dataset == "activitynet" else _standard_json(result, file_type)
    result.annotation_path.write_text(json.dumps(data))
    return result


def _video_location(video_root: Path, dataset: str, vid: str, label_dir: str, file_type: str) -> Path:
    base = video_root / f"v_{vid}" if dataset == "activitynet" else video_root / label_dir / vid
    location = FILE_READERS[file_type].location(base)
    return location.with_name(location.name + WRITTEN_EXTENSION.get(file_type, ""))


def _standard_json(ds: SyntheticDataset, file_type: str) -> dict:
    base = FILE_READERS[file_type].first_frame
    database = {}
    for v in ds.videos.values():
        ann = {} if v.label < 0 else {"label": ds.class_names[v.label]}
        ann["segment"] = [base, base + v.n_frames]
        database[v.video_id] = {"subset": v.subset, "annotations": ann}
    return {"labels": ds.class_names, "database": database}


def _activitynet_json(ds: SyntheticDataset, fps: float) -> dict:
    """Taxonomy root -> one parent -> the leaves (= classes); one annotation covering each whole video."""
    taxonomy = [{"nodeId": 0, "nodeName": "Root", "parentId": None, "parentName": None},
                {"nodeId": 1, "nodeName": "Group", "parentId": 0, "parentName": "Root"}]
    taxonomy += [{"nodeId": 10 + i, "nodeName": n, "parentId": 1, "parentName": "Group"}
                 for i, n in enumerate(ds.class_names)]
    database = {}
    for v in ds.videos.values():
        duration = v.n_frames / fps
        anns = [] if v.label < 0 else [{"segment": [0.0, duration], "label": ds.class_names[v.label]}]
        database[v.video_id] = {"subset": v.subset, "annotations": anns, "duration": duration, "fps": fps,
                                "url": ""}
    return {"version": "VERSION 1.3", "taxonomy": taxonomy, "database": database}
