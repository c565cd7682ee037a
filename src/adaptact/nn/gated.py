"""Gated activations of transformer MLPs (Shazeer, "GLU Variants Improve Transformer", arXiv
2002.05202): the projection gives a gate and an up half; the output is act(gate) * up."""

from __future__ import annotations

from torch import Tensor, nn

from .. import functional as AF
from .base import ActivationModule, check_input
from .channels import check_channel_dim

__all__ = ["GatedActivation", "SwiGLUOSS"]


def _halves(x: Tensor, channel_dim: int, interleaved: bool, name: str) -> tuple[Tensor, Tensor]:
    if not -x.ndim <= channel_dim < x.ndim or x.shape[channel_dim] % 2:
        raise ValueError(f"{name} splits dim {channel_dim} into a gate and an up half: it needs an even size "
                         f"there, got input shape {tuple(x.shape)}")
    moved = x.movedim(channel_dim, -1)
    if interleaved:
        gate, up = moved[..., ::2], moved[..., 1::2]
    else:
        gate, up = moved.chunk(2, dim=-1)
    return gate.movedim(-1, channel_dim), up.movedim(-1, channel_dim)


class GatedActivation(ActivationModule):
    """A gated linear unit's activation (Shazeer, arXiv 2002.05202): act(gate) * up.

    .. math:: y = \\operatorname{act}(x_{\\text{gate}}) \\odot x_{\\text{up}}

    The input holds both halves of a projection to 2H on ``channel_dim``, the gate first
    (``interleaved=False``, as one Linear of width 2H split in two) or alternating gate, up, gate,
    ... (``interleaved=True``, as GPT-OSS stores them); the output has H channels there. SwiGLU is
    ``GatedActivation(nn.SiLU())``, GEGLU ``GatedActivation(nn.GELU())``; any activation of the
    catalogue can be the gate, built for H channels with the same ``channel_dim`` (ACON-C as a
    gate: ``GatedActivation(AconC(H, channel_dim=-1))``).

    Args:
        gate: the activation applied to the gate half.
        channel_dim: the dim holding the 2H channels (-1: transformer tokens).
        interleaved: gate and up alternate on ``channel_dim`` instead of being its two halves.

    Shape: (*, 2H, *) -> (*, H, *) on ``channel_dim``.

    Examples:
        >>> GatedActivation(torch.nn.SiLU())(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, gate: nn.Module, channel_dim: int = -1, interleaved: bool = False) -> None:
        super().__init__()
        self.gate = gate
        self.channel_dim = check_channel_dim(channel_dim)
        self.interleaved = interleaved

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        gate, up = _halves(x, self.channel_dim, self.interleaved, type(self).__name__)
        return self.gate(gate) * up

    def extra_repr(self) -> str:
        return f"channel_dim={self.channel_dim}" + (", interleaved=True" if self.interleaved else "")


class SwiGLUOSS(ActivationModule):
    """GPT-OSS's clamped SwiGLU (transformers' ``GptOssExperts._apply_gate``).

    .. math:: g = \\min(x_{\\text{gate}}, L),\\ u = \\operatorname{clamp}(x_{\\text{up}}, -L, L),\\quad
        y = (u + 1)\\, g\\, \\sigma(\\alpha g)

    Args:
        alpha: the sigmoid's scale (1.702).
        limit: L, where gate and up are clamped (7).
        channel_dim: the dim holding the 2H channels (-1: transformer tokens).
        interleaved: gate and up alternate on ``channel_dim`` (GPT-OSS's layout, the default) or
            are its two halves.

    Shape: (*, 2H, *) -> (*, H, *) on ``channel_dim``.

    Examples:
        >>> SwiGLUOSS()(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, alpha: float = 1.702, limit: float = 7.0, channel_dim: int = -1,
                 interleaved: bool = True) -> None:
        super().__init__()
        self.alpha, self.limit = float(alpha), float(limit)
        self.channel_dim = check_channel_dim(channel_dim)
        self.interleaved = interleaved

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        gate, up = _halves(x, self.channel_dim, self.interleaved, type(self).__name__)
        return AF.swiglu_oss(gate, up, self.alpha, self.limit)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, limit={self.limit:g}" + (
            "" if self.interleaved else ", interleaved=False") + (
            "" if self.channel_dim == -1 else f", channel_dim={self.channel_dim}")
