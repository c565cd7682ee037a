"""The Triton kernels compile for real NVIDIA GPUs (sm_80, sm_90) with Triton's own compiler, for
every launch the Triton path makes, without a GPU and without spilling registers; and they move
memory the way GPUs need: vector loads and stores on the unit-stride dim, busy lanes.

The interpreter (TRITON_INTERPRET=1) runs kernels as Python and accepts code the compiler
rejects, so the equality tests alone prove nothing about a GPU. Here the module matrix of
``test_backends`` (every adaptive module and granularity x dtype x layout x rank x train/eval,
forward and backward) is driven with the launcher intercepted: each launch is recorded with the
specialisation Triton's JIT would compute for CUDA tensors (``triton_launches``), and every
distinct one is compiled to PTX and, by ptxas, to a cubin. ``make test`` also records the
launches of the interpreter pass (``ADAPTACT_TRITON_LAUNCHES``), the other tests' shapes
included; they are compiled too.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

import adaptact
from adaptact.ops import dispatch
from tests.conftest import random_input
from tests.ops.test_backends import CASES, IDS, SHAPES, TOL, _layout

if not dispatch.triton_available() or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles in a process without TRITON_INTERPRET (the main pass of make test)",
                allow_module_level=True)

from adaptact.ops.triton import launch  # imports triton
from tests.ops import triton_launches as TL
from tests.ops.conftest import recorded_launches

LAYOUTS = ("contiguous", "channels_last", "strided")
RECORDED = os.environ.get("ADAPTACT_TRITON_LAUNCHES")

# The shape set of the GPU path's promises: ResNet-50 at 224^2, batch 64, every stage width at
# every stage size; (N, C) after a Linear, N*C from 1e3 to 1e8; (N, C, L).
RESNET = [(64, c, s, s) for s in (112, 56, 28, 14, 7) for c in (64, 128, 256, 512, 1024, 2048)
          if not (s == 112 and c > 64)]
LINEAR = [(total // c, c) for total in (10**k for k in range(3, 9)) for c in (100, 128, 1000, 1024, 4096)
          if total // c >= 1]
SEQUENCE = [(64, 128, 1000), (32, 64, 4096), (64, 512, 49), (16, 80, 160), (8, 256, 300)]
# transformer tokens (B, T, C), channels last, as a channel_dim=-1 module hands them on: the (B, C, T)
# view with unit channel stride
TOKENS = [(8, 512, 768), (4, 1024, 3072), (32, 197, 384), (16, 128, 4096)]


def _tokens(shape, dtype=torch.float32, device="cpu"):
    """The channels-first view of uninitialised (B, T, C) tokens."""
    return torch.empty(shape, dtype=dtype, device=device).movedim(-1, 1)


def _record(cases, shapes, dtypes, layouts, make=None) -> dict[str, dict]:
    """The distinct launches of forward+backward over a matrix, nothing executed. By default x is
    in ``layout`` and dy contiguous, as in ``test_backends``; ``make`` makes both."""
    with pytest.MonkeyPatch.context() as mp, TL.record_launches(run=False) as records:
        mp.setenv("TRITON_INTERPRET", "1")  # lets dispatch pick triton for CPU tensors; kernels stay JIT
        for name, kwargs in cases:
            for shape in shapes:
                for dtype in dtypes:
                    for layout in layouts:
                        for training in (True, False):
                            m = adaptact.create(name, channels=shape[1], backend="triton",
                                                **kwargs).train(training)
                            if make is None:
                                x = _layout(random_input(shape, dtype), layout)
                                dy = torch.randn(shape).to(dtype)
                            else:
                                x, dy = make(shape, dtype, layout), make(shape, dtype, layout)
                            m(x.requires_grad_()).backward(dy)
    return {TL.key(r): r for r in records}


def _recorded() -> dict[str, dict]:
    """The interpreter pass's launches, where ``make test`` recorded them."""
    if not RECORDED:
        return {}
    files = recorded_launches(RECORDED)
    assert files, f"{RECORDED}: the interpreter pass recorded no launches"
    return {TL.key(r): r for f in files for r in map(json.loads, f.read_text().splitlines())}


