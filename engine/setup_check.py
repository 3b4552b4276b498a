"""Start-up check of a distributed run: every rank must be about to train the same model on the same data.

Each node reads its own copy of the annotation file and videos; a copy that misses a few videos gives its
ranks fewer batches, and the job would hang in a collective until --dist_timeout. Comparing small
fingerprints once at start-up turns that into one line naming the ranks and what differs.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping, Sequence

from torch import nn

from engine.distributed import DistInfo, gather_objects
from errors import UserError
from opts import opts_to_plain

# Options that may differ between nodes (their own paths and worker counts).
PER_NODE_OPTIONS = ("root_path", "video_path", "annotation_path", "result_path", "resume_path", "pretrain_path",
                    "n_threads", "dist_url", "predict", "class_names")


def setup_options(opt: argparse.Namespace) -> dict:
    """The options that must be the same on every rank."""
    return {k: v for k, v in opts_to_plain(opt).items() if k not in PER_NODE_OPTIONS}


def model_fingerprint(net: nn.Module) -> str:
    """Names and shapes of every parameter and buffer, hashed."""
    shapes = [(name, tuple(t.shape)) for name, t in net.state_dict().items()]
    return f"{len(shapes)} tensors, hash {_hash(shapes)}"


def records_fingerprint(records: Sequence) -> str:
    """Count and hash of (video id, label, segment) of a split's records."""
    return f"{len(records)} videos, hash {_hash([(r.video_id, r.label, tuple(r.segment)) for r in records])}"


def _hash(items) -> str:
    return hashlib.sha1(repr(items).encode()).hexdigest()[:12]


def data_fingerprint(class_names: Sequence[str] | None, train_loader, val_loader) -> dict:
    """What the ranks compare before training: class names and the records of each split they load."""
    found = {"class names": class_names}
    if train_loader is not None:
        found["training records"] = records_fingerprint(train_loader.dataset.records)
    if val_loader is not None:
        found["validation records"] = records_fingerprint(val_loader.dataset.records)
    return found


def check_same_setup(found: Mapping[str, object], dist: DistInfo) -> None:
    """Raise :class:`UserError` on every rank when any rank's ``found`` differs from rank 0's."""
    if not dist.distributed:
        return
    everyone = gather_objects(dict(found))
    reference = everyone[0]
    problems = []
    for key in reference:
        ranks = [r for r, other in enumerate(everyone) if other.get(key) != reference[key]]
        if ranks:
            problems.append(f"{key} differ between rank 0 and rank{'s' if len(ranks) > 1 else ''} "
                            f"{', '.join(map(str, ranks))}: {_difference(reference[key], everyone[ranks[0]].get(key))}")
    if problems:
        raise UserError("; ".join(problems) + " (every node needs the same data copy and options)")


def _difference(a: object, b: object) -> str:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return ", ".join(f"{k}={a.get(k)!r} vs {b.get(k)!r}" for k in keys[:5])
    if isinstance(a, list) and isinstance(b, list):
        return f"{len(a)} vs {len(b)} entries"
    return f"{a} vs {b}"
