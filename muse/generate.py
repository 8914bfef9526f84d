"""Procedural multi-target reasoning dataset in the MUSE and LVIS formats (``pixellm-data``).

Deterministic for a seed: every image draws from its own generator seeded by
``(seed, split, index)``, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import pathlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import export, regions
from .export import Entry
from .questions import DEFAULT_WEIGHTS, Question, make_questions, multi_ref_question
from .scene import Scene, render_scene
from .shapes import COLOURS, SHAPES

# (colour, shape) pairs that never appear in training images: a compositional test.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("purple", "triangle"), ("orange", "circle"), ("green", "star"), ("yellow", "hexagon"),
)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MULTI_REF_SIZES = (6, 5, 4)  # group sizes of the multi-referring questions, cycled
LESS_MAX_TARGETS = 3  # test_less holds questions with at most this many targets
OUTPUT_SPLITS = ("train", "val", "test_less", "test_many", "multi_ref")


@dataclass(frozen=True)
class GenConfig:
    """What to generate."""

    # Layout version of the files: 2 writes answers as full annotations and segmentations as
    # polygons or uncompressed RLE (the official loader's forms); 3 adds each LVIS annotation's
    # ``colour`` (the dense colour labels of the LSeg family); 4 adds ``regions_<split>.json``
    # (a caption, tags and attributes per object, the DynRefer family's). A change regenerates data.
    format: int = 4
    seed: int = 0  # base seed of every per-image generator
    image_size: int = 96  # square image side S in pixels; object sizes scale with it
    train: int = 4000  # number of training images
    val: int = 200  # number of validation images
    test: int = 300  # number of test images (split into test_less / test_many / multi_ref)
    questions_per_image: int = 3  # questions per train / val image
    test_questions_per_image: int = 4  # more for test images, to fill test_many
    min_objects: int = 12  # objects per scene, drawn uniformly in [min, max]
    max_objects: int = 26
    held_out: tuple[tuple[str, str], ...] = HELD_OUT
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))


def split_pairs(split: str, held_out: Sequence[tuple[str, str]] = HELD_OUT) -> list[tuple]:
    """(colour, shape) pairs allowed in a split: all but the held-out ones in train."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    return [p for p in pairs if p not in set(held_out)] if split == "train" else pairs


def render_example(config: GenConfig, split: str,
                   index: int) -> tuple[Scene, list[Question], Question | None]:
    """Render image ``index`` of ``split`` with its questions (pure function of the inputs).

    Args:
        config: generation settings (seed, size, counts...).
        split: ``"train"``, ``"val"`` or ``"test"``.
        index: image index within the split.

    Returns:
        (scene with its (S, S, 3) uint8 image and (S, S) bool visible masks, the questions,
        the multi-referring question for test images with >= 2 objects else None).
    """
    rng = np.random.default_rng([config.seed, SPLIT_CODES[split], index])
    num_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    scene = render_scene(rng, size=config.image_size, num_objects=num_objects,
                         pairs=split_pairs(split, config.held_out))
    count = config.test_questions_per_image if split == "test" else config.questions_per_image
    questions = make_questions(scene, rng, count, weights=config.weights,
                               companion_cap=LESS_MAX_TARGETS if split == "test" else None)
    multi = None
    if split == "test" and len(scene.objects) >= 2:
        multi = multi_ref_question(scene, rng, MULTI_REF_SIZES[index % len(MULTI_REF_SIZES)])
    return scene, questions, multi


def _build(job: tuple[GenConfig, str, int, int, str]) -> Entry:
    """Worker: render one image, write its PNG, return its JSON-ready entry."""
    config, split, index, image_id, out = job
    scene, questions, multi = render_example(config, split, index)
    file_name = f"{split}/{image_id:07d}.png"
    Image.fromarray(scene.image).save(pathlib.Path(out) / "images" / file_name)
    anns = export.annotations(scene, image_id)
    return Entry(split=split, image=export.lvis_image(scene, image_id, file_name), anns=anns,
                 questions=[export.question_tuple(q, anns) for q in questions],
                 multi_ref=export.question_tuple(multi, anns) if multi else None,
                 regions=regions.region_annotations(scene, anns))


def _jobs(config: GenConfig, out: pathlib.Path) -> list[tuple]:
    jobs, image_id = [], 0
    for split in SPLIT_CODES:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for index in range(getattr(config, split)):
            image_id += 1  # global ids: unique across splits
            jobs.append((config, split, index, image_id, str(out)))
    return jobs


def _run(jobs: list[tuple], workers: int) -> list[Entry]:
    if workers <= 1:
        return [_build(j) for j in tqdm(jobs, disable=None, desc="images")]
    # spawn: safe even when the caller has torch threads running (fork is not)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return list(tqdm(pool.imap(_build, jobs, chunksize=64), total=len(jobs), disable=None,
                         desc="images"))


