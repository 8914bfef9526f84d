"""pixellm-bench: outputs, hand-checked baseline scores, real-format MUSE/refCOCO, ablation args."""
from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from pixellm.benchmarks.baselines import InstanceIndex, oracle_count_random
from pixellm.benchmarks.bench import compare, main
from pixellm.benchmarks.runs import (
    VARIANTS,
    budget_note,
    training_stats,
    variant_argv,
    with_default_steps,
)
from pixellm.train.args import build_parser

SPLITS = ("val", "test_less", "test_many", "multi_ref")
FAST = ["--limit", "3", "--max-new-tokens", "8", "--batch-size", "4", "--no-progress", "--threads", "1",
        "--examples", "2"]
H, W = 10, 12


def rect(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# hand-known objects: a polygon covering x in [2, 6), y in [1, 4) (area 12), RLE areas 12 and 16
POLYGON, POLY_MASK = [[2, 1, 6, 1, 6, 4, 2, 4]], rect(1, 4, 2, 6)
RLE_MASK, FAR_MASK = rect(5, 9, 0, 3), rect(6, 10, 8, 12)


def compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def strict_json(path):
    def no_nan(c):
        raise AssertionError(f"{path} holds {c}")
    return json.loads(path.read_text(), parse_constant=no_nan)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """This module's own, smaller dataset (6 train images, seed 1), not conftest's: the bench
    and ablation runs here train and score on it, and its counts keep them short."""
    from pixellm.muse import GenConfig, generate_dataset
    out = tmp_path_factory.mktemp("shapes")
    generate_dataset(GenConfig(seed=1, train=6, val=4, test=6, image_size=32), out, workers=1)
    return out


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh-seed dataset as `make bench` makes one: test images only, seed 7."""
    from pixellm.muse import GenConfig, generate_dataset
    out = tmp_path_factory.mktemp("fresh")
    generate_dataset(GenConfig(seed=7, train=0, val=0, test=6, image_size=32), out, workers=1)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, shapes, micro_config):
    """An untrained micro model (with the IoU head) with a tokenizer fitted to the fixture texts,
    plus a fake history."""
    from pixellm.build import build_model
    from pixellm.config import PixelLMConfig
    from pixellm.llm import train_word_tokenizer
    from pixellm.muse import load_split
    texts = [t for split in ("train", *SPLITS) for s in load_split(shapes, split)
             for t in (s.question, s.answer)]
    torch.manual_seed(0)
    cfg = copy.deepcopy(micro_config)
    cfg["loss"]["iou_weight"] = 1.0
    model = build_model(PixelLMConfig.from_dict(cfg).validate(),
                        tokenizer=train_word_tokenizer(texts + ["what holds soup ?", "red cup"]))
    run = tmp_path_factory.mktemp("run")
    model.save_pretrained(run / "final")
    (run / "history.json").write_text(json.dumps([{"step": 1, "samples_per_s": 3.0},
                                                  {"step": 2, "samples_per_s": 4.5}]))
    return run / "final"


@pytest.fixture(scope="module")
def shapes_report(tmp_path_factory, shapes, fresh, checkpoint):
    out = tmp_path_factory.mktemp("results")
    argv = ["--checkpoint", str(checkpoint), "--data", str(shapes), "--fresh-data", str(fresh), "--out", str(out)]
    assert main([*argv, *FAST]) == 0
    return out


TAG = "cpu_float32_torch" + torch.__version__.split("+")[0]


def check_confidence_fields(gen):
    """The score and zero-target fields agree with the split's own metrics."""
    score, zero = gen["score"], gen["zero_target"]
    assert set(score) == {"auroc", "ece", "n", "n_hits", "note"}
    if score["n"] == 0:  # an untrained model may write no block: nothing to score, and it says so
        assert score["auroc"] is None and score["ece"] is None and score["note"] == "no kept predicted target to score"
    else:
        assert score["n_hits"] / score["n"] == pytest.approx(gen["all"]["precision50"])
        assert 0.0 <= score["ece"] <= 1.0
        assert (score["auroc"] is None) == (score["n_hits"] in (0, score["n"]))  # undefined, and says why
        assert (score["note"] is None) == (score["auroc"] is not None)
        assert score["auroc"] is None or 0.0 <= score["auroc"] <= 1.0
    # a zero-target question scores IoU 1 when answered with no mask, else 0
    assert gen["n_zero_target"] == (zero["n_questions"] if zero else 0)
    assert gen["zero_target_rate"] == (zero["giou"] if zero else None)


def test_writes_named_outputs_with_all_metrics(shapes_report):
    report = strict_json(shapes_report / f"bench_pixellm-micro-test_{TAG}.json")
    assert [r["name"] for r in report["sets"]] == [f"shapes-{s}" for s in SPLITS]
    assert report["meta"]["device"] == "cpu" and report["training"]["train_samples_per_s"] == 4.5
    for r in report["sets"]:
        stem = shapes_report / f"bench_pixellm-micro-test_{r['name']}_{TAG}"
        assert strict_json(stem.with_name(stem.name + ".json"))["name"] == r["name"]
        for png in ("_giou_by_k.png", "_examples.png"):
            assert Image.open(stem.with_name(stem.name + png)).size[0] >= 300
        gen, tf = r["generation"], r["teacher_forced"]
        assert r["n"] == 3 and gen["n"] == 3 and gen["queries_per_s"] > 0
        assert {"giou", "ciou", "count_acc", "precision50", "recall50", "giou_by_k", "n_by_k"} <= set(gen["all"])
        assert sum(gen["all"]["n_by_k"].values()) == 3
        assert tf["n_questions"] + tf["n_zero_target"] == 3
        assert 0.0 <= tf["giou"] <= 1.0 and 0.0 <= tf["ciou"] <= 1.0  # NaN is written as null: fails
        assert set(r["baselines"]) == {"every_object", "one_random", "oracle_count_random"}
        assert r["baselines"]["oracle_count_random"]["all"]["count_acc"] == 1.0
        assert r["comparison"]["beats_all_by_margin"] is False  # an untrained model
        assert 0.0 <= gen["target_phrase_acc"] <= gen["phrase_giou"] <= 1.0
        assert gen["duplicate_iou"] == 0.5 and gen["with_duplicates"]["n_questions"] == 3
        check_confidence_fields(gen)
    md = (shapes_report / f"bench_pixellm-micro-test_{TAG}.md").read_text()
    statement = "The model beats the best trivial answer by >= 0.15 gIoU and cIoU on 0 of 4 splits"
    assert md.count(statement) == 1 and "does NOT beat" not in md and "4.5 samples/s" in md
    assert "teacher-forced (LISA" in md and "gIoU by number of targets K" in md
    assert "of the answers name exactly the true targets" in md
    assert "| split | kept targets | hits | score AUROC | score ECE | zero-target rate (n) |" in md
    assert md.count("Target scores vs hits") == 4 + 3  # every split's section, the fresh ones too


def test_fresh_seed_splits_are_benched_and_compared_with_val(shapes_report, fresh):
    report = strict_json(shapes_report / f"bench_pixellm-micro-test_{TAG}.json")
    f = report["fresh"]
    # the generator's non-empty splits (no val: it made no val image)
    held = [s for s in SPLITS if json.loads((fresh / f"muse_{s}.json").read_text())]
    assert f["seed"] == 7 and f["data"] == str(fresh) and f["val"] == "shapes-val" and "val" not in held
    assert [r["name"] for r in f["sets"]] == [f"shapes-seed7-{s}" for s in held] and len(held) == 3
    val = report["sets"][0]["generation"]["all"]
    for r in f["sets"]:
        one = strict_json(shapes_report / f"bench_pixellm-micro-test_{r['name']}_{TAG}.json")
        assert one["gap_to_val"] == r["gap_to_val"] and one["generation"]["all"] == r["generation"]["all"]
        for m in ("giou", "ciou"):  # an undefined (NaN, so null) score leaves the gap null
            got, ref = r["generation"]["all"][m], val[m]
            assert r["gap_to_val"][m] == (None if None in (got, ref) else pytest.approx(got - ref))
        assert r["n"] == 3 and set(r["baselines"]) == {"every_object", "one_random", "oracle_count_random"}
        check_confidence_fields(r["generation"])
    md = (shapes_report / f"bench_pixellm-micro-test_{TAG}.md").read_text()
    assert "## Fresh seed 7" in md and "(and on 0 of 3 fresh-seed 7 splits)" in md
    assert "| split | n | gIoU | cIoU | gIoU − val | cIoU − val |" in md


def test_fresh_data_without_a_seed_is_a_clear_error(tmp_path, shapes, checkpoint, capsys):
    (tmp_path / "fresh").mkdir()
    argv = ["--checkpoint", str(checkpoint), "--data", str(shapes), "--fresh-data", str(tmp_path / "fresh")]
    assert main(argv) == 2
    assert "fresh data: no seed in" in capsys.readouterr().err


def test_every_object_is_perfect_when_the_answer_is_all_objects(shapes):
    """On images whose only instances are a question's targets, "every object" is the answer."""
    from pixellm.benchmarks.baselines import evaluate_baselines
    from pixellm.muse import load_split

    path = shapes / "muse_val.json"
    first: dict[int, object] = {}  # one targeted question per image
    for s in load_split(shapes, "val"):
        if s.num_targets >= 2:
            first.setdefault(s.image_id, s)
    picked = list(first.values())
    assert len(picked) >= 2
    by_id = {r["id"]: r for r in json.loads(path.read_text())}

    def only_targets(image_id):
        s, record = first[image_id], by_id[image_id]
        anns = {a["id"]: a for a in record["ann_list"]}
        return record["height"], record["width"], [anns[i]["segmentation"] for i in s.target_ids]

    scores = evaluate_baselines(picked, InstanceIndex(only_targets, source="targets only"))
    every, oracle = scores["every_object"]["all"], scores["oracle_count_random"]["all"]
    assert (every["giou"], every["ciou"], every["count_acc"]) == (1.0, 1.0, 1.0)
    assert oracle["giou"] == 1.0  # K distinct of K objects is every object again
    one = scores["one_random"]["all"]
    assert 0.0 < one["giou"] < 1.0 and one["count_acc"] == 0.0  # one of K >= 2 targets


def test_lvis_and_ann_list_give_the_same_objects(shapes):
    a = InstanceIndex.from_muse_json(shapes / "muse_test_many.json")
    b = InstanceIndex.from_lvis(shapes / "lvis_instances_test.json")
    for r in json.loads((shapes / "muse_test_many.json").read_text()):
        np.testing.assert_array_equal(a.masks(r["id"]), b.masks(r["id"]))
        assert a.masks(r["id"]).shape == (len(r["ann_list"]), r["height"], r["width"])


def test_oracle_count_keeps_the_count_even_without_enough_objects():
    objects = np.stack([POLY_MASK, RLE_MASK])
    rng = np.random.default_rng(0)
    assert oracle_count_random(objects, 3, rng).shape == (3, H, W)
    assert oracle_count_random(objects[:0], 2, rng).shape == (2, H, W)
    picked = oracle_count_random(objects, 2, rng)
    assert {m.sum() for m in picked} == {12} and not np.array_equal(picked[0], picked[1])


def muse_root(tmp_path):
    """Official MUSE layout: file_name (train2014) and coco_url (train2017), polygons and RLE."""
    root = tmp_path / "muse"
    for rel in ("train2014/COCO_train2014_000000000001.jpg", "train2017/000000000002.jpg"):
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H), (90, 20, 30)).save(root / "images" / rel)

    def ann(i, name, seg):
        return {"id": i, "category_id": i, "category_name": name, "bbox": [0, 0, 2, 2], "segmentation": seg}

    val = [{"file_name": "COCO_train2014_000000000001.jpg", "id": 1, "height": H, "width": W,
            "ann_list": [ann(1, "red_cup", POLYGON), ann(2, "spoon", compressed(RLE_MASK))],
            "questions": ["What holds soup?", "What stirs?", "Is there a dog?"],
            "answers": [[{"id": 1}, {"id": 2}], [{"id": 2}], []],
            "text_answers": ["The cup {seg} and the spoon {seg}.", "A spoon {seg}.", "No dog."]},
           {"coco_url": "http://images.cocodataset.org/train2017/000000000002.jpg", "id": 2,
            "height": H, "width": W, "ann_list": [ann(5, "knife", compressed(FAR_MASK)), ann(6, "fork", POLYGON)],
            "questions": ["Which cut?"], "answers": [[5]]}]
    long = dict(val[1], questions=["Which cut? " + "really " * 200, "Which cut?"], answers=[[5], [5]])
    (root / "muse_val.json").write_text(json.dumps(val))
    (root / "muse_test_less.json").write_text(json.dumps([long]))
    return root


