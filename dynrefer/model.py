"""DynRefer: a region's stochastic multi-view embedding and its three decoders.

Shapes: B regions, n views each, side S (the encoder's input), C the ViT width, R the RoI side,
Q the Q-Former's queries, H its width, T tags, E the contrastive width, D the LLM width.

    views (B*n, 3, S, S) -> frozen ViT block (B*n, C, g, g) -> RoI-Align (B, n, C, R, R)
    -> align views 1..n-1 onto view 0 -> concat (B, n*C, R, R) -> tokens (B, R*R, n*C)
    -> MLP (B, R*R, F) -> Q-Former (B, Q, H) = the region tokens
    region tokens -> tagging (B, T) | region vector (B, E) | LLM prefix (B, Q, D) -> caption
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d, roi_align

from pixellm.text_encoder import FrozenTextEncoder, normalise

from .views import box_in_view, crop_views, view_boxes

CONTROL_END = ":"  # ends the control words; the caption follows


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, *, gamma_neg: float = 7.0,
                    gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al., ICCV 2021) for multi-label tagging.

    With p = sigmoid(x) and the shifted probability p_m = max(p - clip, 0):
    positives cost -(1 - p)^gamma_pos log p, negatives -p_m^gamma_neg log(1 - p_m).

    Args:
        logits, targets: (B, T); targets in {0, 1}.
    Returns:
        scalar: the sum over tags, averaged over the batch.
    """
    p = logits.float().sigmoid()
    p_m = (p - clip).clamp(min=0) if clip > 0 else p
    pos = targets * (1 - p).pow(gamma_pos) * torch.log(p.clamp(min=eps))
    neg = (1 - targets) * p_m.pow(gamma_neg) * torch.log((1 - p_m).clamp(min=eps))
    return -(pos + neg).sum(-1).mean()


def siglip_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """The sigmoid contrastive loss (Zhai et al., ICCV 2023).

    Args:
        logits: (B, B) region-text logits ``t * cos + b``. positive: (B, B) bool, True where
            region i matches text j (the diagonal, and equal captions).
    Returns:
        scalar: -sum_ij log sigmoid(z_ij logits_ij) / B, z = +1 for matches, -1 otherwise.
    """
    z = positive.float() * 2 - 1
    return -F.logsigmoid(z * logits.float()).sum() / logits.shape[0]