def _split_records(entries: list[Entry]) -> dict[str, list[dict]]:
    """MUSE records per output split; test images feed test_less, test_many and multi_ref."""
    out: dict[str, list[dict]] = {name: [] for name in OUTPUT_SPLITS}
    for e in entries:
        if e.split != "test":
            out[e.split].append(export.muse_record(e, e.questions))
            continue
        less = [q for q in e.questions if len(q[1]) <= LESS_MAX_TARGETS]
        many = [q for q in e.questions if len(q[1]) > LESS_MAX_TARGETS]
        for name, qs in (("test_less", less), ("test_many", many),
                         ("multi_ref", [e.multi_ref] if e.multi_ref else [])):
            if qs:
                out[name].append(export.muse_record(e, qs))
    return out


def generate_dataset(config: GenConfig, out: str | pathlib.Path, *, workers: int = 2) -> dict:
    """Generate the dataset under ``out``.

    Writes ``images/<split>/*.png``, ``lvis_instances_<train|val|test>.json``,
    ``regions_<train|val|test>.json`` (:mod:`muse.regions`),
    ``muse_<train|val|test_less|test_many|multi_ref>.json`` and ``meta.json``.

    Args:
        config: what to generate.
        out: output folder (created).
        workers: processes rendering images (the output does not depend on it).

    Returns:
        the meta dict written to ``meta.json`` (config, vocabulary, per-split statistics,
        ``seconds``).
    """
    start = time.perf_counter()
    out = pathlib.Path(out)
    (out / "meta.json").unlink(missing_ok=True)  # written last: its presence marks a complete run
    entries = _run(_jobs(config, out), workers)
    train_counts = export.category_image_counts(e for e in entries if e.split == "train")
    for split in SPLIT_CODES:
        lvis = export.lvis_file((e for e in entries if e.split == split), train_counts)
        _dump(lvis, out / f"lvis_instances_{split}.json")
        chosen = [e for e in entries if e.split == split]
        _dump(regions.regions_file([e.image for e in chosen], [r for e in chosen for r in e.regions]),
              out / f"regions_{split}.json")
    records = _split_records(entries)
    for name, recs in records.items():
        _dump(recs, out / f"muse_{name}.json")
    meta = _meta(config, records, time.perf_counter() - start)
    _dump(meta, out / "meta.json", indent=2)
    return meta


def stale_reason(config: GenConfig, out: str | pathlib.Path) -> str | None:
    """Why ``out`` does not hold exactly what ``config`` generates (None: it does).

    A finished generation ends by writing ``meta.json`` with its config, so a missing or
    unreadable one means nothing (or an interrupted run) is there.
    """
    path = pathlib.Path(out) / "meta.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))["config"]
    except FileNotFoundError:
        return f"{path} not found"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path} unreadable ({type(e).__name__}: {e})"
    new = json.loads(json.dumps(asdict(config)))
    diff = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    return f"generated with other settings ({', '.join(diff)})" if diff else None


def _meta(config: GenConfig, records: dict[str, list[dict]], seconds: float) -> dict:
    return {
        "config": asdict(config), "seed": config.seed, "image_size": config.image_size,
        "colours": COLOURS, "shapes": list(SHAPES),
        "held_out_pairs": [list(p) for p in config.held_out],
        "held_out_in": ["val", "test_less", "test_many", "multi_ref"],
        "splits": {name: export.target_stats(recs) for name, recs in records.items()},
        "seconds": round(seconds, 2),
    }


def _dump(obj, path: pathlib.Path, indent: int | None = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)


def summary(meta: dict) -> str:
    """A printable table of the per-split statistics in ``meta``."""
    lines = [f"{'split':<10} {'images':>6} {'questions':>9} {'mean K':>6} {'K=0':>5}  "
             f"histogram K=0..{export.HIST_CAP - 1},>={export.HIST_CAP}"]
    for name, s in meta["splits"].items():
        lines.append(f"{name:<10} {s['images']:>6} {s['questions']:>9} {s['mean_targets']:>6.2f} "
                     f"{s['zero_target_fraction']:>5.1%}  {s['histogram']}")
    pairs = ", ".join(" ".join(p) for p in meta["held_out_pairs"])
    lines.append(f"held-out pairs (val/test only): {pairs}")
    lines.append(f"generated in {meta['seconds']:.1f} s")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    d = GenConfig()
    p = argparse.ArgumentParser(prog="pixellm-data", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/shapes", help="output folder (default data/shapes)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train", type=int, default=d.train, help="training images")
    p.add_argument("--val", type=int, default=d.val, help="validation images")
    p.add_argument("--test", type=int, default=d.test, help="test images")
    p.add_argument("--image-size", type=int, default=d.image_size, help="square side in px")
    p.add_argument("--questions-per-image", type=int, default=d.questions_per_image)
    p.add_argument("--workers", type=int, default=2, help="rendering processes")
    p.add_argument("--if-stale", action="store_true",
                   help="do nothing if --out already holds a complete generation with these settings")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: generate and print the statistics."""
    args = _parser().parse_args(argv)
    config = GenConfig(seed=args.seed, image_size=args.image_size, train=args.train,
                       val=args.val, test=args.test,
                       questions_per_image=args.questions_per_image)
    if args.if_stale:
        reason = stale_reason(config, args.out)
        if reason is None:
            print(f"{args.out} is up to date (delete it to regenerate)")
            return 0
        print(f"generating {args.out}: {reason}")
    meta = generate_dataset(config, args.out, workers=args.workers)
    print(summary(meta))
    print(f"written to {pathlib.Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
