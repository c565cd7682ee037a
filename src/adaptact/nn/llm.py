"""Activations of today's language models: xIELU (the Apertus LLMs), squared ReLU (Primer),
GoLU and PolyNorm; their maths is in ``adaptact.functional``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .. import functional as AF
from ..ops import dispatch
from .base import ActivationModule, PointwiseActivation, check_input
from .channels import check_channel_dim
from .entry import Entry

__all__ = ["XIELU", "GoLU", "PolyNorm", "ReLU2"]


def _softplus_inverse(y: float) -> float:
    return math.log(math.expm1(y))


class XIELU(ActivationModule):
    """xIELU (Huang & Schlag, "Deriving Activation Functions Using Integration", arXiv 2411.13010).

    .. math::
        y = \\begin{cases} \\alpha_p x^2 + \\beta x & x > 0 \\\\
            \\alpha_n (\\operatorname{expm1}(\\min(x, \\epsilon)) - x) + \\beta x & x \\le 0 \\end{cases}

    with alpha_p = softplus(a_p) and alpha_n = beta + softplus(a_n), a_p and a_n trainable
    scalars, beta and eps fixed. Parameters and buffers are named and shaped as transformers'
    ``XIELUActivation`` (``alpha_p``, ``alpha_n`` of shape (1,) hold a_p and a_n; ``beta`` and
    ``eps`` 0-d buffers), whose state_dict this module loads; float32 by default (theirs are
    bfloat16).

    Args:
        alpha_p_init: alpha_p at initialisation (the paper's 0.8).
        alpha_n_init: alpha_n at initialisation (0.8; must exceed beta).
        beta: the linear term's slope (0.5).
        eps: where the negative branch's expm1 stops following x (-1e-6).
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "auto", "reference", "autograd" or "compiled" (``ops.dispatch``): the fused ones save
            x alone for the backward, not the reference's intermediates; no Triton kernel yet.
        device, dtype: where and in which dtype to make the parameters and buffers.

    Shape: any -> the same.

    Examples:
        >>> XIELU()(torch.randn(4, 10)).shape
        torch.Size([4, 10])
    """

    registry_entries = (Entry("xielu", "learnable", "Huang & Schlag, arXiv 2411.13010 (Apertus LLMs)"),)

    def __init__(self, alpha_p_init: float = 0.8, alpha_n_init: float = 0.8, beta: float = 0.5,
                 eps: float = -1e-6, inplace: bool = False, backend: str = "auto", *, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.backend = backend
        if not alpha_p_init > 0 or not alpha_n_init > beta:
            raise ValueError(f"xIELU needs alpha_p_init > 0 and alpha_n_init > beta, got {alpha_p_init}, "
                             f"{alpha_n_init} and beta {beta}")
        self.alpha_p_init, self.alpha_n_init = float(alpha_p_init), float(alpha_n_init)
        self.beta_value, self.eps_value = float(beta), float(eps)
        self.inplace = inplace
        factory = {"device": device, "dtype": dtype if dtype is not None else torch.float32}
        self.alpha_p = nn.Parameter(torch.empty(1, **factory))
        self.alpha_n = nn.Parameter(torch.empty(1, **factory))
        self.beta: Tensor
        self.eps: Tensor
        self.register_buffer("beta", torch.empty((), **factory))
        self.register_buffer("eps", torch.empty((), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """alpha_p and alpha_n at their initial values, beta and eps set (all of the module's state,
        as after ``to_empty`` from the meta device)."""
        with torch.no_grad():
            self.alpha_p.fill_(_softplus_inverse(self.alpha_p_init))
            self.alpha_n.fill_(_softplus_inverse(self.alpha_n_init - self.beta_value))
            self.beta.fill_(self.beta_value)
            self.eps.fill_(self.eps_value)

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return self._run(dispatch.xielu, x, self.alpha_p, self.alpha_n, self.beta, self.eps, triton=False)

    def extra_repr(self) -> str:
        initial = f"alpha_p_init={self.alpha_p_init:g}, alpha_n_init={self.alpha_n_init:g}"
        return initial + self._backend_repr()


class ReLU2(PointwiseActivation):
    """Squared ReLU (So et al., "Primer: Searching for Efficient Transformers for Language
    Modeling", arXiv 2109.08668).

    .. math:: y = \\operatorname{relu}(x)^2

    Args:
        inplace: accepted for drop-in use; the output is always a new tensor.

    Shape: any -> the same.

    Examples:
        >>> ReLU2()(torch.tensor([-1.0, 3.0]))
        tensor([0., 9.])
    """

    registry_entries = (Entry("relu2", "classic", "So et al. (Primer), arXiv 2109.08668"),)

    function = staticmethod(AF.relu2)


class GoLU(ActivationModule):
    """Gompertz linear unit (Das et al., "GoLU: Gompertz Linear Unit", arXiv 2502.03654).

    .. math:: y = x\\,e^{-e^{-x}}

    Args:
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "auto", "reference", "autograd" or "compiled" (``ops.dispatch``): the fused ones save
            x alone for the backward; no Triton kernel yet.

    Shape: any -> the same.

    Examples:
        >>> GoLU()(torch.zeros(2))
        tensor([0., 0.])
    """

    registry_entries = (Entry("golu", "classic", "Das et al., arXiv 2502.03654"),)

    def __init__(self, inplace: bool = False, backend: str = "auto") -> None:
        super().__init__()
        self.inplace = inplace
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return self._run(dispatch.golu, x, triton=False)

    def extra_repr(self) -> str:
        return self._backend_repr().lstrip(", ")


class PolyNorm(ActivationModule):
    """PolyNorm (Zhuo et al., "Polynomial Composition Activations", ICLR 2025, arXiv 2411.03884).

    .. math:: y = w_0\\,n(x^3) + w_1\\,n(x^2) + w_2\\,n(x) + b, \\qquad
        n(u) = u / \\sqrt{\\operatorname{mean}_c(u^2) + \\epsilon}

    Each position is normalised over its channels (dim ``channel_dim``), so the module takes the
    layout: -1 for transformer tokens (B, T, C), as the official code computes it. ``weight``
    (3,) and ``bias`` (1,) as in the official code (weight[0] scales the cube).

    Args:
        eps: added to the mean square (1e-6).
        channel_dim: the dim of the channels (1: channels first, -1: channels last).
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "auto", "reference", "autograd" or "compiled" (``ops.dispatch``): the fused ones save
            x alone for the backward, not the reference's six x-sized intermediates; no Triton kernel.
        device, dtype: where and in which dtype to make the parameters.

    Shape: (N, C, *) with ``channel_dim=1``, (N, *, C) with ``channel_dim=-1`` -> the same.

    Examples:
        >>> PolyNorm(channel_dim=-1)(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    registry_entries = (
        Entry("polynorm", "learnable", "Zhuo et al., ICLR 2025, arXiv 2411.03884 (per-token normalisation)",
              uses_layout=True, ranks=(2, 3, 4, 5)),
    )

    def __init__(self, eps: float = 1e-6, channel_dim: int = 1, inplace: bool = False,
                 backend: str = "auto", *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.backend = backend
        self.eps = float(eps)
        self.channel_dim = check_channel_dim(channel_dim)
        self.inplace = inplace
        self.weight = nn.Parameter(torch.empty(3, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1 / 3)
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        if not -x.ndim <= self.channel_dim < x.ndim or x.ndim < 2:
            raise ValueError(f"PolyNorm normalises over channel_dim={self.channel_dim}, which input shape "
                             f"{tuple(x.shape)} does not have")
        # "auto" runs the eager lean Function: compiled by Inductor it was twice as slow on the CPU
        # (benchmarks/RESULTS.md, issue 28)
        return self._run(dispatch.polynorm, x, self.weight, self.bias, self.eps, self.channel_dim,
                         fused=False, triton=False)

    def extra_repr(self) -> str:
        layout = "" if self.channel_dim == 1 else f", channel_dim={self.channel_dim}"
        return f"eps={self.eps:g}" + layout + self._backend_repr()
