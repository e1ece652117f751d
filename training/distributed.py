"""Distributed set-up for the trainer: process group from torchrun's variables, rank helpers,
reductions. Everything here is a no-op in a single process."""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from napari_samlung.errors import SamLungError


class DistributedSetupError(SamLungError):
    """The distributed options and the environment do not fit together."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, and its device."""

    enabled: bool
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(
    device: str,
    requested: bool = False,
    dist_url: str = "env://",
    world_size: int | None = None,
    timeout_s: float = 60.0,
) -> DistInfo:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK).

    Distributed when torchrun started several processes, or when ``requested`` (``--distributed``)
    under torchrun. NCCL on CUDA (each process on ``cuda:LOCAL_RANK``), gloo on the CPU.
    ``world_size`` (``--world-size``), when given, must match the environment. Every process
    must meet the others at ``dist_url`` within ``timeout_s`` seconds (:func:`rendezvous`).
    """
    rank, env_world, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    device_type = torch.device(device).type
    if device_type == "cuda" and not torch.cuda.is_available():
        raise DistributedSetupError(f"--device {device}: CUDA is not available on this machine")
    index = torch.device(device).index
    if device_type == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise DistributedSetupError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    enabled = rank is not None and env_world is not None and (env_world > 1 or requested)
    if requested and not enabled:
        raise DistributedSetupError(
            "--distributed needs the RANK and WORLD_SIZE environment variables: "
            "start the program with torchrun"
        )
    if not enabled:
        single = torch.device(device)
        if single.type == "cuda" and single.index is None:
            single = torch.device("cuda", torch.cuda.current_device())
        return DistInfo(False, 0, 1, 0, single)
    if world_size is not None and world_size != env_world:
        raise DistributedSetupError(
            f"--world-size {world_size} differs from WORLD_SIZE={env_world} set by torchrun"
        )
    local_rank = rank if local_rank is None else local_rank
    store = rendezvous(dist_url, rank, env_world, timeout_s)
    if device_type == "cuda":  # binding the group to the device lets NCCL collectives know their GPU
        torch.cuda.set_device(local_rank)
        process_device = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", store=store, world_size=env_world, rank=rank, device_id=process_device)
    else:
        process_device = torch.device(device_type)
        dist.init_process_group("gloo", store=store, world_size=env_world, rank=rank)
    return DistInfo(True, rank, env_world, local_rank, process_device)


def rendezvous(dist_url: str, rank: int, world_size: int, timeout_s: float) -> dist.Store:
    """The store through which the ``world_size`` processes found each other at ``dist_url``.

    Gives up after ``timeout_s`` seconds (a client retries its connection until then, so it may
    take up to about twice that) with one line, instead of torch's 30 minutes. Once all have met,
    the store gets torch's default timeout back for the rest of the run.
    """
    try:
        with _native_stderr_silenced():  # c10d logs every failed attempt with a C++ stack
            store, _, _ = next(dist.rendezvous(dist_url, rank, world_size, timeout=timedelta(seconds=timeout_s)))
    except (RuntimeError, ValueError) as exc:  # DistError (a RuntimeError), bad URL, missing variables
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DistributedSetupError(
            f"{{opt:dist_url}} {dist_url}: process {rank} of {world_size} did not meet the others "
            f"within {timeout_s:g} s ({reason}); check the address and that every process started, "
            "or wait longer with {opt:dist_timeout}"
        ) from None
    store.set_timeout(dist.default_pg_timeout)
    return store


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Discard what native code writes to file descriptor 2 meanwhile (Python's own errors are
    raised, not printed, so nothing of ours is lost)."""
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def cleanup() -> None:
    """Leave the process group, if one was joined.

    DDP's reducer holds the group; it is freed first (it may sit in a reference cycle), since a
    group destroyed under a live reducer can abort the process at exit.
    """
    if _active():
        gc.collect()
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank."""
    if _active():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over all ranks (in place; returned for convenience)."""
    if _active():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_min(values: torch.Tensor) -> torch.Tensor:
    """Minimum of ``values`` over all ranks (in place; returned for convenience)."""
    if _active():
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-item list in a single process)."""
    if not _active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
