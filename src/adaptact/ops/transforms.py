"""torch.func transforms (vmap, grad, jacrev, ...) and our Functions: they compute first-order
gradients only and have no batching rules, so under a transform the reference runs (``backend="auto"``)
or a named backend is refused with one line. Public torch APIs only: a transformed tensor is one of
torch.func's wrappers, and torch refuses a Function without ``setup_context`` while any transform runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor
from torch.func import debug_unwrap

__all__ = ["reference_under_torch_func", "refusal", "transform_active", "under_torch_func"]

_T = TypeVar("_T")


def under_torch_func(*tensors: Tensor) -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is transforming any of ``tensors``:
    they are then its wrapper tensors, which ``torch.func.debug_unwrap`` unwraps (used here for that
    identity check only). Our Functions compute first-order gradients only and have no batching
    rules, so there only the reference runs."""
    if torch.compiler.is_compiling():
        return False
    return any(debug_unwrap(t, recurse=False) is not t for t in tensors)


class _WithoutSetupContext(torch.autograd.Function):
    """The identity, written without ``setup_context``: torch refuses to run such a Function while
    a torch.func transform is active (documented in "Extending torch.func with autograd.Function")."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x

    @staticmethod
    def backward(ctx, dy: Tensor) -> Tensor:  # type: ignore[override]
        return dy


def transform_active() -> bool:
    """Whether a torch.func transform runs at all, even one over tensors none of ours (a gradient
    of the last layer only): a Function failed, and this says whether that was the reason. A few
    microseconds; ``under_torch_func`` is the check on the way in."""
    try:
        _WithoutSetupContext.apply(torch.zeros(()))
    except RuntimeError:
        return True
    return False


def reference_under_torch_func(run: Callable[[], _T], reference: Callable[[], _T], backend: str) -> _T:
    """``run()``, or ``reference()`` when a Function in it was refused because a torch.func
    transform is active over other tensors (under "auto"; a named backend is refused clearly)."""
    try:
        return run()
    except RuntimeError as err:
        if not transform_active():
            raise
        if backend != "auto":
            raise refusal(backend) from err
    return reference()


def refusal(backend: str) -> RuntimeError:
    return RuntimeError(f"backend={backend!r} cannot run under torch.func transforms (vmap, grad, "
                        "jacrev, ...): its Functions compute first-order gradients only and have no "
                        "batching rules; use backend='auto' or 'reference', which run the plain "
                        "composition there")