@pytest.fixture(scope="module")
def matrix() -> dict[str, dict]:
    return _record(CASES, list(SHAPES.values()), list(TOL), LAYOUTS)


def _compile(args) -> tuple[str, str | None, dict, str]:
    record, arch = args
    try:
        kernel = TL.compile_launch(record, arch)
    except Exception as err:  # noqa: BLE001  (every failure is reported, with its launch)
        while err.__cause__ is not None:  # Triton chains the real reason under "at line:col"
            err = err.__cause__
        lines = [line for line in str(err).strip().splitlines() if line.strip()] or [""]
        return TL.key(record), f"{type(err).__name__}: {lines[-1][:300]}", {}, ""
    return TL.key(record), None, TL.resource_usage(kernel.asm["cubin"]), kernel.asm["ptx"]


def _compile_all(launches: dict[str, dict], arch: int) -> dict[str, tuple[str | None, dict, str]]:
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return {k: rest for k, *rest in pool.map(_compile, [(r, arch) for r in launches.values()])}


def _label(record: dict) -> str:
    params = TL.jit_function(record).params
    constexprs = {p.name: s[1] for p, s in zip(params, record["specialisation"]) if p.is_constexpr}
    return f"{record['kernel'].split(':')[1]} {constexprs} {record['options']}"


@pytest.mark.parametrize("arch", TL.ARCHS, ids=lambda a: f"sm_{a}")
def test_every_launch_compiles_without_spills(matrix, arch):
    launches = {**matrix, **_recorded()}
    failures = []
    for key, (error, usage, _) in _compile_all(launches, arch).items():
        if error:
            failures.append(f"{_label(launches[key])}: {error}")
        elif usage.get("LOCAL", 0) or usage.get("STACK", 0):
            failures.append(f"{_label(launches[key])}: spills registers ({usage})")
    assert not failures, f"{len(failures)} of {len(launches)} launches fail on sm_{arch}:\n" + "\n".join(
        sorted(set(failures)))


def test_wide_offsets_compile(matrix):
    """Tensors of 2^31 elements or more take 64-bit offsets (WIDE): each kernel variant (kind and
    switches) compiles so."""
    variants = {}
    for r in matrix.values():
        names = [p.name for p in TL.jit_function(r).params]
        spec = [list(s) for s in r["specialisation"]]
        spec[names.index("WIDE")] = ["constexpr", True]
        variants.setdefault(_label(r), {**r, "specialisation": spec})
    wide = {TL.key(r): r for r in variants.values()}
    compiled = _compile_all(wide, TL.ARCHS[-1])
    failures = [f"{_label(wide[k])}: {error or usage}" for k, (error, usage, _) in compiled.items()
                if error or usage.get("LOCAL", 0) or usage.get("STACK", 0)]
    assert not failures, "\n".join(failures)
    assert launch.plan((2**16, 2**11, 2**4), (2**15, 1, 2**11)).wide  # 2^31 elements
    assert not launch.plan((2**15, 2**11, 2**4), (2**15, 1, 2**11)).wide


def _unit_stride_layouts():
    """(label, shape, layout) where the unit-stride dim is a multiple of 16: NCHW with S % 16 == 0,
    channels_last and (N, C) with C % 16 == 0 (the ResNet-50 and Linear shapes of the set)."""
    nchw = [s for s in RESNET if math.prod(s[2:]) % 16 == 0 and s[1] in (64, 512)]
    channels_last = [s for s in RESNET if s[1] in (256, 2048)]
    linear = [s for s in LINEAR if s[1] % 16 == 0 and s[0] * s[1] in (10**6, 10**7)]
    tokens = [(b, c, t) for b, t, c in TOKENS[:1]]  # (4, 1024, 3072) gets the same 1 x 128 x 32 tiles
    return ([(s, "contiguous") for s in nchw] + [(s, "channels_last") for s in channels_last]
            + [(s, "contiguous") for s in linear] + [(s, "tokens") for s in tokens])


