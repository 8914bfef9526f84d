"""DynRefer's metrics: captioning (CIDEr, BLEU-4, ROUGE-L, METEOR via pycocoevalcap), tagging
mAP, open-vocabulary attribute mAP (OVAD's protocol on the attribute prompts), region
recognition accuracy, and the captions of a segmentation model's predicted targets."""
from __future__ import annotations

import re
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pixellm.muse.regions import ATTRIBUTES, CLASSES, load_regions, words


def _tokenised(text: str) -> str:
    """What the caption metrics compare: lower-cased words joined by spaces (the PTB tokenizer's
    job, which needs Java; the generated vocabulary has no punctuation to split)."""
    return " ".join(words(text)) or "empty"


def meteor_available() -> str | None:
    """None when METEOR can run here, else why not."""
    return None if shutil.which("java") else "METEOR needs Java (apt install default-jre-headless)"


def caption_scores(references: dict, hypotheses: dict) -> dict:
    """Corpus caption metrics.

    Args:
        references: id -> list of reference captions. hypotheses: id -> the generated caption.
    Returns:
        ``{"CIDEr", "BLEU-4", "ROUGE-L", "METEOR"}`` (METEOR None without Java), each in [0, 1]
        except CIDEr (up to 10), and ``"n"``.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not hypotheses:
        return {"CIDEr": None, "BLEU-4": None, "ROUGE-L": None, "METEOR": None, "n": 0}
    gts = {k: [_tokenised(r) for r in references[k]] for k in hypotheses}
    res = {k: [_tokenised(hypotheses[k])] for k in hypotheses}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {"CIDEr": float(Cider().compute_score(gts, res)[0]), "BLEU-4": float(bleu[3]),
           "ROUGE-L": float(Rouge().compute_score(gts, res)[0]), "METEOR": None, "n": len(res)}
    if meteor_available() is None:
        from pycocoevalcap.meteor.meteor import Meteor

        m = Meteor()
        try:
            out["METEOR"] = float(m.compute_score(gts, res)[0])
        finally:
            m.close() if hasattr(m, "close") else m.__del__()
    return out


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Macro average precision over the columns that have a positive (torchmetrics).

    Args:
        scores, targets: (N, K); targets in {0, 1}.
    """
    from torchmetrics.functional.classification import multilabel_average_precision

    keep = targets.sum(0) > 0
    if not keep.any():
        return None
    ap = multilabel_average_precision(torch.from_numpy(scores[:, keep]).float(), torch.from_numpy(targets[:, keep]).long(),
                                      num_labels=int(keep.sum()), average=None)
    return float(ap.mean())


def evaluate_regions(predictor, path: str | Path, *, images_root: str | Path | None = None, limit: int = 0,
                     progress: bool = False) -> dict:
    """Describe the regions of a regions file and score every task.

    Args:
        predictor: a :class:`~pixellm.dynrefer.DynReferPredictor` (its view modes apply).
        path: ``regions_<split>.json``. images_root: its images (default: ``images/`` beside it).
        limit: at most this many regions (whole images, in file order); 0: all.
    Returns:
        caption metrics (:func:`caption_scores`), ``tag_mAP``, ``attribute_mAP`` (and per group
        ``attribute_mAP_<group>``), ``recognition_acc``, ``words_<group>`` (how often the
        caption names the region's own value, :class:`WordAccuracy`), ``regions``, ``images``.
    """
    regions = load_regions(path, tags=predictor.cfg.tags)
    root = Path(images_root) if images_root is not None else Path(path).parent / "images"
    by_image: dict[str, list] = defaultdict(list)
    for r in regions.records:
        by_image[r.file_name].append(r)
    chosen, n = [], 0
    for name, recs in by_image.items():
        if limit and n >= limit:
            break
        chosen.append((name, recs))
        n += len(recs)
    tags = list(predictor.cfg.tags)
    groups = _word_groups(predictor)
    attrs, classes = {g: v for g, v in groups.items() if g != "shape"}, groups["shape"]
    refs, hyps = {}, {}
    tag_s, tag_t, cls_hit = [], [], []
    attr_s, attr_t = defaultdict(list), defaultdict(list)
    named = WordAccuracy(groups)
    for name, recs in tqdm(chosen, disable=not progress, desc="regions"):
        descs = predictor.describe(root / name, [r.box for r in recs])
        for r, d in zip(recs, descs, strict=True):
            refs[r.id], hyps[r.id] = [r.caption], d.caption
            named.add(d.caption, r.attributes)
            got = dict(d.tags)
            tag_s.append([got.get(t, 0.0) for t in tags])
            tag_t.append([float(t in r.tags) for t in tags])
            for g, vals in attrs.items():
                if g in r.attributes:
                    sc = dict(d.attributes.get(g, []))
                    attr_s[g].append([sc.get(v, 0.0) for v in vals])
                    attr_t[g].append([float(r.attributes[g] == v) for v in vals])
            shape = r.attributes.get("shape")
            if shape in classes and d.category:
                cls_hit.append(d.category[0][0] == shape)
    out = caption_scores(refs, hyps)
    out.update(regions=len(hyps), images=len(chosen),
               tag_mAP=mean_ap(np.array(tag_s), np.array(tag_t)) if tag_s else None,
               recognition_acc=float(np.mean(cls_hit)) if cls_hit else None)
    per_group = {g: mean_ap(np.array(attr_s[g]), np.array(attr_t[g])) for g in attrs if attr_s[g]}
    for g, v in per_group.items():
        out[f"attribute_mAP_{g}"] = v
    if per_group:  # OVAD: the mean AP over every attribute value (each value a prompt)
        s = np.concatenate([np.array(attr_s[g]) for g in per_group], 1)
        t = np.concatenate([np.array(attr_t[g]) for g in per_group], 1)
        out["attribute_mAP"] = mean_ap(s, t)
    else:
        out["attribute_mAP"] = None
    out.update(named.result())
    out["examples"] = [{"reference": refs[k][0], "generated": hyps[k]} for k in list(hyps)[:5]]
    return out


