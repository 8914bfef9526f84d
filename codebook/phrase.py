"""Phrase supervision: auxiliary losses that make the model's features name the targets.

:class:`PhraseHead` (phrase reconstruction) reads each block's fused target embedding;
:class:`RegionWordHead` (region words) reads the vision tower's patch features under each
target's mask. Both predict the bag of words of the target's phrase, and both are used in
training only.

Phrase reconstruction.

The pixel decoder can only segment the object a block refers to if the fused target embedding
(:class:`~pixellm.codebook.CodebookFusion`) carries *which* object that is. In PixelLM that
identity reaches the embedding only through the mask loss, and a decoder trained from scratch
first learns to ignore the embedding (it predicts the masks a question's *kind* implies), so
the mask loss pushes little identity into it. This head asks the embedding to predict the
words of the phrase written just before its block (a bag of words, soft cross-entropy over
the vocabulary), so the identity is there from the first steps and the decoder learns to use
it. The head is used in training only; generation and inference never call it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["PhraseHead", "RegionWordHead", "block_phrases", "phrase_bags"]


def block_phrases(
    token_ids: Sequence[int], scored: Sequence[bool], starts: Sequence[int], codebook_ids: Sequence[int]
) -> list[list[int]]:
    """The phrase token ids of each block: the scored tokens right before it.

    Walking back from a block's first token, the phrase is the run of *scored* (answer) tokens
    that are not codebook tokens: it stops at the previous block, at the prompt or question
    (unscored), or at the sequence start. So "red circle" + block + ", blue square" + block
    gives ``[red, circle]`` and ``[",", blue, square]``, and the block of a later turn of a
    conversation stops at its own question.

    Args:
        token_ids: (T,) ids of one sequence (list or 1-D tensor).
        scored: (T,) True where the token is an answer token (``labels != -100``).
        starts: start positions of the sequence's blocks (``parse_blocks(...).starts``).
        codebook_ids: the block's ids; never part of a phrase.

    Returns:
        one list of token ids per block, in phrase order; empty when nothing scored precedes
        a block.
    """
    ids = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)
    ok = scored.tolist() if hasattr(scored, "tolist") else list(scored)
    if len(ok) != len(ids):
        raise ValueError(f"scored has {len(ok)} entries for {len(ids)} tokens")
    codebook = set(int(i) for i in codebook_ids)
    out = []
    for s in starts:
        p = int(s) - 1
        while p >= 0 and ok[p] and ids[p] not in codebook:
            p -= 1
        out.append(ids[p + 1:int(s)])
    return out


def phrase_bags(phrases: Sequence[Sequence[int]], vocab_size: int, device=None) -> tuple[Tensor, Tensor]:
    """Uniform distributions over each phrase's distinct words.

    Args:
        phrases: K lists of token ids (:func:`block_phrases`); repeats count once.
        vocab_size: V; every id must be below it.
        device: where to build the tensors.

    Returns:
        (bags (K, V) float32, rows summing to 1 or all 0 for an empty phrase;
        keep (K,) bool, True where the phrase is non-empty).
    """
    bags = torch.zeros(len(phrases), vocab_size, device=device)
    for row, p in enumerate(phrases):
        if p:
            bags[row, sorted(set(int(t) for t in p))] = 1.0
    keep = bags.sum(1) > 0
    return bags / bags.sum(1, keepdim=True).clamp_min(1.0), keep


class PhraseHead(nn.Module):
    """Linear read-out of the bag of phrase words from the fused target embeddings.

    Args:
        in_dim: L * C, the concatenated per-scale target embeddings.
        vocab_size: V, the LLM vocabulary (phrase token ids are < V).
    """

    def __init__(self, *, in_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, vocab_size)

    def forward(self, targets: Tensor) -> Tensor:
        """targets (K, L, C) fused embeddings -> (K, V) word logits."""
        return self.proj(targets.flatten(1))

    def loss(self, targets: Tensor, phrases: Sequence[Sequence[int]]) -> Tensor:
        """Soft cross-entropy between the predicted word distribution and each phrase's bag.

        Args:
            targets: (K, L, C) fused target embeddings (with graph).
            phrases: K lists of token ids (:func:`block_phrases`); repeats count once.

        Returns:
            float32 scalar: ``mean_k -sum_v q_k[v] log softmax(z_k)[v]`` with ``q_k`` uniform
            over the distinct words of phrase k, over the blocks with a non-empty phrase; 0
            (attached to the graph) when there are none.
        """
        if targets.shape[0] != len(phrases):
            raise ValueError(f"{targets.shape[0]} target embeddings but {len(phrases)} phrases")
        logits = self(targets).float()  # (K, V)
        bags, keep = phrase_bags(phrases, logits.shape[1], logits.device)
        if not bool(keep.any()):
            return logits.sum() * 0.0
        return -(bags[keep] * F.log_softmax(logits[keep], dim=-1)).sum(1).mean()


def _check_targets(feats: Tensor, masks: Tensor, batch_index: Tensor, phrases: Sequence) -> int:
    """K, after checking that masks, batch indices and phrases agree and that the masks tile
    the (B, C, g, g) patch grid. Raises ValueError otherwise."""
    k = masks.shape[0]
    if len(phrases) != k or batch_index.shape[0] != k:
        raise ValueError(f"{k} masks, {batch_index.shape[0]} batch indices and {len(phrases)} phrases")
    if masks.shape[-2] % feats.shape[-2] or masks.shape[-1] % feats.shape[-1]:
        raise ValueError(f"mask size {tuple(masks.shape[-2:])} is not a multiple of the patch grid {tuple(feats.shape[-2:])}")
    return k


class RegionWordHead(nn.Module):
    """Region words: each vision patch under a target's mask predicts that target's phrase words.

    A CLIP tower trained from scratch learns what an object *is* only through the LLM's text
    loss, which reaches a patch's features indirectly and slowly, so a small model trained
    this way names objects that are not in the image. This head gives the tower's deep patch
    features (the ones the LLM reads) a direct, dense signal from the same answers: a linear
    read-out of the bag of phrase words at every patch, weighted by the fraction of the patch
    the target's ground-truth mask covers. It stands in for the pretraining a real CLIP tower
    brings, so real-scale configs leave it off.

    Args:
        in_dim: C, the vision tower's width.
        vocab_size: V, the LLM vocabulary (phrase token ids are < V).
    """

    def __init__(self, *, in_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, vocab_size)

    def forward(self, feats: Tensor) -> Tensor:
        """feats (B, C, g, g) patch features -> (B, g*g, V) word logits."""
        return self.proj(feats.flatten(2).transpose(1, 2))

    def sums(self, feats: Tensor, masks: Tensor, batch_index: Tensor,
             phrases: Sequence[Sequence[int]]) -> tuple[Tensor, float]:
        """Coverage-weighted soft cross-entropy between patch word predictions and phrase bags.

        Args:
            feats: (B, C, g, g) patch features (with graph).
            masks: (K, H, W) float {0, 1} ground-truth masks, H and W multiples of g.
            batch_index: (K,) image of each target.
            phrases: K lists of token ids (:func:`block_phrases`).

        Returns:
            ``(total, weight)``: the float32 scalar ``sum_kp w_kp ce_kp`` (with graph) and the
            float ``sum_kp w_kp``, where ``w_kp`` is the fraction of patch p that mask k covers
            (0 for an empty phrase) and ``ce_kp`` the soft cross-entropy of the patch's
            prediction (in image ``batch_index[k]``) against phrase k's bag; (0 attached to the
            graph, 0.0) when no patch is covered. The loss is their ratio; the two sums let
            processes holding parts of a batch form the global mean.
        """
        k = _check_targets(feats, masks, batch_index, phrases)
        logp = F.log_softmax(self(feats).float(), dim=-1)  # (B, P, V)
        if k == 0:
            return logp.sum() * 0.0, 0.0
        bags, keep = phrase_bags(phrases, logp.shape[-1], logp.device)
        cover = F.adaptive_avg_pool2d(masks[:, None].float(), feats.shape[-2:]).flatten(1)  # (K, P)
        weight = cover * keep[:, None]
        ce = -torch.einsum("kv,kpv->kp", bags, logp[batch_index])  # (K, P)
        return (weight * ce).sum(), float(weight.sum())

    def object_sums(self, feats: Tensor, masks: Tensor, batch_index: Tensor,
                    phrases: Sequence[Sequence[int]]) -> tuple[Tensor, int]:
        """Object words: the mask-pooled patch features of each target predict its phrase's bag.

        Used to pre-train the vision tower (:mod:`pixellm.train.warmup`): pooling lets all the
        patches an object covers name it together, which a tower learns faster than every
        patch naming it alone (:meth:`sums`). As the read-out is linear, the pooled logits are
        the coverage-weighted mean of the patch logits :meth:`sums` scores, so the two losses
        train the same head.

        Args:
            feats: (B, C, g, g) patch features (with graph).
            masks: (K, H, W) float {0, 1} masks, H and W multiples of g.
            batch_index: (K,) image of each target.
            phrases: K lists of token ids; repeats count once.

        Returns:
            ``(total, count)``: ``total`` the float32 scalar (with graph)
            ``sum_k -sum_v q_k[v] log softmax(W f_k + b)[v]``, ``f_k`` the features averaged
            with weights = the fraction of each patch mask k covers, over the ``count`` targets
            with a non-empty phrase and mask (0 and 0, attached to the graph, when none). The
            loss is ``total / max(count, 1)``; the sum and count let processes holding parts of
            a batch form the global mean.
        """
        k = _check_targets(feats, masks, batch_index, phrases)
        if k == 0:
            return feats.sum() * 0.0, 0
        cover = F.adaptive_avg_pool2d(masks[:, None].float(), feats.shape[-2:]).flatten(1)  # (K, P)
        area = cover.sum(1)
        pooled = torch.einsum("kp,kcp->kc", cover / area.clamp(min=1e-6)[:, None],
                              feats.flatten(2)[batch_index])  # (K, C)
        logp = F.log_softmax(self.proj(pooled).float(), dim=-1)
        bags, keep = phrase_bags(phrases, logp.shape[-1], logp.device)
        keep = keep & (area > 0)
        if not bool(keep.any()):
            return logp.sum() * 0.0, 0
        return -(bags[keep] * logp[keep]).sum(), int(keep.sum())