VECTOR_CASES = [c for c, i in zip(CASES, IDS)
                if i in ("acon_c", "meta_acon_c-channel", "aprelu-channel", "dy_relu_b")]
# per-position coefficients (contexts "causal"/"token") run tokens as (B*T, C) rows with per-row
# coefficients: launches of their own
VECTOR_POSITION_CASES = [("meta_acon_c", {"context": "causal"}), ("aprelu", {"context": "causal"}),
                         ("dy_relu_b", {"context": "causal"})]
ELEMENTWISE = {"ld": ("x_ptr", "dy_ptr"), "st": ("y_ptr", "dx_ptr")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_x_and_dy_loads_and_y_and_dx_stores_are_vector_instructions(dtype):
    """Every load of x or dy and every store of y or dx in the PTX is a vector instruction
    (ld.global.v2/v4, st.global.v2/v4) when the unit-stride dim is a multiple of 16 (transformer
    tokens with channel_dim=-1 included, and their per-position coefficients). Each access
    is traced to its pointer argument through the address arithmetic (``global_accesses``)."""
    launches = {}
    for shape, layout in _unit_stride_layouts():
        positions = layout == "tokens" and dtype == torch.float32  # bfloat16: the same tiles, see above
        cases = VECTOR_CASES + (VECTOR_POSITION_CASES if positions else [])
        launches.update(_record(cases, [shape], [dtype], [layout], make=_uninitialised))
    scalar, counted = [], 0
    for key, (error, _, ptx) in _compile_all(launches, TL.ARCHS[-1]).items():
        assert error is None, error
        for pointer, opcode in TL.global_accesses(ptx, launches[key]):
            if pointer in ELEMENTWISE[opcode[:2]]:
                counted += 1
                if ".v2." not in opcode and ".v4." not in opcode:
                    scalar.append(f"{_label(launches[key])}: {pointer} {opcode}")
    assert counted >= 3 * len(launches) // 2  # the tracing found the elementwise accesses
    assert not scalar, "\n".join(sorted(set(scalar)))


def _uninitialised(shape, dtype, layout):
    """A tensor of the shape set's size without touching its memory (the kernels do not run)."""
    if layout == "tokens":
        return _tokens((shape[0], shape[2], shape[1]), dtype)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return torch.empty(shape, dtype=dtype).contiguous(memory_format=fmt)


def _plans():
    for shape in RESNET:
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.empty(shape, device="meta").contiguous(memory_format=fmt)
            yield f"{shape} {'NHWC' if fmt == torch.channels_last else 'NCHW'}", x
    for shape in LINEAR + SEQUENCE:
        yield str(shape), torch.empty(shape, device="meta")
    for shape in TOKENS:
        yield f"{shape} tokens", _tokens(shape, device="meta")


@pytest.mark.parametrize("label,x", list(_plans()), ids=lambda v: v if isinstance(v, str) else "")
def test_tiles_keep_lanes_busy_on_the_shape_set(label, x):
    """From the launch plan alone: at least 75% of the launched lanes hold elements, each program
    at least 256 elements, runs of at least 64 along the unit-stride dim, and the grid covers x."""
    p = launch.plan(tuple(x.shape), launch._strides(x))
    assert p.lanes_used >= 0.75, (label, p)
    assert p.tile >= 256, (label, p)
    nb_n, nb_c, nb_s = p.blocks
    assert nb_n * p.block_n >= p.n and nb_c * p.block_c >= p.c and nb_s * p.block_s >= p.s
    unit = "s" if x.ndim > 2 and x.stride(-1) == 1 else "c"
    assert getattr(p, f"block_{unit}") >= 64, (label, p)
