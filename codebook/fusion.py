"""Gathering the hidden states of codebook blocks and fusing them into one embedding per scale."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["FUSION_MODES", "CodebookFusion", "gather_blocks"]

FUSION_MODES = ("linear", "mean")


def gather_blocks(
    hidden: Tensor, starts: Sequence[Sequence[int]], block_len: int
) -> tuple[Tensor, Tensor]:
    """Gather the hidden states of every block of a batch, in one indexing op.

    Args:
        hidden: (B, T, D) hidden states (e.g. the LLM's last layer). ``starts`` index its
            T axis, so positions must already include any image-token offset.
        starts: for each of the B sequences, the start positions of its blocks
            (``BlockParse.starts``); may be empty lists.
        block_len: L * N, the tokens per block.

    Returns:
        ``(blocks, batch_index)``: blocks (K, block_len, D), same dtype and device as ``hidden``,
        with all blocks of sequence 0 first, then sequence 1, ... (K = total number of blocks,
        possibly 0); batch_index (K,) int64, the sequence each block came from.

    Raises:
        ValueError: if ``len(starts) != B`` or a block runs outside ``[0, T)``.
    """
    batch, length = hidden.shape[:2]
    if len(starts) != batch:
        raise ValueError(f"starts has {len(starts)} entries for a batch of {batch}")
    flat = [(b, int(s)) for b, row in enumerate(starts) for s in row]
    bad = [(b, s) for b, s in flat if s < 0 or s + block_len > length]
    if bad:
        raise ValueError(f"blocks outside the sequence (length {length}): {bad}")
    index = torch.tensor(flat, dtype=torch.long, device=hidden.device).view(-1, 2)  # (K, 2)
    batch_index, start = index.unbind(1)  # (K,), (K,)
    offsets = torch.arange(block_len, device=hidden.device)  # (block_len,)
    positions = start[:, None] + offsets  # (K, block_len)
    blocks = hidden[batch_index[:, None], positions]  # (K, block_len, D)
    return blocks, batch_index


class CodebookFusion(nn.Module):
    """Project the block tokens' hidden states and fuse the N tokens of each scale into one.

    Projection, on every block token: ``"mlp"``, ``llm_dim -> llm_dim -> out_dim`` (Linear,
    ReLU, Linear, as LISA's ``text_hidden_fcs``), or ``"linear"``, one ``llm_dim -> out_dim``
    Linear. Fusion per scale ``s``:

    - ``"linear"``: ``e_s = sum_n w[s, n] * p_{s,n} + b_s`` with ``w`` an ``nn.Parameter`` of
      shape (L, N) initialised to 1/N (so training starts from the mean) and ``b`` an
      ``nn.Parameter`` (L, out_dim) initialised to 0. Both train and are saved.
    - ``"mean"`` (ablation; what the official code effectively did): a fixed mean, kept in a
      non-persistent buffer, so nothing of the fusion trains or is saved.
    """

    def __init__(
        self,
        *,
        llm_dim: int,
        out_dim: int,
        num_scales: int,
        tokens_per_scale: int,
        fusion: str = "linear",
    ) -> None:
        """Build the projection and fusion.

        Args:
            llm_dim: D, the LLM hidden width (4096 for 7B).
            out_dim: the decoder width (256).
            num_scales: L, scales per block (scale 0 = deepest).
            tokens_per_scale: N, codebook tokens per scale.
            fusion: ``"linear"`` (learned) or ``"mean"`` (fixed).
        """
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}")
        self.num_scales, self.tokens_per_scale, self.fusion = num_scales, tokens_per_scale, fusion
        # the block's hidden states to the decoder width: LISA's / PixelLM's MLP
        self.proj = nn.Sequential(nn.Linear(llm_dim, llm_dim), nn.ReLU(), nn.Linear(llm_dim, out_dim))
        mean = torch.full((num_scales, tokens_per_scale), 1.0 / tokens_per_scale)
        if fusion == "linear":
            self.scale_weight = nn.Parameter(mean)  # (L, N)
            self.scale_bias = nn.Parameter(torch.zeros(num_scales, out_dim))  # (L, out_dim)
        else:
            self.register_buffer("mean_weight", mean, persistent=False)  # (L, N)
            self.scale_bias = None

    @property
    def block_len(self) -> int:
        """L * N, the tokens per block."""
        return self.num_scales * self.tokens_per_scale

    def forward(self, block_hidden: Tensor) -> Tensor:
        """Fuse blocks.

        Args:
            block_hidden: (K, L*N, D) hidden states of K blocks, scale-major (from
                :func:`gather_blocks`); K may be 0.

        Returns:
            (K, L, out_dim) one target embedding per scale.
        """
        k, n_tok, _ = block_hidden.shape
        if n_tok != self.block_len:
            raise ValueError(f"expected {self.block_len} tokens per block, got {n_tok}")
        x = self.proj(block_hidden)  # (K, L*N, out)
        x = x.view(k, self.num_scales, self.tokens_per_scale, x.shape[-1])  # (K, L, N, out)
        weight = self.scale_weight if self.fusion == "linear" else self.mean_weight  # (L, N)
        fused = torch.einsum("klnc,ln->klc", x, weight.to(x.dtype))  # (K, L, out)
        if self.scale_bias is not None:
            fused = fused + self.scale_bias.to(x.dtype)  # (K, L, out)
        return fused

    def extra_repr(self) -> str:
        return (f"num_scales={self.num_scales}, tokens_per_scale={self.tokens_per_scale}, "
                f"fusion={self.fusion!r}")
