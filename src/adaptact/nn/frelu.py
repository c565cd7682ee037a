"""FReLU: the funnel activation, max(x, T(x)) with a spatial condition."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from ..ops import dispatch
from .base import batch_norm, int_at_least, silence
from .channels import ChannelModule
from .context import (SHIFTED_POSITIONS, Context, batch_norm_real, causal_window, check_context,
                      packed_starts, padding, position_norm, refuse_cached, shifted_conv1d)
from .entry import Entry
from .model_call import tracing

__all__ = ["FReLU"]


class FReLU(ChannelModule):
    """FReLU (Ma, Zhang, Sun, "Funnel Activation for Visual Recognition", ECCV 2020,
    arXiv 2007.11824; official code megvii-model/FunnelAct).

    .. math:: y = \\max(x, T(x)),\\quad T(x) = \\mathrm{BN}(\\mathrm{DWConv}_{k \\times k}(x))

    T is a depthwise k x k convolution (with bias, padding k // 2) and a BatchNorm: each pixel's
    condition is its k x k window. Parameter names as the official code (``conv_frelu``,
    ``bn_frelu``), so its state_dicts load. ``dims=1`` is the 1-D version for (N, C, L) inputs
    (depthwise conv1d of size k). The max keeps one byte per element for backward instead of
    T(x) (``backend="reference"`` keeps T(x), as torch.maximum does); the convolution and the
    BatchNorm keep what they keep.

    On tokens ((B, T, C) with ``channel_dim=-1`` and ``dims=1``) T is a depthwise convolution
    along the sequence; ``context="causal"`` pads on the left only, so the window at t ends at t.
    Inside a Hugging Face model decoded with a KV cache, the k - 1 inputs before a call's first
    position come from the cache (``nn.context.causal_window``), so cached decoding gives the full
    sequence's numbers.

    Args:
        channels: C; None takes it from the first input (lazy, see ``nn.channels``).
        kernel_size: k, the funnel window (the paper: 3).
        dims: 2 for (N, C, H, W) inputs, 1 for (N, C, L).
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "reference" or anything else for the lean max.
        channel_dim: 1 for (N, C, *), -1 for channels-last inputs and (B, T, C) tokens.
        context: "sample" (a centred window) or "causal" (the window ends at each position;
            ``dims=1``).
        device, dtype: where and in which dtype to make the parameters.

    Shape: (N, C, H, W) (or (N, C, L) with ``dims=1``) -> the same, C on ``channel_dim``.

    Examples:
        >>> act = FReLU(32)
        >>> act(torch.randn(2, 32, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
    """

    registry_entries = (
        Entry("frelu", "adaptive",
              "Ma, Zhang, Sun, ECCV 2020, arXiv 2007.11824 (spatial condition: 2-D maps)",
              per_channel=True, per_sample=True, ranks=(4,)),
    )

    _channels_entry = ("conv_frelu.weight", 0)

    def __init__(self, channels: int | None = None, kernel_size: int = 3, dims: Literal[1, 2] = 2,
                 inplace: bool = False, backend: str = "auto", *, channel_dim: int = 1,
                 context: Context = "sample", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.backend = backend
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims!r}")
        self.kernel_size = int_at_least("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a centred window), got {kernel_size}")
        self.context = check_context(context)
        if self.context == "token":
            raise ValueError("FReLU's condition is a window of positions: context 'token' would leave it "
                             "one position (kernel_size=1 does that with context='sample')")
        if self.context == "causal" and dims != 1:
            raise ValueError("FReLU(context='causal') convolves along one sequence dim: use dims=1")
        self.dims = dims
        self.inplace = inplace
        self._init_channels(channels, channel_dim, device, dtype)

    def _build(self, channels: int, device: Any, dtype: Any) -> None:
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if self.dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        k = self.kernel_size
        self.conv_frelu = conv(channels, channels, k, 1, k // 2, groups=channels, device=device, dtype=dtype)
        self.bn_frelu = norm(channels, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """The convolution and the BatchNorm as torch initialises them."""
        if self.initialized:
            self.conv_frelu.reset_parameters()
            self.bn_frelu.reset_parameters()

    def condition(self, x: Tensor) -> Tensor:
        """T(x), the funnel condition of channels-first ``x``. A single value per channel in
        training mode (batch size 1 on 1x1 maps) has no batch statistics (torch's BatchNorm
        raises): it is normalised with the running statistics, which stay unchanged, as in eval
        mode. Under context="causal" the window ends at each position (left padding k - 1; at the
        start of each sequence packed in a row) and each position is normalised over the batch
        (``nn.context``)."""
        bn = self.bn_frelu
        mask = padding(self, x)
        if mask is not None:  # a padded batch in a model: pads enter the window as zeros
            x = x * mask.to(x.dtype).unsqueeze(1)
        if self.context == "causal":
            conv = self.conv_frelu
            window = causal_window(self, x, self.kernel_size - 1)
            starts = packed_starts(self, x.shape[0], x.shape[-1])
            # packed sequences (each window stops at its sequence's start), a decoded token, a short prompt
            if starts is not None or (not tracing() and x.shape[-1] <= SHIFTED_POSITIONS):
                h = shifted_conv1d(window, conv.weight, conv.bias, starts)
            else:
                h = nn.functional.conv1d(window, conv.weight, conv.bias, groups=conv.groups)
            return position_norm(self)(bn, h.transpose(1, 2)).transpose(1, 2)
        refuse_cached(self)
        if mask is not None:
            return batch_norm_real(bn, self.conv_frelu(x), mask)
        return batch_norm(bn, self.conv_frelu(x))

    def _forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.dims + 2:
            raise ValueError(f"FReLU(dims={self.dims}) expects (N, C, {'H, W' if self.dims == 2 else 'L'}) "
                             f"inputs (channels on channel_dim={self.channel_dim}), got channels-first shape "
                             f"{tuple(x.shape)}")
        dtype = self.conv_frelu.weight.dtype  # the condition in the parameters' dtype (float32 for half x)
        return dispatch.frelu_max(x, self.condition(x.to(dtype)).to(x.dtype), self.backend)

    def inspected(self, x: Tensor, y: Tensor) -> tuple[str, object] | None:
        """The share of each sample's and channel's elements where the funnel condition T(x) wins."""
        return "frelu_share", (self.condition(x) > x).flatten(2).float().mean(2)

    def fit_parameters(self) -> list[Tensor]:
        """The BatchNorm's bias, the funnel condition once the convolution is silenced: max(x, b)."""
        silence(self.conv_frelu)
        return [self.bn_frelu.bias]

    def fit_starts(self, negative_slope: float) -> list[list[list[float]]]:
        return [[[0.0]]]  # max(x, 0): ReLU

    def extra_repr(self) -> str:
        context = "" if self.context == "sample" else f", context={self.context!r}"
        return (f"{self._channels_repr()}, kernel_size={self.kernel_size}, dims={self.dims}{context}"
                + self._backend_repr())
