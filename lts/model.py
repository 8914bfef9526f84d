"""LTS (Jing et al., CVPR 2021): locate the referred object, then segment it.

Three visual scales and a bi-GRU over the expression's words are fused (visual features times
the projected sentence vector, plus 8 coordinate maps, top-down to the finest scale). *Locate*:
a C x k x k kernel generated from the sentence, convolved over the fused features (one group
per sample), gives a heatmap whose sigmoid is the position prior, trained with BCE against
the ground truth pooled to its grid; a transformer relevance variant replaces the kernel by
cross-attention to the words. *Segment*: concat(fused, prior) -> ASPP -> two x2 transposed
convolutions -> mask logits, trained with BCE, plus lambda times the locate loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def coord_maps(b: int, h: int, w: int, *, device=None, dtype=None) -> torch.Tensor:
    """The 8 coordinate channels of referring segmentation (B, 8, h, w): each cell's x_min,
    y_min, x_max, y_max, x_centre, y_centre in [-1, 1], and 1/w, 1/h."""
    xs = torch.linspace(-1, 1, w + 1, device=device, dtype=dtype)
    ys = torch.linspace(-1, 1, h + 1, device=device, dtype=dtype)
    x0, x1 = xs[:-1].expand(h, w), xs[1:].expand(h, w)
    y0, y1 = ys[:-1, None].expand(h, w), ys[1:, None].expand(h, w)
    maps = torch.stack([x0, y0, x1, y1, (x0 + x1) / 2, (y0 + y1) / 2,
                        torch.full_like(x0, 1.0 / w), torch.full_like(x0, 1.0 / h)])
    return maps[None].expand(b, -1, -1, -1)


def scaled_dilations(dilations: list[int], side: int, reference: int) -> list[int]:
    """The ASPP dilations given for a ``reference``-sided feature map, scaled to ``side`` and
    kept distinct (each at least one more than the one before)."""
    out = []
    for d in dilations:
        s = max(1, round(d * side / reference))
        out.append(max(s, out[-1] + 1) if out and d > dilations[len(out) - 1] else s)
    return out


class GRUText(nn.Module):
    """Word ids (B, T) and lengths (B,) -> word features (B, T, 2h), sentence vector (B, 2h)
    (both directions' final states) and the word mask (B, T)."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, pad_id: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.gru = nn.GRU(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.width = 2 * hidden

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = ids.shape[1]
        lens = lengths.cpu()
        if bool((lens == t).all()):  # no padding: no packing (which also runs on the meta device)
            words, h = self.gru(self.embed(ids))
        else:
            packed = pack_padded_sequence(self.embed(ids), lens.clamp(min=1), batch_first=True,
                                          enforce_sorted=False)
            out, h = self.gru(packed)
            words, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        mask = torch.arange(t, device=ids.device)[None] < lengths.to(ids.device)[:, None]
        return words, torch.cat([h[0], h[1]], dim=-1), mask


class CrossModalFusion(nn.Module):
    """Three scales (finest first) and the sentence -> fused features (B, C, h0, w0) at the
    finest scale: per scale conv(cat(norm(1x1(v)) * tanh(W s), coords)), then top-down."""

    def __init__(self, channels: list[int], sentence: int, dim: int) -> None:
        super().__init__()
        self.visual = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in channels)
        self.sentence = nn.ModuleList(nn.Linear(sentence, dim) for _ in channels)
        self.fuse = nn.ModuleList(nn.Sequential(nn.Conv2d(dim + 8, dim, 3, padding=1), nn.ReLU())
                                  for _ in channels)
        self.top_down = nn.ModuleList(nn.Sequential(nn.Conv2d(2 * dim, dim, 3, padding=1), nn.ReLU())
                                      for _ in channels[1:])

    def forward(self, feats: list[torch.Tensor], sentence: torch.Tensor) -> torch.Tensor:
        fused = []
        for v, s, f, x in zip(self.visual, self.sentence, self.fuse, feats, strict=True):
            x = F.normalize(v(x), dim=1) * torch.tanh(s(sentence))[..., None, None]
            b, _, h, w = x.shape
            fused.append(f(torch.cat([x, coord_maps(b, h, w, device=x.device, dtype=x.dtype)], 1)))
        x = fused[-1]
        for i in range(len(fused) - 2, -1, -1):
            up = F.interpolate(x, size=fused[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.top_down[i](torch.cat([up, fused[i]], 1))
        return x


class KernelLocate(nn.Module):
    """A per-sample C x k x k kernel (and bias) from the sentence, convolved over the fused
    features with one group per sample -> heatmap logits (B, 1, h, w)."""

    def __init__(self, sentence: int, dim: int, k: int) -> None:
        super().__init__()
        self.dim, self.k = dim, k
        self.generate = nn.Linear(sentence, dim * k * k + 1)

    def forward(self, x: torch.Tensor, sentence: torch.Tensor, words=None, mask=None) -> torch.Tensor:
        b, c, h, w = x.shape
        params = self.generate(sentence)  # (B, C*k*k + 1)
        weight = params[:, :-1].reshape(b, c, self.k, self.k) / (c * self.k * self.k) ** 0.5
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, params[:, -1], padding=self.k // 2, groups=b)
        return out.reshape(b, 1, h, w)


class TransformerLocate(nn.Module):
    """The relevance variant: every position attends to the words (masked), and its relevance
    is a linear read of the attended text times the visual feature -> heatmap logits."""

    def __init__(self, words: int, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.words = nn.Linear(words, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, sentence, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = x.flatten(2).transpose(1, 2)  # (B, hw, C)
        kv = self.words(words)
        att, _ = self.attn(q, kv, kv, key_padding_mask=~mask)
        return self.score(att * q).transpose(1, 2).reshape(b, 1, h, w)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a branch per dilation (1: a 1x1 conv) and an image
    pooling branch, concatenated and projected to ``dim``."""

    def __init__(self, in_ch: int, dim: int, dilations: list[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_ch, dim, 1) if d == 1 else nn.Conv2d(in_ch, dim, 3, padding=d, dilation=d),
                          nn.ReLU()) for d in dilations)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, dim, 1), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(dim * (len(dilations) + 1), dim, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, 1))


@dataclass
class LTSOutput:
    """mask_logits (B, 4h, 4w); heatmap logits (B, h, w) (None without the prior); loss, parts,
    terms, counts as the training loop reads them."""

    loss: torch.Tensor | None
    mask_logits: torch.Tensor
    heatmap: torch.Tensor | None
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class LTS(nn.Module):
    """The assembled LTS model.

    Args:
        encoder: the 3-scale visual encoder (:class:`pixellm.lts.encoders.ThreeScaleEncoder`).
        text: :class:`GRUText`. dim: C. kernel_size: k. locate: "kernel" or "transformer".
        use_prior: concat the position prior before ASPP and train the locate loss.
        locate_weight: lambda. dilations: ASPP dilations, already scaled to the fused side.
    """

    def __init__(self, *, encoder: nn.Module, text: GRUText, dim: int, kernel_size: int, locate: str,
                 use_prior: bool, locate_weight: float, dilations: list[int]) -> None:
        super().__init__()
        self.encoder, self.text = encoder, text
        self.fusion = CrossModalFusion(encoder.channels, text.width, dim)
        self.locate = (KernelLocate(text.width, dim, kernel_size) if locate == "kernel"
                       else TransformerLocate(text.width, dim))
        self.use_prior, self.locate_weight = use_prior, locate_weight
        self.aspp = ASPP(dim + (1 if use_prior else 0), dim, dilations)
        self.up = nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), nn.ReLU(),
                                nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2), nn.ReLU(),
                                nn.Conv2d(dim // 4, 1, 1))

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def trainable_components(self) -> dict[str, tuple[nn.Module, bool]]:
        return {"vision": (self.encoder, False), "text": (self.text, True),
                "head": (nn.ModuleList([self.fusion, self.locate, self.aspp, self.up]), True)}

    @property
    def vision(self) -> nn.Module:  # the optimizer's vision group (pixellm.train.optim)
        return self.encoder

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor,
                gt_masks: torch.Tensor | None = None) -> LTSOutput:
        """One expression per image.

        Args:
            pixels: (B, 3, S, S) normalised. input_ids: (B, T) word ids, padded. lengths: (B,).
            gt_masks: (B, S, S) {0, 1}, or None (no loss).
        Returns:
            :class:`LTSOutput`; loss = BCE(mask) + lambda BCE(heatmap) (the latter only with
            the prior).
        """
        words, sentence, mask = self.text(input_ids, lengths)
        fused = self.fusion(self.encoder(pixels), sentence)
        heat = self.locate(fused, sentence, words, mask) if self.use_prior else None
        x = torch.cat([fused, heat.sigmoid()], 1) if heat is not None else fused
        logits = self.up(self.aspp(x))[:, 0]  # (B, 4h, 4w)
        out = LTSOutput(None, logits, None if heat is None else heat[:, 0])
        if gt_masks is None:
            return out
        gt = gt_masks.float()[:, None]
        mask_gt = (F.adaptive_avg_pool2d(gt, logits.shape[-2:])[:, 0] >= 0.5).float()
        seg = F.binary_cross_entropy_with_logits(logits.float(), mask_gt)
        parts, loss = {"seg": seg.detach()}, seg
        if heat is not None:
            loc = F.binary_cross_entropy_with_logits(heat[:, 0].float(), F.adaptive_avg_pool2d(gt, heat.shape[-2:])[:, 0])
            parts["locate"] = loc.detach()
            loss = loss + self.locate_weight * loc
        out.loss, out.parts = loss, parts
        out.terms, out.counts = {"mask": loss}, {"mask": int(pixels.shape[0])}
        return out

    # -- one query, as the benchmark counts it ----------------------------------------------
    def encode_text(self, expressions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Expressions -> (ids (B, T) padded, on the model's device; lengths (B,) on the CPU)
        with the model's tokenizer."""
        tok, cap = self.tokenizer, self.config.text.max_length
        if tok is None:  # built without a vocabulary (FLOP counting): one placeholder id per word
            rows, pad = [[1] * min(len(e.split()), cap) for e in expressions], 0
        else:
            rows = [tok(e, add_special_tokens=False)["input_ids"][:cap] for e in expressions]
            pad = tok.pad_token_id
        t = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), t), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        # lengths stay on the CPU, where packing reads them
        return ids.to(next(self.parameters()).device), torch.tensor([len(r) for r in rows], device="cpu")

    def query(self, pixels: torch.Tensor, text: str) -> torch.Tensor:
        """One expression: pixels (1, 3, S, S) -> (4h, 4w) mask logits."""
        ids, lengths = self.encode_text([text])
        return self(pixels, ids, lengths).mask_logits[0]

    @staticmethod
    def passes_per_query(k: int) -> int:
        """Forward passes a question with ``k`` referred targets takes: one per expression."""
        return k

    # -- persistence -------------------------------------------------------------------------
    def checkpoint_config(self) -> dict:
        d = self.config.to_dict()
        d["vision"]["pretrained"] = None
        return d

    def save_pretrained(self, directory) -> None:
        from pixellm.checkpoint import save_pretrained

        save_pretrained(self, directory)
