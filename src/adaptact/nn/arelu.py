"""AReLU: attention-based rectified linear unit."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..ops import dispatch, small
from .base import ActivationModule, check_input
from .entry import Entry


class AReLU(ActivationModule):
    """AReLU (Chen et al. 2020, "AReLU: Attention-based Rectified Linear Unit", arXiv 2006.13858).

    .. math:: y = (1 + \\sigma(\\beta))\\,\\mathrm{relu}(x) - \\mathrm{clamp}(\\alpha, 0.01,
                                                                              0.99)\\,\\mathrm{relu}(-x)

    Two learnable scalars shared by the layer, shaped (1,) as in the official code
    (densechen/AReLU), so its state_dict loads unchanged.

    Args:
        alpha: initial negative-side slope before clamping (paper: 0.90).
        beta: initial positive-side gain logit (paper: 2.0).
        inplace: accepted for interop with ``nn.ReLU``-style code; the result is always a new tensor.
        backend: "auto", "reference", "autograd", "compiled" or "triton" (``adaptact.ops.dispatch``).
        device, dtype: where and in which dtype to make the parameters.

    Shape: any -> the same (the parameters are shared by every element).

    Examples:
        >>> act = AReLU()
        >>> act(torch.randn(8, 64, 14, 14)).shape
        torch.Size([8, 64, 14, 14])
    """

    registry_entries = (Entry("arelu", "adaptive", "Chen et al., arXiv 2006.13858"),)

    def __init__(self, alpha: float = 0.90, beta: float = 2.0, inplace: bool = False,
                 backend: str = "auto", *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.backend = backend
        self.init_alpha, self.init_beta = float(alpha), float(beta)
        self.alpha = nn.Parameter(torch.empty(1, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.empty(1, device=device, dtype=dtype))
        self.inplace = inplace
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.init_alpha)
        nn.init.constant_(self.beta, self.init_beta)

    def forward(self, x: Tensor) -> Tensor:
        params = self._small(x, ("alpha", "beta"))
        # a small inference call: the fewest ops (which read alpha and beta as numbers: not in a
        # torch.jit trace, which would keep them as constants)
        if params is not None and not torch.jit.is_tracing():
            return small.arelu(x, *params)
        check_input(self, x, None)
        return self._run(dispatch.arelu, x, self.alpha, self.beta)

    def inspected(self, x: Tensor, y: Tensor) -> tuple[str, object] | None:
        """Its input and output feature maps (those with spatial dims, after convolutions)."""
        return ("arelu_maps", (x, y)) if x.ndim > 2 else None

    def fit_parameters(self) -> list[Tensor]:
        return [self.alpha, self.beta]

    def fit_starts(self, negative_slope: float) -> list[list[list[float]]]:
        # the slope inside the clamp's range; a gain of 1 + sigmoid(-8) ~ 1 (ReLU-like) or 1.5
        return [[[min(max(negative_slope, 0.02), 0.98)], [b]] for b in (-8.0, 0.0)]

    def extra_repr(self) -> str:
        return f"alpha={self.init_alpha:g}, beta={self.init_beta:g}" + self._backend_repr()
