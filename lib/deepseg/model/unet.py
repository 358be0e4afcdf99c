"""The built-in small U-Net (``framework: deepseg-unet`` in a model's ``config.yaml``).

A classic encoder/decoder: at each of ``depth`` levels a double 3x3 conv (+ BatchNorm + ReLU)
block, then 2x2 max-pool down; on the way up, bilinear x2 upsampling (``align_corners=False``),
concatenation with the encoder's skip features and another double conv; a final 1x1 conv maps
to ``classes`` logits. Level ``i`` has ``base_channels * 2**i`` channels.

Input is N x C x H x W float32, normalized per channel (``x = (x - mean[c]) / std[c]``);
output is N x classes x H x W logits (no activation). H and W (pixels) must be divisible by
``2**depth`` so every pooled feature map upsamples back to its skip's exact size. With the
defaults (base 16, depth 4) the network has about 1.9 M parameters.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 conv, BatchNorm, ReLU) twice; 'same' padding keeps H x W."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DeepSegUNet(nn.Module):
    """U-Net with ``depth`` pooling steps; see the module docstring for shapes and units."""

    def __init__(
        self, in_channels: int = 3, classes: int = 1, base_channels: int = 16, depth: int = 4
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("classes", classes),
            ("base_channels", base_channels),
            ("depth", depth),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DeepSegUNet: {name} must be a positive integer, got {value!r}")
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.down.append(_double_conv(previous, width))
            previous = width
        self.up = nn.ModuleList(
            _double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        factor = 2**self.depth
        if height % factor != 0 or width % factor != 0:
            raise ValueError(
                f"DeepSegUNet: input H x W = {height} x {width} px must both be divisible by "
                f"2**depth = {factor} (depth {self.depth}); pad or crop the tile"
            )
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def build_unet(cfg: dict[str, Any]) -> DeepSegUNet:
    """The U-Net a model ``config.yaml`` describes (keys as in ``DeepSegUNet``; others ignored;
    ``classes`` K, or the K class names)."""
    classes = cfg.get("classes", 1)
    return DeepSegUNet(
        in_channels=cfg.get("in_channels", 3),
        classes=len(classes) if isinstance(classes, list) else classes,
        base_channels=cfg.get("base_channels", 16),
        depth=cfg.get("depth", 4),
    )
