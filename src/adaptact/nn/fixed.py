"""Fixed-shape activations that Hugging Face configs name and torch.nn lacks: QuickGELU, the
clipped GELU of "gelu_10", MEGA's Laplace function and the square root of softplus. Their maths
is in ``adaptact.functional``; together with torch.nn's classes they make every name of
transformers' ``ACT2CLS`` resolvable in ``adaptact.create``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import functional as AF
from .base import ActivationModule, PointwiseActivation, check_input
from .entry import Entry

__all__ = ["ClippedGELU", "Laplace", "QuickGELU", "SqrtSoftplus"]


class QuickGELU(PointwiseActivation):
    """GELU's sigmoid approximation (Hendrycks & Gimpel, arXiv 1606.08415), CLIP's "quick_gelu".

    .. math:: y = x\\,\\sigma(1.702\\,x)

    Args:
        inplace: accepted for drop-in use; the output is always a new tensor.

    Shape: any -> the same.

    Examples:
        >>> QuickGELU()(torch.zeros(2))
        tensor([0., 0.])
    """

    registry_entries = (
        Entry("quick_gelu", "classic", "Hendrycks & Gimpel, arXiv 1606.08415 (sigmoid form, CLIP)"),
    )

    function = staticmethod(AF.quick_gelu)


class Laplace(PointwiseActivation):
    """MEGA's Laplace attention function (Ma et al., "Mega: Moving Average Equipped Gated
    Attention", arXiv 2209.10655): the normal CDF with mean sqrt(1/2) and std sqrt(1/(4 pi)).

    .. math:: y = \\tfrac12\\bigl(1 + \\operatorname{erf}(\\tfrac{x - \\mu}{\\sigma\\sqrt2})\\bigr),
        \\quad \\mu = 0.707107,\\ \\sigma = 0.282095

    Args:
        inplace: accepted for drop-in use; the output is always a new tensor.

    Shape: any -> the same.

    Examples:
        >>> Laplace()(torch.tensor([0.707107]))
        tensor([0.5000])
    """

    registry_entries = (Entry("laplace", "classic", "Ma et al. (MEGA), arXiv 2209.10655"),)

    function = staticmethod(AF.laplace)


class SqrtSoftplus(PointwiseActivation):
    """The square root of softplus, DeepSeek-V4's router score (transformers' "sqrtsoftplus").

    .. math:: y = \\sqrt{\\log(1 + e^x)}

    Args:
        inplace: accepted for drop-in use; the output is always a new tensor.

    Shape: any -> the same.

    Examples:
        >>> SqrtSoftplus()(torch.tensor([0.0]))
        tensor([0.8326])
    """

    registry_entries = (
        Entry("sqrt_softplus", "classic", "DeepSeek-V4's router score (transformers' sqrtsoftplus)"),
    )

    function = staticmethod(AF.sqrt_softplus)


class ClippedGELU(ActivationModule):
    """GELU clipped to [min, max] (transformers' "gelu_10": [-10, 10], for 8-bit quantisation; Wu
    et al., "Integer Quantization for Deep Learning Inference", arXiv 2004.09602).

    .. math:: y = \\operatorname{clip}(x\\,\\Phi(x), \\min, \\max)

    Args:
        min, max: the clipping range (-10 and 10).
        inplace: accepted for drop-in use; the output is always a new tensor.

    Shape: any -> the same.

    Examples:
        >>> ClippedGELU()(torch.tensor([20.0]))
        tensor([10.])
    """

    registry_entries = (
        Entry("gelu_10", "classic", "GELU clipped to [-10, 10]; Wu et al., arXiv 2004.09602"),
    )

    def __init__(self, min: float = -10.0, max: float = 10.0, inplace: bool = False) -> None:
        super().__init__()
        if not min <= max:
            raise ValueError(f"ClippedGELU needs min <= max, got min={min}, max={max}")
        self.min, self.max = float(min), float(max)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return torch.clip(F.gelu(x), self.min, self.max)

    def extra_repr(self) -> str:
        return f"min={self.min:g}, max={self.max:g}"
