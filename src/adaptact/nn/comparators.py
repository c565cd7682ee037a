"""The learnable activations the AReLU paper compares against: APL, Mixture, SLAF, Maxout.

APL, Mixture and SLAF follow the AReLU reference code (densechen/AReLU): a few scalars
shared by the layer, with its initial values. PAU lives in ``rational.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import functional as AF
from ..ops import distributed
from .base import ActivationModule, check_input, int_at_least
from .channels import ChannelModule
from .entry import Entry

__all__ = ["APL", "SLAF", "Maxout", "MaxoutPool", "Mixture"]


class APL(ActivationModule):
    """Adaptive piecewise linear unit (Agostinelli et al., arXiv 1412.6830).

    .. math:: y = \\mathrm{relu}(x) + \\sum_{s=1}^{S} a_s\\,\\mathrm{relu}(b_s - x)

    ``S`` hinges with shared scalars, initialised a_s = 0.2, b_s = 0.5 as in the AReLU code.

    Args:
        s: the number of hinges S.
        a, b: initial hinge slopes and positions.
        inplace: accepted for drop-in use; the output is always a new tensor.
        device, dtype: where and in which dtype to make the parameters.

    Shape: any -> the same.

    Examples:
        >>> APL(s=2)(torch.randn(4, 10)).shape
        torch.Size([4, 10])
    """

    registry_entries = (Entry("apl", "learnable", "Agostinelli et al., arXiv 1412.6830"),)

    def __init__(self, s: int = 1, a: float = 0.2, b: float = 0.5, inplace: bool = False, *,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        int_at_least("s (number of hinges)", s)
        self.init_a, self.init_b = float(a), float(b)
        self.a = nn.Parameter(torch.empty(s, device=device, dtype=dtype))
        self.b = nn.Parameter(torch.empty(s, device=device, dtype=dtype))
        self.inplace = inplace
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.a, self.init_a)
        nn.init.constant_(self.b, self.init_b)

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return AF.apl(x, self.a, self.b)

    def extra_repr(self) -> str:
        return f"s={self.a.shape[0]}"


class Mixture(ActivationModule):
    """Learnable mix of identity and ReLU, the AReLU paper's "Mixture".

    .. math:: y = p\\,x + (1 - p)\\,\\mathrm{relu}(x)

    One scalar ``p``, initialised to 0 (pure ReLU), as in the AReLU code.

    Args:
        p: initial mixing weight.
        inplace: accepted for drop-in use; the output is always a new tensor.
        device, dtype: where and in which dtype to make ``p``.

    Shape: any -> the same.

    Examples:
        >>> Mixture()(torch.randn(4, 10)).shape
        torch.Size([4, 10])
    """

    registry_entries = (Entry("mixture", "learnable", "AReLU paper's comparator"),)

    def __init__(self, p: float = 0.0, inplace: bool = False, *, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.init_p = float(p)
        self.p = nn.Parameter(torch.empty(1, device=device, dtype=dtype))
        self.inplace = inplace
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.p, self.init_p)

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return AF.mixture(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.init_p:g}"


class SLAF(ActivationModule):
    """Self-learnable activation function (Goyal et al., arXiv 1906.09529).

    .. math:: y = \\sum_{i=0}^{K-1} c_i x^i

    ``K`` shared coefficients, all initialised to 1 (K = 2: y = 1 + x), as in the AReLU code.

    Args:
        k: the number of coefficients K (degree K - 1).
        inplace: accepted for drop-in use; the output is always a new tensor.
        device, dtype: where and in which dtype to make the coefficients.

    Shape: any -> the same.

    Examples:
        >>> SLAF(k=3)(torch.randn(4, 10)).shape
        torch.Size([4, 10])
    """

    registry_entries = (Entry("slaf", "learnable", "Goyal et al., arXiv 1906.09529"),)

    def __init__(self, k: int = 2, inplace: bool = False, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        int_at_least("k (number of coefficients)", k)
        self.coeff = nn.Parameter(torch.empty(k, device=device, dtype=dtype))
        self.inplace = inplace
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.coeff)

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return AF.slaf(x, self.coeff)

    def extra_repr(self) -> str:
        return f"k={self.coeff.shape[0]}"


class Maxout(ChannelModule):
    """Per-channel maxout of ``pieces`` affine maps (Goodfellow et al., ICML 2013).

    .. math:: y_c = \\max_k (w_{ck} x_c + b_{ck})

    A maxout unit takes the max over K linear maps of its input; here those maps are
    per-channel affine functions of the activation's input, so the layer keeps the shape
    (C in, C out) and drops into any network. (The AReLU code's channel-pooling Maxout with
    its default pool_size=1 is the identity.) Initialised to ReLU: slopes evenly spaced in
    [0, 1], biases 0. Weight and bias have shape (C, pieces).

    Args:
        channels: C; None takes it from the first input (lazy, see ``nn.channels``).
        pieces: K >= 2.
        inplace: accepted for drop-in use; the output is always a new tensor.
        channel_dim: 1 for (N, C, *), -1 for (B, T, C) tokens and channels-last tensors.
        device, dtype: where and in which dtype to make the parameters.

    Shape: any rank >= 2 with C on ``channel_dim`` -> the same.

    Examples:
        >>> act = Maxout(16, pieces=3)
        >>> act(torch.randn(4, 16, 10)).shape
        torch.Size([4, 16, 10])
    """

    registry_entries = (Entry("maxout", "learnable", "Goodfellow et al., ICML 2013", per_channel=True),)

    _channels_entry = ("weight", 0)

    def __init__(self, channels: int | None = None, pieces: int = 2, inplace: bool = False, *,
                 channel_dim: int = 1, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.pieces = int_at_least("pieces", pieces, 2)
        self.inplace = inplace
        self._init_channels(channels, channel_dim, device, dtype)

    def _build(self, channels: int, device: Any, dtype: Any) -> None:
        self.weight = nn.Parameter(torch.empty(channels, self.pieces, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(channels, self.pieces, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ReLU: slopes evenly spaced in [0, 1], biases 0."""
        if self.initialized:
            distributed.assign(self.weight, torch.linspace(0.0, 1.0, self.pieces))  # also a DTensor's shard
            with torch.no_grad():
                self.bias.zero_()

    def _forward(self, x: Tensor) -> Tensor:
        return AF.maxout(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self._channels_repr()}, pieces={self.pieces}"


class MaxoutPool(ActivationModule):
    """Channel-pooling maxout, the AReLU code's ``Maxout(pool_size)``: the maximum over each group
    of ``pool_size`` consecutive channels.

    .. math:: y_{c} = \\max_{j < p} x_{p c + j}

    No parameters. The AReLU paper's experiments build it with its default ``pool_size=1``, where it
    is the identity; this module reproduces that comparator (the per-channel affine maxout is
    :class:`Maxout`).

    Args:
        pool_size: channels per group.
        inplace: accepted for drop-in use; the output is always a new tensor.

    Shape: (N, C, *) -> (N, C / pool_size, *); C must be divisible by ``pool_size``.

    Examples:
        >>> MaxoutPool(2)(torch.randn(4, 8, 5)).shape
        torch.Size([4, 4, 5])
    """

    registry_entries = (
        Entry("maxout_pool", "classic", "AReLU code's Maxout: channel pooling, pool_size=1 (the identity)"),
    )

    def __init__(self, pool_size: int = 1, inplace: bool = False) -> None:
        super().__init__()
        self.pool_size = int_at_least("pool_size", pool_size)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return AF.maxout_pool(x, self.pool_size)

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}"
