"""A small from-scratch vision tower and image loading.

No pretrained image encoder exists on these machines, so the composed backbone
trains this CNN (with the projector) jointly with the LM adapters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from contract.images import pixels


class SmallCNN(nn.Module):
    """64x64 RGB -> ``tokens`` feature vectors of width ``width``."""

    def __init__(self, tokens: int = 4, width: int = 64):
        super().__init__()
        side = int(math.isqrt(tokens))
        if side * side != tokens:
            raise ValueError(f"image_tokens must be a square number, got {tokens}")
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(48, width, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(side),
        )
        self.width = width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.net(images)  # (B, C, s, s)
        return feats.flatten(2).transpose(1, 2)  # (B, s*s, C)


def load_image(path: str, size: int) -> torch.Tensor:
    """(3, size, size) float tensor in [-1, 1]: ``contract.images.pixels``, the service reads images the same way."""
    return torch.from_numpy(pixels(path, size))
