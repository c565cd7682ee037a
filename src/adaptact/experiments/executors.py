"""Where runs execute: a local process pool (default) or a Ray cluster.

Both take a function and its argument list and yield results as they finish; the caller
writes each to the store at once. Each run sets one torch thread, so the executors give
identical numbers.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from ..errors import UserError

__all__ = ["EXECUTORS", "check_ray_address", "execute", "local_pool", "ray_cluster"]

A = TypeVar("A")
R = TypeVar("R")
EXECUTORS = ("local", "ray")


RAY_CONNECT_TIMEOUT_S = 30
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Worker initialiser: on Linux the kernel kills this worker when its parent dies, however it
    dies (SIGKILL included), so no worker outlives ``adaptact compare``. Ctrl-C is the parent's to
    handle (it stops the workers): a worker ignores SIGINT rather than print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def local_pool(fn: Callable[[A], R], args: Iterable[A], workers: int = 1,
               lost: Callable[[A, BaseException], R] | None = None) -> Iterator[R]:
    """Run ``fn`` over ``args`` in ``workers`` spawned processes (in this process for 1). Workers
    die with this process; if the caller stops early (an error, Ctrl-C, SIGTERM unwinding), the
    runs in flight are abandoned and the workers stopped at once. A worker that dies (killed, out
    of memory) breaks the pool: a new one takes the unfinished runs, each retried once; a run
    caught in a second break yields ``lost(arg, error)`` (or raises without ``lost``)."""
    args = list(args)
    if workers <= 1:
        for a in args:
            yield fn(a)
        return
    tries = [0] * len(args)
    pending = list(range(len(args)))
    while pending:
        size = min(workers, len(pending))  # no idle process (each holds a copy of torch)
        pool = ProcessPoolExecutor(max_workers=size, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_die_with_parent, initargs=(os.getpid(),))
        futures = {pool.submit(fn, args[i]): i for i in pending}
        pending = []
        finished = False
        try:
            for future in as_completed(futures):
                i = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool as err:
                    tries[i] += 1
                    if tries[i] < 2:
                        pending.append(i)
                        continue
                    if lost is None:
                        raise
                    result = lost(args[i], err)
                yield result
            finished = True
        finally:
            if not finished:
                for future in futures:
                    future.cancel()
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)


def ray_cluster(fn: Callable[[A], R], args: Iterable[A], workers: int = 1, address: str | None = None,
                lost: Callable[[A, BaseException], R] | None = None) -> Iterator[R]:
    """Run ``fn`` over ``args`` as Ray tasks of one CPU each; ``address`` joins a running cluster,
    None starts a local instance with ``workers`` CPUs. A task whose worker dies is retried once
    by Ray; after that it yields ``lost(arg, error)`` (or raises without ``lost``). Needs
    ``pip install adaptact[ray]``."""
    from ..errors import require

    ray = require("ray", "ray")
    started = not ray.is_initialized()
    if started:
        if address:
            check_ray_address(address)
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(fn)
        refs = {task.remote(a): a for a in args}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayError as err:
                if lost is None:
                    raise
                yield lost(refs[done[0]], err)
    finally:
        if started:
            ray.shutdown()


def check_ray_address(address: str) -> None:
    """UserError within RAY_CONNECT_TIMEOUT_S unless something listens at ``address`` (host:port;
    Ray itself retries for minutes before it says anything)."""
    host, _, port = address.rpartition(":")
    if address != "auto" and host and port.isdigit():
        import socket

        try:
            with socket.create_connection((host.removeprefix("ray://"), int(port)), RAY_CONNECT_TIMEOUT_S):
                pass
        except OSError as err:
            raise UserError(f"no Ray cluster answers at {address} ({err.strerror or err})") from None


def execute(executor: str, fn: Callable[[A], R], args: Iterable[A], workers: int = 1,
            address: str | None = None, lost: Callable[[A, BaseException], R] | None = None) -> Iterator[R]:
    if executor == "local":
        return local_pool(fn, args, workers, lost)
    if executor == "ray":
        return ray_cluster(fn, args, workers, address, lost)
    raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
