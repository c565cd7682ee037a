"""The Triton kernels compile for real NVIDIA GPUs (sm_80, sm_90) with Triton's own compiler, for
every launch the Triton path makes, without a GPU and without spilling registers.

The interpreter (TRITON_INTERPRET=1) runs kernels as Python and accepts code the compiler
rejects, so the equality tests alone prove nothing about a GPU. Here the module matrix of
``test_backends`` (every adaptive module and granularity x dtype x layout x rank x train/eval,
forward and backward) is driven with the launcher intercepted: each launch is recorded with the
specialisation Triton's JIT would compute for CUDA tensors (``triton_launches``), and every
distinct one is compiled to PTX and a cubin by ptxas. ``make test`` also records the launches of
the interpreter pass (``ADAPTACT_TRITON_LAUNCHES``); they are compiled too, and must be ones this
matrix produces.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

import adaptact
from adaptact.ops import dispatch
from tests.conftest import random_input
from tests.ops.test_backends import CASES, SHAPES, TOL, _layout

if not dispatch.triton_available() or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles in a process without TRITON_INTERPRET (the main pass of make test)",
                allow_module_level=True)

from tests.ops import triton_launches as TL  # noqa: E402  (imports triton)

LAYOUTS = ("contiguous", "channels_last", "strided")


def _drive(shapes, dtypes, layouts, cases=CASES) -> dict[str, dict]:
    """The distinct launches of forward+backward over the matrix, nothing executed."""
    launches: dict[str, dict] = {}
    with pytest.MonkeyPatch.context() as mp, TL.record_launches(run=False) as records:
        mp.setenv("TRITON_INTERPRET", "1")  # lets dispatch pick triton for CPU tensors; kernels stay JIT
        for name, kwargs in cases:
            for shape in shapes:
                for dtype in dtypes:
                    for layout in layouts:
                        for training in (True, False):
                            m = adaptact.create(name, channels=shape[1], backend="triton", **kwargs).train(training)
                            x = _layout(random_input(shape, dtype), layout).requires_grad_()
                            m(x).backward(torch.randn(shape).to(dtype))
    for r in records:
        launches.setdefault(TL.key(r), r)
    return launches


@pytest.fixture(scope="module")
def launches() -> dict[str, dict]:
    own = _drive(list(SHAPES.values()), list(TOL), LAYOUTS)
    recorded = os.environ.get("ADAPTACT_TRITON_LAUNCHES")
    if recorded and Path(recorded).exists():
        for line in Path(recorded).read_text().splitlines():
            r = json.loads(line)
            own.setdefault(TL.key(r), r)
    return own


def _compile(args) -> tuple[str, str | None, dict]:
    record, arch = args
    try:
        kernel = TL.compile_launch(record, arch)
    except Exception as err:  # noqa: BLE001  (every failure is reported, with its launch)
        while err.__cause__ is not None:  # Triton chains the real reason under "at line:col"
            err = err.__cause__
        lines = [line for line in str(err).strip().splitlines() if line.strip()] or [""]
        return TL.key(record), f"{type(err).__name__}: {lines[-1][:300]}", {}
    return TL.key(record), None, TL.resource_usage(kernel.asm["cubin"])


@pytest.mark.parametrize("arch", TL.ARCHS, ids=lambda a: f"sm_{a}")
def test_every_launch_compiles_without_spills(launches, arch):
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(_compile, [(r, arch) for r in launches.values()]))
    failures = []
    for key, error, usage in results:
        record = launches[key]
        label = f"{record['kernel'].split(':')[1]} {dict(_constexprs(record))}"
        if error:
            failures.append(f"{label}: {error}")
        elif usage.get("LOCAL", 0) or usage.get("STACK", 0):
            failures.append(f"{label}: spills registers ({usage})")
    assert not failures, f"{len(failures)} of {len(results)} launches fail on sm_{arch}:\n" + "\n".join(
        sorted(set(failures)))


def _constexprs(record: dict):
    params = TL.jit_function(record).params
    return [(p.name, s[1]) for p, s in zip(params, record["specialisation"]) if p.is_constexpr]
