"""Dynamic ReLU: a piecewise-linear activation whose pieces are generated from the input."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from .. import functional as AF
from ..ops import dispatch, small
from .base import int_at_least, silence
from .channels import ChannelModule, generator_dtype
from .context import (Context, check_context, check_sequence, decoding, masked_mean, padding,
                      position_statistics, refuse_cached)
from .entry import Entry

__all__ = ["DyReLU"]




class DyReLU(ChannelModule):
    """Dynamic ReLU (Chen et al., "Dynamic ReLU", ECCV 2020, arXiv 2003.10027).

    .. math:: y_c = \\max_{k \\le K} (a_c^k(x)\\, x_c + b_c^k(x))

    The hyper function of the whole input gives normalised residuals in [-1, 1]:
    theta = 2 sigmoid(fc2(relu(fc1(GAP(x))))) - 1, fc1: C -> C // reduction, both with bias; then
    a^k = alpha^k + lambda_a theta_a^k and b^k = beta^k + lambda_b theta_b^k. The paper's defaults:
    K = 2, alpha = (1, 0), beta = (0, 0), lambda_a = 1.0, lambda_b = 0.5 (so it starts near ReLU).

    * ``granularity="layer"`` (DY-ReLU-A, spatial- and channel-shared): fc2 gives 2K values per
      sample.
    * ``granularity="channel"`` (DY-ReLU-B, channel-wise): fc2 gives 2K per channel, 2KC per sample.

    The layout follows the widely used implementation linked from the paper's page
    (Islanna/DynamicReLU): ``fc1``, ``fc2`` (Linear), buffers ``lambdas`` = (lambda_a x K,
    lambda_b x K) and ``init_v`` = (alpha, beta), fc2's outputs per channel ordered
    (theta_a^1..K, theta_b^1..K); its state_dicts load. ``reduction`` defaults to its 4.
    DY-ReLU-C (with spatial attention) is not built.

    Args:
        channels: C; None takes it from the first input (lazy, see ``nn.channels``).
        granularity: "channel" (DY-ReLU-B) or "layer" (DY-ReLU-A), Meta-ACON-C's words.
        k: number of linear pieces K.
        reduction: fc1's width is max(1, C // reduction).
        lambda_a, lambda_b: ranges of the residuals of the slopes and intercepts.
        init_a, init_b: alpha^1..K and beta^1..K (default (1, 0, ..., 0) and zeros).
        inplace: accepted for drop-in use; the output is always a new tensor.
        backend: "auto", "reference", "autograd", "compiled" or "triton" (``adaptact.ops.dispatch``).
        channel_dim: 1 for (N, C, *), -1 for (B, T, C) tokens and channels-last tensors.
        context: what the hyper function pools along a sequence: "sample" (the paper), "causal"
            or "token" (``nn.context``).
        device, dtype: where and in which dtype to make the parameters.

    Shape: any rank >= 2 with C on ``channel_dim`` -> the same; contexts "causal" and "token"
    take one sequence dim.

    Examples:
        >>> act = DyReLU(64, granularity="channel")  # DY-ReLU-B
        >>> act(torch.randn(8, 64, 14, 14)).shape
        torch.Size([8, 64, 14, 14])
    """

    registry_entries = (
        Entry("dy_relu_a", "adaptive", "Chen et al., ECCV 2020, arXiv 2003.10027 (DY-ReLU-A)",
              per_channel=True, per_sample=True, options={"granularity": "layer"}),
        Entry("dy_relu_b", "adaptive", "Chen et al., ECCV 2020, arXiv 2003.10027 (DY-ReLU-B)",
              per_channel=True, per_sample=True, options={"granularity": "channel"}),
    )

    _channels_entry = ("fc1.weight", 1)
    lambdas: Tensor
    init_v: Tensor

    def __init__(self, channels: int | None = None, granularity: Literal["channel", "layer"] = "channel",
                 k: int = 2, reduction: int = 4, lambda_a: float = 1.0, lambda_b: float = 0.5,
                 init_a: tuple[float, ...] | None = None, init_b: tuple[float, ...] | None = None,
                 inplace: bool = False, backend: str = "auto", *, channel_dim: int = 1,
                 context: Context = "sample", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.backend = backend
        if granularity not in ("channel", "layer"):
            raise ValueError(f"granularity must be 'channel' (DY-ReLU-B) or 'layer' (DY-ReLU-A; DY-ReLU-C is "
                             f"not built), got {granularity!r}")
        self.k = int_at_least("k (pieces)", k)
        self.reduction = int_at_least("reduction", reduction)
        self.granularity = granularity
        self.context = check_context(context)
        self.inplace = inplace
        init_a = (1.0,) + (0.0,) * (k - 1) if init_a is None else tuple(init_a)
        init_b = (0.0,) * k if init_b is None else tuple(init_b)
        if len(init_a) != k or len(init_b) != k:
            raise ValueError(f"init_a and init_b need k = {k} values each, got {len(init_a)} and "
                             f"{len(init_b)}")
        self._initial = ([float(lambda_a)] * k + [float(lambda_b)] * k, [float(v) for v in init_a + init_b])
        self.register_buffer("lambdas", torch.empty(2 * k, device=device, dtype=dtype))
        self.register_buffer("init_v", torch.empty(2 * k, device=device, dtype=dtype))
        self._reset_coefficients()
        self._init_channels(channels, channel_dim, device, dtype)

    def _build(self, channels: int, device: Any, dtype: Any) -> None:
        hidden = max(1, channels // self.reduction)
        self.fc1 = nn.Linear(channels, hidden, device=device, dtype=dtype)
        per_sample = 2 * self.k * (channels if self.granularity == "channel" else 1)
        self.fc2 = nn.Linear(hidden, per_sample, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """fc1 and fc2 as torch initialises them; the lambdas and initial pieces as given (all of
        the module's state, as after ``to_empty`` from the meta device)."""
        self._reset_coefficients()
        if self.initialized:
            self.fc1.reset_parameters()
            self.fc2.reset_parameters()

    def _reset_coefficients(self) -> None:
        lambdas, init_v = self._initial
        with torch.no_grad():
            self.lambdas.copy_(torch.tensor(lambdas))
            self.init_v.copy_(torch.tensor(init_v))

    def coefficients_from_mean(self, mean: Tensor) -> tuple[Tensor, Tensor]:
        """(a, b), each (N, C, K) for "B" or (N, 1, K) for "A", from the means (N, C); per
        position, from (N, T, C), each (N, T, C or 1, K)."""
        theta = 2 * torch.sigmoid(self.fc2(torch.relu(self.fc1(mean)))) - 1
        coefficients = theta.unflatten(-1, (-1, 2 * self.k)) * self.lambdas + self.init_v
        return coefficients[..., : self.k], coefficients[..., self.k :]

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The pieces (a, b) for channels-first ``x`` (per position under the "causal" and
        "token" contexts: each (N, C or 1, T, K))."""
        if self.context != "sample":
            return self._coefficients_per_position(x)
        return self.coefficients_from_mean(AF.spatial_mean(x, dtype=generator_dtype(self.fc1)))

    def _coefficients_per_position(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_sequence(self, x, self.context)
        means = position_statistics(self, x.transpose(1, 2).to(generator_dtype(self.fc1)), self.context)
        a, b = self.coefficients_from_mean(means)
        return a.transpose(1, 2), b.transpose(1, 2)

    def inspected(self, x: Tensor, y: Tensor) -> tuple[str, object] | None:
        """The generated pieces (a, b), each (N, C or 1, K)."""
        return "dy_relu_pieces", tuple(t.float() for t in self.coefficients(x))

    def _small_form(self, x: Tensor) -> Tensor | None:
        fc1, fc2 = self._layers("fc1", "fc2")
        if self._small_tokens(x, (), fc1, fc2) is None:
            return None
        means = position_statistics(self, x, self.context)
        a, b = small.dy_relu_coefficients(means, fc1, fc2, self.lambdas, self.init_v, self.k)
        return small.dy_relu(x, a, b)

    def _forward(self, x: Tensor) -> Tensor:
        if self.context != "sample":
            check_sequence(self, x, self.context)
            return self._run(dispatch.dy_relu_per_position, x, self._coefficients_per_position,
                             not decoding(self), fused=dispatch.fuses_positions(x))
        refuse_cached(self)
        mask = padding(self, x)
        if mask is not None:  # a padded batch in a model: statistics of its real positions
            pieces = self.coefficients_from_mean(masked_mean(x, mask, generator_dtype(self.fc1)))
            a, b = (t.unsqueeze(2).expand(-1, -1, x.shape[-1], -1) for t in pieces)
            return self._run(dispatch.dy_relu_positions, x, a, b, fused=dispatch.fuses_positions(x))
        return self._run(dispatch.dy_relu, x, self.coefficients_from_mean, self._weights,
                         generator_dtype(self.fc1))

    @property
    def generated_per_channel(self) -> int | None:  # type: ignore[override]
        return 2 * self.k if self.granularity == "channel" else 0  # DY-ReLU-A: 2K for the layer

    def fit_parameters(self) -> list[Tensor]:
        """The initial coefficients ``init_v``, which are the pieces once fc2 is silenced."""
        silence(self.fc2)
        return [self.get_buffer("init_v")]

    def fit_starts(self, negative_slope: float) -> list[list[list[float]]]:
        k = self.k
        a = [1.0, negative_slope] + [0.0] * (k - 2) if k >= 2 else [1.0]  # ReLU's pieces, or leaky
        return [[a + [0.0] * k]]

    def extra_repr(self) -> str:
        context = "" if self.context == "sample" else f", context={self.context!r}"
        return (f"{self._channels_repr()}, granularity={self.granularity!r}, k={self.k}, "
                f"reduction={self.reduction}" + context + self._backend_repr())
