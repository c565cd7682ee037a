"""A small vision transformer for the comparison's 28x28 images."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .transformer import Block, gated_name

__all__ = ["ViT"]


class ViT(nn.Module):
    """A vision transformer (Dosovitskiy et al., ICLR 2021) at the comparison's scale: 4x4 patches
    of a 28x28 image (49 tokens) and a class token, 4 pre-norm blocks of 64 dims and 4 heads, MLP
    width 2x, the class token's LayerNorm-ed features to the classes.

    Every MLP's activation is ``activation`` (any registry name, gated or not; ``glu=True`` makes it
    the gate of a GLU) for (B, T, C) tokens; activations that pool over positions see ``context``:
    "sample" (every token of the image, as the papers pool a feature map) or "token" (its own).

    Args:
        activation: the MLPs' activation (ViT: "gelu").
        image_size, patch, in_channels: the images and the patch side.
        num_classes: outputs.
        layers, heads, dim, mlp_ratio: the transformer's depth, heads, width and MLP width / dim.
        glu: gate the MLPs with ``activation``.
        context: "sample" or "token", for activations that pool over positions.

    Shape: (B, in_channels, image_size, image_size) -> (B, num_classes).
    """

    def __init__(self, activation: str = "gelu", image_size: int = 28, patch: int = 4, in_channels: int = 1,
                 num_classes: int = 10, layers: int = 4, heads: int = 4, dim: int = 64, mlp_ratio: int = 2,
                 glu: bool = False, context: str = "sample") -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} must be a multiple of patch {patch}")
        activation = gated_name(activation, glu)
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = nn.Parameter(torch.zeros(1, 1 + (image_size // patch) ** 2, dim))
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio * dim, activation, causal=False, context=context)
            for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.positions, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls.expand(len(tokens), -1, -1), tokens), dim=1) + self.positions
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))
