"""Process-group set-up and the few collective helpers the loops need.

Two launch styles give the same result:

- ``torchrun`` (or any launcher setting RANK / LOCAL_RANK / WORLD_SIZE and MASTER_ADDR / MASTER_PORT):
  one process per GPU, rendezvous through ``env://``, any number of nodes;
- the original's ``--distributed --dist_url URL --world_size N_NODES``: this process spawns one worker
  per local GPU (one on a CPU-only machine). The node rank comes from NODE_RANK (or OpenMPI's
  OMPI_COMM_WORLD_RANK when run under mpirun), 0 when neither is set, so OpenMPI is not required.

- ``srun`` starting main.py once per GPU (no torchrun): RANK / LOCAL_RANK / WORLD_SIZE come from
  SLURM_PROCID / SLURM_LOCALID / SLURM_STEP_NUM_TASKS (or SLURM_NTASKS); MASTER_ADDR defaults to
  127.0.0.1 on one node and must be exported for several, MASTER_PORT to 29500 + SLURM_JOB_ID % 1000.

The single-process path is the same code with world size 1 and no process group.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from engine import stop_signals
from errors import UserError

log = logging.getLogger(__name__)

_ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
_FAILED_KEY = "toolkit/failed_rank"  # set in the rendezvous store by the first rank that fails
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 .. world_size - 1).
        local_rank: rank on this node; selects the GPU.
        world_size: number of processes in the job.
        device: the device this process computes on.
        is_main: True on rank 0, which alone writes logs, checkpoints and results.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    is_main: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _use_cuda(opt: argparse.Namespace) -> bool:
    return not opt.no_cuda and torch.cuda.is_available()


def launched_by_torchrun() -> bool:
    return all(os.environ.get(key) for key in _ENV_KEYS)


def adopt_slurm_env() -> None:
    """Under ``srun`` without torchrun, give the process the variables torchrun would have set."""
    if launched_by_torchrun() or "SLURM_PROCID" not in os.environ or "SLURM_LOCALID" not in os.environ:
        return
    world = _env_int("SLURM_STEP_NUM_TASKS", _env_int("SLURM_NTASKS", 1))
    if world <= 1:
        return
    if "MASTER_ADDR" not in os.environ:
        if _env_int("SLURM_NNODES", 1) > 1:
            raise UserError("started by srun on several nodes: export MASTER_ADDR (e.g. "
                            "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1))")
        os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ.setdefault("MASTER_PORT", str(29500 + _env_int("SLURM_JOB_ID", 0) % 1000))
    nodes = max(_env_int("SLURM_NNODES", 1), 1)
    os.environ.update(RANK=os.environ["SLURM_PROCID"], LOCAL_RANK=os.environ["SLURM_LOCALID"], WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=os.environ.get("SLURM_NTASKS_PER_NODE", str(-(-world // nodes))))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name) or default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(opt: argparse.Namespace, *, init_method: str = "env://") -> DistInfo:
    """Build this process's :class:`DistInfo` from RANK / LOCAL_RANK / WORLD_SIZE and join the group.

    Without those variables it is a single process (no process group). gloo serves the CPU, nccl CUDA.
    """
    rank, local_rank, world_size = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1)
    if _use_cuda(opt):
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # The timeout bounds how long a collective waits for a rank that hangs (a rank that dies is
        # noticed at once: its connections close).
        timeout = timedelta(seconds=getattr(opt, "dist_timeout", DEFAULT_TIMEOUT_S))
        dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timeout)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device, is_main=rank == 0)


def launch(worker: Callable[[argparse.Namespace, DistInfo], int], opt: argparse.Namespace) -> int:
    """Run ``worker(opt, dist_info)`` in this process, or in one spawned process per local GPU.

    Returns the worker's exit status (for spawned workers: 0, or 1 when any of them failed).
    """
    adopt_slurm_env()
    if launched_by_torchrun() or not opt.distributed:
        info = init_distributed(opt)
        try:
            return worker(opt, info)
        finally:
            shutdown()
    n_local = torch.cuda.device_count() if _use_cuda(opt) else 1
    n_nodes = max(opt.world_size, 1)
    node_rank = _env_int("NODE_RANK", _env_int("OMPI_COMM_WORLD_RANK", 0))
    log.info("spawning %d worker(s) on node %d of %d (%s)", n_local, node_rank, n_nodes, opt.dist_url)
    workers = torch.multiprocessing.spawn(_spawned, args=(worker, opt, n_local, n_nodes, node_rank), nprocs=n_local,
                                          join=False)
    stop_signals.on_first_signal(lambda signum: _pass_on(signum, workers.pids()))
    try:
        while not workers.join():
            pass
    except torch.multiprocessing.ProcessExitedException as e:
        if e.exit_code and e.exit_code > 128:  # stopped on a signal after saving: keep 128 + signal for the caller
            return e.exit_code
        log.error("worker %d exited with status %s", e.error_index, e.exit_code)
        return 1
    finally:
        stop_signals.on_first_signal(None)
    return 0


def _pass_on(signum: int, pids: list[int]) -> None:
    """A stop signal sent to this launching process alone (``kill PID``) reaches its workers too. Not Ctrl-C:
    the terminal sends it to every process already, and a second one would stop them at once."""
    if signum == signal.SIGINT:
        return
    log.warning("received %s: passing it on to the %d worker(s)", signal.Signals(signum).name, len(pids))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # that worker has just ended
            os.kill(pid, signum)


def _spawned(local_rank: int, worker: Callable, opt: argparse.Namespace, n_local: int, n_nodes: int,
             node_rank: int) -> None:
    os.environ.update(RANK=str(node_rank * n_local + local_rank), LOCAL_RANK=str(local_rank),
                      WORLD_SIZE=str(n_local * n_nodes))
    info = init_distributed(opt, init_method=opt.dist_url)
    try:
        status = worker(opt, info)
    finally:
        shutdown()
    if status:
        raise SystemExit(status)


def mark_failed(rank: int, reason: str) -> None:
    """Tell the other ranks (through the rendezvous store) that ``rank`` failed, so their errors can name it."""
    store = _store()
    if store is None:
        return
    try:
        if not store.check([_FAILED_KEY]):  # keep the first failure: later ones are its consequences
            store.set(_FAILED_KEY, f"{rank}: {reason}"[:500])
    except Exception:  # noqa: BLE001 - the store may already be gone; the error is reported locally anyway
        pass


def failed_peer() -> str | None:
    """'<rank>: <reason>' of the first rank that called :func:`mark_failed`, or None if none did (or unknown)."""
    store = _store()
    if store is None:
        return None
    try:
        return store.get(_FAILED_KEY).decode() if store.check([_FAILED_KEY]) else None
    except Exception:  # noqa: BLE001 - the store lives on a rank/agent that may be gone
        return None


_ALIVE_KEY = "toolkit/alive/"  # survivors of a peer failure check in here, so the silent ranks can be named
_PEER_ERROR_MARKS = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "timed out",
                     "timeout", "processgroup")
CHECK_IN_S = 3.0


def is_peer_failure(error: BaseException) -> bool:
    """True for a collective that failed because a peer is gone or silent (not a bug of this process)."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(mark in text for mark in _PEER_ERROR_MARKS)


