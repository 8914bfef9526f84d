"""``pixellm-compare``: a short head-to-head run on micro configs writes the report."""
from __future__ import annotations

import json
import math

import pytest

from pixellm.benchmarks.compare import claim_verdict, main, split_winners

TRAIN = "--batch-size 4 --warmup 1 --lr 3e-3 --eval-split '' --threads 1 --seed 7"


@pytest.fixture(scope="module")
def compared(tmp_path_factory, shapes, micro_cfg, micro_lisa_cfg, micro_lseg_cfg, micro_lts_cfg):
    tmp = tmp_path_factory.mktemp("compare")
    merged = tmp / "lisa-micro-merged.json"
    merged.write_text(json.dumps({**json.loads(micro_lisa_cfg.read_text()), "name": "lisa-micro-merged",
                                  "merge_targets": True}))
    argv = ["--models", str(micro_cfg), str(micro_lisa_cfg), str(merged), str(micro_lseg_cfg), str(micro_lts_cfg), "--runs", str(tmp / "runs"),
            "--data", str(shapes), "--splits", "val", "test_many", "multi_ref", "--time-budget", "0", "--steps", "3",
            "--train-args", TRAIN, "--family-args", "lisa=--vision-warmup 3 --vision-warmup-batch 2", "--sizes", "--repeats", "1", "--out", str(tmp / "out"), "--no-progress",
            "--batch-size", "4"]
    assert main(argv) == 0
    return tmp, argv


def test_report_has_one_row_per_model_and_split(compared, shapes):
    tmp, _ = compared
    files = sorted(p.name for p in (tmp / "out").iterdir())
    stem = files[0].rsplit(".", 1)[0]
    assert stem.startswith("compare_cpu_float32_torch") and files == [f"{stem}.json", f"{stem}.md", f"{stem}.png"]
    report = json.loads((tmp / "out" / f"{stem}.json").read_text())
    rows = report["rows"]
    models = ["pixellm-micro-test", "lisa-micro-test", "lisa-micro-merged", "lseg-micro-test", "lts-micro-test"]
    splits = ("shapes-val", "shapes-test_many", "shapes-multi_ref")
    assert [(r["model"], r["split"]) for r in rows] == [(m, s) for m in models for s in splits]
    from pixellm.muse import load_split

    val_n = len(load_split(shapes, "val"))
    for r in rows:
        assert {"giou", "ciou", "tflops_k3", "latency_ms_k3", "tf_giou", "trivial_giou", "train_steps"} <= set(r)
        assert r["train_steps"] == 3 and r["latency_ms_k3"] > 0
        if r["model"] == "lts-micro-test":  # a referring model: one pass per expression
            assert r["tflops_k1"] * 3 == pytest.approx(r["tflops_k3"]) and r["tflops_k1"] > 0
            if r["split"] != "shapes-multi_ref":  # reasoning questions: not answered, and why
                assert r["giou"] is None and r["n"] is None and "referring model" in r["notes"]["giou"]
                continue
            assert 0 <= r["giou"] <= 1 and 0 <= r["tf_giou"] <= 1
            continue
        assert 0 <= r["giou"] <= 1
        if r["model"] == "lseg-micro-test":  # one pass per question, no answer to teacher-force
            assert r["tflops_k1"] == r["tflops_k3"] == r["tflops_k10"] > 0 and r["tf_giou"] is None
            assert "teacher-force" in r["notes"]["tf_giou"]
        else:
            assert 0 <= r["tf_giou"] <= 1 and r["tflops_k1"] < r["tflops_k3"] < r["tflops_k10"]
        assert 0 < r["trivial_giou"] <= 1 and math.isfinite(r["count_acc"])
        assert r["n"] == (val_n if r["split"] == "shapes-val" else r["n"]) > 0
    by = {(r["model"], r["split"]): r for r in rows}
    # the trivial answers do not depend on the model; the merged LISA decodes one mask per answer
    assert by["pixellm-micro-test", "shapes-val"]["trivial_giou"] == by["lisa-micro-test", "shapes-val"]["trivial_giou"]
    lisa, merged = by["lisa-micro-test", "shapes-val"], by["lisa-micro-merged", "shapes-val"]
    assert merged["tflops_k10"] < lisa["tflops_k10"] and merged["tflops_k1"] == lisa["tflops_k1"]
    md = (tmp / "out" / f"{stem}.md").read_text()
    assert "PixelLM's claim" in md and "| lisa-micro-merged | test_many |" in md
    assert report["winners"][0]["split"] == "shapes-val"
    # the LISA runs ran their family's stage (SAM on point prompts) inside the budget; PixelLM's none
    warm = {m: (tmp / "runs" / m / "vision_warmup.json").is_file() for m in models}
    assert warm == {"pixellm-micro-test": False, "lisa-micro-test": True, "lisa-micro-merged": True,
                    "lseg-micro-test": False, "lts-micro-test": False}
    assert "lisa `--vision-warmup 3 --vision-warmup-batch 2`" in md
    assert "Fields marked - above, and why:" in md and "- lseg-micro-test, tf_giou, tf_ciou: no answer text" in md
    assert "- lts-micro-test, giou: a referring model" in md


def test_existing_runs_are_reused(compared, capsys):
    tmp, argv = compared
    final = tmp / "runs" / "lisa-micro-test" / "final" / "model.safetensors"
    stamp = final.stat().st_mtime_ns
    assert main([*argv, "--splits", "val", "--limit", "2"]) == 0
    assert "reusing" in capsys.readouterr().out and final.stat().st_mtime_ns == stamp


def test_family_args_parse():
    from pixellm.benchmarks.compare import FAMILY_ARGS, family_args
    from pixellm.errors import InputError

    assert family_args(None) == FAMILY_ARGS and family_args(["lisa=", "pixellm=--turns 1"]) == {
        "lisa": "", "pixellm": "--turns 1"}
    with pytest.raises(InputError, match="FAMILY=ARGS"):
        family_args(["--vision-warmup 3"])


def test_winners_and_verdict_in_words():
    rows = [dict(model=m, split=s, giou=g, ciou=c, tflops_k3=f, tflops_7b_k3=f7, tf_giou=g + 0.1, trivial_giou=0.3)
            for m, f, f7, scores in [("p", 1.0, 4.8, {"shapes-test_many": (0.50, 0.40), "shapes-multi_ref": (0.60, 0.5)}),
                                     ("l", 2.0, 10.0, {"shapes-test_many": (0.45, 0.42), "shapes-multi_ref": (0.605, 0.6)})]
            for s, (g, c) in scores.items()]
    wins = {w["split"]: w for w in split_winners(rows)}
    assert wins["shapes-test_many"]["winner"] == "p" and wins["shapes-test_many"]["lead_giou"] == pytest.approx(0.05)
    assert wins["shapes-multi_ref"]["winner"] == "l"
    text = claim_verdict(rows, "p", "l")
    assert "claim holds" in text and "Caveat" not in text  # 0.005 behind is a tie; 0.5x and 0.48x the TFLOPs
    rows[2]["giou"] = 0.55  # LISA on test_many: now PixelLM trails by 0.05 there
    text = claim_verdict(rows, "p", "l")
    assert "does not hold" in text and "trails" in text
    assert "not checked" in claim_verdict(rows, "p", None)
    rows[1]["trivial_giou"] = 0.7  # p is now below the trivial answer on multi_ref
    assert "Caveat: p scores below the best trivial answer on multi_ref" in claim_verdict(rows, "p", "l")
