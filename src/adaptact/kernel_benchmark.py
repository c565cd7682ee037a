"""Kernel microbenchmark: forward+backward time and memory of each backend against the
memory-bandwidth floor and against ``torch.compile`` of the reference (``adaptact bench-kernels``).

The backends are timed in interleaved rounds (each round runs every backend once, in a rotating
order), so the ratio to ``torch.compile`` is taken side by side in each round and reported as the
median with its min-max over rounds: it holds on a machine whose speed moves under other load.

floor = tensor passes x bytes per tensor / measured copy bandwidth, with 5 passes for AReLU and
ACON (forward: read x, write y; backward: read x and dy, write dx) and 8 for Meta-ACON-C and
APReLU (plus a pooling read in forward and a reduction read in backward).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from .errors import UserError
from .nn.context import CONTEXTS
from .ops.dispatch import auto_backend, triton_available
from .registry import create
from .tables import format_table
from . import checks
from .files import atomic_write, writable_file

__all__ = ["PASSES", "KernelResult", "copy_bandwidth", "run_kernel_bench", "saved_bytes", "tensor_passes"]

PASSES = {"arelu": 5, "acon_c": 5, "meta_acon_c": 8, "aprelu": 8, "dy_relu_b": 8}
DEFAULT_ACTIVATIONS = ("arelu", "acon_c", "meta_acon_c", "aprelu")
CONDITIONED = ("meta_acon_c", "aprelu", "dy_relu_b")  # what takes context="causal" / "token"
BACKENDS = ("reference", "compile", "autograd", "auto", "triton")  # compile: torch.compile(reference)


@dataclass
class KernelResult:
    activation: str
    dtype: str
    backend: str
    median_ms: float
    first_call_ms: float  # the first call in this process: compilation included where there is one
    ratio_to_compile: float  # median over rounds of time / torch.compile(reference)'s in the same round
    ratio_min: float
    ratio_max: float
    saved_bytes: int  # kept for backward by one forward (distinct storages)
    passes: float  # x-sized bytes read and written by forward+backward, in units of x.nbytes
    floor_ms: float
    floor_over_time: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    for _ in range(3):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int
                 ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(first-call ms, per-round seconds) of each function, timed in interleaved rounds in a
    rotating order after the first call and two warm-up calls each."""
    first: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        _sync(device)
        first[name] = 1e3 * (time.perf_counter() - start)
    for _ in range(2):
        for fn in fns.values():
            fn()
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return first, times


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 28, repeats: int = 20) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device, repeats)
    return 2 * nbytes / (ms / 1e3)


def saved_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages one forward pass of ``module`` saves for backward, but for
    the module's own parameters and buffers (saved by reference: they exist anyway)."""
    storages: dict[int, int] = {}
    own = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(storages.values())


# What an operator of the traced graph moves: every tensor argument is read (but the target of
# copy_/fill_/zero_), every returned tensor written; views and allocations move nothing.
_WRITE_ONLY = frozenset({"aten::copy_", "aten::fill_", "aten::zero_"})
_NO_TRAFFIC = frozenset({"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
                         "aten::new_empty_strided"})


def _values(tree) -> list:
    """The traced values (tensors) of the graph nodes in nested tuples, lists and dicts."""
    if isinstance(tree, torch.fx.Node):
        return [tree.meta.get("val")]
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (tuple, list)):
        return [v for item in tree for v in _values(item)]
    return [tree]


def _node_bytes(node: torch.fx.Node, numel: int) -> int:
    """Bytes of the x-sized (``numel`` or more elements) tensors one operator node reads and writes."""
    op: Any = node.target
    if not hasattr(op, "is_view") or op.is_view or op.name() in _NO_TRAFFIC:  # an operator, not getitem
        return 0
    args = node.args[1:] if op.name() in _WRITE_ONLY else node.args
    big = [v for v in (*_values((args, node.kwargs)), *_values(node.meta.get("val")))
           if isinstance(v, torch.Tensor) and v.numel() >= numel]
    return sum(t.nbytes for t in big)


