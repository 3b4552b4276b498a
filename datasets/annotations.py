"""Annotation JSON -> video records, parsed once per run.

Two schemas:
- kinetics, mit, ucf101, hmdb51: {"labels": [...], "database": {id: {"subset", "annotations":
  {"label"?, "segment"?}, "video_path"?}}}; the segment is in frames ([1, n+1] for jpg, [0, n]
  for hdf5). Video location: <root>/<entry["video_path"]>[.hdf5] if given (relative to the video
  root; an absolute path as is), else <root>/<label>/<id>[.hdf5]; an entry without a label (test
  videos) is looked up in <root>/test/<id> and then <root>/<id>.
- activitynet: the official ActivityNet 1.3 JSON (taxonomy; annotations = list of {segment in
  seconds, label}) plus the per-video "fps" field; classes are the taxonomy leaves in taxonomy
  order; videos live in <root>/v_<id>[.hdf5]; one record per annotated segment (trimmed) or one
  per video (untrimmed, for inference).
With file_type 'video' the same layouts hold with a video file <...>/<id>.<ext> (mp4, avi, mkv,
webm, ..., in any letter case: datasets.layout.VIDEO_EXTENSIONS); frames are the decoded stream's,
0-based, counted once and cached in <annotation file>.video_meta.json (the JSON's jpg-frame segments are not used).
- ssv2, charades: the same schema with videos directly under the root (<root>/<id>, or each entry's
  video_path). Times in seconds (list_json's annotations.segment_seconds, which narrows a record to
  that part of the video; Charades' annotations.actions [{"label", "segment_seconds"}], kept as
  VideoRecord.actions) become frames with the entry's 'fps', else the video file's probed frame rate,
  else frames / the entry's 'duration'.

Deviations from the original: testing entries without a label load (label -1); ActivityNet works
(its class was broken); an ActivityNet segment may end at the last frame (the original's
min(..., n_frames) dropped it); no "dataset loading [i/n]" print (crashed below 5 videos); a class name
listed twice is refused (the original silently trained only its later index); a frame segment of more than
CHECKED_SEGMENT_FRAMES frames must lie within its video (a UserError, not a MemoryError at [1, 1e9]).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets.file_reader import FileReader
from datasets.file_types import FILE_READERS
from datasets.layout import ANNOTATION_SUBSETS, DATASETS, FLAT_DATASETS, HDF5_SUFFIX
from errors import UserError

logger = logging.getLogger(__name__)

ACTIVITYNET_MIN_FRAMES = 8  # the original skipped shorter ActivityNet segments
# A frame segment up to this long is taken as written (one that runs past its video is padded and its missing
# frames counted, as the loaders always did); a longer one is checked against the video's frame count once, as a
# segment such as [1, 1e9] would otherwise fill the memory with frame numbers at the first clip drawn from it.
CHECKED_SEGMENT_FRAMES = 10_000


@dataclass(frozen=True)
class VideoRecord:
    """One sample: a video (or a segment of it) with its label.

    Attributes:
        video_id: key in the annotation database.
        path: frame directory (jpg) or .hdf5 file.
        label: class index, -1 when unlabelled (test videos).
        segment: (first_frame, end_exclusive) in the file's own numbering (1-based jpg, 0-based hdf5).
        fps: frames per second when known (ActivityNet), else None.
        actions: every action of the video (Charades' annotations.actions) as (class index, first_frame,
            end_exclusive) in the same numbering; empty for single-label entries and videos without actions.
    """

    video_id: str
    path: Path
    label: int
    segment: tuple[int, int]
    fps: float | None = None
    actions: tuple[tuple[int, int, int], ...] = ()

    @property
    def frame_indices(self) -> list[int]:
        return list(range(*self.segment))


@dataclass
class Skipped:
    """Entries of a subset that give no record, by reason (video ids, in file order).

    Attributes:
        missing: the video is not on disk.
        unlabelled: an entry of a labelled subset without a label: looked up as a test video (<root>/test/<id>,
            <root>/<id>) and not found there; telling the user it is missing would send them looking for a file.
    """

    missing: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.missing) + len(self.unlabelled)


def load_annotation(path: Path | str) -> dict[str, Any]:
    """Read an annotation JSON; UserError naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"annotation file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise UserError(f"annotation file {path} has no 'database' object")
    return data


def activitynet_class_names(data: dict[str, Any], path: Path | str) -> list[str]:
    """Taxonomy leaves (nodes that are nobody's parent), in taxonomy order."""
    taxonomy = data.get("taxonomy")
    if not isinstance(taxonomy, list) or not taxonomy:
        raise UserError(f"ActivityNet annotation file {path} has no 'taxonomy' list")
    try:
        parents = {node["parentId"] for node in taxonomy}
        return [node["nodeName"] for node in taxonomy if node["nodeId"] not in parents]
    except (KeyError, TypeError) as e:
        raise UserError(f"malformed taxonomy in {path}: {e!r}") from None


