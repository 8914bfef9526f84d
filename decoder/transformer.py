"""A two-way attention transformer between a few tokens and an image feature map.

SAM-like in spirit (our implementation): each block runs token self-attention, token->image
cross-attention, an MLP on the tokens, and image->token cross-attention; a final
token->image attention follows the blocks. Positional encodings are re-added to queries and
keys before every attention. Attention uses ``F.scaled_dot_product_attention`` with explicit
q/k/v/out projections (so FLOP counting sees every matmul, also under ``no_grad``).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Attention", "TwoWayBlock", "TwoWayTransformer"]


class Attention(nn.Module):
    """Multi-head attention with an optional down-projected inner width (SAM's cross-attn)."""

    def __init__(self, *, dim: int, heads: int, downsample_rate: int = 1) -> None:
        """Args: dim: token width. heads: attention heads. downsample_rate: inner = dim // rate."""
        super().__init__()
        inner = dim // downsample_rate
        if inner % heads:
            raise ValueError(f"heads ({heads}) must divide the inner width {inner}")
        self.heads = heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Args: q (B, Nq, dim); k, v (B, Nk, dim). Returns: (B, Nq, dim)."""
        q = self._split(self.q_proj(q))  # (B, heads, Nq, c)
        k = self._split(self.k_proj(k))  # (B, heads, Nk, c)
        v = self._split(self.v_proj(v))  # (B, heads, Nk, c)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, Nq, c)
        out = out.transpose(1, 2).flatten(2)  # (B, Nq, inner)
        return self.out_proj(out)

    def _split(self, x: Tensor) -> Tensor:
        """(B, N, inner) -> (B, heads, N, inner // heads)."""
        b, n, inner = x.shape
        return x.view(b, n, self.heads, inner // self.heads).transpose(1, 2)


class TwoWayBlock(nn.Module):
    """Token self-attn, token->image cross-attn, token MLP, image->token cross-attn (post-norm)."""

    def __init__(
        self, *, dim: int, heads: int, mlp_dim: int, downsample_rate: int = 2, skip_first_pe: bool
    ) -> None:
        """Args: dim, heads, mlp_dim: widths. downsample_rate: of the cross-attentions.
        skip_first_pe: the first block's token self-attention skips the query encoding (SAM)."""
        super().__init__()
        self.self_attn = Attention(dim=dim, heads=heads)
        self.cross_token_to_image = Attention(dim=dim, heads=heads, downsample_rate=downsample_rate)
        self.cross_image_to_token = Attention(dim=dim, heads=heads, downsample_rate=downsample_rate)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.skip_first_pe = skip_first_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Args: queries (B, Nq, dim) tokens; keys (B, HW, dim) image; query_pe (B, Nq, dim);
        key_pe (B or 1, HW, dim). Returns: updated (queries, keys), same shapes."""
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)  # (B, Nq, dim)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)  # (B, Nq, dim)
        queries = self.norms[0](queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norms[1](queries + self.cross_token_to_image(q, k, keys))  # (B, Nq, dim)
        queries = self.norms[2](queries + self.mlp(queries))  # (B, Nq, dim)
        q = queries + query_pe
        keys = self.norms[3](keys + self.cross_image_to_token(k, q, queries))  # (B, HW, dim)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` :class:`TwoWayBlock` s then a final token->image attention."""

    def __init__(
        self, *, dim: int, depth: int, heads: int, mlp_dim: int, downsample_rate: int = 2
    ) -> None:
        """Args: dim: width. depth: blocks. heads: attention heads. mlp_dim: token MLP width.
        downsample_rate: inner width divisor of the cross-attentions (2, as SAM)."""
        super().__init__()
        self.blocks = nn.ModuleList(
            TwoWayBlock(
                dim=dim,
                heads=heads,
                mlp_dim=mlp_dim,
                downsample_rate=downsample_rate,
                skip_first_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn = Attention(dim=dim, heads=heads, downsample_rate=downsample_rate)
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, image: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
        """Run the transformer.

        Args:
            tokens: (B, Nq, dim) output tokens + prompt (target) tokens; also their encoding.
            image: (B, dim, H, W) feature map.
            image_pe: (dim, H, W) positional (+ level) encoding of the map.

        Returns:
            ``(tokens, image)``: (B, Nq, dim) updated tokens and (B, H*W, dim) updated image.
        """
        keys = image.flatten(2).transpose(1, 2)  # (B, HW, dim)
        key_pe = image_pe.flatten(1).transpose(0, 1)[None]  # (1, HW, dim)
        queries = tokens
        for block in self.blocks:
            queries, keys = block(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.final_norm(queries + self.final_attn(q, k, keys))  # (B, Nq, dim)
        return queries, keys