def test_real_muse_layout_end_to_end_with_hand_checked_baselines(tmp_path, checkpoint):
    out = tmp_path / "res"
    argv = ["--checkpoint", str(checkpoint), "--skip-shapes", "--muse-root", str(muse_root(tmp_path)),
            "--muse-splits", "val", "test_less", "--out", str(out), *FAST, "--limit", "0"]
    assert main(argv) == 0
    val, less = (strict_json(next(out.glob(f"bench_*_muse-{s}_cpu_*.json"))) for s in ("val", "test_less"))
    every = val["baselines"]["every_object"]
    # questions: {1,2} of {1,2} -> 1; {2} of {1,2} -> 0.5; none of {1,2} -> 0; {5} of {5,6} -> 0.5
    assert every["all"]["giou"] == pytest.approx(0.5)
    assert every["all"]["ciou"] == pytest.approx((24 + 12 + 0 + 16) / (24 + 24 + 24 + 28))
    assert every["all"]["count_acc"] == 0.25 and every["all"]["precision50"] == 0.5
    assert every["all"]["giou_by_k"] == {"0": 0.0, "1": 0.5, "2": 1.0}
    assert every["zero_target"]["giou"] == 0.0
    one, oracle = val["baselines"]["one_random"], val["baselines"]["oracle_count_random"]
    assert one["all"]["giou_by_k"]["2"] == 0.5  # one of two targets found exactly
    assert oracle["all"]["count_acc"] == 1.0 and oracle["zero_target"]["giou"] == 1.0
    assert oracle["all"]["giou_by_k"]["2"] == 1.0
    assert val["teacher_forced"]["n_masks"] == 4 and val["teacher_forced"]["n_zero_target"] == 1
    # the 200-word question does not fit the context: a scored miss, not a crash
    assert less["generation"]["n_failed"] == 1 and less["n"] == 2
    assert less["teacher_forced"]["n_skipped"] == 1 and less["teacher_forced"]["n_masks"] == 1


