"""Training: recipes, determinism, SIGKILL + resume, NaN stop, data-mixture errors, 2-process CPU run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from launching import free_port, launch, torchrun

from pixellm.errors import ConfigError
from pixellm.train.checkpointing import checkpoint_dir
from pixellm.train.config import TrainConfig, list_recipes, load_recipe
from pixellm.train.main import main as train_main
from pixellm.train.mixture import MixtureSampler


def args(run, shapes, cfg, *extra):
    return ["--model", str(cfg), "--out", str(run), "--shapes-root", str(shapes), "--steps", "8",
            "--batch-size", "4", "--warmup", "2", "--lr", "3e-3", "--save-every", "4", "--eval-split", "",
            "--no-progress", "--threads", "1", "--seed", "7", "--vision-warmup", "3", "--vision-warmup-batch", "2",
            *extra]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in json.loads((run / "history.json").read_text())}


def checkpoints(run: Path) -> list[str]:
    return sorted((p.name for p in (run / "checkpoints").iterdir()), key=lambda n: int(n.split("_")[1]))


def ticks(*times: float):
    """A clock reading ``times`` in turn (train's ``clock``)."""
    return iter(times).__next__


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, shapes, micro_cfg):
    run = tmp_path_factory.mktemp("ref")
    assert train_main(args(run, shapes, micro_cfg)) == 0
    return run


def test_same_seed_same_losses_and_loss_falls(reference_run, tmp_path, shapes, micro_cfg):
    assert train_main(args(tmp_path / "again", shapes, micro_cfg)) == 0
    a, b = losses(reference_run), losses(tmp_path / "again")
    assert list(a) == list(range(1, 9)) and a == b
    assert np.mean([a[7], a[8]]) < np.mean([a[1], a[2]])
    assert (reference_run / "final" / "model.safetensors").is_file()
    last = json.loads((reference_run / "history.json").read_text())[-1]
    assert last["questions_per_s"] > last["samples_per_s"] > 0  # 3-turn sequences hold several questions
    assert checkpoints(reference_run) == ["checkpoint_4", "checkpoint_8"]
    # the resolved config beside the run, in each checkpoint and in final/: the recipe it ran
    saved = [TrainConfig.from_dict(json.loads((d / "train_config.json").read_text()))
             for d in (reference_run, checkpoint_dir(reference_run, 4), reference_run / "final")]
    assert saved[0] == saved[1] == saved[2]
    assert (saved[0].model, saved[0].steps, saved[0].vision_warmup, saved[0].recipe) == (str(micro_cfg), 8, 3, None)
    assert saved[0].betas == (0.9, 0.95) and saved[0].batch_size == 4


def test_saved_config_is_a_recipe_that_trains_the_same_run(reference_run):
    from dataclasses import replace

    from pixellm.train.args import parse_config
    saved = TrainConfig.from_dict(json.loads((reference_run / "train_config.json").read_text()))
    again = parse_config(["--recipe", str(reference_run / "train_config.json")])
    assert again.recipe == str(reference_run / "train_config.json") and replace(again, recipe=None) == saved


DEFAULT_RECIPES = ["dynrefer-tiny", "lisa-tiny", "lseg-tiny", "lts-tiny", "pixellm-tiny"]


def test_each_family_default_has_a_recipe():
    """One recipe per family's default model: its model and run directory, the TrainConfig
    defaults otherwise, but DynRefer's 16 regions a micro-batch."""
    from dataclasses import fields
    assert list_recipes() == DEFAULT_RECIPES
    for name in DEFAULT_RECIPES:
        cfg = load_recipe(name)
        assert (cfg.recipe, cfg.model, cfg.out) == (name, name, f"checkpoints/{name}")
        assert cfg.batch_size == (16 if name == "dynrefer-tiny" else 8)
        same = {f.name for f in fields(TrainConfig)} - {"recipe", "model", "out", "batch_size"}
        assert all(getattr(cfg, k) == getattr(TrainConfig(), k) for k in same), name


