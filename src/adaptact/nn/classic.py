"""Classic activations torch.nn lacks: Swish with a learnable beta, and CReLU.

Everything else of the classic family (ReLU, ELU, GELU, SiLU, Mish, ...) is torch.nn's own
class, named in ``adaptact.registry``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import functional as AF
from .base import ActivationModule, check_input

__all__ = ["CReLU", "Swish"]


class Swish(ActivationModule):
    """Swish (Ramachandran et al., "Searching for Activation Functions", arXiv 1710.05941).

    .. math:: y = x\\,\\sigma(\\beta x)

    ``learnable=False`` keeps ``beta`` fixed (beta = 1 is SiLU); ``learnable=True`` makes it
    one trainable scalar, the paper's Swish-beta.
    """

    def __init__(self, beta: float = 1.0, learnable: bool = False, inplace: bool = False) -> None:
        super().__init__()
        self.learnable = learnable
        self.inplace = inplace
        if learnable:
            self.beta = nn.Parameter(torch.tensor([float(beta)]))
        else:
            self.register_buffer("beta", torch.tensor([float(beta)]))

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return AF.swish(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta.item():.4g}, learnable={self.learnable}"


class CReLU(ActivationModule):
    """Concatenated ReLU (Shang et al., ICML 2016, arXiv 1603.05201).

    .. math:: y = \\mathrm{concat}(\\mathrm{relu}(x), \\mathrm{relu}(-x)) \\text{ on dim 1}

    The output has twice the input's channels, so the next layer must take 2C.
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        if x.ndim < 2:
            raise ValueError(
                f"CReLU concatenates on dim 1 and expects input of shape (N, C, *), got a "
                f"{x.ndim}-D tensor of shape {tuple(x.shape)}"
            )
        return AF.crelu(x)
