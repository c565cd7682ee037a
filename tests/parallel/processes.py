"""Distributed tests' cases in CPU processes (gloo): one spawn runs every case of a test module
in each process (starting processes is the cost), rank 0's results come back, a failing case
comes back as its error (for its own test to report), and nothing hangs."""

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def attempt(case: Callable[[], object]) -> object:
    """``case()``, or its error as one line."""
    try:
        return case()
    except Exception as err:  # noqa: BLE001 - reported by the case's test
        return f"{type(err).__name__}: {err}"


def _entry(rank: int, world: int, port: int, cases: Callable[[int], dict], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        results = cases(rank)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()
    # The work is done and saved. At interpreter exit gloo's teardown sometimes aborts (see
    # tests/test_distributed.py): leave without the exit handlers.
    os._exit(0)


def spawn(cases: Callable[[int], dict], world: int, out: Path, seconds: int = 150) -> dict:
    """``cases(rank)`` (a module-level function) in ``world`` processes; rank 0's results."""
    context = mp.start_processes(_entry, args=(world, free_port(), cases, str(out)), nprocs=world, join=False,
                                 start_method="spawn")
    for _ in range(2 * seconds):
        if context.join(timeout=0.5):
            return torch.load(out, weights_only=False)
    for p in context.processes:
        p.kill()
    pytest.fail(f"the distributed workers did not finish in {seconds} s")
