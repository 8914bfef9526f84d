"""LSeg's label-set evaluation: per-label IoU with binary ``["other", label]`` sets.

The paper's zero-shot protocol (few-shot style): a label is scored on every evaluation image
that holds it, with the label set ``["other", label]``; its IoU is the intersection over the
union summed over those images (class IoU), and mIoU the mean over labels. Seen labels are
the training vocabulary of each kind; unseen ones the held-out compositions and the words of
:data:`~pixellm.lseg.data.UNSEEN_WORDS`, each scored against the union of the labels it names.
Masks are compared on the model's input grid, inside the image (not the padding).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pixellm.errors import InputError
from pixellm.image_io import load_image, resize_longest_and_pad, resize_mask_to_input

from .config import OTHER
from .data import KINDS, UNSEEN_WORDS, LabelMapSource, held_out_pairs


def label_queries(source: LabelMapSource, root: str | Path, *, train: LabelMapSource | None = None
                  ) -> dict[str, dict[str, tuple[str, tuple[str, ...]]]]:
    """The evaluation's query labels, grouped: ``{"seen": ..., "unseen compositions": ...,
    "unseen words": ...}``, each ``{query: (kind, ground-truth labels of that kind)}``.

    Seen: every label of ``train``'s vocabulary (``source``'s when None) present in ``source``;
    unseen compositions: the held-out pairs of ``root/meta.json``; unseen words: those of
    :data:`UNSEEN_WORDS` whose targets ``source`` has."""
    vocab = {k: set(source.vocabulary(k)) for k in KINDS}
    trained = {k: set((train or source).vocabulary(k)) for k in KINDS}
    held = set(held_out_pairs(root)) if (Path(root) / "meta.json").is_file() else set()
    seen = {lab: (k, (lab,)) for k in KINDS for lab in sorted(vocab[k] & trained[k]) if lab not in held}
    comps = {lab: ("pair", (lab,)) for lab in sorted(held & vocab["pair"])}
    words = {}
    for word, targets in UNSEEN_WORDS.items():
        kind = next((k for k in KINDS if set(targets) <= vocab[k]), None)
        if kind is not None:
            words[word] = (kind, targets)
    return {"seen": seen, "unseen compositions": comps, "unseen words": words}


@torch.no_grad()
def label_ious(model, source: LabelMapSource, queries: dict[str, tuple[str, tuple[str, ...]]], *,
               limit: int = 0, batch_size: int = 16, progress: bool = False) -> dict[str, dict]:
    """Class IoU of each query label over the images that hold one of its targets.

    Args:
        model: a built :class:`~pixellm.lseg.LSeg` (eval mode is set here).
        source: the evaluation images. queries: ``{query: (kind, target labels)}``.
        limit: at most this many images (0: all), the first in file order.
    Returns:
        ``{query: {"iou", "images", "intersection", "union"}}``; a query no image holds is
        left out.
    Raises:
        InputError: an empty query set.
    """
    if not queries:
        raise InputError("no query labels to evaluate")
    model.eval()
    cfg, s = model.config, model.input_size
    dev, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    stats = {q: [0, 0, 0] for q in queries}  # intersection, union, images
    emb = {q: model.label_embeddings([OTHER, q]) for q in queries}
    n = len(source) if not limit else min(limit, len(source))
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="lseg eval"):
        idx = list(range(start, min(n, start + batch_size)))
        pre = [resize_longest_and_pad(load_image(source.image_path(i)), size=s, mean=cfg.vision.mean,
                                      std=cfg.vision.std) for i in idx]
        pix = model.pixel_embeddings(torch.stack([p.pixels for p in pre]).to(dev, dtype))
        for b, (i, p) in enumerate(zip(idx, pre)):
            masks = resize_mask_to_input(source.masks(i), size=s) > 0.5  # (N, S, S)
            valid = torch.zeros(s, s, dtype=torch.bool)
            valid[:p.valid_size[0], :p.valid_size[1]] = True
            for q, (kind, targets) in queries.items():
                labels = source.labels(i, kind)
                hit = [k for k, lab in enumerate(labels) if lab in targets]
                if not hit:
                    continue
                gt = masks[hit].any(0) & valid
                pred = (model.logits(pix[b], emb[q], s).argmax(0) == 1).cpu() & valid
                st = stats[q]
                st[0] += int((gt & pred).sum())
                st[1] += int((gt | pred).sum())
                st[2] += 1
    return {q: {"iou": i / u if u else 0.0, "intersection": i, "union": u, "images": m}
            for q, (i, u, m) in stats.items() if m}


def miou(results: dict[str, dict]) -> float:
    """Mean of the per-label IoUs (NaN for no label)."""
    return sum(r["iou"] for r in results.values()) / len(results) if results else float("nan")


def evaluate_split(model, root: str | Path, split: str, *, limit: int = 0, progress: bool = False,
                   groups: Sequence[str] | None = None, train_root: str | Path | None = None) -> dict:
    """Seen / unseen mIoU of ``model`` on ``root/lvis_instances_<split>.json``; the seen labels
    are those of ``train_root``'s training file (default ``root``'s; a fresh-seed dataset has
    no training images, so give the training data's root there).

    Returns:
        ``{"split", "groups": {group: {"miou", "labels": n, "by_kind": {kind: mIoU},
        "per_label": {...}}}}`` for the groups of :func:`label_queries` (all unless ``groups``
        names some).
    """
    root = Path(root)
    source = LabelMapSource(root / f"lvis_instances_{split}.json")
    train_file = Path(train_root or root) / "lvis_instances_train.json"
    train = LabelMapSource(train_file) if train_file.is_file() and split != "train" else None
    out = {"split": split, "groups": {}}
    for group, queries in label_queries(source, root, train=train).items():
        if groups is not None and group not in groups or not queries:
            continue
        res = label_ious(model, source, queries, limit=limit, progress=progress)
        by_kind = {k: miou({q: r for q, r in res.items() if queries[q][0] == k}) for k in KINDS
                   if any(queries[q][0] == k for q in res)}
        out["groups"][group] = {"miou": miou(res), "labels": len(res), "by_kind": by_kind, "per_label": res}
    return out


def table(result: dict) -> str:
    """A Markdown table of :func:`evaluate_split`'s groups."""
    rows = ["| split | labels | n | mIoU | by kind of label |", "|---|---|---:|---:|---|"]
    for group, g in result["groups"].items():
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in g.get("by_kind", {}).items())
        rows.append(f"| {result['split']} | {group} | {g['labels']} | {g['miou']:.3f} | {kinds} |")
    return "\n".join(rows)
