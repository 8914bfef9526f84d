"""Counting and timing helpers shared by the compute report (:mod:`pixellm.benchmarks.flops`).

The report runs the same *stages* of a query (vision, LLM prefill, LLM decode, target
projection, mask encoder, mask decoder) for every pipeline, once under
``torch.utils.flop_counter.FlopCounterMode`` on the meta device and once under a wall clock.
A pipeline is anything with the :class:`Pipeline` surface;
:class:`PixelLMPipeline` and :class:`LisaPipeline` adapt the two families to it.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Protocol, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache

R = TypeVar("R")


# -- counting -------------------------------------------------------------------------------
@contextmanager
def attention_visible() -> Iterator[None]:
    """Force SDPA's math backend and disable nn.MultiheadAttention's fused fast path.

    Why: FlopCounterMode has formulas for SDPA's math decomposition (bmm) and for the CUDA
    flash/efficient kernels, but none for the CPU flash kernel, and the MHA fast path (eval +
    no_grad) is one fused op it does not count at all; either would silently drop attention.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def count_flops(fn: Callable[[], R]) -> tuple[R, int]:
    """Run ``fn()`` under no_grad with attention visible and count its FLOPs.

    Returns:
        ``(fn's result, FLOPs)``; a multiply-add counts as 2 (FlopCounterMode's convention).
    """
    with torch.no_grad(), attention_visible(), FlopCounterMode(display=False) as counter:
        out = fn()
    return out, int(counter.get_total_flops())


def affine_sum(first: int, slope: int, n: int) -> int:
    """``sum(first + slope * i for i in range(n))``: total decode FLOPs of n cached steps."""
    return n * first + slope * n * (n - 1) // 2


# -- the query ------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueryBudget:
    """Token budget of one query: 1 image, K targets, greedy answer of T tokens.

    Prompt = template_before + image tokens + question + template_after
    ("<s>USER: <image>\\n{question} ASSISTANT:"). Answer per target = a ``phrase``-token
    noun phrase, the target's block (PixelLM: L*N codebook tokens; LISA: one [SEG]) and one
    separator (",", "and", "."), then EOS: ``T = K * (phrase + block + separator) + 1``.
    """

    question: int = 20
    template_before: int = 5
    template_after: int = 5
    phrase: int = 2
    separator: int = 1

    def prompt_tokens(self, image_tokens: int) -> int:
        return self.template_before + image_tokens + self.question + self.template_after

    def answer_tokens(self, k: int, block_len: int, *, merged: bool = False) -> int:
        """T; ``merged``: one block after all K phrases (original LISA's single [SEG])."""
        blocks = min(k, 1) if merged else k
        return k * (self.phrase + self.separator) + blocks * block_len + 1

    def decode_schedule(self, k: int, block_len: int, *, merged: bool = False) -> list[int]:
        """Tokens fed per KV-cached decode step (EOS is never fed back).

        A started codebook block is fed in one step (pixellm.generation feeds its forced
        tokens together), so each target costs phrase + 1 + separator steps; sums to T - 1.
        ``merged``: only the last target's phrase is followed by a block.
        """
        per_target = [1] * self.phrase + [block_len] + [1] * self.separator
        if not merged or k == 0:
            return per_target * k
        return ([1] * (self.phrase + self.separator)) * (k - 1) + per_target

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Pipeline(Protocol):
    """What the report needs from a pipeline (shapes for one image, K targets)."""

    name: str
    block_len: int  # answer tokens that carry one target
    image_size: int  # CLIP input side S
    mask_image_size: int | None  # separate mask-encoder input side (SAM 1024); None: none
    merged: bool  # one mask for all K targets (original LISA), not one per target
    causal_lm: nn.Module  # transformers *ForCausalLM (decoder stack .model, .lm_head)

    def encode_image(self, pixels: Tensor) -> tuple[list[Tensor], Tensor]:
        """(1, 3, S, S) -> (mask-side features, image tokens (1, P, D))."""

    def encode_mask_image(self, pixels: Tensor) -> list[Tensor]:
        """(1, 3, S', S') -> mask-side features (SAM image embedding)."""

    def project_targets(self, hidden: Tensor) -> Tensor:
        """(K, block_len, D) LLM hidden states -> per-target prompt embeddings."""

    def decode_masks(self, feats: list[Tensor], targets: Tensor) -> Tensor:
        """Features + targets -> (K, h, w) mask logits."""


