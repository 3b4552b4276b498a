"""Counting bad data (missing/corrupt frames, unreadable videos) across DataLoader worker processes.

Counts live in a small shared-memory tensor with one row per process (row 0: the main process,
row k + 1: worker k), so workers never contend for a cell and no lock is needed. The training
loop reads `counts()` (totals over all rows) whenever it likes, e.g. once per epoch, and reports
the difference to the previous reading (`DataProblems.delta`).
"""

from __future__ import annotations

import logging

import torch
import torch.utils.data

logger = logging.getLogger(__name__)

KINDS = ("missing_frames", "corrupt_frames", "unreadable_videos")


class DataProblems:
    """Per-kind problem counters shared by the main process and its DataLoader workers.

    Each problem is logged as a warning once per (kind, video id) in each process; every
    occurrence is counted. `counts()` returns cumulative totals, e.g.
    {'missing_frames': 3, 'corrupt_frames': 1, 'unreadable_videos': 0}.

    Args:
        max_workers: number of worker rows to allocate (num_workers of the loader); a worker with a
            larger id shares the last row (counts then may race, but stay approximately right).
    """

    def __init__(self, max_workers: int = 0):
        self._table = torch.zeros(max_workers + 1, len(KINDS), dtype=torch.int64).share_memory_()
        self._warned: set[tuple[str, str]] = set()

    def _row(self) -> int:
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else min(info.id + 1, self._table.shape[0] - 1)

    def record(self, kind: str, video_id: str, count: int = 1, detail: str = "") -> None:
        """Count `count` problems of `kind` for `video_id`; warn the first time this process sees the pair."""
        self._table[self._row(), KINDS.index(kind)] += count
        if (kind, video_id) not in self._warned:
            self._warned.add((kind, video_id))
            suffix = f" ({detail})" if detail else ""
            logger.warning("data problem in video %s: %s x%d%s", video_id, kind, count, suffix)

    def counts(self) -> dict[str, int]:
        """Cumulative totals over the main process and all workers."""
        totals = self._table.sum(dim=0).tolist()
        return dict(zip(KINDS, totals))

    @staticmethod
    def delta(now: dict[str, int], before: dict[str, int] | None) -> dict[str, int]:
        """Problems that happened between two `counts()` readings (e.g. during one epoch)."""
        before = before or {}
        return {k: v - before.get(k, 0) for k, v in now.items()}

    def __getstate__(self) -> dict:
        # Workers get the shared table but their own (empty) set of already-warned videos.
        return {"_table": self._table}

    def __setstate__(self, state: dict) -> None:
        self._table = state["_table"]
        self._warned = set()
