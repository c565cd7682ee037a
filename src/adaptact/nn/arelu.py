"""AReLU: attention-based rectified linear unit."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import dispatch
from .base import ActivationModule, check_input


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
        backend: "auto", "reference", "autograd" or "triton" (see ``adaptact.ops.dispatch``).
    """

    def __init__(self, alpha: float = 0.90, beta: float = 2.0, inplace: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.backend = backend
        self.alpha = nn.Parameter(torch.tensor([float(alpha)]))
        self.beta = nn.Parameter(torch.tensor([float(beta)]))
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return self._run(dispatch.arelu, x, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha.item():.4g}, beta={self.beta.item():.4g}" + self._backend_repr()
