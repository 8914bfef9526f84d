"""LSeg (Li et al., ICLR 2022): per-pixel embeddings scored against label embeddings.

ViT hooks -> DPT neck -> 1x1 head -> (B, C, h, w) pixel embeddings; a frozen text encoder ->
learned map -> (K, C) label embeddings; logits = cos(pixel, label) / temperature (fixed),
optionally through spatial regularisation blocks, upsampled to the input and trained with
pixel cross-entropy over the label set (``"other"`` included).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pixellm.text_encoder import FrozenTextEncoder, normalise
from pixellm.vision import VisionTower

from .config import OTHER
from .dpt import DPTNeck


class SpatialRegularisation(nn.Module):
    """One block applied ``depth`` times to logits (B, K, h, w), the last without activation.

    ``depthwise``: one 3x3 conv (1 -> 1 channel) run on every label channel alike;
    ``bottleneck``: the same plus the max over labels, then the activation. Both treat every
    label channel the same way, so permuting the labels permutes the output.
    """

    def __init__(self, kind: str, depth: int) -> None:
        super().__init__()
        self.kind, self.depth = kind, depth
        self.conv = nn.Conv2d(1, 1, 3, padding=1) if depth else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, h, w = x.shape
        for i in range(self.depth):
            y = self.conv(x.reshape(b * k, 1, h, w)).reshape(b, k, h, w)
            if self.kind == "bottleneck":
                y = y + x.max(dim=1, keepdim=True).values
            x = F.relu(y) if i < self.depth - 1 else y
        return x


@dataclass
class LSegOutput:
    """loss: scalar or None; parts: name -> detached scalar; logits: per image (K_b, S, S);
    terms / counts: the loss's weighted parts and what each averages over (pixels), as
    :class:`pixellm.segmenter.PixelLMOutput` has them for the training loop."""

    loss: torch.Tensor | None
    logits: list[torch.Tensor]
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class LSeg(nn.Module):
    """The assembled LSeg model.

    Args:
        vision: the ViT (:class:`pixellm.vision.VisionTower`), its 4 hooks shallowest first.
        text: the frozen label encoder. features: DPT width F. embed_dim: C.
        temperature: fixed; logits are cosines / temperature.
        reg_kind, reg_blocks: the spatial regularisation (0 blocks: none).
    """

    def __init__(self, *, vision: VisionTower, text: FrozenTextEncoder, features: int, embed_dim: int,
                 temperature: float, reg_kind: str, reg_blocks: int) -> None:
        super().__init__()
        self.vision, self.text = vision, text
        self.text.frozen = True
        self.neck = DPTNeck(vision.width, features)
        self.head = nn.Conv2d(features, embed_dim, 1)
        # MiniLM's 384 -> C by a learned map; a CLIP text tower of width C is used as is (paper)
        self.text_projection = (nn.Identity() if text.spec.kind == "open_clip" and text.width == embed_dim
                                else nn.Linear(text.width, embed_dim))
        self.regularise = SpatialRegularisation(reg_kind, reg_blocks)
        self.temperature = temperature

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def trainable_components(self) -> dict[str, tuple[nn.Module, bool]]:
        """name -> (module, must it train fully); the text encoder is frozen."""
        return {"vision": (self.vision, False), "text": (self.text, False),
                "head": (nn.ModuleList([self.neck, self.head, self.text_projection, self.regularise]), True)}

    # -- pieces --------------------------------------------------------------------------
    def pixel_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) -> L2-normalised embeddings (B, C, h, w), h = 8 * S / patch / ..."""
        x = self.head(self.neck(self.vision(pixels)))
        return F.normalize(x, dim=1)

    def label_embeddings(self, labels: list[str]) -> torch.Tensor:
        """K labels -> L2-normalised (K, C)."""
        return normalise(self.text_projection(self.text(labels)))

    def logits(self, pix: torch.Tensor, labels: torch.Tensor, size: int) -> torch.Tensor:
        """pix (C, h, w) and labels (K, C), both normalised -> (K, size, size) logits."""
        x = torch.einsum("chw,kc->khw", pix, labels.to(pix.dtype)) / self.temperature
        x = self.regularise(x[None])
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0]

    def forward(self, pixels: torch.Tensor, label_sets: list[list[str]],
                target: torch.Tensor | None = None) -> LSegOutput:
        """Logits per image over its own label set, and the pixel cross-entropy.

        Args:
            pixels: (B, 3, S, S) normalised. label_sets: B lists of labels (any length >= 1).
            target: (B, S, S) long label indices, -100 ignored; None: no loss.
        Returns:
            :class:`LSegOutput`; loss the mean cross-entropy over the batch's counted pixels.
        """
        if len(label_sets) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {len(label_sets)} label sets")
        pix = self.pixel_embeddings(pixels)
        vocab = sorted({lab for s in label_sets for lab in s})
        emb = self.label_embeddings(vocab)
        where = {lab: i for i, lab in enumerate(vocab)}
        size = pixels.shape[-1]
        logits = [self.logits(pix[b], emb[[where[lab] for lab in s]], size) for b, s in enumerate(label_sets)]
        if target is None:
            return LSegOutput(None, logits)
        total = sum(F.cross_entropy(lg[None].float(), t[None], ignore_index=-100, reduction="sum")
                    for lg, t in zip(logits, target))
        n = int((target != -100).sum())
        loss = total / max(n, 1)
        return LSegOutput(loss, logits, parts={"ce": loss.detach()}, terms={"pixel": loss}, counts={"pixel": n})

    # -- one query, as the benchmark counts it ----------------------------------------------
    def query(self, pixels: torch.Tensor, text: str) -> torch.Tensor:
        """A question as one label against ``"other"``: pixels (1, 3, S, S) -> (2, S, S) logits."""
        return self(pixels, [[OTHER, text]]).logits[0]

    @staticmethod
    def passes_per_query(k: int) -> int:
        """Forward passes a question with ``k`` targets takes: one, whatever ``k``."""
        return 1

    # -- persistence -------------------------------------------------------------------------
    def checkpoint_config(self) -> dict:
        """The config as a dict that rebuilds this model offline: the text encoder's config
        inlined, no pretrained tags (the weights file holds both towers)."""
        d = self.config.to_dict()
        d["vision"]["pretrained"] = None
        d["text"]["config"] = self.text.config_dict()
        d["text"]["pretrained"] = None
        return d

    def save_pretrained(self, directory) -> None:
        from pixellm.checkpoint import save_pretrained

        save_pretrained(self, directory)