def refcoco_root(tmp_path):
    """Official refer layout: refcoco/refs(unc).p + refcoco/instances.json + images/."""
    root = tmp_path / "refer"
    (root / "refcoco").mkdir(parents=True)
    (root / "images").mkdir()
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": H, "width": W,
               "coco_url": f"http://images.cocodataset.org/train2014/COCO_train2014_{i:012d}.jpg"}
              for i in (1, 2)]
    for im in images:
        Image.new("RGB", (W, H), (0, 90, 0)).save(root / "images" / im["file_name"])
    segs = {100: POLYGON, 101: compressed(RLE_MASK), 200: POLYGON}
    anns = [{"id": a, "image_id": a // 100, "category_id": 1, "segmentation": s, "area": 12.0,
             "bbox": [0, 0, 1, 1], "iscrowd": 0} for a, s in segs.items()]
    (root / "refcoco" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    refs = [{"ref_id": r, "ann_id": a, "image_id": a // 100, "split": "val",
             "sentences": [{"sent": s} for s in sents]}
            for r, a, sents in ((0, 100, ("red cup", "the cup")), (1, 101, ("spoon",)), (2, 200, ("fork",)))]
    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    return root


def test_refcoco_layout_single_and_multi_referring(tmp_path, checkpoint):
    out = tmp_path / "res"
    argv = ["--checkpoint", str(checkpoint), "--skip-shapes", "--refcoco-root", str(refcoco_root(tmp_path)),
            "--out", str(out), *FAST, "--limit", "0"]
    assert main(argv) == 0
    single = strict_json(next(out.glob("bench_*_refcoco-val_cpu_*.json")))
    multi = strict_json(next(out.glob("bench_*_refcoco-val-multi_ref_cpu_*.json")))
    # image 1 holds two objects, image 2 one: every object scores 0.5, 0.5, 0.5, 1 per sentence
    assert single["baselines"]["every_object"]["all"]["giou"] == pytest.approx(0.625)
    assert single["baselines"]["every_object"]["all"]["ciou"] == pytest.approx(48 / 84)
    assert single["teacher_forced"]["n_masks"] == 4 and single["teacher_forced"]["giou_by_k"].keys() == {"1"}
    # multi-referring: "red cup and spoon" (all of image 1) -> 1, "the cup" -> 0.5, "fork" -> 1
    assert multi["n"] == 3 and multi["baselines"]["every_object"]["all"]["giou"] == pytest.approx(2.5 / 3)
    assert multi["teacher_forced"]["n_masks"] == 4


def test_missing_checkpoint_or_split_is_a_clear_error(tmp_path, shapes, checkpoint, capsys):
    assert main(["--checkpoint", str(tmp_path / "none"), "--data", str(shapes)]) == 2
    assert "run `make train` first" in capsys.readouterr().err
    assert main(["--checkpoint", str(checkpoint), "--skip-shapes", "--muse-root", str(tmp_path)]) == 2
    assert "muse_val.json not found" in capsys.readouterr().err


def test_compare_requires_the_margin_on_both_metrics():
    base = {"a": {"all": {"giou": 0.6, "ciou": 0.3}}, "b": {"all": {"giou": 0.4, "ciou": 0.5}}}
    win = compare({"giou": 0.8, "ciou": 0.7}, base, 0.15)
    assert (win["best_giou_baseline"], win["best_ciou_baseline"]) == ("a", "b")
    assert win["lead_giou"] == pytest.approx(0.2) and win["beats_all_by_margin"]
    assert not compare({"giou": 0.8, "ciou": 0.6}, base, 0.15)["beats_all_by_margin"]


def test_ablation_runs_only_the_chosen_variants(tmp_path, shapes, checkpoint, capsys):
    out, runs = tmp_path / "res", tmp_path / "ablation"
    argv = ["--checkpoint", str(checkpoint), "--data", str(shapes), "--splits", "val", "--out", str(out),
            *FAST, "--no-teacher-forced", "--examples", "0", "--ablation", "--ablation-out", str(runs),
            "--train-args", "--steps 1 --batch-size 2 --warmup 1 --threads 1 --no-progress --vision-warmup 1"]
    assert main([*argv, "--variants", "n1,no_refine"]) == 0
    assert [r["variant"] for r in strict_json(runs / "ablation.json")["rows"]] == ["default", "n1", "no_refine"]
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["n1", "no_refine"]
    written = sorted(out.iterdir())
    for bad in ("n1,n2", "n1,n1", ","):
        assert main([*argv, "--variants", bad]) == 2
        assert "--variants" in capsys.readouterr().err
    assert sorted(out.iterdir()) == written  # refused before benching anything


def test_ablation_variants_parse_with_the_default_budget(tmp_path):
    ckpt, train_args = tmp_path / "run" / "final", ["--steps", "7", "--seed", "3", "--out", "elsewhere"]
    seen = set()
    for name in VARIANTS:
        args = build_parser().parse_args(variant_argv(name, checkpoint=ckpt, shapes_root="d",
                                                      run_dir=tmp_path / name, train_args=train_args))
        assert (args.steps, args.seed, args.out, args.eval_split) == (7, 3, str(tmp_path / name), "")
        assert args.model == str(ckpt / "config.json") and args.shapes_root == "d" and not args.no_progress
        seen.add((args.no_refine, args.tokens_per_scale, args.fusion, args.phrase_weight, args.region_weight,
                  args.vision_warmup, args.turns))
    assert seen == {(True, None, None, None, None, 0, 3), (False, 1, None, None, None, 0, 3),
                    (False, None, "mean", None, None, 0, 3), (False, None, None, 0.0, None, 0, 3),
                    (False, None, None, None, 0.0, 0, 3)}
    quiet = build_parser().parse_args(variant_argv("n1", checkpoint=ckpt, shapes_root="d", run_dir=tmp_path,
                                                   progress=False))
    assert quiet.no_progress  # pixellm-bench --no-progress reaches the variants' training
    assert budget_note({"steps": 7}, {"n1": {"steps": 2}}).startswith("budget differs")
    assert budget_note({"steps": 7}, {"n1": {"steps": 7}}) is None


def test_variants_train_as_many_steps_as_the_default_ran(tmp_path):
    """A default run that --time-budget cut to 1234 steps: its variants get --steps 1234 unless
    the training arguments name a step count themselves."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text(json.dumps([{"step": s, "samples_per_s": 2.0} for s in (1001, 1002)]))
    (run / "eval.json").write_text(json.dumps({"steps": 1234, "planned_steps": 1900}))
    stats = training_stats(run)
    assert stats["steps"] == 1234  # the run's length, not the 2 records a --resume left in history.json
    argv = variant_argv("n1", checkpoint=run / "final", shapes_root="d", run_dir=tmp_path / "n1",
                        train_args=with_default_steps(["--seed", "3"], stats))
    assert build_parser().parse_args(argv).steps == 1234
    assert with_default_steps(["--steps", "7"], stats) == ["--steps", "7"]
    assert with_default_steps(["--steps=7"], stats) == ["--steps=7"]
    assert with_default_steps(["--seed", "3"], None) == ["--seed", "3"]


def test_ablation_trains_benches_and_tabulates_the_variants(tmp_path, shapes, checkpoint):
    out, runs = tmp_path / "res", tmp_path / "ablation"
    argv = ["--checkpoint", str(checkpoint), "--data", str(shapes), "--splits", "val", "--out", str(out),
            *FAST, "--no-teacher-forced", "--examples", "0", "--ablation", "--ablation-out", str(runs),
            "--train-args", "--steps 1 --batch-size 2 --warmup 1 --threads 1 --no-progress --seed 5 --vision-warmup 1"]
    assert main(argv) == 0
    table = strict_json(runs / "ablation.json")
    assert [r["variant"] for r in table["rows"]] == ["default", *VARIANTS]
    default_giou = table["rows"][0]["all"]["giou"]
    assert 0.0 <= default_giou <= 1.0
    for r in table["rows"][1:]:
        assert r["train"]["steps"] == 1 and r["n"] == 3
        assert r["delta_giou"] == pytest.approx(r["all"]["giou"] - default_giou) and -1.0 <= r["delta_giou"] <= 1.0
        cfg = json.loads((runs / r["variant"] / "final" / "config.json").read_text())
        got = (cfg["loss"]["refine"], cfg["codebook"]["tokens_per_scale"], cfg["codebook"]["fusion"],
               cfg["loss"]["phrase_weight"], cfg["loss"]["region_weight"])
        assert got == {"no_refine": (False, 3, "linear", 1.0, 1.0), "n1": (True, 1, "linear", 1.0, 1.0),
                       "fusion_mean": (True, 3, "mean", 1.0, 1.0), "no_phrase": (True, 3, "linear", 0.0, 1.0),
                       "no_region": (True, 3, "linear", 1.0, 0.0)}[r["variant"]]
        assert (runs / r["variant"] / "vision_warmup.json").is_file() == (r["variant"] != "no_region")
    assert "budget differs from the default run (2 steps)" in table["note"]
    assert "## Ablation" in (runs / "ablation.md").read_text()
    assert list(out.glob("ablation_pixellm-micro-test_shapes-val_cpu_*.md"))
