"""The evaluation sets of ``pixellm-bench``: the generated dataset, real MUSE and refCOCO.

Every set pairs its questions with an :class:`~pixellm.benchmarks.baselines.InstanceIndex`
(all objects of each image) for the trivial baselines.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pixellm.errors import InputError
from pixellm.muse.layouts import LAYOUTS

from .baselines import InstanceIndex

SHAPES_SPLITS = ("val", "test_less", "test_many", "multi_ref")
MUSE_SPLITS = ("val", "test_less", "test_many")


@dataclass
class EvalSet:
    """One benchmark split.

    Attributes:
        name: "<source>-<split>", e.g. "shapes-val", "refcoco-val-multi_ref".
        samples: the questions, as :class:`pixellm.muse.Sample`.
        instances: all instance masks of each image, for the baselines.
    """

    name: str
    samples: Sequence
    instances: InstanceIndex


def _muse_file(source: str, root: Path, split: str) -> Path:
    path = root / f"muse_{split}.json"
    if not path.is_file():
        raise InputError(f"{source}: {path} not found (choose splits with --{source}-splits); "
                         f"expected layout: {LAYOUTS[source]}")
    return path


def muse_sets(source: str, root: str | Path, splits: Sequence[str], *,
              images: str | Path | None = None, lvis: str | Path | None = None,
              strict: bool = True) -> list[EvalSet]:
    """MUSE-format splits (``source`` "shapes" or "muse") under ``root``.

    Args:
        root: folder with ``muse_<split>.json`` and ``images/``.
        splits: split names, e.g. ("val", "test_less").
        images: the image root, if not ``root/images`` (``file_name`` / ``coco_url`` resolve
            against it as in :class:`pixellm.muse.MuseDataset`).
        lvis: an LVIS instances file to take each image's objects from; default: the records'
            ``ann_list``.
        strict: raise on a malformed record (else skip it, see ``MuseDataset``).
    Raises:
        InputError: ``root`` or a split file is missing; the message names the layout.
    """
    from pixellm.muse import MuseDataset

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{source}: {root} does not exist; expected layout: {LAYOUTS[source]}")
    shared = InstanceIndex.from_lvis(lvis) if lvis else None
    images = Path(images) if images else root / "images"
    out = []
    for split in splits:
        path = _muse_file(source, root, split)
        out.append(EvalSet(f"{source}-{split}", MuseDataset(path, images, strict=strict),
                           shared or InstanceIndex.from_muse_json(path)))
    return out


def fresh_sets(root: str | Path, *, strict: bool = True) -> tuple[int, list[EvalSet]]:
    """The splits of a fresh-seed generated dataset that hold questions.

    A fresh-seed set is the generator run with another seed and no train or val images
    (``pixellm-data --seed S --train 0 --val 0 --out DIR``): new scenes from the same
    distribution, never seen in training nor used to choose a checkpoint.

    Args:
        root: the dataset folder (``meta.json`` gives the seed).
        strict: raise on a malformed record (else skip it).

    Returns:
        (seed, sets): the sets are named "shapes-seed<S>-<split>", among val, test_less,
        test_many and multi_ref, those whose file exists and is not empty.
    Raises:
        InputError: no readable ``meta.json`` with a seed, or no split with a question.
    """
    root, how = Path(root), f"make it with `pixellm-data --seed S --train 0 --val 0 --out {root}`"
    try:
        seed = int(json.loads((root / "meta.json").read_text(encoding="utf-8"))["seed"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"fresh data: no seed in {root / 'meta.json'} ({type(e).__name__}: {e}); {how}") from e
    splits = [s for s in SHAPES_SPLITS if (root / f"muse_{s}.json").is_file()]
    sets = [EvalSet(f"shapes-seed{seed}-{split}", es.samples, es.instances)
            for split, es in zip(splits, muse_sets("shapes", root, splits, strict=strict), strict=True)
            if len(es.samples)]
    if not sets:
        raise InputError(f"fresh data: no split of {root} holds a question; {how}")
    return seed, sets


def refcoco_sets(root: str | Path, splits: Sequence[str], *, dataset: str = "refcoco",
                 split_by: str = "unc", strict: bool = True) -> list[EvalSet]:
    """Per split: the single-target referring set and its multi-referring questions (docs/design.md, Data formats).

    Raises:
        InputError: the refs pickle or ``instances.json`` is missing; the message names the layout.
    """
    from pixellm.muse import RefCocoDataset, multi_referring

    root = Path(root)
    refs, instances = root / dataset / f"refs({split_by}).p", root / dataset / "instances.json"
    for path in (refs, instances):
        if not path.is_file():
            raise InputError(f"refcoco: {path} not found; expected layout: {LAYOUTS['refcoco']}")
    index = InstanceIndex.from_coco(instances)  # one load, shared by all splits
    out = []
    for split in splits:
        ds = RefCocoDataset(root, dataset=dataset, split_by=split_by, split=split, strict=strict)
        if len(ds) == 0:
            raise InputError(f"refcoco: no ref of split {split!r} in {refs}")
        out += [EvalSet(f"{dataset}-{split}", ds, index),
                EvalSet(f"{dataset}-{split}-multi_ref", multi_referring(ds), index)]
    return out