def tensor_passes(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> float:
    """Bytes of x-sized tensors that the operators of one forward+backward read and write,
    divided by ``x.nbytes``: the floor's pass count for a fused implementation. One step is traced
    op by op (``make_fx`` on real tensors: forward and the backward autograd runs); each custom
    operator (a Triton kernel) counts as what it takes and returns; views and allocations count
    nothing, an in-place update a read and a write, copy_/fill_/zero_ a write. Not meaningful
    under torch.compile (its kernels are not dispatched op by op)."""
    x = x.detach().requires_grad_()
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())

    def step(x: torch.Tensor, dy: torch.Tensor, params: dict, buffers: dict) -> tuple[torch.Tensor, ...]:
        y = torch.func.functional_call(module, (params, buffers), (x,))
        wanted = [x, *(p for p in params.values() if p.requires_grad)]
        return torch.autograd.grad(y, wanted, dy, allow_unused=True)

    graph = make_fx(step, tracing_mode="real")(x, dy, params, buffers).graph
    return sum(_node_bytes(node, x.numel()) for node in graph.nodes if node.op == "call_function") / x.nbytes


DTYPES = ("float32", "float16", "bfloat16")


def run_kernel_bench(shape: tuple[int, ...] = (64, 128, 56, 56),
                     dtypes: tuple[str, ...] = ("float32", "bfloat16"),
                     device: str | None = None, activations: tuple[str, ...] | None = None,
                     backends: tuple[str, ...] = BACKENDS, repeats: int = 20,
                     json_path: str | Path | None = None, threads: int | None = None,
                     channel_dim: int = 1, context: str = "sample") -> dict:
    """Time, saved bytes and passes of each activation x dtype x backend at ``shape`` against the
    floor and against torch.compile of the reference (interleaved rounds). ``threads``: CPU
    threads for the run (default: torch's setting). ``channel_dim``: where the channels of
    ``shape`` are (-1 for transformer tokens (B, T, C)); the modules get it. ``context``: the
    input-conditioned activations' sequence context ("causal" and "token" need one sequence dim,
    a rank-3 ``shape``; ``activations`` then defaults to those that take it). Everything is
    checked first (UserError): shape, dtypes, activations, context, device and the writability of
    ``json_path``, where the caller will write the results (``write_json``)."""
    if len(shape) < 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise UserError(f"shape must be at least N,C of positive ints, got {shape}")
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int) or channel_dim == 0 \
            or not -len(shape) <= channel_dim < len(shape):
        raise UserError(f"channel_dim must be a dim of shape {shape} other than 0, got {channel_dim}")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise UserError(f"unknown dtype {bad[0]!r}; choose from {', '.join(DTYPES)}")
    if context not in CONTEXTS:
        raise UserError(f"context must be one of {', '.join(CONTEXTS)}, got {context!r}")
    if activations is None:
        activations = DEFAULT_ACTIVATIONS if context == "sample" else CONDITIONED
    unknown = [a for a in activations if a not in PASSES]
    if unknown:
        raise UserError(f"bench-kernels times {', '.join(PASSES)}; got {unknown[0]!r}")
    if context != "sample":
        if len(shape) != 3:
            raise UserError(f"context {context!r} takes one sequence dim: a shape B,T,C or B,C,T, "
                            f"got {shape}")
        unconditioned = [a for a in activations if a not in CONDITIONED]
        if unconditioned:
            raise UserError(f"context {context!r} applies to {', '.join(CONDITIONED)}; "
                            f"got {unconditioned[0]!r}")
    if threads is not None:
        checks.int_in_range("threads", threads, 1, 4096)
    dev = checks.device(device)
    if json_path is not None:
        writable_file(json_path, "JSON file")
    itemsize = max(getattr(torch, d).itemsize for d in dtypes)
    if math.prod(shape) * itemsize * 6 > _free_bytes(dev):
        raise UserError(f"shape {shape} needs about {math.prod(shape) * itemsize * 6 / 2**30:.1f} GiB on "
                        f"{dev.type}, more than is free")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(shape, dtypes, dev, activations, backends, repeats, channel_dim, context)
    finally:
        torch.set_num_threads(previous_threads)


