"""PAU: the safe Pade activation unit, initialised to approximate leaky ReLU by a fit."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as AF
from ..ops import distributed
from .base import ActivationModule, check_input, int_at_least
from .entry import Entry

__all__ = ["PAU", "fit_pau"]


@functools.lru_cache(maxsize=16)
def fit_pau(
    degree_numerator: int = 5,
    degree_denominator: int = 4,
    negative_slope: float = 0.01,
    span: float = 3.0,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Coefficients of the safe PAU closest to leaky ReLU on [-span, span] (least squares).

    Deterministic and computed on this machine in float64: a linear least-squares start
    (P(x) - f(x) (1 + sum_k b_k |x|^k) = 0, the linearised problem) refined by L-BFGS on the
    true squared error of the safe rational function. Returns (numerator, denominator) with
    numerator = (a_0..a_m) and denominator = (b_1..b_n). Cached per argument set.
    """
    x = torch.linspace(-span, span, 601, dtype=torch.float64)
    target = F.leaky_relu(x, negative_slope)
    powers = torch.stack([x**i for i in range(degree_numerator + 1)], dim=1)
    abs_powers = torch.stack([x.abs() ** k for k in range(1, degree_denominator + 1)], dim=1)
    design = torch.cat((powers, -target[:, None] * abs_powers), dim=1)
    start = torch.linalg.lstsq(design, target[:, None]).solution.squeeze(1)
    num = start[: degree_numerator + 1].clone().requires_grad_(True)
    den = start[degree_numerator + 1 :].abs().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([num, den], lr=1.0, max_iter=200, tolerance_grad=1e-12,
                            tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = (AF.pau(x, num, den) - target).square().mean()
        loss.backward()
        return loss

    opt.step(closure)
    return tuple(num.detach().tolist()), tuple(den.detach().abs().tolist())


class PAU(ActivationModule):
    """Safe Pade activation unit (Molina et al., ICLR 2020, arXiv 1907.06732).

    .. math:: y = \\frac{a_0 + a_1 x + \\dots + a_m x^m}{1 + |b_1||x| + \\dots + |b_n||x|^n}

    The denominator is at least 1, so there are no poles. Coefficients are shared by the
    layer (as in the paper), m = 5 and n = 4 by default, and initialised to the least-squares
    fit of leaky ReLU (slope ``negative_slope``) on [-3, 3] computed by :func:`fit_pau`.

    Args:
        degree_numerator: m.
        degree_denominator: n.
        negative_slope: the leaky ReLU slope of the initial fit.
        inplace: accepted for drop-in use; the output is always a new tensor.
        device, dtype: where and in which dtype to make the coefficients (default float32).

    Shape: any -> the same.

    Examples:
        >>> PAU()(torch.randn(4, 10)).shape
        torch.Size([4, 10])
    """

    registry_entries = (Entry("pau", "learnable", "Molina et al., ICLR 2020"),)

    def __init__(
        self,
        degree_numerator: int = 5,
        degree_denominator: int = 4,
        negative_slope: float = 0.01,
        inplace: bool = False,
        *,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        int_at_least("degree_numerator", degree_numerator)
        int_at_least("degree_denominator", degree_denominator)
        factory = {"device": device, "dtype": dtype or torch.float32}
        self.numerator = nn.Parameter(torch.empty(degree_numerator + 1, **factory))
        self.denominator = nn.Parameter(torch.empty(degree_denominator, **factory))
        self.negative_slope = negative_slope
        self.inplace = inplace
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The least-squares fit of leaky ReLU (``fit_pau``)."""
        num, den = fit_pau(self.numerator.shape[0] - 1, self.denominator.shape[0], float(self.negative_slope))
        distributed.assign(self.numerator, torch.tensor(num))  # also a DTensor's shard (FSDP2, meta init)
        distributed.assign(self.denominator, torch.tensor(den))

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return AF.pau(x, self.numerator, self.denominator)

    def extra_repr(self) -> str:
        m, n = self.numerator.shape[0] - 1, self.denominator.shape[0]
        return f"degree_numerator={m}, degree_denominator={n}, init=leaky_relu({self.negative_slope})"