class PixelLMPipeline:
    """:class:`pixellm.model.PixelLM` seen through the :class:`Pipeline` surface."""

    mask_image_size, merged = None, False

    def __init__(self, model: nn.Module, *, name: str) -> None:
        self.model, self.name = model, name
        self.block_len = len(model.codebook_ids)
        self.image_size = model.config.vision.image_size
        self.causal_lm = model.base_llm

    def encode_image(self, pixels: Tensor) -> tuple[list[Tensor], Tensor]:
        return self.model.encode_images(pixels)

    def encode_mask_image(self, pixels: Tensor) -> list[Tensor]:
        raise RuntimeError("PixelLM decodes masks from the CLIP features; it has no mask encoder")

    def project_targets(self, hidden: Tensor) -> Tensor:
        return self.model.fusion(hidden)  # (K, L, dim)

    def decode_masks(self, feats: list[Tensor], targets: Tensor) -> Tensor:
        index = torch.zeros(targets.shape[0], dtype=torch.long, device=targets.device)
        return self.model.decoder(feats, targets, index).logits  # (K, h, w)


class LisaPipeline:
    """:class:`pixellm.lisa.Lisa` seen through the :class:`Pipeline` surface: CLIP at its own
    side for the LLM, SAM's image encoder at SAM's side for the masks."""

    block_len = 1  # one [SEG] per target (one in all, merged)

    def __init__(self, model: nn.Module, *, name: str, merged: bool | None = None) -> None:
        self.model, self.name = model, name
        self.merged = model.config.merge_targets if merged is None else merged
        self.image_size, self.mask_image_size = model.clip_size, model.input_size
        self.causal_lm = model.base_llm

    def encode_image(self, pixels: Tensor) -> tuple[list[Tensor], Tensor]:
        """(1, 3, S, S) at CLIP's side -> ([], image tokens (1, P, D))."""
        return [], self.model.projector(self.model.vision(pixels)[0])

    def encode_mask_image(self, pixels: Tensor) -> list[Tensor]:
        """(1, 3, S', S') at SAM's side -> [SAM image embedding (1, C, g, g)]."""
        return [self.model.sam.vision_encoder(pixels).last_hidden_state]

    def project_targets(self, hidden: Tensor) -> Tensor:
        return self.model.seg_projection(hidden[:, 0])  # (K, C): text_hidden_fcs

    def decode_masks(self, feats: list[Tensor], targets: Tensor) -> Tensor:
        index = torch.zeros(targets.shape[0], dtype=torch.long, device=targets.device)
        return self.model.sam_decode(feats, targets, index).logits  # (K, 4g, 4g): K decoder runs


def prompt_embeds(lm: nn.Module, image_tokens: Tensor, budget: QueryBudget) -> Tensor:
    """Prompt embeddings (1, prompt_tokens, D): template and question ids around the image."""
    embed = lm.get_input_embeddings()
    dev = image_tokens.device
    before = embed(torch.ones(1, budget.template_before, dtype=torch.long, device=dev))
    n_after = budget.question + budget.template_after
    after = embed(torch.ones(1, n_after, dtype=torch.long, device=dev))
    return torch.cat([before, image_tokens.to(before.dtype), after], 1)


def prefill(lm: nn.Module, embeds: Tensor) -> tuple[Tensor, Tensor, DynamicCache]:
    """Prompt (1, T, D) -> (hidden (1, T, D), next-token logits (1, V), KV cache).

    No attention mask: one unpadded prompt is plain causal attention, and a mask tensor
    would make transformers read its values (impossible on meta).
    """
    pos = torch.arange(embeds.shape[1], device=embeds.device)[None]  # (1, T)
    out = lm.model(inputs_embeds=embeds, position_ids=pos, use_cache=True,
                   past_key_values=DynamicCache(config=lm.config))
    return out.last_hidden_state, lm.lm_head(out.last_hidden_state[:, -1]), out.past_key_values


def decode_step(lm: nn.Module, past: DynamicCache, token: Tensor, position: int
                ) -> tuple[Tensor, Tensor]:
    """Feed one token (1,) at ``position`` -> (hidden (1, D), logits (1, V)); ``past`` grows."""
    pos = torch.full((1, 1), position, dtype=torch.long, device=token.device)
    emb = lm.get_input_embeddings()(token[:, None])  # (1, 1, D)
    out = lm.model(inputs_embeds=emb, position_ids=pos, use_cache=True, past_key_values=past)
    hidden = out.last_hidden_state[:, 0]
    return hidden, lm.lm_head(hidden)


