"""DPT's reassemble and fusion stages (Ranftl et al., 2021), as LSeg's image side uses them.

Four hooked ViT blocks give patch grids (B, W, g, g). *Reassemble* projects each with a 1x1
conv and resamples it by x4, x2, x1 and x0.5 (transposed convs up, a strided conv down): with
patch 16 that is 1/4, 1/8, 1/16 and 1/32 of the input. *Fusion* runs from the coarsest: each
block adds the next finer map (through a residual conv unit), refines with another unit,
upsamples x2 (bilinear) and projects with a 1x1 conv, ending at 8g = input / 2 for patch 16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCALES = (4, 2, 1, 0.5)  # reassemble resampling of the hooks, shallowest first


class ResidualConvUnit(nn.Module):
    """x + conv3x3(relu(conv3x3(relu(x)))), channels kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Reassemble(nn.Module):
    """One hook's patch grid (B, W, g, g) -> (B, F, s*g, s*g) for scale s in :data:`SCALES`."""

    def __init__(self, width: int, features: int, scale: float) -> None:
        super().__init__()
        self.project = nn.Conv2d(width, features, 1)
        if scale > 1:
            self.resample = nn.ConvTranspose2d(features, features, int(scale), stride=int(scale))
        elif scale < 1:
            self.resample = nn.Conv2d(features, features, 3, stride=int(round(1 / scale)), padding=1)
        else:
            self.resample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resample(self.project(x))


class Fusion(nn.Module):
    """(coarser fused map, this scale's reassembled map or None) -> fused map at 2x its side."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.skip = ResidualConvUnit(features)
        self.refine = ResidualConvUnit(features)
        self.out = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.skip(skip)
        x = self.refine(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out(x)


class DPTNeck(nn.Module):
    """Four hooks (B, W, g, g), shallowest first -> (B, F, 8g, 8g) fused features.

    Args:
        width: the ViT's width. features: F, the reassemble / fusion width.
    """

    def __init__(self, width: int, features: int) -> None:
        super().__init__()
        self.reassemble = nn.ModuleList(Reassemble(width, features, s) for s in SCALES)
        self.fusion = nn.ModuleList(Fusion(features) for _ in SCALES)

    def forward(self, hooks: list[torch.Tensor]) -> torch.Tensor:
        maps = [r(h) for r, h in zip(self.reassemble, hooks, strict=True)]  # sides 4g, 2g, g, g/2
        x = self.fusion[3](maps[3])
        for i in (2, 1, 0):
            x = self.fusion[i](x, maps[i])
        return x
