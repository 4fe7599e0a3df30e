"""Process-group plumbing for training (and other work) over several processes.

hyperseg runs one process per device. The processes find each other through
the environment variables that ``torchrun`` (or :func:`launch`, behind
``hyperseg train --nproc N``) sets:

``RANK``         index of this process among all processes, ``0 .. WORLD_SIZE - 1``
``WORLD_SIZE``   number of processes, over all machines
``LOCAL_RANK``   index of this process on its machine (picks the GPU)
``LOCAL_WORLD_SIZE``  number of processes on this machine
``MASTER_ADDR``, ``MASTER_PORT``  where rank 0 listens for the others

:func:`env_world` is the one reader of these variables (``hyperseg train``
and ``hyperseg segment`` alike). torchrun sets all four; where one is
missing, the defaults describe one machine: ``WORLD_SIZE = 1``, ``RANK = 0``,
``LOCAL_WORLD_SIZE = WORLD_SIZE`` and ``LOCAL_RANK = RANK mod LOCAL_WORLD_SIZE``.

Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) everything here is a no-op
and a run is a plain single process. The backend is ``gloo`` on the CPU and
``nccl`` on CUDA devices. Rank 0 is the *main* process: it alone writes
files and prints progress.
"""
from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "LAUNCH_GRACE_S",
    "World",
    "all_gather_object",
    "all_reduce",
    "barrier",
    "broadcast_object",
    "cleanup",
    "current",
    "env_world",
    "free_port",
    "init",
    "is_launched",
    "is_main",
    "launch",
    "run_on_main",
]

