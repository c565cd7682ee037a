"""ACON-A, ACON-B and ACON-C: activate or not, with learnable switching."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import dispatch
from .base import ActivationModule, check_input, int_at_least

__all__ = ["AconA", "AconB", "AconC"]


class AconA(ActivationModule):
    """ACON-A (Ma et al., "Activate or Not", CVPR 2021, arXiv 2009.04759).

    .. math:: y = S_\\beta(x, 0) = x\\,\\sigma(\\beta x)

    Swish with a learnable per-channel ``beta`` (shape (C,), initialised to ``beta``).
    """

    def __init__(self, channels: int, beta: float = 1.0, inplace: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.channels = int_at_least("channels", channels)
        self.beta = nn.Parameter(torch.full((channels,), float(beta)))
        self.inplace = inplace
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, self.channels)
        one = torch.ones((), dtype=self.beta.dtype, device=self.beta.device)
        return self._run(dispatch.acon_c, x, one, one - 1, self.beta)

    def extra_repr(self) -> str:
        return f"channels={self.channels}" + self._backend_repr()


class AconB(ActivationModule):
    """ACON-B (Ma et al., CVPR 2021, arXiv 2009.04759), the smooth counterpart of PReLU.

    .. math:: y = S_\\beta(x, p x) = (1 - p) x\\,\\sigma(\\beta (1 - p) x) + p x

    Per-channel ``p`` (initialised to ``p``, PReLU's 0.25; the paper gives no value) and
    ``beta`` (initialised to 1, as in the official ACON-C).
    """

    def __init__(self, channels: int, p: float = 0.25, beta: float = 1.0, inplace: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.channels = int_at_least("channels", channels)
        self.p = nn.Parameter(torch.full((channels,), float(p)))
        self.beta = nn.Parameter(torch.full((channels,), float(beta)))
        self.inplace = inplace
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, self.channels)
        one = torch.ones((), dtype=self.p.dtype, device=self.p.device)
        return self._run(dispatch.acon_c, x, one, self.p, self.beta)

    def extra_repr(self) -> str:
        return f"channels={self.channels}" + self._backend_repr()


class AconC(ActivationModule):
    """ACON-C (Ma et al., CVPR 2021, arXiv 2009.04759; official code nmaac/acon).

    .. math:: y = S_\\beta(p_1 x, p_2 x) = (p_1 - p_2) x\\,\\sigma(\\beta (p_1 - p_2) x) + p_2 x

    Its derivative has learnable bounds: with g(u) = sigmoid(u) + u sigmoid(u) (1 - sigmoid(u)),
    which ranges over (-0.0998, 1.0998), dy/dx = p2 + (p1 - p2) g(beta (p1 - p2) x), so for
    p1 > p2 it lies in (1.0998 p2 - 0.0998 p1, 1.0998 p1 - 0.0998 p2), whatever beta.

    Parameters ``p1``, ``p2`` ~ N(0, 1) and ``beta`` = 1, all per channel with shape (C,),
    as the official code initialises them. The official (1, C, 1, 1) tensors load as they are.
    """

    def __init__(self, channels: int, beta: float = 1.0, inplace: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.channels = int_at_least("channels", channels)
        self.p1 = nn.Parameter(torch.randn(channels))
        self.p2 = nn.Parameter(torch.randn(channels))
        self.beta = nn.Parameter(torch.full((channels,), float(beta)))
        self.inplace = inplace
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, self.channels)
        return self._run(dispatch.acon_c, x, self.p1, self.p2, self.beta)

    def extra_repr(self) -> str:
        return f"channels={self.channels}" + self._backend_repr()
