"""Dealing the cases of ``hyperseg segment`` out to processes.

Two levels, both deterministic so that no case is done twice or skipped:

* **torchrun ranks** (``RANK``/``WORLD_SIZE`` in the environment, read by
  :func:`hyperseg.distributed.env_world`): rank ``r`` of ``R`` takes the
  cases whose index ``i`` in the sorted list has ``i % R == r``. No process group is initialised: the ranks never talk to
  each other, the split follows from the sorted list alone.
* **local workers** (``--nproc N``): a rank's share is dealt out the same way
  to ``N`` spawned processes, ``i % N == j``; each reports back one result per
  case through a pipe, so the parent prints every error as one line and keeps
  one progress bar.

Each process runs ``torch`` with ``max(1, cpus // P)`` threads, ``P`` being the
number of processes on this machine (local ranks x local workers).
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import wait
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """The items whose position ``i`` has ``i % count == index`` (the share of worker ``index``)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"worker index {index} out of range for {count} workers")
    return list(items[index::count])


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def threads_per_process(n_processes: int, cpus: int | None = None) -> int:
    """``max(1, cpus // n_processes)``: torch threads for each of ``n_processes`` on one machine."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, cpus // max(1, n_processes))


class Job(Protocol):
    """What a worker runs: ``setup()`` once per process, then ``run_case(state, case)`` per case.

    ``run_case`` must not raise for a bad case: it returns a picklable result
    that says what went wrong. ``failed(case, message)`` builds the result for
    a case that could not be attempted (setup failed, worker died).
    """

    def setup(self, slot: int) -> Any: ...

    def run_case(self, state: Any, case: Any) -> Any: ...

    def failed(self, case: Any, message: str) -> Any: ...


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Start processes with SIGINT ignored (inherited across exec), so Ctrl-C in a terminal, which
    reaches the whole process group, interrupts only the parent: it then ends the workers itself
    instead of each printing a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_main(job: Job, cases: list, slot: int, n_threads: int | None, conn) -> None:
    """Body of a spawned worker: set torch's thread count (unless ``None``), set up, run each case,
    send each result.

    ``conn.send`` writes straight to the pipe (no buffering thread), so every
    result sent before the process dies reaches the parent.
    """
    # the parent ends workers with SIGTERM (after Ctrl-C, which workers ignore): exit through Python so that
    # ``finally`` blocks run and an atomic write in progress removes its temporary file
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if n_threads is not None:
        import torch

        torch.set_num_threads(n_threads)
    try:
        try:
            state = job.setup(slot)
        except Exception as err:  # noqa: BLE001 - reported per case; the parent decides the exit status
            for case in cases:
                conn.send(job.failed(case, str(err)))
            return
        for case in cases:
            conn.send(job.run_case(state, case))
    finally:
        conn.close()


def run_local(job: Job, cases: Sequence, on_result: Callable[[Any], None], n_threads: int, slot: int = 0) -> None:
    """Run every case in this process (no spawning); ``on_result`` sees each result in order.

    Errors from ``job.setup`` (no model, wrong checkpoint) propagate to the caller.
    """
    import torch

    torch.set_num_threads(n_threads)
    state = job.setup(slot)
    for case in cases:
        on_result(job.run_case(state, case))


def run_spawned(job: Job, shares: Sequence[Sequence], on_result: Callable[[Any], None],
                n_threads: int | None, slot0: int = 0) -> None:
    """Run share ``j`` in spawned process ``j``; ``on_result`` sees each result as it arrives.

    ``job.setup`` gets the slot ``slot0 + j`` (used to pick a GPU). Each worker
    sends its results through its own pipe, in share order; a worker that ends
    (killed, out of memory) before sending all of them has each missing case
    reported through ``job.failed``, so nothing is silently skipped. ``job``
    and the cases must be picklable.
    """
    ctx = mp.get_context("spawn")
    procs, readers = [], []
    try:
        with _children_ignore_sigint():
            for j, share in enumerate(shares):
                reader, writer = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_worker_main, args=(job, list(share), slot0 + j, n_threads, writer),
                                name=f"hyperseg-segment-{j}", daemon=True)
                p.start()
                writer.close()  # the child holds the only writer: EOF once it ends
                procs.append(p)
                readers.append(reader)
        seen = [0] * len(procs)
        open_readers = {r: j for j, r in enumerate(readers)}
        while open_readers:
            for r in wait(list(open_readers)):
                j = open_readers[r]
                try:
                    result = r.recv()
                except (EOFError, OSError):  # the worker ended: all it sent has been read
                    del open_readers[r]
                    procs[j].join()
                    code = procs[j].exitcode
                    for case in list(shares[j])[seen[j]:]:
                        on_result(job.failed(case, f"worker process {j} ended (exit code {code}) before this "
                                                   "case was done; run again with --skip-existing"))
                    continue
                seen[j] += 1
                on_result(result)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        for r in readers:
            r.close()
