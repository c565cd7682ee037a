"""A character-level GPT for the comparison: nanoGPT's CPU recipe for Shakespeare."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .transformer import Block, gated_name

__all__ = ["GPTChar"]


class GPTChar(nn.Module):
    """A decoder-only transformer over characters, as nanoGPT (Karpathy) builds it for its CPU
    Shakespeare run: 4 layers, 4 heads, 128 dims, a context of 64 characters, no dropout, no
    biases, pre-norm blocks, MLP width 4x, the output layer tied to the token embedding, weights
    N(0, 0.02) with the residual projections at 0.02 / sqrt(2 layers).

    Every MLP's activation is ``activation`` (any registry name, gated or not; ``glu=True`` makes it
    the gate of a GLU), built for (B, T, C) tokens; activations that pool over positions see
    positions <= t only (``context="causal"``), so the model stays autoregressive.

    Args:
        activation: the MLPs' activation (nanoGPT: "gelu").
        vocab_size: the number of distinct tokens.
        context: the longest sequence (positions learned).
        layers, heads, dim: the transformer's depth, heads and width.
        mlp_ratio: the MLP's hidden width over ``dim`` (a gated MLP takes 2/3 of it).
        glu: gate the MLPs with ``activation``.

    Shape: (B, T) token ids with T <= context -> (B, T, vocab_size) logits.
    """

    def __init__(self, activation: str = "gelu", vocab_size: int = 65, context: int = 64, layers: int = 4,
                 heads: int = 4, dim: int = 128, mlp_ratio: int = 4, glu: bool = False) -> None:
        super().__init__()
        self.context = context
        activation = gated_name(activation, glu)
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio * dim, activation, causal=True, bias=False)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim, bias=False)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tokens.weight  # tied, as nanoGPT
        self.reset_parameters()

    def reset_parameters(self) -> None:
        residual = 0.02 / math.sqrt(2 * len(self.blocks))
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                std = residual if name.endswith(("mlp.proj", ".out")) else 0.02
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"GPTChar takes at most {self.context} tokens, got {t}")
        x = self.tokens(idx) + self.positions(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
