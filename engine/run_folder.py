"""What a run keeps in --result_path besides its logs and checkpoints: the lock that makes it the folder's
only live run, and the marker that tells a launcher it stopped resumably.

``run.lock``: rank 0 holds an ``fcntl.flock`` lock on it from start-up to exit, so a second run on the same
folder is refused with one line instead of moving the live run's logs aside. The kernel drops an flock lock
when its process ends, however it ends, so a lock file left behind by a killed run is no obstacle: the next
run takes it over (and says so). The file holds the holder's pid, host and start time (first line, for the
refusal message) and its command; a clean exit removes it.

``stopped_resumable``: written by rank 0 when the run stops on a signal after saving what it had (first line:
the exit status, 128 + the signal; second line: what it printed). torchrun reports 1 whatever its workers'
exit status, so a job script reads this file to tell "stopped, resumable" from a failure (README: SLURM).
A run removes it as soon as it holds the lock, so it always describes the folder's latest run.

--predict and the tools of util_scripts write other files and take no lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import sys
import time
from pathlib import Path

from errors import UserError
from utils import new_file_mode

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
STOPPED_NAME = "stopped_resumable"
# File systems without flock support (some network mounts) answer with these: the run goes on, unprotected.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLock:
    """The lock of one result folder, held by this process from :meth:`take` to :meth:`release`."""

    def __init__(self, folder: Path, fd: int | None, *, created_folder: bool):
        self.folder, self.path = folder, folder / LOCK_NAME
        self._fd, self._created_folder = fd, created_folder

    @classmethod
    def take(cls, folder: Path) -> RunLock:
        """Lock ``folder`` (created if missing) for this run, or raise :class:`UserError` naming the live run
        that holds it. Clears the previous run's stop marker."""
        created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = _lock_file(folder / LOCK_NAME)
        except OSError as e:
            raise UserError(f"cannot write into --result_path {folder}: {e.strerror or e}") from None
        lock = cls(folder, fd, created_folder=created)
        if fd is not None:
            lock._claim()
        (folder / STOPPED_NAME).unlink(missing_ok=True)
        return lock

    def _claim(self) -> None:
        left = _holder(self._fd)
        if left:
            log.warning("taking over %s, left by %s: that process has ended (an flock lock ends with its process, "
                        "so no run holds it)", self.path, left)
        holder = (f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}\n{' '.join(sys.argv)}\n")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, holder.encode()[:2000], 0)

    def release(self) -> None:
        """Remove the lock file, then unlock (in this order: see :func:`_lock_file`); a folder this run created
        and left empty (a run refused at start-up) goes too."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        if self._created_folder:
            try:
                self.folder.rmdir()  # only when empty
            except OSError:
                pass


def _lock_file(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive flock lock; None where the file system has no locks.

    A holder removes the file before it unlocks, so a lock won on a file that is no longer at ``path`` is
    stale: then try again with the file that is there now."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, new_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "holder not written yet"
            os.close(fd)
            raise UserError(f"--result_path {path.parent} is in use by a live run ({holder}; {path} names it): "
                            "wait for it to end or give another --result_path") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in _NO_LOCKS:
                raise
            log.warning("cannot lock %s (%s): a second run on this folder would not be refused", path,
                        e.strerror or e)
            return None
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _holder(fd: int) -> str:
    """The first line of a lock file: 'pid N on HOST since TIME' ('' for an empty file)."""
    return os.pread(fd, 2000, 0).decode(errors="replace").partition("\n")[0].strip()


def mark_resumable_stop(folder: Path, exit_code: int, message: str) -> None:
    """Leave ``stopped_resumable`` in ``folder``: the exit status, then the message (for job scripts)."""
    try:
        (folder / STOPPED_NAME).write_text(f"{exit_code}\n{message}\n")
    except OSError as e:  # the stop itself went well; only the launcher's hint is missing
        log.warning("could not write %s: %s", folder / STOPPED_NAME, e.strerror or e)
