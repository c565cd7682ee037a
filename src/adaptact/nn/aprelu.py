"""APReLU: adaptively parametric rectifier linear unit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..ops import dispatch, small
from .base import batch_norm, logit, silence
from .channels import ChannelModule, generator_dtype
from .context import (Context, check_context, check_sequence, decoding, masked_mean, padding, position_norm,
                      position_statistics, refuse_cached)
from .entry import Entry

__all__ = ["APReLU", "keras_state_dict"]

KERAS_BN_EPS = 1e-3  # Keras's BatchNormalization epsilon (torch's is 1e-5)


class APReLU(ChannelModule):
    """APReLU (Zhao et al., "Deep residual networks with adaptively parametric rectifier
    linear units for fault diagnosis", IEEE Trans. Industrial Electronics, 2020).

    .. math:: y = \\max(x, 0) + \\alpha \\min(x, 0)

    with the negative slope ``alpha`` generated per sample:
    s = concat(GAP(min(x, 0)), GAP(max(x, 0))) of shape (N, 2C), then
    fc1 (2C -> C) -> bn1 -> ReLU -> fc2 -> bn2 -> sigmoid.

    * ``granularity="channel"`` (default, the paper): fc1 is 2C -> C, fc2 C -> C, alpha is (N, C).
    * ``granularity="layer"`` (the authors' Keras CIFAR-10 code, ``ResNet_APReLU_Keras_Cifar10.py``):
      s is first averaged over channels to (N, 2) = (mean GAP(min(x, 0)), mean GAP(max(x, 0))),
      then Dense(2) -> BN -> ReLU -> Dense(1) -> BN -> sigmoid: fc1 is 2 -> 2, fc2 2 -> 1,
      alpha is (N, 1), one slope per sample for all channels. As there: BatchNorm epsilon 1e-3,
      momentum 0.9 in Keras's convention (0.1 in torch's), he_normal weights, zero biases.
      ``keras_state_dict`` turns that code's layer weights into this module's state_dict.

    Args:
        channels: C; None takes it from the first input (lazy, see ``nn.channels``).
        granularity: "channel" or "layer" (above; Meta-ACON-C's and DY-ReLU's words for one value
            per channel or per sample).
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "auto", "reference", "autograd", "compiled" or "triton" (``adaptact.ops.dispatch``).
        channel_dim: 1 for (N, C, *), -1 for (B, T, C) tokens and channels-last tensors.
        context: what the generator pools along a sequence: "sample" (the paper), "causal" or
            "token" (``nn.context``).
        device, dtype: where and in which dtype to make the parameters.

    Shape: any rank >= 2 with C on ``channel_dim`` -> the same; contexts "causal" and "token"
    take one sequence dim.

    Examples:
        >>> act = APReLU(16)
        >>> act(torch.randn(4, 16, 1024)).shape
        torch.Size([4, 16, 1024])

    Batch size 1 in training mode: the BatchNorms normalise a single sample with their
    running statistics and do not update them (batch statistics of one sample are undefined).
    """

    registry_entries = (
        Entry("aprelu", "adaptive", "Zhao et al., IEEE TIE 2020", per_channel=True, per_sample=True),
    )

    _channels_entry = None  # set per instance: "fc2.weight" for "channel"; "layer" has no C in it

    def __init__(
        self,
        channels: int | None = None,
        granularity: Literal["channel", "layer"] = "channel",
        inplace: bool = False,
        backend: str = "auto",
        *,
        channel_dim: int = 1,
        context: Context = "sample",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        if granularity not in ("channel", "layer"):
            raise ValueError(f"granularity must be 'channel' or 'layer', got {granularity!r}")
        self.granularity = granularity
        self.context = check_context(context)
        self.inplace = inplace
        if granularity == "channel":
            self._channels_entry = ("fc2.weight", 0)
        else:  # the Keras generator does not depend on C: made now, also when C comes later
            self._build_sample_generator({"device": device, "dtype": dtype})
        self._init_channels(channels, channel_dim, device, dtype)

    def _build(self, channels: int, device: Any, dtype: Any) -> None:
        factory = {"device": device, "dtype": dtype}
        if self.granularity == "channel":
            self.fc1 = nn.Linear(2 * channels, channels, **factory)
            self.bn1 = nn.BatchNorm1d(channels, **factory)
            self.fc2 = nn.Linear(channels, channels, **factory)
            self.bn2 = nn.BatchNorm1d(channels, **factory)

    def _build_sample_generator(self, factory: dict) -> None:
        self.fc1 = nn.Linear(2, 2, **factory)
        self.bn1 = nn.BatchNorm1d(2, eps=KERAS_BN_EPS, **factory)
        self.fc2 = nn.Linear(2, 1, **factory)
        self.bn2 = nn.BatchNorm1d(1, eps=KERAS_BN_EPS, **factory)
        self._keras_init()

    def _keras_init(self) -> None:
        for fc in (self.fc1, self.fc2):  # Keras's he_normal: truncated normal, std sqrt(2 / fan_in)
            std = (2.0 / fc.in_features) ** 0.5
            nn.init.trunc_normal_(fc.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(fc.bias)

    def reset_parameters(self) -> None:
        """The generator's layers as built: torch's defaults ("channel"), Keras's ("layer")."""
        if not hasattr(self, "fc1"):
            return
        for layer in (self.fc1, self.bn1, self.fc2, self.bn2):
            layer.reset_parameters()
        if self.granularity == "layer":
            self._keras_init()

    def generate_alpha(self, x: Tensor) -> Tensor:
        """The negative slopes for channels-first ``x``: (N, C) or (N, 1) (per position,
        (N, C or 1, T), under the "causal" and "token" contexts)."""
        if self.context != "sample":
            return self._alpha_per_position(x)
        dtype = generator_dtype(self.fc1)
        return self.alpha_from_stats(torch.cat(dispatch.signed_spatial_mean(x, dtype, self.backend), dim=1))

    def alpha_from_stats(self, s: Tensor) -> Tensor:
        """The negative slopes from s = concat(GAP(min(x, 0)), GAP(max(x, 0))), (N, 2C) (or
        (N, T, 2C) per position)."""
        if self.granularity == "layer":  # the Keras code's channel means, (N, 2): negative, positive
            s = s.unflatten(-1, (2, -1)).mean(dim=-1)
        norm = batch_norm if s.ndim == 2 else position_norm(self)
        h = torch.relu(norm(self.bn1, self.fc1(s)))
        return torch.sigmoid(norm(self.bn2, self.fc2(h)))

    def _alpha_per_position(self, x: Tensor) -> Tensor:
        check_sequence(self, x, self.context)
        tokens = x.transpose(1, 2).to(generator_dtype(self.fc1))
        s = torch.cat((torch.clamp(tokens, max=0), torch.relu(tokens)), dim=-1)
        return self.alpha_from_stats(position_statistics(self, s, self.context)).transpose(1, 2)

    def inspected(self, x: Tensor, y: Tensor) -> tuple[str, object] | None:
        """The generated negative slopes, (N, C) or (N, 1)."""
        return "aprelu_alpha", self.generate_alpha(x).float()

    def _small_form(self, x: Tensor) -> Tensor | None:
        fc1, bn1, fc2, bn2 = self._layers("fc1", "bn1", "fc2", "bn2")
        if self._small_tokens(x, (), fc1, fc2) is None or not small.evaluating(bn1, bn2):
            return None
        negative, positive = torch.clamp(x, max=0), torch.relu(x)
        s = position_statistics(self, torch.cat((negative, positive), dim=-1), self.context)
        if self.granularity == "layer":  # the Keras code's channel means, (N, T, 2)
            s = s.unflatten(-1, (2, -1)).mean(dim=-1)
        h = small.linear_norm(s.reshape(-1, s.shape[-1]), fc1, bn1).relu_()
        alpha = small.linear_norm(h, fc2, bn2).sigmoid_().view(*s.shape[:-1], -1)
        return small.aprelu(negative, positive, alpha)

    def _forward(self, x: Tensor) -> Tensor:
        if self.context != "sample":
            check_sequence(self, x, self.context)
            return self._run(dispatch.aprelu_per_position, x, self._alpha_per_position, not decoding(self),
                             fused=dispatch.fuses_positions(x))
        refuse_cached(self)
        mask = padding(self, x)
        if mask is not None:  # a padded batch in a model: statistics of its real positions
            dtype = generator_dtype(self.fc1)
            alpha = self.alpha_from_stats(torch.cat([masked_mean(x.clamp(max=0), mask, dtype),
                                                     masked_mean(x.relu(), mask, dtype)], dim=1))
            return self._run(dispatch.aprelu_positions, x, alpha.unsqueeze(-1).expand(-1, -1, x.shape[-1]),
                             fused=dispatch.fuses_positions(x))
        return self._run(dispatch.aprelu, x, self.alpha_from_stats, self._weights,
                         generator_dtype(self.fc1))

    @property
    def generated_per_channel(self) -> int | None:  # type: ignore[override]
        return 1 if self.granularity == "channel" else 0  # "layer": one alpha per sample

    def fit_parameters(self) -> list[Tensor]:
        """bn2's bias, which sets alpha once fc2 is silenced."""
        silence(self.fc2)
        return [self.bn2.bias]

    def fit_starts(self, negative_slope: float) -> list[list[list[float]]]:
        return [[[logit(negative_slope)]]]

    def extra_repr(self) -> str:
        context = "" if self.context == "sample" else f", context={self.context!r}"
        return f"{self._channels_repr()}, granularity={self.granularity!r}{context}" + self._backend_repr()


def keras_state_dict(weights: Sequence) -> dict[str, Tensor]:
    """The state_dict of ``APReLU(C, granularity="layer")`` from the authors' Keras code's weights, in
    the order ``Model.get_weights()`` lists one ``aprelu`` block's layers: Dense(2) kernel (2, 2)
    and bias, BatchNormalization gamma, beta, moving mean, moving variance, Dense(1) kernel (2, 1)
    and bias, BatchNormalization's four. Keras kernels are (in, out): transposed here."""
    if len(weights) != 12:
        raise ValueError(f"expected the 12 weight arrays of one Keras aprelu block, got {len(weights)}")
    w = [torch.as_tensor(v, dtype=torch.float32) for v in weights]
    shapes = [(2, 2), (2,), (2,), (2,), (2,), (2,), (2, 1), (1,), (1,), (1,), (1,), (1,)]
    for i, (t, shape) in enumerate(zip(w, shapes)):
        if tuple(t.shape) != shape:
            raise ValueError(f"Keras weight {i} has shape {tuple(t.shape)}, expected {shape}")
    state = {"fc1.weight": w[0].T.contiguous(), "fc1.bias": w[1], "fc2.weight": w[6].T.contiguous(),
             "fc2.bias": w[7]}
    for name, (gamma, beta, mean, var) in (("bn1", w[2:6]), ("bn2", w[8:12])):
        state |= {f"{name}.weight": gamma, f"{name}.bias": beta, f"{name}.running_mean": mean,
                  f"{name}.running_var": var, f"{name}.num_batches_tracked": torch.tensor(0)}
    return state