def named_values(caption: str, groups: dict[str, Sequence[str]]) -> dict[str, str | None]:
    """Which value of each attribute group a caption names in its own phrase (before the first
    comma, so a relation's "left of the ..." is not read as a position); the longest match wins
    ("top left" over "top"). None: the phrase names none."""
    subject = caption.lower().split(",")[0]
    out = {}
    for g, values in groups.items():
        hits = [v for v in values if re.search(rf"\b{re.escape(v.lower())}\b", subject)]
        out[g] = max(hits, key=len) if hits else None
    return out


class WordAccuracy:
    """How often captions name the region's own colour, shape, size and position: per group,
    the fraction of regions (that have the attribute) whose caption names the right value."""

    def __init__(self, groups: dict[str, Sequence[str]]) -> None:
        self.groups, self.hits = groups, defaultdict(list)

    def add(self, caption: str, attributes: dict[str, str]) -> None:
        named = named_values(caption, self.groups)
        for g in self.groups:
            if g in attributes:
                self.hits[g].append(named[g] == attributes[g])

    def result(self) -> dict[str, float]:
        return {f"words_{g}": float(np.mean(v)) for g, v in self.hits.items() if v}


def _word_groups(predictor) -> dict[str, list[str]]:
    """The describer's attribute groups (the generator's by default), then ``"shape"``: its
    recognition classes."""
    cfg = predictor.cfg
    return {**{g: list(v) for g, v in (cfg.attributes or ATTRIBUTES).items()}, "shape": list(cfg.classes or CLASSES)}


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


COLUMNS = ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "tag_mAP", "attribute_mAP", "recognition_acc")


def table(name: str, result: dict) -> str:
    """A one-row Markdown table of :func:`evaluate_regions`' result."""
    from pixellm.evaluate import markdown_table

    row = [name, result["regions"], *(_fmt(result.get(c)) for c in COLUMNS)]
    return "\n".join(markdown_table(["split", "regions", *COLUMNS], [row]))


def describe_predicted(segmenter, describer, root: str | Path, *, split: str = "val", limit: int = 0,
                       min_iou: float = 0.5, progress: bool = False) -> dict:
    """The captions a user sees: describe each target a segmentation model predicts and score
    them against the ground-truth object it matches.

    Each question's predicted masks are matched one-to-one to its ground-truth targets
    (Hungarian on IoU, scipy); a pair with IoU >= ``min_iou`` is scored against that object's
    reference caption (``regions_<split>.json``, same annotation ids).

    Returns:
        caption metrics and ``words_<group>`` of the matched targets, ``predicted`` (targets predicted), ``matched``
        (pairs scored), ``questions``, and a few ``examples``.
    """
    from scipy.optimize import linear_sum_assignment

    from pixellm.muse import load_split

    root = Path(root)
    records = {r.id: r for r in load_regions(root / f"regions_{split if split in ('train', 'val') else 'test'}.json").records}
    named = WordAccuracy(_word_groups(describer))
    samples = load_split(root, split)
    samples = [samples[j] for j in range(min(limit, len(samples)) if limit else len(samples))]
    refs, hyps, examples = {}, {}, []
    predicted = 0
    for i, s in enumerate(tqdm(samples, disable=not progress, desc="targets")):
        image = s.image_path
        pred = segmenter.predict(image, s.question)
        predicted += len(pred.targets)
        gt = s.masks()
        if not pred.targets or len(gt) == 0:
            continue
        iou = np.array([[_iou(t.mask, g) for g in gt] for t in pred.targets])
        rows, cols = linear_sum_assignment(-iou)
        pairs = [(r, c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]
        if not pairs:
            continue
        descs = describer.describe(image, [pred.targets[r].mask for r, _ in pairs], tasks=("caption",))
        for (r, c), d in zip(pairs, descs, strict=True):
            key = f"{i}:{r}"
            ann_id = s.target_ids[c]
            ref = records[ann_id]
            refs[key], hyps[key] = [ref.caption], d.caption
            named.add(d.caption, ref.attributes)
            if len(examples) < 5:
                examples.append({"question": s.question, "phrase": pred.targets[r].phrase,
                                 "reference": ref.caption, "generated": d.caption})
    out = caption_scores(refs, hyps)
    out.update(named.result())
    out.update(predicted=predicted, matched=len(hyps), questions=len(samples), examples=examples)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return float(inter / union) if union else 0.0


def ablation_table(rows: Sequence[tuple[str, dict]]) -> str:
    """Markdown rows of several :func:`evaluate_regions` results, one per variant."""
    from pixellm.evaluate import markdown_table

    return "\n".join(markdown_table(["variant", *COLUMNS], [[name, *(_fmt(r.get(c)) for c in COLUMNS)]
                                                             for name, r in rows]))