def silent_ranks(rank: int, world_size: int, *, wait_s: float = CHECK_IN_S) -> str:
    """After a peer failure: check in through the rendezvous store, wait for the other survivors, and
    describe the ranks that never answered ('rank 1', 'ranks 2, 3'), or what is known when the store is gone."""
    store = _store()
    if store is None:
        return "a peer"
    try:
        store.set(f"{_ALIVE_KEY}{rank}", "1")
        deadline = time.monotonic() + wait_s
        while True:
            missing = [r for r in range(world_size) if not store.check([f"{_ALIVE_KEY}{r}"])]
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    except Exception:  # noqa: BLE001 - the store lives on rank 0 (or the launcher), which may be gone
        return "rank 0 (or the node holding the rendezvous store)"
    if not missing:
        return "a peer (all ranks answered; a network failure?)"
    return f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"


def _store():
    if not dist.is_initialized():
        return None
    try:  # private but long-stable API; without it failures just name no rank
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001
        return None


def shutdown() -> None:
    """Leave the process group; on a clean exit wait for every rank first.

    Destroying a gloo group while a peer still uses it can abort the process at exit, so ranks meet in a
    barrier before tearing down. After a failure (a peer gone) the barrier is skipped.
    """
    if not dist.is_initialized():
        return
    if sys.exc_info()[0] is None and failed_peer() is None:
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - a peer vanished while we were finishing; nothing left to wait for
            pass
    dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (a no-op in a single process); returns it."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather_objects(obj: object) -> list:
    """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics: each rank updates its own copy in training)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        with torch.no_grad():
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)


def parameters_in_sync(model: nn.Module) -> bool:
    """True when every rank holds the same parameters (compares per-tensor checksums across ranks)."""
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    return all(torch.equal(sums, other) for other in gather_objects(sums))


def report_rank_failure(dist: DistInfo, error: Exception) -> int:
    """A distributed process failed: name the rank that failed first, so the others do not fail silently.

    Our own failure is re-raised (with its traceback) after telling the other ranks; a consequence of
    another rank's failure (a collective whose peer is gone or silent) is one line naming that rank.
    """
    peer = failed_peer()
    if peer is not None and not peer.startswith(f"{dist.rank}:"):
        print(f"error (rank {dist.rank}): stopping because rank {peer}", file=sys.stderr)
        return 1
    if is_peer_failure(error):
        who = silent_ranks(dist.rank, dist.world_size)
        peer = failed_peer()  # a peer that failed cleanly meanwhile names its own reason
        if peer is not None and not peer.startswith(f"{dist.rank}:"):
            print(f"error (rank {dist.rank}): stopping because rank {peer}", file=sys.stderr)
        else:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"error (rank {dist.rank}): stopping because {who} died or hangs ({reason[:200]})",
                  file=sys.stderr)
        return 1
    mark_failed(dist.rank, f"{type(error).__name__}: {error}")
    print(f"error (rank {dist.rank}): {type(error).__name__}: {error}", file=sys.stderr)
    raise error