# -- timing ---------------------------------------------------------------------------------
def synchronizer(device: torch.device) -> Callable[[], None]:
    """Wait for queued kernels (CUDA launches are asynchronous); a no-op elsewhere."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def median_ms(fn: Callable[[], object], *, repeats: int, warmup: int,
              sync: Callable[[], None]) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs after ``warmup`` runs."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def decode_chunk(lm: nn.Module, past: DynamicCache, tokens: Tensor, position: int) -> Tensor:
    """Feed tokens (1, w) at positions ``position..position+w-1`` -> logits (1, V) of the last."""
    pos = torch.arange(position, position + tokens.shape[1], device=tokens.device)[None]
    out = lm.model(inputs_embeds=lm.get_input_embeddings()(tokens), position_ids=pos,
                   use_cache=True, past_key_values=past)
    return lm.lm_head(out.last_hidden_state[:, -1])


def decode_ms(lm: nn.Module, embeds: Tensor, schedule: list[int], *, repeats: int, warmup: int,
              sync: Callable[[], None]) -> float:
    """Median ms of greedy KV-cached decoding, each run after an untimed prefill.

    Args:
        lm: transformers causal LM. embeds: (1, T, D) prompt embeddings.
        schedule: tokens fed per step (1 for ordinary tokens, L*N for a codebook block).
    """
    def run() -> float:
        _, logits, past = prefill(lm, embeds)
        sync()
        start, position = time.perf_counter(), embeds.shape[1]
        for width in schedule:
            tokens = logits.argmax(-1)[:, None].expand(1, width)
            logits = decode_chunk(lm, past, tokens, position)
            position += width
        sync()
        return time.perf_counter() - start

    times = [run() for _ in range(warmup + repeats)][warmup:]
    return statistics.median(times) * 1e3


@torch.no_grad()
def time_query(pipe: Pipeline, budget: QueryBudget, k: int, *, device: torch.device,
               repeats: int, warmup: int) -> dict:
    """Median wall time per component of one query with K targets (random inputs).

    Returns:
        ``ms`` {component: ms}, ``total_ms`` and ``decode_ms_per_token`` (over the T - 1 fed tokens).
    """
    sync, lm = synchronizer(device), pipe.causal_lm
    dtype = next(lm.parameters()).dtype
    timed = dict(repeats=repeats, warmup=warmup, sync=sync)
    pixels = torch.randn(1, 3, pipe.image_size, pipe.image_size, device=device, dtype=dtype)
    feats, image_tokens = pipe.encode_image(pixels)
    ms = dict(vision=median_ms(lambda: pipe.encode_image(pixels), **timed))
    embeds = prompt_embeds(lm, image_tokens, budget)
    ms["llm_prefill"] = median_ms(lambda: prefill(lm, embeds), **timed)
    steps = budget.answer_tokens(k, pipe.block_len, merged=pipe.merged) - 1
    schedule = budget.decode_schedule(k, pipe.block_len, merged=pipe.merged)
    ms["llm_decode"] = decode_ms(lm, embeds, schedule, **timed)
    masks = min(k, 1) if pipe.merged else k
    hidden = torch.randn(masks, pipe.block_len, lm.config.hidden_size, device=device, dtype=dtype)
    targets = pipe.project_targets(hidden)
    ms["target_proj"] = median_ms(lambda: pipe.project_targets(hidden), **timed)
    ms["mask_encoder"] = 0.0
    if pipe.mask_image_size:
        side = pipe.mask_image_size
        mask_pixels = torch.randn(1, 3, side, side, device=device, dtype=dtype)
        feats = pipe.encode_mask_image(mask_pixels)
        ms["mask_encoder"] = median_ms(lambda: pipe.encode_mask_image(mask_pixels), **timed)
    ms["mask_decoder"] = median_ms(lambda: pipe.decode_masks(feats, targets), **timed)
    return dict(ms=ms, total_ms=sum(ms.values()), decode_ms_per_token=ms["llm_decode"] / steps)


def bandwidth_bytes_per_s(device: torch.device, override_tbs: float | None = None) -> float | None:
    """Peak memory bandwidth: ``override_tbs`` (TB/s), else 2 x memory clock x bus width (CUDA)."""
    if override_tbs:
        return override_tbs * 1e12
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    # double data rate: two transfers per clock
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None
