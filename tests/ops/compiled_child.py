"""One fresh process of test_compiled.py's multi-process test: as a user's seeded script, it runs
the default (compiled) path for the activations named in argv, in that order, in one dtype, each
on the input COMBOS[i] named with it, and checks each output and gradient against the float32
reference on the same values. Exit 0 and "ok" when all agree; a fallback warning is an error.

    python tests/ops/compiled_child.py float16 arelu:0,acon_c:2,...
"""

import copy
import random
import sys
import warnings

random.seed(0)  # as reproducible scripts do (and mnist1d's generator does)

import torch  # noqa: E402

import adaptact  # noqa: E402
from adaptact.ops import compiled as CP  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
COMBOS = (((8, 16, 5, 5), True), ((8, 16, 5, 5), False), ((32, 16), True))  # (shape, gradients?)
CASES = {"arelu": ("arelu", {}), "acon_c": ("acon_c", {}),
         "meta_acon_c": ("meta_acon_c", {}), "meta_acon_c_pixel": ("meta_acon_c", {"granularity": "pixel"}),
         "aprelu": ("aprelu", {}), "dy_relu_b": ("dy_relu_b", {})}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def check(label: str, dtype: torch.dtype, shape: tuple[int, ...], grad: bool) -> None:
    name, kwargs = CASES[label]
    torch.manual_seed(0)
    auto = adaptact.create(name, channels=shape[1], **kwargs).eval()  # eval: no batch statistics
    ref = copy.deepcopy(auto)
    ref.backend = "reference"
    x = torch.randn(shape).to(dtype)
    dy = torch.randn(shape).to(dtype)
    xa = x.clone().requires_grad_(grad)
    xr = x.float().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        y, y_ref = auto(xa), ref(xr)
    what = f"{label} {dtype} {shape} grad={grad}"
    assert y.dtype == dtype, f"{what}: output dtype {y.dtype}"
    assert rel(y, y_ref) < TOL[dtype], f"{what}: output off by {rel(y, y_ref):.3g}"
    if grad:
        y.backward(dy)
        y_ref.backward(dy.float())
        assert xa.grad.dtype == dtype, f"{what}: gradient dtype {xa.grad.dtype}"
        assert rel(xa.grad, xr.grad) < TOL[dtype], f"{what}: dx off by {rel(xa.grad, xr.grad):.3g}"
        for (n, p), q in zip(auto.named_parameters(), ref.parameters()):
            assert rel(p.grad, q.grad) < 10 * TOL[dtype], f"{what}: d{n} off by {rel(p.grad, q.grad):.3g}"


def main() -> None:
    dtype = getattr(torch, sys.argv[1])
    warnings.simplefilter("error", RuntimeWarning)  # adaptact's fallback warnings
    for item in sys.argv[2].split(","):
        label, combo = item.split(":")
        check(label, dtype, *COMBOS[int(combo)])
    assert CP.available(), "compiling was given up"
    print("ok", dtype)


if __name__ == "__main__":
    main()