def check_unique_names(names: list[str], *, where: str) -> None:
    """UserError naming the first class name `names` lists twice, and both places (1-based).

    A name listed twice is two outputs of the model for one class: videos of that class train only the later
    one, and predictions show the name twice.
    """
    first: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if name in first:
            raise UserError(f"{where} names class {name!r} twice (entries {first[name]} and {position}): each class "
                            "needs a name of its own; remove or rename one")
        first[name] = position


def class_names(data: dict[str, Any], *, dataset: str, path: Path | str) -> list[str]:
    """Index -> class name for `dataset`."""
    if dataset == "activitynet":
        names = activitynet_class_names(data, path)
        check_unique_names(names, where=f"the taxonomy of annotation file {path}")
        return names
    labels = data.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise UserError(f"annotation file {path} has no 'labels' list of strings")
    check_unique_names(labels, where=f"'labels' of annotation file {path}")
    return labels


def candidate_paths(root: Path, video_id: str, entry: dict, label: str | None, *, dataset: str,
                     file_type: str) -> list[Path]:
    location = FILE_READERS[file_type].location
    if "video_path" in entry:  # relative to --video_path (an absolute path stays as it is)
        own = root / entry["video_path"]
        return [own] if own.suffix == HDF5_SUFFIX else [own, location(own)]
    if dataset == "activitynet":
        bases = [root / f"v_{video_id}", root / video_id]
    elif dataset in FLAT_DATASETS:
        bases = [root / video_id]
    elif label is not None:
        bases = [root / label / video_id]
    else:
        bases = [root / "test" / video_id, root / video_id]
    return [location(base) for base in bases]


class _Locator:
    """Where the videos of one file type are and how many frames they have, asked of its registered reader
    (which probes video files once and caches what it learns beside the annotation file)."""

    def __init__(self, file_type: str, annotation_path: Path):
        if file_type not in FILE_READERS:
            raise UserError(f"unknown file type {file_type!r}; choose from {', '.join(FILE_READERS)}")
        self.file_type = file_type
        self.reader: FileReader = FILE_READERS[file_type].for_annotation_file(annotation_path)
        self.base = self.reader.first_frame

    def find(self, candidates: list[Path]) -> Path | None:
        return self.reader.find(candidates)

    def n_frames(self, video: Path) -> int:
        """Frames of `video`; 0 (the video is then skipped) when it cannot be read."""
        try:
            return self.reader.count_frames(video)
        except UserError:
            return 0

    def fps(self, video: Path) -> float | None:
        return self.reader.fps(video)

    def whole_video(self, video: Path) -> tuple[int, int]:
        return self.base, self.base + self.n_frames(video)


def _standard_records(data: dict, names: list[str], *, root: Path, subset: str, locator: _Locator,
                      dataset: str, path: Path) -> tuple[list[VideoRecord], Skipped]:
    """Records of the kinetics-style schema, plus the entries skipped for want of a video or of a label."""
    class_to_idx = {name: i for i, name in enumerate(names)}
    records, skipped, no_fps = [], Skipped(), []
    for video_id, entry in data["database"].items():
        if not isinstance(entry, dict) or entry.get("subset") != subset:
            continue
        ann = entry.get("annotations") or {}
        label = ann.get("label")
        if label is not None and label not in class_to_idx:
            raise UserError(f"video {video_id} in {path} has label {label!r}, which is not in 'labels'")
        video = locator.find(candidate_paths(root, video_id, entry, label, dataset=dataset,
                                              file_type=locator.file_type))
        if video is None:
            looked_up_as_test = label is None and subset != "testing" and not _own_location(entry, dataset)
            (skipped.unlabelled if looked_up_as_test else skipped.missing).append(video_id)
            continue
        begin, end = _frame_segment(video_id, entry, ann, video, locator=locator, path=path, no_fps=no_fps)
        if end <= begin:
            continue  # a video with no frames (the original skipped segment [1, 1]), or a segment past its end
        label_id = class_to_idx[label] if label is not None else -1
        actions = _actions(video_id, entry, ann, video, class_to_idx, locator=locator, path=path)
        records.append(VideoRecord(video_id, video, label_id, (begin, end), actions=actions))
    if no_fps:
        logger.warning("%d '%s' entries of %s have segment_seconds but no frame rate (e.g. %s): they cover their "
                       "whole video; add an 'fps' field to them or read the video files (--file_type video)",
                       len(no_fps), subset, path, no_fps[0])
    return records, skipped


def _own_location(entry: dict, dataset: str) -> bool:
    """Whether the entry's video is found without its label: it names its video_path, or the dataset is flat."""
    return "video_path" in entry or dataset in FLAT_DATASETS


