"""The light, SAM-free pixel decoder: one mask per target from multi-scale CLIP features.

Per scale ``s`` (0 = deepest CLIP layer, decoded first):

1. a neck projects the CLIP features to ``dim`` (1x1 conv, LayerNorm2d, 3x3 conv,
   LayerNorm2d); the features are then gathered per target (``index_select`` by image);
2. from scale 1 on, the previous scale's mask logits ``m`` (bilinearly resized to this grid)
   modulate the features: ``f' = f * (sigmoid(m) + 1)``;
3. a two-way transformer runs between the tokens ``[learned output tokens, fused target
   embedding of scale s]`` and the features plus a fixed 2-D sine encoding plus a learned level
   (scale) embedding;
4. the features are upsampled by ``2**(s+1)`` (capped at ``upscale``) with stride-2
   transposed convs, and a hypernetwork MLP on the first mask token gives the weights of a
   per-pixel dot product: the mask logits of that scale.

The final logits are the finest scale's logits plus every coarser scale's logits bilinearly
upsampled to the finest size: a logit-space sum, so each scale adds evidence on top of the
coarser one (the coarse mask already steered the fine features through the modulation), and
gradients from the final loss reach every scale directly.

IoU prediction (SAM's, and the official PixelLM decoder's ``iou_token`` /
``iou_prediction_head``; on by default): every scale's transformer also carries a learned IoU
token, placed first as in SAM (``[IoU token, mask tokens, target]``). The IoU-prediction MLP
reads the IoU tokens of *all* scales, concatenated, and gives one logit per target: its
sigmoid predicts the IoU of the final binarised mask (logit > 0) with the ground truth. All
scales, not only the finest, because the final logits are a sum over scales: each scale's
IoU token attends to that scale's mask token and features, so together they see every term
of the sum (the finest one also sees the coarse mask through the modulation). Its loss
(:func:`~pixellm.decoder.losses.iou_loss`) takes the actual IoU as a label without gradient;
like SAM's, its gradient trains the transformers the mask tokens share, and, here, the coarse
mask logits through the modulated features the finer IoU token reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .common import MLP, LayerNorm2d, SinePositionEncoding
from .transformer import TwoWayTransformer

__all__ = ["DecoderOutput", "MaskHead", "PixelDecoder", "postprocess_masks", "scale_factors"]


@dataclass
class DecoderOutput:
    """What :class:`PixelDecoder` returns.

    Attributes:
        logits: (K, H', W') final mask logits at the finest scale's resolution.
        iou_logits: (K,) logits of the predicted IoU of each final binarised mask with its
            ground truth (:attr:`iou` is their sigmoid); None for a decoder built without
            the IoU head.
    """

    logits: Tensor
    iou_logits: Tensor | None = None

    @property
    def iou(self) -> Tensor | None:
        """(K,) predicted IoU in [0, 1], or None without the IoU head."""
        return None if self.iou_logits is None else torch.sigmoid(self.iou_logits)


def scale_factors(*, num_scales: int, upscale: int) -> list[int]:
    """Upsampling factor of each scale's mask relative to its feature grid.

    Args:
        num_scales: L.
        upscale: the cap, a power of two (the finest scale's factor when L is large enough).

    Returns:
        ``[min(2**(s+1), upscale) for s in range(L)]``, e.g. ``[2, 4]`` for L=2, upscale=4
        (a 32x32 grid gives 64x64 then 128x128 logits, as the published model).
    """
    if upscale < 1 or upscale & (upscale - 1):
        raise ValueError(f"upscale must be a power of two >= 1, got {upscale}")
    return [min(2 ** (s + 1), upscale) for s in range(num_scales)]


def _neck(in_dim: int, dim: int) -> nn.Sequential:
    """CLIP width -> decoder width: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d (as SAM)."""
    return nn.Sequential(
        nn.Conv2d(in_dim, dim, kernel_size=1, bias=False),
        LayerNorm2d(dim),
        nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(dim),
    )


def _upscaler(dim: int, factor: int) -> tuple[nn.Sequential, int]:
    """log2(factor) stride-2 transposed convs (LayerNorm2d + GELU between, GELU last, as SAM).

    Channels go dim/4, dim/8, ... (at least 8). Returns the module and its output channels.
    """
    steps, layers, channels = int(math.log2(factor)), [], dim
    for i in range(steps):
        out = max(dim // 2 ** (i + 2), 8)
        layers.append(nn.ConvTranspose2d(channels, out, kernel_size=2, stride=2))
        if i < steps - 1:
            layers.append(LayerNorm2d(out))
        layers.append(nn.GELU())
        channels = out
    return nn.Sequential(*layers), channels


class MaskHead(nn.Module):
    """One scale: two-way transformer, feature upsampling and the hypernetwork dot product."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        num_output_tokens: int,
        factor: int,
        iou_token: bool = False,
    ) -> None:
        """Args: dim, depth, heads, mlp_dim: transformer sizes. num_output_tokens: learned mask
        tokens (the first one drives the hypernetwork). factor: mask size / feature grid size.
        iou_token: add a learned IoU token in front of the mask tokens (SAM's token order)."""
        super().__init__()
        self.iou_token = nn.Embedding(1, dim) if iou_token else None
        self.output_tokens = nn.Embedding(num_output_tokens, dim)
        self.transformer = TwoWayTransformer(dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim)
        self.upscaler, channels = _upscaler(dim, factor)
        self.hypernet = MLP(in_dim=dim, hidden_dim=dim, out_dim=channels, num_layers=3)

    def forward(
        self, image: Tensor, image_pe: Tensor, target: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Args: image (K, dim, h, w) per-target features; image_pe (dim, h, w);
        target (K, dim) fused target embedding. Returns: (K, h*factor, w*factor) logits and
        the IoU token's output (K, dim) (None without an IoU token)."""
        k, c, h, w = image.shape
        learned, n_iou = self.output_tokens.weight, 0  # (T_m, dim)
        if self.iou_token is not None:
            learned, n_iou = torch.cat((self.iou_token.weight, learned)), 1  # (1 + T_m, dim)
        tokens = torch.cat((learned.expand(k, -1, -1), target[:, None]), dim=1)  # (K, T, dim)
        tokens, keys = self.transformer(tokens, image, image_pe)  # (K, T, dim), (K, hw, dim)
        feats = self.upscaler(keys.transpose(1, 2).reshape(k, c, h, w))  # (K, C', hf, wf)
        weights = self.hypernet(tokens[:, n_iou])  # (K, C') from the first mask token
        logits = torch.einsum("kc,kchw->khw", weights, feats)  # (K, hf, wf)
        return logits, (tokens[:, 0] if n_iou else None)


class PixelDecoder(nn.Module):
    """Coarse-to-fine multi-scale pixel decoder (see the module docstring)."""

    def __init__(
        self,
        *,
        in_dims: Sequence[int],
        dim: int = 256,
        num_scales: int,
        depth: int = 2,
        heads: int = 8,
        mlp_dim: int = 2048,
        num_output_tokens: int = 2,
        upscale: int = 4,
        iou_head: bool = True,
    ) -> None:
        """Build the decoder.

        Args:
            in_dims: CLIP width of each scale's features, deepest first (length L).
            dim: decoder width (256); a multiple of 4 and of ``2 * heads``.
            num_scales: L.
            depth: two-way blocks per scale.
            heads: attention heads.
            mlp_dim: width of the token MLP in each block.
            num_output_tokens: learned output tokens per scale besides the target embedding
                (>= 1; the first drives the hypernetwork).
            upscale: power of two; the finest mask is ``grid * upscale``. With 14-pixel patches
                use >= 4 so the logits have >= 1/4 of the padded input's resolution. Scale s is
                upsampled by ``min(2**(s+1), upscale)``.
            iou_head: add an IoU token per scale and the IoU-prediction MLP (see the module
                docstring); False builds the decoder without them (checkpoints from before it).
        """
        super().__init__()
        if len(in_dims) != num_scales:
            raise ValueError(f"in_dims has {len(in_dims)} entries for num_scales={num_scales}")
        if num_output_tokens < 1:
            raise ValueError(f"num_output_tokens must be >= 1, got {num_output_tokens}")
        self.in_dims, self.dim, self.num_scales = tuple(in_dims), dim, num_scales
        self.factors = scale_factors(num_scales=num_scales, upscale=upscale)
        self.necks = nn.ModuleList(_neck(c, dim) for c in in_dims)
        self.pos_enc = SinePositionEncoding(dim=dim)
        self.level_embed = nn.Parameter(torch.randn(num_scales, dim) * 0.02)  # (L, dim)
        self.heads = nn.ModuleList(
            MaskHead(
                dim=dim,
                depth=depth,
                heads=heads,
                mlp_dim=mlp_dim,
                num_output_tokens=num_output_tokens,
                factor=f,
                iou_token=iou_head,
            )
            for f in self.factors
        )
        self.iou_prediction_head = (
            MLP(in_dim=dim * num_scales, hidden_dim=dim, out_dim=1, num_layers=3)
            if iou_head
            else None
        )

    def forward(
        self, features: Sequence[Tensor], targets: Tensor, batch_index: Tensor
    ) -> DecoderOutput:
        """Decode all K targets of a batch in one pass.

        Args:
            features: L maps (B, in_dims[s], h_s, w_s), deepest first; padded patches included.
            targets: (K, L, dim) fused target embeddings (from ``CodebookFusion``); K may be 0.
            batch_index: (K,) int64, the image of each target.

        Returns:
            :class:`DecoderOutput` with logits (K, h_L*f_L, w_L*f_L) and the IoU logits (K,)
            (None without the IoU head).
        """
        self._check(features, targets, batch_index)
        per_scale: list[Tensor] = []
        iou_tokens: list[Tensor | None] = []
        for s, (feat, neck, head) in enumerate(zip(features, self.necks, self.heads, strict=True)):
            x = neck(feat).index_select(0, batch_index)  # (K, dim, h, w)
            if per_scale:
                prev = F.interpolate(
                    per_scale[-1][:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
                )  # (K, 1, h, w)
                x = x * (torch.sigmoid(prev) + 1)  # (K, dim, h, w)
            pe = self.pos_enc(*x.shape[-2:], device=x.device, dtype=x.dtype)  # (dim, h, w)
            pe = pe + self.level_embed[s, :, None, None].to(x.dtype)  # (dim, h, w)
            logits, iou_token = head(x, pe, targets[:, s])  # (K, h*f, w*f), (K, dim) or None
            per_scale.append(logits)
            iou_tokens.append(iou_token)
        iou_logits = None
        if self.iou_prediction_head is not None:
            iou_logits = self.iou_prediction_head(torch.cat(iou_tokens, dim=-1))[:, 0]  # (K,)
        return DecoderOutput(_combine(per_scale), iou_logits)

    def _check(self, features: Sequence[Tensor], targets: Tensor, batch_index: Tensor) -> None:
        """Raise ValueError on inputs of the wrong count or shape."""
        if len(features) != self.num_scales:
            raise ValueError(f"expected {self.num_scales} feature maps, got {len(features)}")
        for s, feat in enumerate(features):
            if feat.dim() != 4 or feat.shape[1] != self.in_dims[s]:
                raise ValueError(
                    f"features[{s}] must be (B, {self.in_dims[s]}, h, w), got {tuple(feat.shape)}"
                )
        if targets.dim() != 3 or targets.shape[1:] != (self.num_scales, self.dim):
            raise ValueError(
                f"targets must be (K, {self.num_scales}, {self.dim}), got {tuple(targets.shape)}"
            )
        if batch_index.shape != targets.shape[:1] or batch_index.dtype != torch.long:
            raise ValueError(
                f"batch_index must be int64 of shape ({targets.shape[0]},), "
                f"got {batch_index.dtype} {tuple(batch_index.shape)}"
            )


def _combine(per_scale: list[Tensor]) -> Tensor:
    """Finest logits + coarser logits bilinearly upsampled to the finest size."""
    finest = per_scale[-1]  # (K, H', W')
    out = finest
    for coarse in per_scale[:-1]:
        if coarse.shape[-2:] != finest.shape[-2:]:
            coarse = F.interpolate(
                coarse[:, None], size=finest.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]  # (K, H', W')
        out = out + coarse
    return out


def postprocess_masks(
    logits: Tensor,
    *,
    padded_size: tuple[int, int],
    valid_size: tuple[int, int],
    original_size: tuple[int, int],
) -> Tensor:
    """Map decoder logits back to the original image.

    Args:
        logits: (K, h, w) mask logits over the padded input.
        padded_size: (Hp, Wp) of the padded model input.
        valid_size: (Hv, Wv) of the resized image inside it, top-left aligned (Hv <= Hp, Wv <= Wp).
        original_size: (H, W) of the original image.

    Returns:
        (K, H, W) logits (same dtype), bilinear resizes with ``align_corners=False``.
    """
    (hp, wp), (hv, wv) = padded_size, valid_size
    if not (0 < hv <= hp and 0 < wv <= wp):
        raise ValueError(f"valid_size {valid_size} must lie inside padded_size {padded_size}")
    if logits.shape[0] == 0:
        return logits.new_zeros(0, *original_size)
    x = F.interpolate(logits[:, None], size=(hp, wp), mode="bilinear", align_corners=False)
    x = x[..., :hv, :wv]  # (K, 1, Hv, Wv)
    x = F.interpolate(x, size=tuple(original_size), mode="bilinear", align_corners=False)
    return x[:, 0]  # (K, H, W)