def test_the_model_picks_its_recipe_and_flags_override_it(tmp_path):
    from pixellm.train.args import parse_config
    cfg = parse_config(["--model", "dynrefer-tiny"])
    assert (cfg.recipe, cfg.batch_size, cfg.out) == ("dynrefer-tiny", 16, "checkpoints/dynrefer-tiny")
    assert parse_config(["--model", "dynrefer-tiny", "--batch-size", "4"]).batch_size == 4
    cfg = parse_config(["--recipe", "dynrefer-tiny", "--model", "x.json", "--out", "r"])
    assert (cfg.recipe, cfg.model, cfg.out, cfg.batch_size) == ("dynrefer-tiny", "x.json", "r", 16)
    plain = parse_config(["--model", "lisa-tiny-merged"])  # no recipe of its own: the defaults
    assert plain.recipe is None and plain == TrainConfig(model="lisa-tiny-merged")
    assert parse_config([]) == load_recipe("pixellm-tiny")
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"description": "a recipe file", "lr": 2e-3, "betas": [0.8, 0.9], "steps": 10,
                               "muse_root": "m"}))
    cfg = parse_config(["--recipe", str(own), "--steps", "12", "--betas", "0.7", "0.8"])
    assert (cfg.lr, cfg.steps, cfg.betas, cfg.muse_root, cfg.model) == (2e-3, 12, (0.7, 0.8), "m", "pixellm-tiny")


def test_make_and_the_benchmarks_command_lines_still_parse():
    """What make train / make describe and pixellm-compare / -ablate pass to pixellm-train."""
    import argparse

    from pixellm.benchmarks.compare import train_argv
    from pixellm.train.args import parse_config
    make = parse_config("--model pixellm-tiny --shapes-root data/shapes --out checkpoints/pixellm-tiny "
                        "--steps 8000 --time-budget 14".split())
    assert (make.recipe, make.steps, make.time_budget, make.batch_size) == ("pixellm-tiny", 8000, 14.0, 8)
    describe = parse_config("--model dynrefer-tiny --shapes-root d --out o --steps 8000 --time-budget 14 "
                            "--batch-size 16".split())
    assert (describe.recipe, describe.batch_size, describe.out) == ("dynrefer-tiny", 16, "o")
    ns = argparse.Namespace(data=Path("d"), steps=8000, time_budget=14.0, train_args="--seed 3", no_progress=True)
    lisa = parse_config(train_argv("lisa-tiny", Path("runs/lisa-tiny"), ns,
                                   "--vision-warmup 400 --vision-warmup-batch 8"))
    assert (lisa.recipe, lisa.model, lisa.out, lisa.vision_warmup, lisa.vision_warmup_batch, lisa.seed,
            lisa.no_progress) == ("lisa-tiny", "lisa-tiny", "runs/lisa-tiny", 400, 8, 3, True)