def _frame_segment(video_id: str, entry: dict, ann: dict, video: Path, *, locator: _Locator, path: Path,
                   no_fps: list[str] | None = None) -> tuple[int, int]:
    """The frames a record covers: the entry's frame `segment` (jpg/hdf5; a video file: all its decoded
    frames), narrowed to `annotations.segment_seconds` when given (list_json's trimmed segments). Without a
    known frame rate (a frame folder and no 'fps' field) the whole video, and the id is added to `no_fps`."""
    segment = ann.get("segment", entry.get("segment"))
    if segment is None or locator.reader.probes_frames:  # e.g. a video file: its own decoded frames
        segment = locator.whole_video(video)
    try:
        begin, end = int(segment[0]), int(segment[1])
    except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: JSON's Infinity
        raise UserError(f"video {video_id} in {path} has a malformed segment {segment!r}") from None
    if end - begin > CHECKED_SEGMENT_FRAMES:
        _check_within_video(video_id, begin, end, video, locator=locator, path=path)
    seconds = ann.get("segment_seconds")
    if seconds is None or end <= begin:
        return begin, end
    fps = _entry_fps(entry, video, n_frames=end - begin, locator=locator)
    if fps is None:
        if no_fps is not None:
            no_fps.append(video_id)
        return begin, end
    return _seconds_to_frames(seconds, fps, begin, end, what=f"segment_seconds of video {video_id} in {path}")


def _check_within_video(video_id: str, begin: int, end: int, video: Path, *, locator: _Locator, path: Path) -> None:
    """UserError when the frame segment [begin, end) reaches outside the frames of ``video``."""
    n_frames = locator.n_frames(video)
    first, end_of_video = locator.base, locator.base + n_frames
    if begin < first or end > end_of_video:
        raise UserError(f"video {video_id} in {path} has segment [{begin}, {end}], but {video} has {n_frames} frames "
                        f"(segment [{first}, {end_of_video}] at most); fix the segment, or remove it to use the "
                        "whole video")


def _entry_fps(entry: dict, video: Path, *, n_frames: int, locator: _Locator) -> float | None:
    """Frames per second of an entry's frames: its 'fps' field, else the video file's probed rate, else
    frames / its 'duration' in seconds (Charades); None when none is known."""
    fps = entry.get("fps") or locator.fps(video)
    if not fps and entry.get("duration"):
        fps = n_frames / float(entry["duration"])
    return float(fps) if isinstance(fps, (int, float)) and fps > 0 else None


def _seconds_to_frames(seconds, fps: float, begin: int, end: int, *, what: str) -> tuple[int, int]:
    """[start, end] seconds -> [first, end_exclusive) frames within the video's frames [begin, end): every frame
    whose span overlaps the interval (an empty result, e.g. a segment after the video's end, has end <= begin)."""
    try:
        t0, t1 = float(seconds[0]), float(seconds[1])
    except (TypeError, ValueError, IndexError):
        raise UserError(f"malformed {what}: {seconds!r}") from None
    first = begin + max(0, math.floor(t0 * fps))
    last = min(end, begin + max(math.ceil(t1 * fps), math.floor(t0 * fps) + 1))
    return first, last


def _actions(video_id: str, entry: dict, ann: dict, video: Path, class_to_idx: dict[str, int], *,
             locator: _Locator, path: Path) -> tuple[tuple[int, int, int], ...]:
    """annotations.actions ([{"label", "segment_seconds"}], Charades) -> (class, first, end_exclusive) frames."""
    actions = ann.get("actions") or []
    if not actions:
        return ()
    whole = {"segment": ann["segment"]} if "segment" in ann else {}  # not narrowed by segment_seconds
    begin, end = _frame_segment(video_id, entry, whole, video, locator=locator, path=path)
    if end <= begin:
        return ()
    fps = _entry_fps(entry, video, n_frames=end - begin, locator=locator)
    if fps is None:
        raise UserError(f"video {video_id} in {path} has actions in seconds but no frame rate: add an 'fps' (or "
                        "'duration') field to the entry, or read the video files (--file_type video)")
    out = []
    for action in actions:
        if action.get("label") not in class_to_idx:
            raise UserError(f"video {video_id} in {path} has an action {action.get('label')!r}, which is not in "
                            "'labels'")
        first, last = _seconds_to_frames(action.get("segment_seconds"), fps, begin, end,
                                         what=f"action of video {video_id} in {path}")
        out.append((class_to_idx[action["label"]], first, max(last, first + 1)))
    return tuple(out)


