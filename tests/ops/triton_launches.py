"""Launches of adaptact's Triton kernels as Triton's JIT would specialise them for an NVIDIA GPU,
and their compilation with Triton's real compiler (``triton.compile`` needs no GPU).

A launch is recorded as JSON: the kernel, the specialisation Triton's JIT computes from the
actual arguments with a CUDA backend (pointer dtypes and 16-byte alignment, integers equal to 1
made constants, integers divisible by 16 marked so), and the launch options (``num_warps``).
CPU tensors have the same alignment facts as CUDA ones here: both allocators align storages to
at least 16 bytes, and views keep their element offsets.

``record_launches`` intercepts the launcher (``launch.wrap_triton``) for a ``with`` block: with
``run=False`` nothing executes (outputs stay uninitialised), so the module matrix can be driven
in a process without ``TRITON_INTERPRET``; with ``run=True`` (interpreter) the kernels still run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import re
import subprocess
import tempfile
from collections.abc import Iterator

from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from adaptact.ops.triton import launch

ARCHS = (80, 90)  # A100 (sm_80) and H100/H200 (sm_90)
WARP = 32
_OPTIONS = ("num_warps", "num_stages", "num_ctas")


def _target(capability: int) -> GPUTarget:
    return GPUTarget("cuda", capability, WARP)


def _jit(fn) -> JITFunction:
    """The JITFunction of a kernel (under the interpreter, one built from its Python function)."""
    return fn if isinstance(fn, JITFunction) else JITFunction(fn)


@functools.cache
def _binder(fn):
    """Triton's own argument binder for a kernel's Python function, with a CUDA backend."""
    jit = _jit(fn)
    return jit, create_function_from_signature(jit.signature, jit.params, make_backend(_target(ARCHS[-1])))


def specialisation(kernel, args: tuple, kwargs: dict) -> dict:
    """The JSON record of one launch: what Triton's JIT would compile for it on a CUDA GPU."""
    jit, binder = _binder(kernel if isinstance(kernel, JITFunction) else kernel.fn)
    _, spec, _ = binder(*args, **{k: v for k, v in kwargs.items() if k not in _OPTIONS})
    return {"kernel": f"{jit.fn.__module__}:{jit.fn.__name__}", "specialisation": [list(s) for s in spec],
            "options": {k: v for k, v in kwargs.items() if k in _OPTIONS}}


def key(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


@contextlib.contextmanager
def record_launches(run: bool) -> Iterator[list[dict]]:
    """Record every kernel launch made in the block (and run it only if ``run``)."""
    records: list[dict] = []
    real = launch.wrap_triton

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch_(*args, **kwargs):
                records.append(specialisation(self.kernel, args, kwargs))
                if run:
                    return real(self.kernel)[grid](*args, **kwargs)
                return None

            return launch_

    launch.wrap_triton = Recorder
    try:
        yield records
    finally:
        launch.wrap_triton = real


def jit_function(record: dict) -> JITFunction:
    module, name = record["kernel"].split(":")
    jit = getattr(importlib.import_module(module), name)
    assert isinstance(jit, JITFunction), "compile in a process without TRITON_INTERPRET"
    return jit


def compile_launch(record: dict, capability: int):
    """Compile one recorded launch for ``sm_<capability>`` with Triton's real compiler (the PTX is
    in ``.asm["ptx"]``, the ptxas-built binary in ``.asm["cubin"]``)."""
    from triton import compile as triton_compile

    jit = jit_function(record)
    target = _target(capability)
    backend = make_backend(target)
    spec = [tuple(s) for s in record["specialisation"]]
    names = [p.name for p in jit.params]
    signature = {n: s[0] for n, s in zip(names, spec)}
    constexprs = {(i,): s[1] for i, s in enumerate(spec) if s[0] == "constexpr"}
    attrs = {(i,): backend.parse_attr(s[1]) for i, s in enumerate(spec) if s[0] != "constexpr" and s[1]}
    options = backend.parse_options(dict(record["options"]))
    return triton_compile(ASTSource(jit, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """cuobjdump's resource usage of a kernel binary: REG (registers per thread), STACK and LOCAL
    (bytes per thread; register spills land there), SHARED."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name], check=True,
                             capture_output=True, text=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}


_REGISTER = re.compile(r"%[a-z]+\d+")
_NO_DESTINATION = ("st.", "bra", "ret", "bar.", "red.", "fence", "membar", "@")


def global_accesses(ptx: str, record: dict) -> list[tuple[str, str]]:
    """(kernel pointer argument, instruction) for every ld.global/st.global in ``ptx``, the
    argument found by following the address register back through the instructions that
    computed it to the ``ld.param`` of a pointer parameter (``*_ptr``)."""
    params = [p.name for p, s in zip(jit_function(record).params,
                                     record["specialisation"]) if s[0] != "constexpr"]
    origin: dict[str, set[str]] = {}
    accesses = []
    body = ptx[ptx.index("{", ptx.index(".entry")):]
    for statement in body.split(";"):
        text = re.sub(r"//[^\n]*", "", statement).strip()
        text = re.sub(r"^@!?%p\d+\s+", "", text)
        if not text or text.startswith((".", "$", "{", "}")):
            text = text.split("\n")[-1].strip()
            text = re.sub(r"^@!?%p\d+\s+", "", text)
            if not text or text.startswith((".", "$", "}")):
                continue
        opcode, _, rest = text.partition(" ")
        operands = [o.strip() for o in re.split(r",(?![^{]*})", rest)]
        if opcode.startswith("ld.param"):
            index = int(re.search(r"_param_(\d+)", rest).group(1))
            name = params[index] if index < len(params) else f"param_{index}"
            origin[operands[0]] = {name}
            continue
        if opcode.startswith(("ld.global", "st.global")):
            address = next(o for o in operands if o.startswith("["))
            sources = set().union(*(origin.get(r, set()) for r in _REGISTER.findall(address)))
            accesses.append(("/".join(sorted(p for p in sources if p.endswith("_ptr"))), opcode))
            if opcode.startswith("ld."):
                for r in _REGISTER.findall(operands[0]):
                    origin[r] = set()  # a loaded value is data, not an address
            continue
        if opcode.startswith(_NO_DESTINATION) or not operands or not operands[0]:
            continue
        sources = set().union(*(origin.get(r, set()) for o in operands[1:] for r in _REGISTER.findall(o)))
        for r in _REGISTER.findall(operands[0]):
            origin[r] = sources
    return accesses
