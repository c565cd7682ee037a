"""The pre-norm transformer block of the built-in GPT and ViT: attention, then an MLP whose
activation is any registry name, plain or gated (GLU).

The MLP's activation sees (B, T, H) tokens, so it is built with ``channel_dim=-1``; activations
that pool over positions (Meta-ACON-C, APReLU, Dynamic ReLU, FReLU) get the block's ``context``:
"causal" in a decoder, so no position sees a later one. A gated MLP (``glu=True``, or a gated
name such as "swiglu") computes act(x W) * (x V) with the hidden width scaled by 2/3, which keeps
its parameters those of the plain MLP (Shazeer, arXiv 2002.05202).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import GLU_SUFFIX, create, spec

__all__ = ["MLP", "Block", "gated_name", "mlp_activation"]


def gated_name(activation: str, glu: bool) -> str:
    """The registry name of the MLP's activation: ``activation`` itself, or with ``glu`` its GLU
    form (``acon_c`` -> ``acon_c_glu``; a name that is gated already stays as it is)."""
    if glu and not spec(activation).gated:
        return spec(activation).name + GLU_SUFFIX
    return activation


def mlp_activation(activation: str, width: int, context: str) -> nn.Module:
    """``activation`` for (B, T, ``width``) tokens: channels last, ``context`` where it pools."""
    s = spec(activation)
    kwargs: dict[str, Any] = {"channel_dim": -1}
    if s.per_sample:
        kwargs["context"] = context
    if s.name.removesuffix(GLU_SUFFIX) == "frelu":  # FReLU, or FReLU as a GLU's gate
        kwargs["dims"] = 1  # the funnel window runs along the sequence
    return create(activation, channels=width, **kwargs)


class MLP(nn.Module):
    """Linear -> activation -> Linear on (B, T, dim) tokens; gated when the activation is."""

    def __init__(self, dim: int, hidden: int, activation: str, context: str = "sample",
                 bias: bool = True) -> None:
        super().__init__()
        self.gated = spec(activation).gated
        if self.gated:
            hidden = max(1, round(2 * hidden / 3))
        self.fc = nn.Linear(dim, 2 * hidden if self.gated else hidden, bias=bias)
        self.act = mlp_activation(activation, self.fc.out_features, context)
        self.proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x)) (pre-norm, as GPT-2 and ViT). ``context``: what
    the MLP's pooling activations see ("causal" when ``causal``, else "sample", unless given).
    ``is_causal`` says, as Hugging Face's attention modules do, that a position attends to those
    <= it: ``replace_activations`` reads it to give the activations it puts in the causal context."""

    def __init__(self, dim: int, heads: int, hidden: int, activation: str, causal: bool,
                 bias: bool = True, context: str | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        self.heads, self.is_causal = heads, causal
        self.norm1 = nn.LayerNorm(dim, bias=bias)
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)
        self.norm2 = nn.LayerNorm(dim, bias=bias)
        self.mlp = MLP(dim, hidden, activation, context or ("causal" if causal else "sample"), bias)

    def attention(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.is_causal)
        return self.out(y.transpose(1, 2).reshape(b, t, c))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))