def _activitynet_records(data: dict, names: list[str], *, root: Path, subset: str, locator: _Locator,
                         untrimmed: bool, path: Path) -> tuple[list[VideoRecord], Skipped]:
    class_to_idx = {name: i for i, name in enumerate(names)}
    base = locator.base
    records, skipped = [], Skipped()
    for video_id, entry in data["database"].items():
        if not isinstance(entry, dict) or entry.get("subset") != subset:
            continue
        video = locator.find(candidate_paths(root, video_id, entry, None, dataset="activitynet",
                                              file_type=locator.file_type))
        if video is None:
            skipped.missing.append(video_id)
            continue
        n_frames = locator.n_frames(video)
        annotations = entry.get("annotations") or []
        labels = [class_to_idx.get(a.get("label"), -2) for a in annotations]
        if -2 in labels:
            bad = next(a.get("label") for a, i in zip(annotations, labels) if i == -2)
            raise UserError(f"video {video_id} in {path} has label {bad!r}, which is not a taxonomy leaf")
        fps = entry.get("fps") or locator.fps(video)
        if untrimmed or not annotations:
            if n_frames > 0:
                label = labels[0] if labels else -1
                records.append(VideoRecord(video_id, video, label, (base, base + n_frames), fps))
            continue
        if not isinstance(fps, (int, float)) or fps <= 0:
            raise UserError(f"video {video_id} in {path} has no 'fps' (run util_scripts.add_fps_into_activitynet_json)")
        for ann, label in zip(annotations, labels):
            t0, t1 = ann["segment"]
            begin = max(math.floor(t0 * fps), 0) + base  # a start before the video (-0.2 s) starts with it
            end = min(math.floor(t1 * fps) + base, n_frames + base)
            if end - begin >= ACTIVITYNET_MIN_FRAMES:
                records.append(VideoRecord(video_id, video, label, (begin, end), float(fps)))
    return records, skipped


def read_records(
    annotation_path: Path | str,
    video_root: Path | str,
    *,
    dataset: str,
    subset: str,
    file_type: str = "jpg",
    untrimmed: bool = False,
) -> tuple[list[VideoRecord], list[str]]:
    """Parse the annotation file once into records of `subset`, and return them with the class names.

    Videos missing on disk are skipped and reported in one warning, and so are entries of a labelled subset
    without a label whose video is not where test videos are. UserError when the file is missing or
    malformed, a label is unknown, or no entry of the subset gives a record.
    `untrimmed` (ActivityNet only): one record per whole video instead of one per annotated segment.
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if subset not in ANNOTATION_SUBSETS:
        raise UserError(f"unknown subset {subset!r}; choose from {', '.join(ANNOTATION_SUBSETS)}")
    annotation_path, root = Path(annotation_path), Path(video_root)
    data = load_annotation(annotation_path)
    names = class_names(data, dataset=dataset, path=annotation_path)
    locator = _Locator(file_type, annotation_path)
    try:
        if dataset == "activitynet":
            records, skipped = _activitynet_records(data, names, root=root, subset=subset, locator=locator,
                                                    untrimmed=untrimmed, path=annotation_path)
        else:
            records, skipped = _standard_records(data, names, root=root, subset=subset, locator=locator,
                                                 dataset=dataset, path=annotation_path)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise UserError(f"malformed entry in annotation file {annotation_path}: {e!r}") from None
    locator.reader.save_cache()
    _report_skipped(skipped, records, annotation_path=annotation_path, root=root, subset=subset)
    return records, names


def _report_skipped(skipped: Skipped, records: list[VideoRecord], *, annotation_path: Path, root: Path,
                    subset: str) -> None:
    missing, unlabelled = skipped.missing, skipped.unlabelled
    if not records:
        if unlabelled and not missing:
            raise UserError(f"none of the {len(unlabelled)} '{subset}' entries of {annotation_path} has a label "
                            f"(e.g. {unlabelled[0]}): give each an annotations.label, or make them 'testing' entries")
        if missing:
            no_label = f"; {len(unlabelled)} more entries have no label" if unlabelled else ""
            raise UserError(f"none of the {len(missing)} '{subset}' videos of {annotation_path} exist under {root} "
                            f"(e.g. {missing[0]}); check --video_path, --file_type and the <label>/<id> layout"
                            + no_label)
        raise UserError(f"annotation file {annotation_path} has no usable '{subset}' videos")
    n_listed = len(skipped) + len(records)
    if unlabelled:
        logger.warning("%d of %d '%s' entries of %s have no label and are skipped (e.g. %s): give them an "
                       "annotations.label (entries without one are looked up as test videos, in %s/test/<id>)",
                       len(unlabelled), n_listed, subset, annotation_path, ", ".join(unlabelled[:5]), root)
    if missing:
        logger.warning("%d of %d '%s' videos listed in %s are missing under %s and are skipped (e.g. %s)",
                       len(missing), n_listed, subset, annotation_path, root, ", ".join(missing[:5]))
