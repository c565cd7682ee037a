"""The README's torchrun example runs as written, and 2 tensor-parallel processes print the losses
of one."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


# process groups on ports picked free: one xdist worker runs them all (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("distributed")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tensor_parallel.py"


def _losses(processes):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: the rendezvous binds a port the system picks, so no other test's process (Ray's,
    # another process group's) can take it between a free_port() and the bind
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}", "--standalone",
               str(EXAMPLE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, env=env)
    assert done.returncode == 0, done.stderr[-6000:]
    return [float(v) for v in re.findall(r"step \d: loss ([0-9.]+)", done.stdout)]


def test_the_readme_names_the_example():
    assert "torchrun --nproc-per-node 2 examples/tensor_parallel.py" in (ROOT / "README.md").read_text()


def _example():
    spec = importlib.util.spec_from_file_location("tensor_parallel_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_tensor_parallel_processes_print_the_losses_of_one():
    example = _example()
    torch.manual_seed(0)
    one = example.train(example.MLP(), example.batch())  # one process, no sharding
    two = _losses(2)
    assert len(two) == 3 and one[-1] < one[0]  # it trains
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5
