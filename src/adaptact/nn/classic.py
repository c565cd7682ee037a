"""Classic activations torch.nn lacks: Swish with a learnable beta, and CReLU; and torch.nn's
PReLU with the checks of every adaptact module.

Everything else of the classic family (ReLU, ELU, GELU, SiLU, Mish, ...) is torch.nn's own
class, named in ``adaptact.registry``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as AF
from ..ops import distributed
from .acon import MATCH_BETAS
from .base import ActivationModule, CheckedStateDict, check_input, int_at_least
from .channels import check_channel_dim
from .entry import Entry

__all__ = ["CReLU", "PReLU", "Swish"]


class PReLU(CheckedStateDict, nn.PReLU):
    """PReLU (He et al., "Delving Deep into Rectifiers", ICCV 2015): torch.nn.PReLU's maths
    (``F.prelu``), with what every adaptact module guarantees.

    .. math:: y = \\max(0, x) + a \\min(0, x)

    * ``num_parameters`` is a positive int and ``init`` finite; with more than one slope the
      input must be (N, C, *) with C == num_parameters on dim 1 (never a silent broadcast).
    * The slope keeps its dtype and is cast to the input's, so a float32 module runs on
      float16/bfloat16 activations.
    * ``load_state_dict`` takes the official (1, C, 1, 1) layout and refuses non-finite slopes.

    Args:
        num_parameters: 1 (one shared slope) or the number of channels.
        init: initial slope (paper: 0.25).
        device, dtype: where and in which dtype to make the slope.
        channel_dim: the dim of the channels (1; -1 for (B, T, C) tokens and channels-last).

    Examples:
        >>> PReLU(64, channel_dim=-1)(torch.randn(2, 7, 64)).shape
        torch.Size([2, 7, 64])
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.25, device=None, dtype=None, *,
                 channel_dim: int = 1) -> None:
        int_at_least("num_parameters", num_parameters)
        if not isinstance(init, int | float) or not math.isfinite(init):
            raise ValueError(f"init must be a finite number, got {init!r}")
        super().__init__(num_parameters, init, device=device, dtype=dtype)
        self.channel_dim = check_channel_dim(channel_dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.num_parameters == 1 or self.channel_dim == 1 or x.ndim < 2:
            check_input(self, x, self.num_parameters if self.num_parameters > 1 else None)
            return self._prelu(x)
        check_input(self, x, None)
        if not -x.ndim <= self.channel_dim < x.ndim or x.shape[self.channel_dim] != self.num_parameters:
            raise ValueError(f"PReLU expected {self.num_parameters} channels on dim {self.channel_dim}, got "
                             f"input shape {tuple(x.shape)}")
        return self._prelu(x.movedim(self.channel_dim, 1)).movedim(1, self.channel_dim)

    def _prelu(self, x: Tensor) -> Tensor:
        """F.prelu on (N, C, *), or on DTensors (tensor parallel, where F.prelu's backward has no
        sharding rule) the same maths in plain ops: max(0, x) + a min(0, x)."""
        weight = self.weight.to(x.dtype)
        if not distributed.sharded(x, weight):
            return F.prelu(x, weight)
        slope = weight.reshape((-1,) + (1,) * (x.ndim - 2)) if x.ndim > 1 and weight.numel() > 1 else weight
        return x.clamp_min(0) + slope * x.clamp_max(0)

    per_channel_parameters = ("weight",)  # one slope per channel (when num_parameters > 1)
    generated_per_channel = None

    def fit_parameters(self) -> list[Tensor]:
        """What ``init="match"`` fits: the slope."""
        return [self.weight]

    def fit_starts(self, negative_slope: float) -> list[list[list[float]]]:
        return [[[negative_slope]]]

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.channel_dim == 1 else f", channel_dim={self.channel_dim}")


class Swish(ActivationModule):
    """Swish (Ramachandran et al., "Searching for Activation Functions", arXiv 1710.05941).

    .. math:: y = x\\,\\sigma(\\beta x)

    ``learnable=False`` keeps ``beta`` fixed (beta = 1 is SiLU); ``learnable=True`` makes it
    one trainable scalar, the paper's Swish-beta.

    Args:
        beta: the (initial) beta.
        learnable: whether beta is trained (a parameter) or fixed (a buffer).
        inplace: accepted for drop-in use; the output is always a new tensor.
        device, dtype: where and in which dtype to make beta.

    Shape: any -> the same.

    Examples:
        >>> Swish(learnable=True)(torch.randn(4, 10)).shape
        torch.Size([4, 10])
    """

    registry_entries = (
        Entry("swish", "learnable", "Ramachandran et al., arXiv 1710.05941", options={"learnable": True}),
        Entry("swish_fixed", "classic", "AReLU code's Swish: x * sigmoid(x), beta fixed at 1"),
    )

    def __init__(self, beta: float = 1.0, learnable: bool = False, inplace: bool = False, *,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.learnable = learnable
        self.inplace = inplace
        self.init_beta = float(beta)
        value = torch.empty(1, device=device, dtype=dtype)
        if learnable:
            self.beta = nn.Parameter(value)
        else:
            self.register_buffer("beta", value)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.beta.fill_(self.init_beta)

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return AF.swish(x, self.beta)

    def fit_parameters(self) -> list[Tensor]:
        return [self.beta]

    def fit_starts(self, negative_slope: float) -> list[list[list[float]]]:
        return [[[b]] for b in MATCH_BETAS]

    def extra_repr(self) -> str:
        return f"beta={self.init_beta:.4g}, learnable={self.learnable}"


class TanhGELU(ActivationModule):
    """GELU's tanh form with a given coefficient (Hendrycks & Gimpel, arXiv 1606.08415).

    .. math:: y = \\tfrac{x}{2}\\,(1 + \\tanh(k\\,(x + 0.044715\\,x^3)))

    The paper's k is sqrt(2/pi) = 0.7978846 (``nn.GELU(approximate="tanh")``); the AReLU code's
    GELU, which its experiments compare against, writes k = 0.7979946 (``ARELU_CODE``).

    Args:
        coefficient: k.
        inplace: accepted for drop-in use; the output is always a new tensor.

    Shape: any -> the same.

    Examples:
        >>> TanhGELU()(torch.randn(4, 10)).shape
        torch.Size([4, 10])
    """

    registry_entries = (
        Entry("gelu_arelu", "classic", "AReLU code's GELU: tanh form with 0.7979946 for sqrt(2/pi)"),
    )

    ARELU_CODE = 0.7979946

    def __init__(self, coefficient: float = ARELU_CODE, inplace: bool = False) -> None:
        super().__init__()
        self.coefficient = float(coefficient)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return AF.gelu_tanh(x, self.coefficient)

    def extra_repr(self) -> str:
        return f"coefficient={self.coefficient}"


class CReLU(ActivationModule):
    """Concatenated ReLU (Shang et al., ICML 2016, arXiv 1603.05201).

    .. math:: y = \\mathrm{concat}(\\mathrm{relu}(x), \\mathrm{relu}(-x)) \\text{ on dim 1}

    The output has twice the input's channels, so the next layer must take 2C.

    Args:
        inplace: accepted for drop-in use; the output is always a new tensor.

    Shape: (N, C, *) -> (N, 2C, *).

    Examples:
        >>> CReLU()(torch.randn(4, 8, 5)).shape
        torch.Size([4, 16, 5])
    """

    registry_entries = (Entry("crelu", "classic", "Shang et al., ICML 2016", channel_factor=2),)

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
