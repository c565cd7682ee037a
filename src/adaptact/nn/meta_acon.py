"""Meta-ACON-C: ACON-C whose switching factor beta is generated from the input."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .. import functional as AF
from ..ops import dispatch
from .base import ActivationModule, batch_norm, check_input, int_at_least

__all__ = ["MetaAconC"]

Granularity = Literal["channel", "layer", "pixel"]
Norm = Literal["bn", "none"]


class MetaAconC(ActivationModule):
    """Meta-ACON-C (Ma et al., "Activate or Not", CVPR 2021, arXiv 2009.04759).

    .. math:: y = (p_1 - p_2) x\\,\\sigma(\\beta (p_1 - p_2) x) + p_2 x

    with ``beta`` computed per sample from the input:

    * ``granularity="channel"`` (the official design, nmaac/acon):
      beta = sigmoid(bn2(fc2(bn1(fc1(GAP(x)))))), shape (N, C); fc1: C -> max(r, C // r),
      fc2 back to C, both with bias, no non-linearity between. ``norm="none"`` drops the two
      BatchNorms: beta = sigmoid(fc2(fc1(GAP(x)))), the first official acon.py and YOLOv5's
      MetaAconC (whose BN version raises at batch size 1 and was reported to destabilise
      training); their state_dicts (1x1 convs with bias) load as they are.
    * ``"layer"``: beta = sigmoid(mean of x over all but the batch dim), one per sample.
    * ``"pixel"``: beta = sigmoid(x), elementwise.

    ``fc1``/``fc2`` are ``nn.Linear`` applied to the pooled (N, C) statistics, which is the
    official 1x1 ``Conv2d`` on a (N, C, 1, 1) tensor; the official state_dict (conv weights
    (out, in, 1, 1), p1/p2 (1, C, 1, 1)) loads with plain ``load_state_dict``. Any rank from
    (N, C) to (N, C, D, H, W) works.

    Batch size 1 in training mode: the official BatchNorm raises. Here the generator's
    BatchNorms normalise a single sample with their running statistics (as in eval mode)
    and do not update them; batches of two or more use batch statistics as usual.

    The generator runs in its parameters' dtype (pooling accumulates in it), and beta is cast
    to the input dtype, so a float32 module works on bfloat16 activations.
    """

    def __init__(
        self,
        channels: int,
        r: int = 16,
        granularity: Granularity = "channel",
        inplace: bool = False,
        backend: str = "auto",
        norm: Norm = "bn",
    ) -> None:
        super().__init__()
        self.backend = backend
        if granularity not in ("channel", "layer", "pixel"):
            raise ValueError(
                f"granularity must be 'channel', 'layer' or 'pixel', got {granularity!r}"
            )
        if norm not in ("bn", "none"):
            raise ValueError(f"norm must be 'bn' or 'none', got {norm!r}")
        if norm != "bn" and granularity != "channel":
            raise ValueError(f"norm applies to the channel generator; granularity {granularity!r} has none")
        self.norm = norm
        self.channels = int_at_least("channels", channels)
        self.r = int_at_least("r", r)
        self.granularity = granularity
        self.inplace = inplace
        if granularity == "channel":
            hidden = max(r, channels // r)
            self.fc1 = nn.Linear(channels, hidden)
            self.fc2 = nn.Linear(hidden, channels)
            if norm == "bn":
                self.bn1 = nn.BatchNorm1d(hidden)
                self.bn2 = nn.BatchNorm1d(channels)
        self.p1 = nn.Parameter(torch.randn(channels))
        self.p2 = nn.Parameter(torch.randn(channels))

    def generate_beta(self, x: Tensor) -> Tensor:
        """The switching factor for ``x``: (N, C), (N, 1) or x-shaped by granularity."""
        if self.granularity == "pixel":
            return torch.sigmoid(x)
        return self.beta_from_mean(AF.spatial_mean(x, dtype=self._stats_dtype))

    def beta_from_mean(self, mean: Tensor) -> Tensor:
        """beta from the spatial means of x, (N, C): (N, C) for "channel", (N, 1) for "layer"
        (the mean over channels of the channel means is the mean over all but the batch dim)."""
        if self.granularity == "layer":
            return torch.sigmoid(mean.mean(1, keepdim=True))
        if self.norm == "none":
            return torch.sigmoid(self.fc2(self.fc1(mean)))
        h = batch_norm(self.bn1, self.fc1(mean))
        return torch.sigmoid(batch_norm(self.bn2, self.fc2(h)))

    @property
    def _stats_dtype(self) -> torch.dtype:
        return (self.fc1.weight if self.granularity == "channel" else self.p1).dtype

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, self.channels)
        if self.granularity == "pixel":  # beta = sigmoid(x) is fused: no x-sized beta tensor
            return self._run(dispatch.acon_c_pixel, x, self.p1, self.p2)
        return self._run(dispatch.meta_acon_c, x, self.p1, self.p2, self.beta_from_mean, self._weights,
                         self._stats_dtype)

    def _weights(self) -> tuple[Tensor, ...]:
        return tuple(p for name, p in self.named_parameters() if name not in ("p1", "p2"))

    def extra_repr(self) -> str:
        granularity = f"granularity={self.granularity!r}"
        norm = "" if self.norm == "bn" else f", norm={self.norm!r}"
        return f"channels={self.channels}, r={self.r}, {granularity}{norm}" + self._backend_repr()
