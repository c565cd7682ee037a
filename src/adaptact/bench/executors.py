"""Where runs execute: a local process pool (default) or a Ray cluster.

Both take a function and its argument list and yield results as they finish; the caller
writes each to the store at once. Each run sets one torch thread, so the executors give
identical numbers.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

__all__ = ["EXECUTORS", "execute", "local_pool", "ray_cluster"]

A = TypeVar("A")
R = TypeVar("R")
EXECUTORS = ("local", "ray")


def local_pool(fn: Callable[[A], R], args: Iterable[A], workers: int = 1) -> Iterator[R]:
    """Run ``fn`` over ``args`` in ``workers`` spawned processes (in this process for 1)."""
    args = list(args)
    if workers <= 1:
        for a in args:
            yield fn(a)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, a) for a in args]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def ray_cluster(fn: Callable[[A], R], args: Iterable[A], workers: int = 1,
                address: str | None = None) -> Iterator[R]:
    """Run ``fn`` over ``args`` as Ray tasks of one CPU each; ``address`` joins a running cluster,
    None starts a local instance with ``workers`` CPUs. Needs ``pip install adaptact[ray]``."""
    try:
        import ray
    except ImportError as err:
        raise RuntimeError("the Ray executor needs Ray: pip install 'adaptact[ray]'") from err
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(fn)
        pending = [task.remote(a) for a in args]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


def execute(executor: str, fn: Callable[[A], R], args: Iterable[A], workers: int = 1,
            address: str | None = None) -> Iterator[R]:
    if executor == "local":
        return local_pool(fn, args, workers)
    if executor == "ray":
        return ray_cluster(fn, args, workers, address)
    raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
