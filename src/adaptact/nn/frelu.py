"""FReLU: the funnel activation, max(x, T(x)) with a spatial condition."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from ..ops import dispatch
from .base import ActivationModule, check_input, int_at_least

__all__ = ["FReLU"]


class FReLU(ActivationModule):
    """FReLU (Ma, Zhang, Sun, "Funnel Activation for Visual Recognition", ECCV 2020,
    arXiv 2007.11824; official code megvii-model/FunnelAct).

    .. math:: y = \\max(x, T(x)),\\quad T(x) = \\mathrm{BN}(\\mathrm{DWConv}_{k \\times k}(x))

    T is a depthwise k x k convolution (with bias, padding k // 2) and a BatchNorm: each pixel's
    condition is its k x k window. Parameter names as the official code (``conv_frelu``,
    ``bn_frelu``), so its state_dicts load. ``dims=1`` is the 1-D version for (N, C, L) inputs
    (depthwise conv1d of size k). The max keeps one byte per element for backward instead of
    T(x) (``backend="reference"`` keeps T(x), as torch.maximum does); the convolution and the
    BatchNorm keep what they keep.

    Args:
        channels: C, the size of dim 1.
        kernel_size: k, the funnel window (the paper: 3).
        dims: 2 for (N, C, H, W) inputs, 1 for (N, C, L).
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "reference" or anything else for the lean max.

    Shape: (N, C, H, W) (or (N, C, L) with ``dims=1``) -> the same.
    """

    def __init__(self, channels: int, kernel_size: int = 3, dims: Literal[1, 2] = 2, inplace: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.backend = backend
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims!r}")
        self.channels = int_at_least("channels", channels)
        k = int_at_least("kernel_size", kernel_size)
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a centred window), got {k}")
        self.dims = dims
        self.inplace = inplace
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.conv_frelu = conv(channels, channels, k, 1, k // 2, groups=channels)
        self.bn_frelu = norm(channels)

    def condition(self, x: Tensor) -> Tensor:
        """T(x), the funnel condition. A single value per channel in training mode (batch size 1
        on 1x1 maps) has no batch statistics (torch's BatchNorm raises): it is normalised with the
        running statistics, which stay unchanged, as in eval mode."""
        h = self.conv_frelu(x)
        bn = self.bn_frelu
        if bn.training and h[:, 0].numel() == 1:
            return nn.functional.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                            False, 0.0, bn.eps)
        return bn(h)

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, self.channels)
        if x.ndim != self.dims + 2:
            raise ValueError(f"FReLU(dims={self.dims}) expects (N, C, {'H, W' if self.dims == 2 else 'L'}) "
                             f"inputs, got shape {tuple(x.shape)}")
        return dispatch.frelu_max(x, self.condition(x), self.backend)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.conv_frelu.kernel_size[0]}, dims={self.dims}"
                + self._backend_repr())
