"""Dynamic ReLU: a piecewise-linear activation whose pieces are generated from the input."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .. import functional as AF
from ..ops import dispatch
from .base import ActivationModule, check_input, int_at_least

__all__ = ["DyReLU"]


class DyReLU(ActivationModule):
    """Dynamic ReLU (Chen et al., "Dynamic ReLU", ECCV 2020, arXiv 2003.10027).

    .. math:: y_c = \\max_{k \\le K} (a_c^k(x)\\, x_c + b_c^k(x))

    The hyper function of the whole input gives normalised residuals in [-1, 1]:
    theta = 2 sigmoid(fc2(relu(fc1(GAP(x))))) - 1, fc1: C -> C // reduction, both with bias; then
    a^k = alpha^k + lambda_a theta_a^k and b^k = beta^k + lambda_b theta_b^k. The paper's defaults:
    K = 2, alpha = (1, 0), beta = (0, 0), lambda_a = 1.0, lambda_b = 0.5 (so it starts near ReLU).

    * ``variant="A"`` (DY-ReLU-A, spatial- and channel-shared): fc2 gives 2K values per sample.
    * ``variant="B"`` (DY-ReLU-B, channel-wise): fc2 gives 2K per channel, 2KC per sample.

    The layout follows the widely used implementation linked from the paper's page
    (Islanna/DynamicReLU): ``fc1``, ``fc2`` (Linear), buffers ``lambdas`` = (lambda_a x K,
    lambda_b x K) and ``init_v`` = (alpha, beta), fc2's outputs per channel ordered
    (theta_a^1..K, theta_b^1..K); its state_dicts load. ``reduction`` defaults to its 4.
    DY-ReLU-C (with spatial attention) is not built.

    Args:
        channels: C, the size of dim 1.
        variant: "A" or "B".
        k: number of linear pieces K.
        reduction: fc1's width is max(1, C // reduction).
        lambda_a, lambda_b: ranges of the residuals of the slopes and intercepts.
        init_a, init_b: alpha^1..K and beta^1..K (default (1, 0, ..., 0) and zeros).
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "auto", "reference", "autograd", "compiled" or "triton" (``adaptact.ops.dispatch``).

    Shape: (N, C, *) -> the same; any rank from (N, C).
    """

    def __init__(self, channels: int, variant: Literal["A", "B"] = "B", k: int = 2, reduction: int = 4,
                 lambda_a: float = 1.0, lambda_b: float = 0.5, init_a: tuple[float, ...] | None = None,
                 init_b: tuple[float, ...] | None = None, inplace: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.backend = backend
        if variant not in ("A", "B"):
            raise ValueError(f"variant must be 'A' or 'B' (DY-ReLU-C is not built), got {variant!r}")
        self.channels = int_at_least("channels", channels)
        self.k = int_at_least("k (pieces)", k)
        self.reduction = int_at_least("reduction", reduction)
        self.variant = variant
        self.inplace = inplace
        init_a = (1.0,) + (0.0,) * (k - 1) if init_a is None else tuple(init_a)
        init_b = (0.0,) * k if init_b is None else tuple(init_b)
        if len(init_a) != k or len(init_b) != k:
            raise ValueError(f"init_a and init_b need k = {k} values each, got {len(init_a)} and "
                             f"{len(init_b)}")
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 2 * k * (channels if variant == "B" else 1))
        self.register_buffer("lambdas", torch.tensor([float(lambda_a)] * k + [float(lambda_b)] * k))
        self.register_buffer("init_v", torch.tensor([float(v) for v in init_a + init_b]))

    def coefficients_from_mean(self, mean: Tensor) -> tuple[Tensor, Tensor]:
        """(a, b), each (N, C, K) for "B" or (N, 1, K) for "A", from the spatial means (N, C)."""
        theta = 2 * torch.sigmoid(self.fc2(torch.relu(self.fc1(mean)))) - 1
        coefficients = theta.reshape(mean.shape[0], -1, 2 * self.k) * self.lambdas + self.init_v
        return coefficients[..., : self.k], coefficients[..., self.k :]

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The pieces (a, b) for ``x``."""
        return self.coefficients_from_mean(AF.spatial_mean(x, dtype=self.fc1.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, self.channels)
        return self._run(dispatch.dy_relu, x, self.coefficients_from_mean, self._weights,
                         self.fc1.weight.dtype)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, variant={self.variant!r}, k={self.k}, reduction={self.reduction}"
                + self._backend_repr())
