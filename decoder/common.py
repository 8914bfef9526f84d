"""Small building blocks of the pixel decoder: LayerNorm2d, an MLP and a 2-D sine encoding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MLP", "LayerNorm2d", "SinePositionEncoding"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map, as in SAM and ConvNeXt."""

    def __init__(self, num_channels: int, *, eps: float = 1e-6) -> None:
        """Args: num_channels: C. eps: added to the variance."""
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (B, C, H, W). Returns: (B, C, H, W), normalised per pixel over C."""
        mean = x.mean(1, keepdim=True)  # (B, 1, H, W)
        var = (x - mean).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
        x = (x - mean) / torch.sqrt(var + self.eps)  # (B, C, H, W)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU in between (none after the last)."""

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        """Args: in_dim, hidden_dim, out_dim: widths. num_layers: >= 1 Linear layers."""
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (..., in_dim). Returns: (..., out_dim)."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class SinePositionEncoding(nn.Module):
    """Fixed 2-D sine/cosine encoding (DETR style) of a grid, with no parameters.

    Coordinates are pixel centres normalised to ``(0, 2*pi)`` by the grid size, so the
    encoding depends only on the relative position inside the padded input. Half of the
    channels encode y, half encode x, each as interleaved sin/cos at geometric frequencies.
    """

    def __init__(self, *, dim: int, temperature: float = 10000.0) -> None:
        """Args: dim: channels, a multiple of 4. temperature: the largest wavelength factor."""
        super().__init__()
        if dim % 4:
            raise ValueError(f"SinePositionEncoding needs dim % 4 == 0, got {dim}")
        self.dim, self.temperature = dim, temperature

    def forward(self, height: int, width: int, *, device=None, dtype=None) -> Tensor:
        """Encode an ``height x width`` grid.

        Args:
            height, width: the grid size.
            device, dtype: of the result (float32 on the default device when None).

        Returns:
            (dim, height, width) encoding, values in [-1, 1].
        """
        half = self.dim // 2
        freq_index = torch.arange(half, device=device, dtype=torch.float32) // 2
        inv_freq = self.temperature ** (-2.0 * freq_index / half)  # (half,)
        ys = self._axis(height, inv_freq)  # (H, half)
        xs = self._axis(width, inv_freq)  # (W, half)
        pos = torch.cat(
            (ys[:, None, :].expand(-1, width, -1), xs[None, :, :].expand(height, -1, -1)), dim=-1
        )  # (H, W, dim)
        return pos.permute(2, 0, 1).to(dtype or torch.float32)

    @staticmethod
    def _axis(n: int, inv_freq: Tensor) -> Tensor:
        """(n, half) sin/cos features of n normalised pixel centres."""
        coord = (torch.arange(n, device=inv_freq.device, dtype=torch.float32) + 0.5) / n
        angle = coord[:, None] * (2 * math.pi) * inv_freq  # (n, half)
        return torch.stack((angle[:, 0::2].sin(), angle[:, 1::2].cos()), dim=-1).flatten(1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, temperature={self.temperature}"
