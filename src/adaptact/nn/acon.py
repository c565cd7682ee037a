"""ACON-A, ACON-B and ACON-C: activate or not, with learnable switching."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..ops import dispatch, small
from .channels import ChannelModule
from .entry import Entry

__all__ = ["AconA", "AconB", "AconC", "MATCH_BETAS"]

# ``init="match"``'s starts for beta: Swish (1), x sigmoid(1.702 x) ~ GELU, and steep (~ ReLU)
MATCH_BETAS = (1.0, 1.702, 8.0)


class AconA(ChannelModule):
    """ACON-A (Ma et al., "Activate or Not", CVPR 2021, arXiv 2009.04759).

    .. math:: y = S_\\beta(x, 0) = x\\,\\sigma(\\beta x)

    Swish with a learnable per-channel ``beta`` (shape (C,), initialised to ``beta``).

    Args:
        channels: C; None takes it from the first input (lazy, see ``nn.channels``).
        beta: initial switching factor.
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "auto", "reference", "autograd", "compiled" or "triton" (``adaptact.ops.dispatch``).
        channel_dim: the dim of the channels: 1 for (N, C, *), -1 for (B, T, C) tokens and any
            channels-last tensor. Parameters do not depend on it.
        device, dtype: where and in which dtype to make the parameters.

    Shape: any rank >= 2 with C on ``channel_dim`` -> the same.

    Examples:
        >>> act = AconA(64)
        >>> act(torch.randn(8, 64, 14, 14)).shape
        torch.Size([8, 64, 14, 14])
    """

    registry_entries = (Entry("acon_a", "adaptive", "Ma et al., CVPR 2021", per_channel=True),)

    _channels_entry = ("beta", -1)
    per_channel_parameters = ("beta",)

    def __init__(self, channels: int | None = None, beta: float = 1.0, inplace: bool = False,
                 backend: str = "auto", *, channel_dim: int = 1, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.init_beta = float(beta)
        self.inplace = inplace
        self.backend = backend
        self._init_channels(channels, channel_dim, device, dtype)

    def _build(self, channels: int, device: Any, dtype: Any) -> None:
        self.beta = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.initialized:
            nn.init.constant_(self.beta, self.init_beta)

    def _forward(self, x: Tensor) -> Tensor:
        one = torch.ones((), dtype=self.beta.dtype, device=self.beta.device)
        return self._run(dispatch.acon_c, x, one, one - 1, self.beta)

    def _small_form(self, x: Tensor) -> Tensor | None:
        params = self._small(x, ("beta",), self.channels, self.channel_dim)
        return None if params is None else small.acon_a(x, *params)

    def fit_parameters(self) -> list[Tensor]:
        return [self.beta]

    def fit_starts(self, negative_slope: float) -> list[list[list[float]]]:
        return [[[b]] for b in MATCH_BETAS]

    def extra_repr(self) -> str:
        return self._channels_repr() + self._backend_repr()


class AconB(ChannelModule):
    """ACON-B (Ma et al., CVPR 2021, arXiv 2009.04759), the smooth counterpart of PReLU.

    .. math:: y = S_\\beta(x, p x) = (1 - p) x\\,\\sigma(\\beta (1 - p) x) + p x

    Per-channel ``p`` (initialised to ``p``, PReLU's 0.25; the paper gives no value) and
    ``beta`` (initialised to 1, as in the official ACON-C).

    Args:
        channels: C; None takes it from the first input (lazy, see ``nn.channels``).
        p: initial slope of the linear part.
        beta: initial switching factor.
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "auto", "reference", "autograd", "compiled" or "triton" (``adaptact.ops.dispatch``).
        channel_dim: the dim of the channels: 1 for (N, C, *), -1 for (B, T, C) tokens and any
            channels-last tensor. Parameters do not depend on it.
        device, dtype: where and in which dtype to make the parameters.

    Shape: any rank >= 2 with C on ``channel_dim`` -> the same.

    Examples:
        >>> act = AconB(None, channel_dim=-1)  # lazy, tokens (B, T, C)
        >>> act(torch.randn(2, 7, 32)).shape
        torch.Size([2, 7, 32])
    """

    registry_entries = (Entry("acon_b", "adaptive", "Ma et al., CVPR 2021", per_channel=True),)

    _channels_entry = ("p", -1)
    per_channel_parameters = ("p", "beta")

    def __init__(self, channels: int | None = None, p: float = 0.25, beta: float = 1.0, inplace: bool = False,
                 backend: str = "auto", *, channel_dim: int = 1, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.init_p, self.init_beta = float(p), float(beta)
        self.inplace = inplace
        self.backend = backend
        self._init_channels(channels, channel_dim, device, dtype)

    def _build(self, channels: int, device: Any, dtype: Any) -> None:
        self.p = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.initialized:
            nn.init.constant_(self.p, self.init_p)
            nn.init.constant_(self.beta, self.init_beta)

    def _forward(self, x: Tensor) -> Tensor:
        one = torch.ones((), dtype=self.p.dtype, device=self.p.device)
        return self._run(dispatch.acon_c, x, one, self.p, self.beta)

    def _small_form(self, x: Tensor) -> Tensor | None:
        params = self._small(x, ("p", "beta"), self.channels, self.channel_dim)
        return None if params is None else small.acon_b(x, *params)

    def fit_parameters(self) -> list[Tensor]:
        return [self.p, self.beta]

    def fit_starts(self, negative_slope: float) -> list[list[list[float]]]:
        return [[[negative_slope], [b]] for b in MATCH_BETAS]

    def extra_repr(self) -> str:
        return self._channels_repr() + self._backend_repr()


class AconC(ChannelModule):
    """ACON-C (Ma et al., CVPR 2021, arXiv 2009.04759; official code nmaac/acon).

    .. math:: y = S_\\beta(p_1 x, p_2 x) = (p_1 - p_2) x\\,\\sigma(\\beta (p_1 - p_2) x) + p_2 x

    Its derivative has learnable bounds: with g(u) = sigmoid(u) + u sigmoid(u) (1 - sigmoid(u)),
    which ranges over (-0.0998, 1.0998), dy/dx = p2 + (p1 - p2) g(beta (p1 - p2) x), so for
    p1 > p2 it lies in (1.0998 p2 - 0.0998 p1, 1.0998 p1 - 0.0998 p2), whatever beta.

    Parameters ``p1``, ``p2`` ~ N(0, 1) and ``beta`` = 1, all per channel with shape (C,),
    as the official code initialises them. The official (1, C, 1, 1) tensors load as they are.

    Args:
        channels: C; None takes it from the first input (lazy, see ``nn.channels``).
        beta: initial switching factor.
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "auto", "reference", "autograd", "compiled" or "triton" (``adaptact.ops.dispatch``).
        channel_dim: the dim of the channels: 1 for (N, C, *), -1 for (B, T, C) tokens and any
            channels-last tensor. Parameters do not depend on it.
        device, dtype: where and in which dtype to make the parameters.

    Shape: any rank >= 2 with C on ``channel_dim`` -> the same.

    Examples:
        >>> act = AconC(64)
        >>> act(torch.randn(8, 64, 14, 14)).shape
        torch.Size([8, 64, 14, 14])
        >>> mlp_act = AconC(3072, channel_dim=-1)  # a transformer MLP's (B, T, 3072)
        >>> mlp_act(torch.randn(2, 5, 3072)).shape
        torch.Size([2, 5, 3072])
    """

    registry_entries = (Entry("acon_c", "adaptive", "Ma et al., CVPR 2021", per_channel=True),)

    _channels_entry = ("p1", -1)
    per_channel_parameters = ("p1", "p2", "beta")

    def __init__(self, channels: int | None = None, beta: float = 1.0, inplace: bool = False,
                 backend: str = "auto", *, channel_dim: int = 1, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.init_beta = float(beta)
        self.inplace = inplace
        self.backend = backend
        self._init_channels(channels, channel_dim, device, dtype)

    def _build(self, channels: int, device: Any, dtype: Any) -> None:
        self.p1 = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        self.p2 = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.initialized:
            nn.init.normal_(self.p1)
            nn.init.normal_(self.p2)
            nn.init.constant_(self.beta, self.init_beta)

    def _forward(self, x: Tensor) -> Tensor:
        return self._run(dispatch.acon_c, x, self.p1, self.p2, self.beta)

    def _small_form(self, x: Tensor) -> Tensor | None:
        params = self._small(x, ("p1", "p2", "beta"), self.channels, self.channel_dim)
        return None if params is None else small.acon_c(x, *params)

    def fit_parameters(self) -> list[Tensor]:
        return [self.p1, self.p2, self.beta]

    def fit_starts(self, negative_slope: float) -> list[list[list[float]]]:
        return [[[1.0], [negative_slope], [b]] for b in MATCH_BETAS]

    def extra_repr(self) -> str:
        return self._channels_repr() + self._backend_repr()
