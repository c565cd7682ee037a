"""Meta-ACON-C: ACON-C whose switching factor beta is generated from the input."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from .. import functional as AF
from ..ops import dispatch, small
from .base import batch_norm, int_at_least, logit, silence
from .channels import ChannelModule, generator_dtype
from .context import (Context, check_context, check_sequence, decoding, masked_mean, padding, position_norm,
                      position_statistics, refuse_cached)
from .entry import Entry

__all__ = ["MetaAconC"]

Granularity = Literal["channel", "layer", "pixel"]
Norm = Literal["bn", "none"]


class MetaAconC(ChannelModule):
    """Meta-ACON-C (Ma et al., "Activate or Not", CVPR 2021, arXiv 2009.04759).

    .. math:: y = (p_1 - p_2) x\\,\\sigma(\\beta (p_1 - p_2) x) + p_2 x

    with ``beta`` computed per sample from the input:

    * ``granularity="channel"`` (the official design, nmaac/acon):
      beta = sigmoid(bn2(fc2(bn1(fc1(GAP(x)))))), shape (N, C); fc1: C -> max(r, C // r)
      (r = ``reduction``),
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

    Args:
        channels: C; None takes it from the first input (lazy, see ``nn.channels``).
        reduction: the generator's r: its hidden width is max(r, C // r) (the paper: 16; DY-ReLU's
            word too).
        granularity: "channel", "layer" or "pixel" (above).
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "auto", "reference", "autograd", "compiled" or "triton" (``adaptact.ops.dispatch``).
        norm: "bn" (the official generator) or "none" (no BatchNorm).
        channel_dim: 1 for (N, C, *), -1 for (B, T, C) tokens and channels-last tensors.
        context: what the generator pools along a sequence: "sample" (the paper: every position),
            "causal" (positions <= t) or "token" (position t); see ``nn.context``. The "causal"
            and "token" generators' BatchNorms normalise each position over the batch.
        device, dtype: where and in which dtype to make the parameters.

    Shape: any rank >= 2 with C on ``channel_dim`` -> the same; contexts "causal" and "token"
    take one sequence dim, (B, T, C) or (B, C, T).

    Examples:
        >>> act = MetaAconC(64)
        >>> act(torch.randn(8, 64, 14, 14)).shape
        torch.Size([8, 64, 14, 14])
        >>> decoder_act = MetaAconC(None, channel_dim=-1, context="causal")  # lazy, a decoder MLP's
        >>> decoder_act(torch.randn(2, 7, 128)).shape
        torch.Size([2, 7, 128])
    """

    registry_entries = (
        Entry("meta_acon_c", "adaptive", "Ma et al., CVPR 2021", per_channel=True, per_sample=True),
        Entry("meta_acon_c_nobn", "adaptive",
              "Ma et al., CVPR 2021; generator without BatchNorm (first official acon.py, YOLOv5)",
              per_channel=True, per_sample=True, options={"norm": "none"}),
    )

    _channels_entry = ("p1", -1)
    per_channel_parameters = ("p1", "p2")

    def __init__(
        self,
        channels: int | None = None,
        reduction: int = 16,
        granularity: Granularity = "channel",
        inplace: bool = False,
        backend: str = "auto",
        norm: Norm = "bn",
        *,
        channel_dim: int = 1,
        context: Context = "sample",
        device: Any = None,
        dtype: Any = None,
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
        self.reduction = int_at_least("reduction", reduction)
        self.granularity = granularity
        self.context = check_context(context)
        self.inplace = inplace
        self._init_channels(channels, channel_dim, device, dtype)

    def _build(self, channels: int, device: Any, dtype: Any) -> None:
        factory = {"device": device, "dtype": dtype}
        if self.granularity == "channel":
            hidden = max(self.reduction, channels // self.reduction)
            self.fc1 = nn.Linear(channels, hidden, **factory)
            self.fc2 = nn.Linear(hidden, channels, **factory)
            if self.norm == "bn":
                self.bn1 = nn.BatchNorm1d(hidden, **factory)
                self.bn2 = nn.BatchNorm1d(channels, **factory)
        self.p1 = nn.Parameter(torch.empty(channels, **factory))
        self.p2 = nn.Parameter(torch.empty(channels, **factory))
        nn.init.normal_(self.p1)
        nn.init.normal_(self.p2)

    def reset_parameters(self) -> None:
        """p1, p2 ~ N(0, 1); the generator's layers as torch initialises them."""
        if not self.initialized:
            return
        nn.init.normal_(self.p1)
        nn.init.normal_(self.p2)
        for layer in (getattr(self, name, None) for name in ("fc1", "fc2", "bn1", "bn2")):
            if layer is not None:
                layer.reset_parameters()

    def generate_beta(self, x: Tensor) -> Tensor:
        """The switching factor for channels-first ``x``: (N, C), (N, 1) or x-shaped by granularity
        (per position, (N, C or 1, T), under the "causal" and "token" contexts)."""
        if self.granularity == "pixel":
            return torch.sigmoid(x)
        if self.context != "sample":
            return self._beta_per_position(x)
        return self.beta_from_mean(AF.spatial_mean(x, dtype=self._stats_dtype))

    def beta_from_mean(self, mean: Tensor) -> Tensor:
        """beta from the means of x, (N, C) (or (N, T, C) per position): (N, C) for "channel",
        (N, 1) for "layer" (the mean over channels of the channel means is the mean over all but
        the batch dim)."""
        if self.granularity == "layer":
            return torch.sigmoid(mean.mean(-1, keepdim=True))
        if self.norm == "none":
            return torch.sigmoid(self.fc2(self.fc1(mean)))
        norm = batch_norm if mean.ndim == 2 else position_norm(self)
        h = norm(self.bn1, self.fc1(mean))
        return torch.sigmoid(norm(self.bn2, self.fc2(h)))

    def _beta_per_position(self, x: Tensor) -> Tensor:
        check_sequence(self, x, self.context)
        means = position_statistics(self, x.transpose(1, 2).to(self._stats_dtype), self.context)
        return self.beta_from_mean(means).transpose(1, 2)

    @property
    def _stats_dtype(self) -> torch.dtype:
        return generator_dtype(self.fc1) if self.granularity == "channel" else self.p1.dtype

    def _forward(self, x: Tensor) -> Tensor:
        if self.granularity == "pixel":  # beta = sigmoid(x) is fused: no x-sized beta tensor
            return self._run(dispatch.acon_c_pixel, x, self.p1, self.p2)
        if self.context != "sample":
            check_sequence(self, x, self.context)
            return self._run(dispatch.meta_acon_c_per_position, x, self.p1, self.p2, self._beta_per_position,
                             not decoding(self), fused=dispatch.fuses_positions(x))
        refuse_cached(self)
        mask = padding(self, x)
        if mask is not None:  # a padded batch in a model: statistics of its real positions
            beta = self.beta_from_mean(masked_mean(x, mask, self._stats_dtype))
            return self._run(dispatch.acon_c, x, self.p1, self.p2, beta)
        return self._run(dispatch.meta_acon_c, x, self.p1, self.p2, self.beta_from_mean, self._weights,
                         self._stats_dtype)

    def _small_form(self, x: Tensor) -> Tensor | None:
        if self.granularity == "pixel":
            return None
        layers = self._modules  # (read from the dict: see ``ChannelModule._layers``)
        fc1, bn1, fc2, bn2 = layers.get("fc1"), layers.get("bn1"), layers.get("fc2"), layers.get("bn2")
        params = self._small_tokens(x, ("p1", "p2"), fc1, fc2)
        if params is None or not small.evaluating(bn1, bn2):
            return None
        mean = position_statistics(self, x, self.context)  # (N, T, C)
        if fc1 is None or fc2 is None:  # "layer"
            beta = torch.sigmoid(mean.mean(-1, keepdim=True))
        else:
            rows = small.linear_norm(mean.reshape(-1, mean.shape[-1]), fc1, bn1)
            beta = small.linear_norm(rows, fc2, bn2).sigmoid_().view(x.shape)
        p1, p2 = params
        return small.meta_acon_c(x, p1, p2, beta)

    def inspected(self, x: Tensor, y: Tensor) -> tuple[str, object] | None:
        """The generated beta, (N, C) or (N, 1); pixel-wise, its spatial mean per channel."""
        beta = self.generate_beta(x)
        return "meta_acon_beta", (beta.flatten(2).mean(2) if beta.ndim > 2 else beta).float()

    def _weights(self) -> tuple[Tensor, ...]:
        return tuple(p for name, p in self.named_parameters() if name not in ("p1", "p2"))

    @property
    def generated_per_channel(self) -> int | None:  # type: ignore[override]
        return 1 if self.granularity == "channel" else None

    def fit_parameters(self) -> list[Tensor]:
        """p1, p2 and what sets beta once the generator is silenced (bn2's bias, or fc2's without
        BatchNorm); beta = sigmoid(x) or sigmoid(mean x) has no generator to silence."""
        if self.granularity != "channel":
            return [self.p1, self.p2]
        silence(self.fc2)
        return [self.p1, self.p2, self.bn2.bias if self.norm == "bn" else self.fc2.bias]

    def fit_starts(self, negative_slope: float) -> list[list[list[float]]]:
        if self.granularity != "channel":
            return [[[1.0], [negative_slope]]]
        return [[[1.0], [negative_slope], [logit(0.99)]], [[1.0], [negative_slope], [0.0]]]

    def extra_repr(self) -> str:
        granularity = f"granularity={self.granularity!r}"
        norm = "" if self.norm == "bn" else f", norm={self.norm!r}"
        context = "" if self.context == "sample" else f", context={self.context!r}"
        return (f"{self._channels_repr()}, reduction={self.reduction}, {granularity}{norm}{context}"
                + self._backend_repr())