def box_geometry(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """(B, 4) XYXY boxes in images of (B, 2) sizes (W, H) -> (B, 5): the box normalised to
    [0, 1] and the square root of its area fraction."""
    wh = sizes.float().repeat(1, 2)
    norm = boxes.float() / wh
    area = ((norm[:, 2] - norm[:, 0]).clamp(min=0) * (norm[:, 3] - norm[:, 1]).clamp(min=0)).sqrt()
    return torch.cat([norm, area[:, None]], 1)


def roi_features(feats: torch.Tensor, boxes: torch.Tensor, *, side: int, size: int) -> torch.Tensor:
    """RoI-Align of one box per feature map.

    Args:
        feats: (N, C, g, g) patch features of N views of side ``side`` pixels. boxes: (N, 4)
            XYXY in view pixels. size: R.
    Returns:
        (N, C, R, R): bilinear averages over the cells under each box (pixel-centre aligned).
    """
    idx = torch.arange(feats.shape[0], device=boxes.device, dtype=boxes.dtype)[:, None]
    return roi_align(feats, torch.cat([idx, boxes], 1).to(feats.dtype), output_size=size,
                     spatial_scale=feats.shape[-1] / side, sampling_ratio=2, aligned=True)


class ViewAlignment(nn.Module):
    """Resamples a view's RoI features onto the base view's.

    Offsets (B, 2, R, R) come from a 3x3 conv over concat(view, base), zero-initialised; the
    resampling is a 1x1 deformable convolution (``torchvision.ops.deform_conv2d``) whose weight
    starts as the identity, so the module starts as the identity map.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.offset = nn.Conv2d(2 * channels, 2, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.weight = nn.Parameter(torch.eye(channels)[:, :, None, None].clone())

    def forward(self, view: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """view, base (B, C, R, R) -> view resampled (B, C, R, R)."""
        offsets = self.offset(torch.cat([view, base], 1))
        return deform_conv2d(view, offsets, self.weight.to(view.dtype))


class TagDecoder(nn.Module):
    """One learned query per tag cross-attends to the region tokens -> one logit per tag."""

    def __init__(self, num_tags: int, dim: int, heads: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_tags, dim) * 0.02)
        self.layer = nn.TransformerDecoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, Q, H) -> logits (B, T)."""
        q = self.queries.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return self.head(self.layer(q, tokens))[..., 0]


@dataclass
class DynReferOutput:
    """loss and its parts (what the training loop reads); tag_logits (B, T); region (B, E)
    normalised region vectors."""

    loss: torch.Tensor | None
    tag_logits: torch.Tensor
    region: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class DynRefer(nn.Module):
    """The assembled model.

    Args:
        vision: a frozen :class:`pixellm.vision.VisionTower` hooked at one block.
        qformer: ``transformers.Blip2QFormerModel``; text: the frozen
        :class:`~pixellm.text_encoder.FrozenTextEncoder`; llm: a causal LM; tokenizer: its
        tokenizer (None: a model for FLOP counting only). config: the
        :class:`~pixellm.dynrefer.config.DynReferConfig`.
    """

    def __init__(self, *, config, vision: nn.Module, qformer: nn.Module, text: FrozenTextEncoder,
                 llm: nn.Module, tokenizer) -> None:
        super().__init__()
        cfg = config
        self.config, self.tokenizer = cfg, tokenizer
        self.vision, self.qformer, self.text, self.llm = vision, qformer, text, llm
        c, n, h = vision.width, cfg.views.num_views, cfg.qformer.hidden_size
        self.align = ViewAlignment(c)
        self.fuse = nn.Sequential(nn.Linear(n * c, cfg.fuse_dim), nn.GELU(), nn.Linear(cfg.fuse_dim, cfg.fuse_dim))
        self.where = (nn.Sequential(nn.Linear(5, cfg.fuse_dim), nn.GELU(), nn.Linear(cfg.fuse_dim, cfg.fuse_dim))
                      if cfg.box_embedding else None)
        self.queries = nn.Parameter(torch.randn(1, cfg.qformer.num_queries, h) * 0.02)
        self.tagger = TagDecoder(len(cfg.tags), h, cfg.qformer.num_heads)
        self.region_proj = nn.Linear(h, cfg.embed_dim)
        self.text_proj = nn.Linear(text.width, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self.to_llm = nn.Linear(h, llm.config.hidden_size)

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def base_llm(self) -> nn.Module:
        """The LLM without LoRA wrapping."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def trainable_components(self) -> dict[str, tuple[nn.Module, bool]]:
        return {"vision": (self.vision, False), "text": (self.text, False), "llm": (self.llm, False),
                "head": (nn.ModuleList([m for m in (self.align, self.fuse, self.where, self.qformer, self.tagger,
                                                    self.region_proj, self.text_proj, self.to_llm)
                                        if m is not None]), True)}

    # -- the region tokens -----------------------------------------------------------------
    def encode_regions(self, images: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor,
                       ts: torch.Tensor) -> torch.Tensor:
        """Stochastic multi-view embedding.

        Args:
            images: (B, 3, H, W) normalised, padded right/bottom. sizes: (B, 2) each image's
                (W, H). boxes: (B, 4) XYXY regions. ts: (B, n) view parameters, ts[:, 0] = 0.
        Returns:
            (B, Q, H) region tokens: learned queries that read the fused (B, R*R, C') view
            features (and, with ``box_embedding``, one (B, 1, C') token of the box's place and
            size in the image).
        """
        s, (b, n) = self.input_size, ts.shape
        crops = view_boxes(boxes.float(), sizes.float(), ts.float())
        views = crop_views(images, crops.to(images.dtype), s)  # (B*n, 3, S, S)
        feats = self.vision(views)[0]  # (B*n, C, g, g)
        local = box_in_view(boxes.float(), crops, s).reshape(b * n, 4)
        r = self.config.roi_size
        roi = roi_features(feats, local, side=s, size=r).reshape(b, n, -1, r, r)
        base = roi[:, 0]
        aligned = [base] + [self.align(roi[:, v], base) for v in range(1, n)]
        x = torch.cat(aligned, 1).flatten(2).transpose(1, 2)  # (B, R*R, n*C)
        x = self.fuse(x)
        if self.where is not None:
            x = torch.cat([x, self.where(box_geometry(boxes, sizes).to(x.dtype))[:, None]], 1)
        q = self.queries.expand(b, -1, -1).to(x.dtype)
        return self.qformer(query_embeds=q, encoder_hidden_states=x).last_hidden_state

    def region_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, Q, H) -> normalised (B, E)."""
        return normalise(self.region_proj(tokens.mean(1)))

    def text_vectors(self, texts: list[str]) -> torch.Tensor:
        """K strings -> normalised (K, E) (the frozen encoder's embeddings, projected)."""
        return normalise(self.text_proj(self.text(texts).to(self.text_proj.weight.dtype)))

    def contrastive_logits(self, region: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, E), (K, E) -> (B, K) logits ``exp(t') cos + b`` (sigmoid: the match probability)."""
        return region @ text.T * self.logit_scale.exp() + self.logit_bias

    # -- captions ----------------------------------------------------------------------------
    def _prefix_ids(self, control: list[str]) -> list[int]:
        words = " ".join([*control, CONTROL_END]) if self.config.tag_control else CONTROL_END
        return [self.tokenizer.bos_token_id, *self.tokenizer(words, add_special_tokens=False)["input_ids"]]

    def _embed_rows(self, tokens: torch.Tensor, rows: list[list[int]], *, left: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each region's prefix then its token row, padded (on the left for generation, so every
        row ends where it continues) -> (inputs_embeds (B, L, D), attention (B, L))."""
        emb = self.base_llm.get_input_embeddings()
        prefix = self.to_llm(tokens)  # (B, Q, D)
        seqs = [torch.cat([prefix[i], emb(torch.tensor(r, device=prefix.device)).to(prefix.dtype)])
                for i, r in enumerate(rows)]
        width = max(len(x) for x in seqs)
        x = prefix.new_zeros(len(seqs), width, prefix.shape[-1])
        attn = torch.zeros(len(seqs), width, dtype=torch.long, device=prefix.device)
        for i, seq in enumerate(seqs):
            sl = slice(width - len(seq), width) if left else slice(0, len(seq))
            x[i, sl], attn[i, sl] = seq, 1
        return x, attn

    def caption_loss(self, tokens: torch.Tensor, captions: list[str], controls: list[list[str]]) -> torch.Tensor:
        """Next-token cross-entropy of the captions (and their end token) after the region
        tokens and control words."""
        tok, cap = self.tokenizer, self.config.max_caption_tokens
        rows, targets = [], []
        for text, ctl in zip(captions, controls, strict=True):
            pre = self._prefix_ids(ctl)
            body = tok(text, add_special_tokens=False)["input_ids"][:cap] + [tok.eos_token_id]
            rows.append(pre + body)
            targets.append([-100] * len(pre) + body)
        x, attn = self._embed_rows(tokens, rows, left=False)
        q = tokens.shape[1]
        labels = torch.full(attn.shape, -100, dtype=torch.long, device=x.device)
        for i, t in enumerate(targets):
            labels[i, q:q + len(t)] = torch.tensor(t, device=x.device)
        return self.llm(inputs_embeds=x, attention_mask=attn, labels=labels).loss

    @torch.no_grad()
    def generate_captions(self, tokens: torch.Tensor, controls: list[list[str]], *,
                          max_new_tokens: int | None = None) -> list[str]:
        """Greedy captions of B regions: (B, Q, H) tokens and each one's control words."""
        tok = self.tokenizer
        x, attn = self._embed_rows(tokens, [self._prefix_ids(c) for c in controls], left=True)
        out = self.llm.generate(inputs_embeds=x, attention_mask=attn, do_sample=False,
                                max_new_tokens=max_new_tokens or self.config.max_caption_tokens + 1,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return [tok.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=True).strip() for row in out]

    # -- training ----------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor, ts: torch.Tensor,
                tags: torch.Tensor, captions: list[str], controls: list[list[str]]) -> DynReferOutput:
        """One batch of regions.

        Args:
            images (B, 3, H, W), sizes (B, 2), boxes (B, 4), ts (B, n): see
            :meth:`encode_regions`. tags: (B, T) {0, 1}. captions: B reference captions.
            controls: B lists of control words (the tags given to the captioner).
        Returns:
            :class:`DynReferOutput`: loss = w_cap L_caption + w_tag L_tag + w_rtc L_contrastive
            over the configured tasks.
        """
        lc = self.config.loss
        tokens = self.encode_regions(images, sizes, boxes, ts)
        tag_logits = self.tagger(tokens)
        region = self.region_vectors(tokens)
        out = DynReferOutput(None, tag_logits, region)
        parts = {"caption": self.caption_loss(tokens, captions, controls)}
        loss = lc.caption_weight * parts["caption"]
        if "tag" in lc.tasks:
            parts["tag"] = asymmetric_loss(tag_logits, tags.float(), gamma_neg=lc.asl_gamma_neg,
                                           gamma_pos=lc.asl_gamma_pos, clip=lc.asl_clip)
            loss = loss + lc.tag_weight * parts["tag"]
        if "contrastive" in lc.tasks:
            logits = self.contrastive_logits(region, self.text_vectors(captions))
            same = torch.tensor([[a == b for b in captions] for a in captions], device=logits.device)
            parts["contrastive"] = siglip_loss(logits, same)
            loss = loss + lc.contrastive_weight * parts["contrastive"]
        out.loss, out.parts = loss, {k: v.detach() for k, v in parts.items()}
        out.terms, out.counts = {"region": loss}, {"region": int(boxes.shape[0])}
        return out

    # -- persistence -------------------------------------------------------------------------
    def checkpoint_config(self) -> dict:
        """The config as a dict that rebuilds this model offline: the LLM's and the text
        encoder's configs inlined, no pretrained tags or source checkpoint (the weights file
        holds every tower)."""
        d = self.config.to_dict()
        d["vision"]["pretrained"] = None
        d["vision"]["from_checkpoint"] = None
        d["llm"]["name_or_path"] = None
        d["llm"]["config"] = self.base_llm.config.to_dict()
        d["llm"]["config"].pop("transformers_version", None)
        d["text"]["config"] = self.text.config_dict()
        d["text"]["pretrained"] = None
        return d

    def save_pretrained(self, directory) -> None:
        from pixellm.checkpoint import save_pretrained

        save_pretrained(self, directory)