def _step(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dy: torch.Tensor) -> None:
    run(x).backward(dy)


def _bench(shape, dtypes, dev, activations, backends, repeats, channel_dim, context) -> dict:
    bandwidth = copy_bandwidth(dev, nbytes=min(1 << 28, 4 * 2 ** 24) if dev.type == "cpu" else 1 << 30)
    results = []
    for name in activations:
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            x = torch.randn(shape, device=dev).to(dtype).requires_grad_()
            dy = torch.randn(shape, device=dev).to(dtype)
            floor_ms = 1e3 * PASSES[name] * x.nbytes / bandwidth
            contextual = {} if context == "sample" else {"context": context}
            base = create(name, channels=shape[channel_dim], channel_dim=channel_dim, **contextual)
            base = base.to(dev).train()
            modules, runs = {}, {}
            for backend in backends:
                if backend == "triton" and not (dev.type == "cuda" and triton_available()):
                    continue
                module: Any = copy.deepcopy(base)
                module.backend = "reference" if backend == "compile" else backend
                modules[backend] = module
                runs[backend] = torch.compile(module) if backend == "compile" else module
            first, times = _interleaved({b: functools.partial(_step, run, x, dy) for b, run in runs.items()},
                                        dev, repeats)
            for backend, module in modules.items():
                ms = 1e3 * statistics.median(times[backend])
                against = times.get("compile")
                ratios = [t / c for t, c in zip(times[backend], against)] if against else [math.nan]
                fused = backend == "compile" or (backend == "auto" and auto_backend(x) == "compiled")
                saved = saved_bytes(module, x) if backend != "compile" else -1
                passes = tensor_passes(module, x, dy) if not fused else -1.0
                results.append(KernelResult(name, dtype_name, backend, ms, first[backend],
                                            statistics.median(ratios), min(ratios), max(ratios), saved,
                                            passes, floor_ms, floor_ms / ms))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    return {"device": name,
            "device_type": dev.type,
            "shape": list(shape), "channel_dim": channel_dim, "context": context,
            "copy_bandwidth_GBps": bandwidth / 1e9,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "results": [asdict(r) for r in results]}


def _free_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


def format_results(report: dict) -> str:
    rows = [(r["activation"], r["dtype"], r["backend"], f"{r['median_ms']:.3f}", f"{r['first_call_ms']:.0f}",
             "-" if math.isnan(r["ratio_to_compile"]) else
             f"{r['ratio_to_compile']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})",
             "-" if r["saved_bytes"] < 0 else f"{r['saved_bytes'] / 2**20:.1f}",
             "-" if r["passes"] < 0 else f"{r['passes']:.1f}", f"{r['floor_ms']:.3f}",
             f"{r['floor_over_time']:.2f}") for r in report["results"]]
    layout = "" if report.get("channel_dim", 1) == 1 else f" (channels on dim {report['channel_dim']})"
    if report.get("context", "sample") != "sample":
        layout += f", context {report['context']!r}"
    head = (f"device: {report['device']}, shape {tuple(report['shape'])}{layout}, copy bandwidth "
            f"{report['copy_bandwidth_GBps']:.1f} GB/s, torch {report['torch']}, "
            f"{report.get('threads', '?')} threads\n")
    if report["device_type"] == "cpu":
        head += "(CPU: tensors that fit in cache can beat the DRAM floor; the floor is meant for GPUs)\n"
    head += "\n"
    return head + format_table(("activation", "dtype", "backend", "fwd+bwd median ms", "first call ms",
                                "x compile (min-max)", "saved MiB", "passes", "floor ms", "floor/time"), rows)


def write_json(report: dict, path: str | Path) -> Path:
    """The results as JSON at ``path``, written to a temporary file and renamed."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