#: Seconds the other workers get to finish on their own once one worker failed,
#: before :func:`launch` terminates them (they would otherwise wait for the
#: failed peer inside a collective).
LAUNCH_GRACE_S = 10.0


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` of ``local_size`` on its machine.

    ``local_size`` defaults to ``size`` (all processes on one machine).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int | None = None

    def __post_init__(self) -> None:
        if self.local_size is None:
            object.__setattr__(self, "local_size", self.size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun); "
                         "unset it or start the processes with torchrun") from None


def env_world(env: Mapping[str, str] | None = None) -> World:
    """The :class:`World` that ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` describe.

    ``env``: the variables to read (default ``os.environ``). Missing ones take
    the one-machine defaults of the module docstring, so an empty environment
    is one process: ``World(0, 1, 0, 1)``. Needs ``0 <= RANK < WORLD_SIZE`` and
    ``0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE``. Reads the environment
    only; no process group is needed.
    """
    env = os.environ if env is None else env
    size = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_size = _env_int(env, "LOCAL_WORLD_SIZE", size)
    local = _env_int(env, "LOCAL_RANK", rank % local_size if local_size > 0 else 0)
    if size < 1 or not 0 <= rank < size or not 0 <= local < local_size <= size:
        raise ValueError(f"inconsistent launch environment RANK={rank} WORLD_SIZE={size} LOCAL_RANK={local} "
                         f"LOCAL_WORLD_SIZE={local_size}; start the processes with torchrun or "
                         "`hyperseg train --nproc N`")
    return World(rank, size, local, local_size)


def is_launched() -> bool:
    """Whether this process was started as one of several (``WORLD_SIZE > 1``)."""
    return env_world().distributed


def current() -> World:
    """The :class:`World` of the initialised process group; a single process when none is."""
    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()  # the group's word wins over the environment's
        launched = env_world({**os.environ, "RANK": str(rank), "WORLD_SIZE": str(size)})
        return World(rank, size, launched.local_rank, launched.local_size)
    return World()


def is_main() -> bool:
    """True in rank 0 of the initialised group (and in a single process): the process that writes files."""
    return current().is_main


def init(device: str | torch.device = "cpu", timeout: timedelta | None = None) -> tuple[World, torch.device]:
    """Join the process group described by the environment; returns ``(world, device)``.

    ``device`` is the requested device type: on CUDA each process takes GPU
    ``LOCAL_RANK`` and the backend is ``nccl``; on the CPU it is ``gloo``.
    ``timeout``: how long a collective waits for the other ranks (torch's
    default when ``None``). Nothing is initialised for a single process
    (``WORLD_SIZE`` unset or 1).
    """
    world = env_world()
    device = torch.device(device)
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if world.local_rank >= n:
            raise ValueError(f"process with LOCAL_RANK={world.local_rank} has no GPU: this machine has {n}; "
                             "start at most one process per GPU (--nproc / --nproc_per_node)")
        if world.distributed or device.index is None:
            device = torch.device("cuda", world.local_rank if world.distributed else 0)
        torch.cuda.set_device(device)
    if not world.distributed or dist.is_initialized():
        return world, device
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ValueError(f"WORLD_SIZE={world.size} but {var} is not set; start the processes with torchrun "
                             "or `hyperseg train --nproc N`")
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend, init_method="env://", rank=world.rank, world_size=world.size, **kwargs)
    return world, device


def cleanup() -> None:
    """Leave the process group, if one was joined (safe to call always).

    After a successful run call :func:`barrier` first: a rank that tears the
    group down while a peer is still inside a collective (or still talking to
    rank 0's rendezvous store) can take that peer down with it.

    Garbage is collected before the group is destroyed. A finished
    ``DistributedDataParallel`` wrapper is left in a reference cycle by
    :func:`hyperseg.train.train` (``tests/test_ddp.py`` finds one per call
    with the collector off); its reducer holds the group and autograd hooks.
    Left to the interpreter's teardown, that reducer would be destroyed while
    Python is finalising, when a C++ thread that needs the GIL is ended by
    forced unwinding, which can abort the process (SIGABRT, "terminate called
    without an active exception") after a run that succeeded.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (a no-op in a single process).

    Only for the success path: after a failure on one rank the others would
    wait here until the group's timeout.
    """
    if _active():
        dist.barrier()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce a tensor over all processes (``"sum"``, ``"max"`` or ``"min"``); returns it (in place).

    The identity in a single process. With nccl the tensor must live on this
    process's GPU.
    """
    if _active():
        dist.all_reduce(values, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                    "min": dist.ReduceOp.MIN}[op])
    return values


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s (picklable) ``obj`` on every process; ``obj`` is ignored elsewhere."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def run_on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` evaluated by rank 0 only and handed to every rank.

    For reading files that only rank 0 is guaranteed to see (a run folder on
    rank 0's machine). An exception raised by ``fn`` is re-raised on every
    rank, so that all ranks fail together instead of waiting for rank 0.
    """
    if not _active():
        return fn()
    result: tuple[bool, Any] = (True, None)
    if dist.get_rank() == 0:
        try:
            result = (True, fn())
        except Exception as err:  # noqa: BLE001 - handed to every rank, then re-raised
            result = (False, err)
    ok, value = broadcast_object(result)
    if not ok:
        raise value
    return value


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` in a single process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch(args: Sequence[str], nproc: int, env: dict[str, str] | None = None,
           grace_s: float = LAUNCH_GRACE_S) -> int:
    """Run ``python -m hyperseg ARGS`` as ``nproc`` processes on this machine; returns an exit status.

    Each worker gets ``RANK = LOCAL_RANK = i``, ``WORLD_SIZE = nproc``,
    ``MASTER_ADDR = 127.0.0.1``, a free ``MASTER_PORT`` and, unless set,
    ``OMP_NUM_THREADS = 1`` (as torchrun does), so it joins the group exactly
    as under ``torchrun --nproc_per_node nproc``. Rank 0 keeps this terminal;
    the other ranks' output is shown only when they fail and rank 0 did
    not (so a user error is printed once). When a worker fails, the others get
    ``grace_s`` seconds and are then terminated. The status is rank 0's if
    it failed, else the first failing rank's, else 0; 130 after Ctrl-C.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    base = dict(os.environ if env is None else env)
    base.setdefault("OMP_NUM_THREADS", "1")
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(nproc),
                LOCAL_WORLD_SIZE=str(nproc))
    procs: list[subprocess.Popen] = []
    logs: list[Any] = []
    try:
        for rank in range(nproc):
            wenv = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
            log = None if rank == 0 else tempfile.TemporaryFile()
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "hyperseg", *args], env=wenv,
                                          stdout=None if rank == 0 else subprocess.DEVNULL,
                                          stderr=None if rank == 0 else log))
        failed_at: float | None = None
        while any(p.poll() is None for p in procs):
            codes = [p.returncode for p in procs]
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                _stop(procs)
                break
            time.sleep(0.05)
        codes = [p.wait() for p in procs]
        if codes[0] != 0:
            return _status(codes[0])
        for rank, code in enumerate(codes):
            if code != 0:
                log = logs[rank]
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace"))
                return _status(code)
        return 0
    except KeyboardInterrupt:
        _stop(procs)
        return 130
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            if log is not None:
                log.close()


def _stop(procs: list[subprocess.Popen], wait_s: float = 5.0) -> None:
    """SIGTERM the running workers, then SIGKILL those still alive after ``wait_s``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    end = time.monotonic() + wait_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _status(code: int) -> int:
    """A worker's return code as a shell exit status (killed by signal N -> 128 + N)."""
    return 128 - code if code < 0 else code
