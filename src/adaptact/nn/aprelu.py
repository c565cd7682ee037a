"""APReLU: adaptively parametric rectifier linear unit."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..ops import dispatch
from .base import ActivationModule, batch_norm, check_input, int_at_least

__all__ = ["APReLU"]


class APReLU(ActivationModule):
    """APReLU (Zhao et al., "Deep residual networks with adaptively parametric rectifier
    linear units for fault diagnosis", IEEE Trans. Industrial Electronics, 2020).

    .. math:: y = \\max(x, 0) + \\alpha \\min(x, 0)

    with the negative slope ``alpha`` generated per sample:
    s = concat(GAP(min(x, 0)), GAP(max(x, 0))) of shape (N, 2C), then
    fc1 (2C -> C) -> bn1 -> ReLU -> fc2 -> bn2 -> sigmoid.

    * ``alpha="channel"`` (default, the paper): fc2 is C -> C, alpha is (N, C).
    * ``alpha="sample"`` (the authors' Keras CIFAR-10 code): fc2 is C -> 1, alpha is (N, 1),
      one slope per sample shared by all channels.

    Batch size 1 in training mode: the BatchNorms normalise a single sample with their
    running statistics and do not update them (batch statistics of one sample are undefined).
    """

    def __init__(
        self,
        channels: int,
        alpha: Literal["channel", "sample"] = "channel",
        inplace: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.backend = backend
        if alpha not in ("channel", "sample"):
            raise ValueError(f"alpha must be 'channel' or 'sample', got {alpha!r}")
        self.channels = int_at_least("channels", channels)
        self.alpha_mode = alpha
        self.inplace = inplace
        out = channels if alpha == "channel" else 1
        self.fc1 = nn.Linear(2 * channels, channels)
        self.bn1 = nn.BatchNorm1d(channels)
        self.fc2 = nn.Linear(channels, out)
        self.bn2 = nn.BatchNorm1d(out)

    def generate_alpha(self, x: Tensor) -> Tensor:
        """The negative slopes for ``x``: (N, C) or (N, 1)."""
        dtype = self.fc1.weight.dtype
        return self.alpha_from_stats(torch.cat(dispatch.signed_spatial_mean(x, dtype, self.backend), dim=1))

    def alpha_from_stats(self, s: Tensor) -> Tensor:
        """The negative slopes from s = concat(GAP(min(x, 0)), GAP(max(x, 0))), (N, 2C)."""
        h = torch.relu(batch_norm(self.bn1, self.fc1(s)))
        return torch.sigmoid(batch_norm(self.bn2, self.fc2(h)))

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, self.channels)
        return self._run(dispatch.aprelu, x, self.alpha_from_stats, tuple(self.parameters()),
                         self.fc1.weight.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, alpha={self.alpha_mode!r}" + self._backend_repr()