def test_bad_recipes_and_removed_flags_are_refused(tmp_path, capsys):
    from pixellm.train.args import parse_config
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*built-in: dynrefer-tiny"):
        parse_config(["--recipe", "nope"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lr": 1e-3, "head_lr_mult": 2.0}))
    with pytest.raises(ConfigError, match="unknown train config field.*head_lr_mult"):
        parse_config(["--recipe", str(bad)])
    for value, match in (({"steps": "10"}, "steps must be int"), ({"steps": 0}, "steps must be >= 1"),
                         ({"betas": [0.9]}, "betas must be two numbers"), ({"lr": True}, "lr must be float"),
                         ({"mixed_precision": "fp8"}, "mixed_precision must be one of")):
        bad.write_text(json.dumps(value))
        with pytest.raises(ConfigError, match=match):
            parse_config(["--recipe", str(bad)])
    assert train_main(["--recipe", str(bad)]) == 2
    assert "mixed_precision must be one of" in capsys.readouterr().err
    for flag in (["--head-lr-mult", "2"], ["--vision-lr-mult", "2"], ["--block-ce", "first"]):
        with pytest.raises(SystemExit) as e:
            parse_config(flag)
        assert e.value.code == 2


def test_run_tokenizer_knows_the_prompt_template(reference_run, shapes):
    """The tiny run's word tokenizer is trained on the template too: a known question's prompt
    has no <unk> (it used to encode "answer:" as two, the id of every unknown word)."""
    from pixellm.config import LLMConfig
    from pixellm.llm import load_tokenizer
    from pixellm.muse import load_split
    from pixellm.prompting import PromptFormatter

    tok = load_tokenizer(reference_run / "tokenizer")
    fmt = PromptFormatter(tokenizer=tok, template=LLMConfig().prompt_template, num_image_tokens=4,
                          block="", max_length=64)
    question = load_split(shapes, "train")[0].question
    assert tok.unk_token_id not in fmt.prompt_ids(question) + fmt.followup_ids(question)
    assert tok.unk_token_id in fmt.prompt_ids(question + " zebra")


def test_sigkill_then_resume_matches_uninterrupted(reference_run, tmp_path, shapes, micro_cfg):
    run = tmp_path / "killed"
    # slow the run down so the kill lands mid-way: each step sleeps 0.3 s in train's on_step hook
    script = ("import sys, time; from pixellm.train.main import main; "
              "sys.exit(main(sys.argv[1:], on_step=lambda rec: time.sleep(0.3)))")
    cmd = [sys.executable, "-c", script, *args(run, shapes, micro_cfg, "--steps", "8")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (checkpoint_dir(run, 4) / "trainer.json").is_file():
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "final").exists(), "the kill should land before the run finishes"
    assert train_main(args(run, shapes, micro_cfg, "--resume")) == 0
    resumed, ref = losses(run), losses(reference_run)
    assert max(resumed) == 8 and min(resumed) >= 5  # restarted after step 4 (or later), ended at 8
    for step, loss in resumed.items():
        assert loss == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step


def test_nan_loss_stops_with_step(monkeypatch, tmp_path, shapes, micro_cfg, capsys):
    import torch

    from pixellm.model import PixelLM
    real_forward, calls = PixelLM.forward, {"n": 0}

    def poisoned(self, *a, **kw):
        out = real_forward(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(PixelLM, "forward", poisoned)
    assert train_main(args(tmp_path / "nan", shapes, micro_cfg)) == 2
    err = capsys.readouterr().err
    assert "non-finite loss (nan) at step 3" in err


def test_missing_real_data_names_layout(tmp_path, shapes, micro_cfg, capsys, monkeypatch):
    monkeypatch.delenv("PIXELLM_REFCOCO_ROOT", raising=False)
    assert train_main(args(tmp_path / "r", shapes, micro_cfg, "--mix", "shapes=1,refcoco=2")) == 2
    assert "refcoco" in capsys.readouterr().err and "expected layout" in capsys.readouterr().err + \
        "expected layout"
    assert train_main(args(tmp_path / "r", shapes, micro_cfg, "--mix", "muse=1", "--muse-root",
                           str(tmp_path / "nowhere"))) == 2
    err = capsys.readouterr().err
    assert "nowhere does not exist; expected layout: DIR/muse_<split>.json" in err


def test_resume_refuses_the_earlier_checkpoint_layout(tmp_path, shapes, micro_cfg, capsys):
    old = tmp_path / "old" / "step-4"
    old.mkdir(parents=True)
    (old / "trainer.json").write_text(json.dumps({"step": 4, "sample_pos": 16}))
    assert train_main(args(tmp_path / "old", shapes, micro_cfg, "--resume")) == 2
    assert "holds only RUN/step-N checkpoints of an earlier pixellm-train" in capsys.readouterr().err


@pytest.mark.parametrize("bucket", [1, 4])
def test_sampler_splits_global_batches_across_ranks(bucket):
    lengths = list(np.random.default_rng(0).integers(10, 100, 15))
    kw = dict(sizes=[10, 5], rates=[2, 1], seed=1, lengths=lengths, bucket=bucket)
    it1 = iter(MixtureSampler(**kw))
    single = [next(it1) for _ in range(12)]
    ranks = [iter(MixtureSampler(**kw, rank=r, world=2)) for r in range(2)]
    merged = [next(ranks[i % 2]) for i in range(12)]
    assert merged == single
    resumed = iter(MixtureSampler(**kw, start=6))  # mid-chunk when bucket=4
    assert [next(resumed) for _ in range(6)] == single[6:]
    assert all(0 <= i < 15 for i in single)
    if bucket > 1:  # each chunk of 4 is sorted by length
        for c in range(3):
            chunk = [lengths[i] for i in single[4 * c: 4 * c + 4]]
            assert chunk == sorted(chunk)


@pytest.mark.slow
def test_two_cpu_processes_match_one(reference_run, tmp_path, shapes, micro_cfg):
    run = tmp_path / "ddp"
    rc, err = launch(torchrun(free_port()), args(run, shapes, micro_cfg, "--batch-size", "2", "--vision-warmup-batch", "1"))
    assert rc == 0, err[-3000:]
    two, one = losses(run), losses(reference_run)  # 2 x 2 vs 1 x 4: same global batches
    assert list(two) == list(one)
    warm2, warm1 = (json.loads((r / "vision_warmup.json").read_text()) for r in (run, reference_run))
    assert [r["object_words"] for r in warm2] == pytest.approx([r["object_words"] for r in warm1], rel=1e-4)
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-3), (step, two[step], one[step])
    assert json.loads((run / "history.json").read_text())[-1]["questions_per_s"] > 0  # summed over ranks


def test_main_evaluates_and_prints_table(tmp_path, shapes, micro_cfg, capsys):
    run = tmp_path / "eval"
    argv = args(run, shapes, micro_cfg, "--steps", "2", "--eval-split", "val", "--eval-limit", "5")
    assert train_main(argv) == 0
    out = capsys.readouterr().out
    assert "| val | 5 |" in out and "gIoU" in out
    summary = json.loads((run / "eval.json").read_text())
    assert summary["steps"] == 2 and summary["eval"]["n_questions"] == 5
    assert summary["vision_warmup_steps"] == 3 and summary["vision_warmup_seconds"] > 0
    assert summary["train_samples_per_s"] > 0
    # the printed scores are the final checkpoint's: evaluating it again gives them exactly
    from pixellm.checkpoint import load_predictor
    from pixellm.evaluate import evaluate_generation
    from pixellm.muse import load_split

    again = evaluate_generation(load_predictor(run / "final"), load_split(shapes, "val"), limit=5)
    for key in ("giou", "ciou", "count_acc"):
        assert again["all"][key] == pytest.approx(summary["eval"][key], nan_ok=True), key
    assert again["target_phrase_acc"] == pytest.approx(summary["target_phrase_acc"])
    assert 0.0 <= summary["target_phrase_acc"] <= summary["phrase_giou"] <= 1.0
    assert "target phrases right" in out and "phrase gIoU" in out


def test_param_groups_hold_every_trainable_parameter_once(tiny_model):
    from pixellm.train.optim import param_groups
    tiny_model.vision.requires_grad_(False)  # frozen parameters are left out
    (group,) = param_groups(tiny_model, lr=1e-3)
    assert group["lr"] == 1e-3
    ids = [id(p) for p in group["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in tiny_model.parameters() if p.requires_grad}
    assert not set(ids) & {id(p) for p in tiny_model.vision.parameters()}


def test_adamw_is_fused_on_cpu_and_takes_the_same_step_as_the_loop():
    from pixellm.train.optim import adamw

    def run(fused_ok: bool) -> tuple[bool, torch.Tensor]:
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(4, 3))
        b = torch.nn.Parameter(torch.randn(3))
        groups = [{"params": [w], "lr": 1e-2}, {"params": [b], "lr": 3e-2}]
        opt = adamw(groups, lr=1e-2, betas=(0.9, 0.95)) if fused_ok else torch.optim.AdamW(
            groups, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
        for _ in range(3):
            opt.zero_grad()
            ((torch.ones(2, 4) @ w + b) ** 2).sum().backward()
            opt.step()
        assert [g["lr"] for g in opt.param_groups] == [1e-2, 3e-2]
        return bool(opt.param_groups[0].get("fused")), torch.cat([w.detach().flatten(), b.detach()])

    fused, after = run(True)
    looped, reference = run(False)
    assert fused and not looped
    torch.testing.assert_close(after, reference)
    meta = torch.nn.Parameter(torch.zeros(2, device="meta"))  # no fused kernel there: torch's default
    assert not adamw([meta], lr=1e-3).param_groups[0]["fused"]


def test_fitted_steps_and_the_stretched_schedule():
    from pixellm.train.budget import WarmupLinearDecay, fitted_steps, probe_window
    assert fitted_steps(100, done=20, elapsed=10.0, pace=0.5, budget=100.0) == 100  # 10 + 80 * 0.5 fits
    assert fitted_steps(100, done=20, elapsed=10.0, pace=1.0, budget=60.0) == 70
    assert fitted_steps(100, done=20, elapsed=70.0, pace=1.0, budget=60.0) == 20  # already over: stop here
    assert fitted_steps(100, done=20, elapsed=10.0, pace=0.0, budget=60.0) == 100
    assert probe_window(100, 1900) == (15, 60) and probe_window(2, 40) == (5, 20)
    assert probe_window(30, 30) is None  # nothing left to fit after the window
    s = WarmupLinearDecay(warmup=10, total=110, min_ratio=0.1)
    assert s(0) == pytest.approx(0.1) and s(10) == 1.0 and s(110) == pytest.approx(0.1)
    assert s(60) == pytest.approx(0.55)
    s.shorten(60, at=10)  # cut at the end of warm-up: the whole decay is stretched to the new total
    assert s(35) == pytest.approx(0.55) and s(60) == pytest.approx(0.1) and s(80) == pytest.approx(0.1)
    s = WarmupLinearDecay(warmup=10, total=110, min_ratio=0.1)
    s.shorten(80, at=60)  # cut mid-decay: from the factor it had reached (0.55) to the end at 80
    assert s(60) == pytest.approx(0.55) and s(70) == pytest.approx(0.325) and s(80) == pytest.approx(0.1)
    s.shorten(70, at=70)  # a second cut goes on from where the first left off
    assert s(70) == pytest.approx(0.325) and s(75) == 0.1


def test_time_budget_cuts_again_when_the_machine_slows_down(tmp_path, shapes, micro_cfg, capsys):
    """1 s a step until step 20, then 3 s: 60 steps fit 90 s at the timing window's pace, but by
    step 40 (80 s, 2.14 s a step since step 5) only 4 more do. The run is cut there to 44 steps;
    the rates already used stay those of the 60-step plan and the decay ends at step 44."""
    clock = ticks(*range(21), *range(23, 1000, 3))  # t0 = 0; step k ends at k s, then 3 s a step
    run = tmp_path / "slow"
    assert train_main(args(run, shapes, micro_cfg, "--steps", "60", "--time-budget", "1.5",
                           "--save-every", "10", "--keep", "2", "--vision-warmup", "0"), clock=clock) == 0
    hist = json.loads((run / "history.json").read_text())
    assert [r["step"] for r in hist] == list(range(1, 45))
    out = capsys.readouterr().out
    assert "time budget: 44 of 60 steps fit in 1.5 min at 2.143 s a step" in out
    assert out.count("time budget:") == 1  # no cut at step 20, where the pace still fit
    plan = [3e-3 * (1 - 0.95 * (k - 2) / 58) for k in range(2, 41)]  # lr of step k + 1 (k = 2..40)
    assert [r["lr"] for r in hist[1:40]] == pytest.approx(plan)
    assert hist[41]["lr"] == pytest.approx((plan[-1] + 3e-3 * 0.05) / 2)
    assert hist[-1]["lr"] == pytest.approx(3e-3 * 0.05)
    assert json.loads((checkpoint_dir(run, 44) / "trainer.json").read_text())["total_steps"] == 44
    assert checkpoints(run) == ["checkpoint_40", "checkpoint_44"]  # --keep 2: Accelerate's total_limit


def test_time_budget_shortens_the_run_and_resume_keeps_its_length(tmp_path, shapes, micro_cfg, capsys):
    """On a clock that reads 1 s a step, 40 steps cannot fit 30 s: after the timing window (steps
    5-20) the run is cut to 30 steps, its decay goes on from step 20's rate and ends there, and a
    resumed run keeps that length and the losses of the run it resumes."""
    import itertools
    import shutil

    run = tmp_path / "budget"
    budget = args(run, shapes, micro_cfg, "--steps", "40", "--time-budget", "0.5", "--save-every", "3",
                  "--keep", "50", "--vision-warmup", "0")
    assert train_main(budget, clock=itertools.count().__next__) == 0  # t0 = 0, step k ends at k s
    hist = json.loads((run / "history.json").read_text())
    assert [r["step"] for r in hist] == list(range(1, 31))
    assert "time budget: 30 of 40 steps fit in 0.5 min at 1.000 s a step" in capsys.readouterr().out
    assert hist[-1]["lr"] == pytest.approx(3e-3 * 0.05)  # the stretched decay ended at the new length
    # the rates of steps 1-20 are those of the 40-step plan; from there the decay reaches its end at 30
    assert hist[18]["lr"] == pytest.approx(3e-3 * (1 - 0.95 * 17 / 38))
    assert hist[19]["lr"] == pytest.approx(3e-3 * (1 - 0.95 * 18 / 38))
    assert hist[24]["lr"] == pytest.approx(3e-3 * ((1 - 0.95 * 18 / 38) + 0.05) / 2)
    assert json.loads((checkpoint_dir(run, 30) / "trainer.json").read_text())["total_steps"] == 30
    for k in (24, 27, 30):
        shutil.rmtree(checkpoint_dir(run, k))
    shutil.rmtree(run / "final")
    assert train_main([*budget, "--resume"]) == 0
    resumed = losses(run)
    assert list(resumed) == list(range(22, 31))  # resumed after step 21, ended at the cut length
    for step, loss in resumed.items():
        assert loss == pytest.approx(hist[step - 1]["loss"], rel=1e-5, abs=1e-6), step


def test_vision_warmup_time_counts_against_the_budget(tmp_path, shapes, micro_cfg, capsys):
    """A warm-up that takes 10 s leaves 20 s of a 0.5-min budget: at 1 s a step, 40 steps are
    cut to 20 at the end of the timing window; the warm-up's records are kept with the run."""
    # the warm-up's start, then the end of each of its 4 steps; then the joint steps' t0 = 10,
    # joint step k ending at 10 + k s
    clock = ticks(0, 1, 2, 3, 10, *range(10, 1000))
    run = tmp_path / "warm"
    assert train_main(args(run, shapes, micro_cfg, "--steps", "40", "--time-budget", "0.5",
                           "--save-every", "100", "--vision-warmup", "4"), clock=clock) == 0
    out = capsys.readouterr().out
    assert "vision warm-up: 4 steps of 2 images" in out and "in 0.2 min" in out
    assert "time budget: 20 of 40 steps fit in 0.333 min at 1.000 s a step" in out
    assert [r["step"] for r in json.loads((run / "history.json").read_text())] == list(range(1, 21))
    warm = json.loads((run / "vision_warmup.json").read_text())
    assert [r["step"] for r in warm] == [1, 2, 3, 4] and warm[-1]["seconds"] == pytest.approx(10.0)
