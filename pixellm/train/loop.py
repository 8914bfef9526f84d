"""The training loop (Accelerate lives only in this package).

:func:`train` is :func:`setup` (accelerator, data, model, optimizer, resume), :func:`run_steps`
(per step: :func:`optimizer_step`, the time budget's :class:`Pace`, :func:`record_step`,
:func:`log_step`, :func:`save_step`) and :func:`save_final`. Time is read from an injected
``clock`` (tests pass a fake one), and ``on_step`` sees every step's record.
"""
from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from ..build import build_model
from ..checkpoint import save_pretrained
from ..config import PixelLMConfig, add_model_config, get_model_config
from ..data import ConversationDataset, collate, pack_turns
from ..errors import InputError, TrainingDivergedError
from ..families import family_of
from ..llm import load_tokenizer, train_word_tokenizer
from ..model import answer_starts
from ..prompting import PromptFormatter
from .accelerator import make_accelerator
from .budget import WarmupLinearDecay, fitted_steps, probe_window
from .checkpointing import clean_checkpoints, list_checkpoints, read_state, save_checkpoint
from .config import TrainConfig
from .mixture import MixtureSampler, load_source, parse_mix
from .optim import adamw, param_groups
from .trainable import select_trainable
from .warmup import ObjectWordDataset, warm_up_vision

Clock = Callable[[], float]
POSTFIX = ("ce", "bce", "dice", "refine", "phrase", "region", "seg", "locate", "caption", "tag", "contrastive", "lr",
           "questions_per_s")  # the progress bar's figures, those a family's record has


def model_config(cfg: TrainConfig):
    """The config (of any family) named by ``cfg.model`` (or a JSON path) with the ablation
    overrides applied (PixelLM's; another family's config rejects them with a ConfigError)."""
    name = add_model_config(cfg.model) if cfg.model.endswith(".json") else cfg.model
    over = {}
    loss = {**({"refine": False} if cfg.no_refine else {}),
            **({"phrase_weight": cfg.phrase_weight} if cfg.phrase_weight is not None else {}),
            **({"region_weight": cfg.region_weight} if cfg.region_weight is not None else {})}
    if loss:
        over["loss"] = loss
    cb = {**({"tokens_per_scale": cfg.tokens_per_scale} if cfg.tokens_per_scale else {}),
          **({"fusion": cfg.fusion} if cfg.fusion else {})}
    if cb:
        over["codebook"] = cb
    return get_model_config(name, **over)


# -- the whole run ----------------------------------------------------------------------------
@dataclass
class Run:
    """What the parts of one run share; ``step`` counts the optimizer steps taken."""

    cfg: TrainConfig
    accelerator: Accelerator
    run_dir: Path
    model: Any
    opt: Any
    sched: torch.optim.lr_scheduler.LambdaLR
    batches: Iterator[dict]
    step: int
    counts: dict
    warm: list[dict]

    @property
    def schedule(self) -> WarmupLinearDecay:
        """The learning-rate factor; its ``total`` is the run's length (the budget may lower it)."""
        return self.sched.lr_lambdas[0]

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step, over every process and micro-batch."""
        return self.cfg.batch_size * self.accelerator.num_processes * self.cfg.grad_accum


def train(cfg: TrainConfig, *, clock: Clock = time.perf_counter,
          on_step: Callable[[dict], None] | None = None) -> dict:
    """Train per ``cfg``; returns a summary dict.

    Args:
        clock: what the throughput figures, the warm-up's seconds and ``--time-budget`` read.
        on_step: called with each optimizer step's record, once its checkpoint (if any) is written.
    """
    run = setup(cfg, clock=clock)
    history = run_steps(run, clock=clock, on_step=on_step)
    final = save_final(run, history)
    return {"final": str(final), "history": history, "trainable": run.counts, "accelerator": run.accelerator,
            "steps": run.schedule.total, "planned_steps": cfg.steps, "vision_warmup": run.warm}


# -- setup ------------------------------------------------------------------------------------
def setup(cfg: TrainConfig, *, clock: Clock = time.perf_counter) -> Run:
    """Accelerator, data, model (after the warm-up stage of a fresh run), optimizer and the
    resumed state; writes the resolved config to ``RUN/train_config.json``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(cfg.seed)
    model_cfg = model_config(cfg)
    family = family_of(model_cfg)
    ckpt = _checkpoint_to_resume(cfg, accelerator, run_dir)
    data = (_setup_conversations if family.train_data is None else _setup_own_data)(
        cfg, accelerator, model_cfg, family, run_dir, resuming=ckpt is not None, clock=clock)
    model, opt, sched = _prepare(cfg, accelerator, data.model)
    step, pos = _resume(cfg, accelerator, sched.lr_lambdas[0], ckpt)
    if accelerator.is_main_process:
        cfg.save(run_dir)
    accelerator.init_trackers("pixellm", config={k: str(v) for k, v in cfg.to_dict().items()})
    return Run(cfg=cfg, accelerator=accelerator, run_dir=run_dir, model=model, opt=opt, sched=sched,
               batches=iter(_loader(cfg, accelerator, data, pos)), step=step, counts=data.counts, warm=data.warm)


@dataclass
class Data:
    """A family's model (built, warmed up) and its training items for the loop."""

    model: Any
    counts: dict
    warm: list[dict]
    dataset: Any
    sizes: list[int]
    lengths: list[int] | None
    collate: Callable


def _setup_conversations(cfg: TrainConfig, accelerator, model_cfg, family, run_dir: Path, *, resuming: bool,
                         clock: Clock) -> Data:
    """The LLM families: tokenizer, model, the vision (or SAM) warm-up and the packed
    conversations of the mix's MUSE-format sources."""
    sources = _sources(cfg)
    tok = _tokenizer(model_cfg, sources, run_dir, accelerator)
    if family.adapt_samples is not None:  # e.g. LISA's merged variant: one target per question
        sources = {n: family.adapt_samples(model_cfg, s) for n, s in sources.items()}
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg, tokenizer=tok, dtype=None)
    counts = select_trainable(model, verbose=accelerator.is_main_process)
    fmt = PromptFormatter(tokenizer=tok, template=model_cfg.llm.prompt_template,
                          num_image_tokens=model.num_image_tokens,
                          block="".join(tok.convert_ids_to_tokens(model.codebook_ids)),
                          max_length=model_cfg.llm.max_length)
    samples = ConcatDataset(list(sources.values()))
    warm = [] if resuming else _vision_warmup(cfg, accelerator, model, samples, tok, run_dir, clock=clock)
    groups, sizes = _conversations(sources, fmt, turns=cfg.turns, seed=cfg.seed)
    dataset = ConversationDataset(samples, groups=groups, formatter=fmt, image_size=model.input_size,
                                  mean=model_cfg.vision.mean, std=model_cfg.vision.std)
    accelerator.print(f"{len(samples)} questions in {len(groups)} conversations (up to {cfg.turns} turns)")
    lengths = _approx_lengths(samples, model_cfg.block_len)
    return Data(model=model, counts=counts, warm=warm, dataset=dataset, sizes=sizes,
                lengths=[sum(lengths[i] for i in g) for g in groups], collate=partial(collate, pad_id=tok.pad_token_id))


def _setup_own_data(cfg: TrainConfig, accelerator, model_cfg, family, run_dir: Path, *, resuming: bool,
                    clock: Clock) -> Data:
    """A family without an LLM (LSeg, LTS, DynRefer): its own dataset and collate
    (:attr:`pixellm.families.Family.train_data`); no tokenizer, no warm-up, no bucketing."""
    del run_dir, resuming, clock
    if cfg.vision_warmup:
        raise InputError(f"--vision-warmup: the {family.name} family has no warm-up stage")
    data = family.train_data(model_cfg, roots=_roots(cfg), mix=parse_mix(cfg.mix), seed=cfg.seed,
                             strict=not cfg.lenient_data)
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg, tokenizer=data.tokenizer, dtype=None)
    counts = select_trainable(model, verbose=accelerator.is_main_process)
    accelerator.print(f"{len(data.dataset)} {data.unit} from {', '.join(parse_mix(cfg.mix))}")
    return Data(model=model, counts=counts, warm=[], dataset=data.dataset, sizes=data.sizes, lengths=None,
                collate=data.collate)


def _roots(cfg: TrainConfig) -> dict:
    """source name -> its data root from the config (None: not given)."""
    return {"shapes": cfg.shapes_root, "muse": cfg.muse_root, "refcoco": cfg.refcoco_root,
            "multiref": cfg.multiref_root or cfg.refcoco_root}


def _sources(cfg: TrainConfig) -> dict:
    roots = _roots(cfg)
    return {n: load_source(n, root=roots[n], strict=not cfg.lenient_data) for n in parse_mix(cfg.mix)}


def _tokenizer(model_cfg: PixelLMConfig, sources: dict, run_dir: Path, accelerator):
    """A real LLM's tokenizer, or (tiny) a word tokenizer trained on the training text, saved once."""
    if model_cfg.llm.tokenizer or model_cfg.llm.name_or_path:
        return load_tokenizer(model_cfg.llm.tokenizer or model_cfg.llm.name_or_path)
    path = run_dir / "tokenizer"
    if accelerator.is_main_process and not (path / "tokenizer.json").is_file():
        # The prompt template's own words ("answer:") too: unseen, they would encode as <unk>,
        # the same id as any unknown word in a user's question.
        template = model_cfg.llm.prompt_template.format(image="", question="")
        texts = chain([template], (t for src in sources.values() for s in src for t in (s.question, s.answer)))
        train_word_tokenizer(texts).save_pretrained(str(path))
    # Every process waits, whatever it saw on disk: a rank that found the file only because the
    # main process had just written it used to skip this barrier and deadlock the next collective.
    accelerator.wait_for_everyone()
    return load_tokenizer(path)


def _vision_warmup(cfg: TrainConfig, accelerator, model, samples, tok, run_dir: Path, *, clock: Clock) -> list[dict]:
    """Run the family's warm-up stage (:mod:`.warmup`) of a fresh run; its records, also written
    to ``run_dir/vision_warmup.json``."""
    if cfg.vision_warmup <= 0:
        return []
    vision = model.config.vision
    # the family's warm-up stage: PixelLM's vision tower on object words, at CLIP's side;
    # LISA's SAM on point prompts, at the model's input side (pixellm.lisa.warmup)
    family_stage = family_of(model.config).warm_up
    stage, size = (family_stage, model.input_size) if family_stage else (warm_up_vision, vision.image_size)
    label = f"{family_of(model.config).name} warm-up" if family_stage else "vision warm-up"
    data = ObjectWordDataset(samples, tokenizer=tok, image_size=size, mean=vision.mean, std=vision.std)
    accelerator.print(f"{label}: {cfg.vision_warmup} steps of {cfg.vision_warmup_batch * accelerator.num_processes} "
                      f"images ({len(data)} images with targets)")
    model.to(accelerator.device)
    timing = {"clock": clock} if "clock" in inspect.signature(stage).parameters else {}  # a stage that takes one
    history = stage(model, data, steps=cfg.vision_warmup, batch_size=cfg.vision_warmup_batch, lr=cfg.vision_warmup_lr,
                    accelerator=accelerator, seed=cfg.seed, betas=cfg.betas, clip=cfg.clip,
                    progress=not cfg.no_progress, **timing)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "vision_warmup.json").write_text(json.dumps(history))
    key = next(k for k in history[0] if k not in ("step", "lr", "images_per_s", "seconds"))  # the loss
    accelerator.print(f"{label}: {key} loss {history[0][key]:.3f} -> "
                      f"{history[-1][key]:.3f} in {history[-1]['seconds'] / 60:.1f} min")
    return history


def _conversations(sources: dict, fmt: PromptFormatter, *, turns: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Pack each source's questions into conversations (see :func:`pixellm.data.pack_turns`).

    Returns the conversations as indices into the concatenation of the sources (in order) and
    the number of conversations per source (the sampler's source sizes)."""
    groups, sizes, offset = [], [], 0
    for src in sources.values():
        g = pack_turns(src, formatter=fmt, turns=turns, seed=seed)
        groups += [[offset + i for i in conv] for conv in g]
        sizes.append(len(g))
        offset += len(src)
    return groups, sizes


def _approx_lengths(samples, block_len: int) -> list[int]:
    """Cheap token-length proxy per sample (words + block tokens) for length bucketing."""
    return [len(s.question.split()) + len(s.answer.split()) + (block_len - 1) * s.answer.count("{seg}")
            for s in (samples[i] for i in range(len(samples)))]


def _prepare(cfg: TrainConfig, accelerator, model) -> tuple[Any, Any, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its schedule; the model and optimizer through ``accelerator.prepare`` (DDP,
    FSDP, DeepSpeed...). The scheduler is not prepared (Accelerate's wrapper steps it once per
    process when batches are not split); it is registered for the checkpoints."""
    opt = adamw(param_groups(model, lr=cfg.lr), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupLinearDecay(warmup=cfg.warmup, total=cfg.steps, min_ratio=cfg.min_lr_ratio))
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(sched)
    return model, opt, sched


def _checkpoint_to_resume(cfg: TrainConfig, accelerator, run_dir: Path) -> Path | None:
    """The latest complete checkpoint when ``--resume`` finds one (else None: a fresh run);
    clears the incomplete ones, and a fresh run's stale ones (:func:`clean_checkpoints`)."""
    ckpts = list_checkpoints(run_dir) if cfg.resume else []
    if cfg.resume and not ckpts and any(run_dir.glob("step-*/trainer.json")):
        raise InputError(f"--resume: {run_dir} holds only RUN/step-N checkpoints of an earlier pixellm-train, "
                         "which this one cannot resume (it writes RUN/checkpoints/checkpoint_N); train again")
    clean_checkpoints(accelerator, run_dir, resuming=bool(ckpts))
    return ckpts[-1] if ckpts else None


def _resume(cfg: TrainConfig, accelerator, schedule: WarmupLinearDecay, ckpt: Path | None) -> tuple[int, int]:
    """Load ``ckpt`` (None: a fresh run); returns (steps taken, global sample position)."""
    if ckpt is None:
        return 0, 0
    accelerator.load_state(str(ckpt))
    state = read_state(ckpt)
    # A run that --time-budget shortened keeps its length (and so its schedule) on resume.
    schedule.total = min(cfg.steps, state.get("total_steps", cfg.steps)) if cfg.time_budget else cfg.steps
    accelerator.print(f"resumed from {ckpt} at step {state['step']} of {schedule.total}")
    return state["step"], state["sample_pos"]


def _loader(cfg: TrainConfig, accelerator, data: Data, pos: int) -> DataLoader:
    """Each process's batches from global sample position ``pos``.

    Not passed to ``accelerator.prepare``: :class:`MixtureSampler` already gives every process
    its share of each global batch, from (seed, position) alone, and restarts at a checkpoint's
    exact sample position; Accelerate's prepared loader would shard those shares again and
    resume by skipping batches. :func:`_to_device` moves the batches.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    sampler = MixtureSampler(sizes=data.sizes, rates=list(parse_mix(cfg.mix).values()), seed=cfg.seed,
                             start=pos, rank=rank, world=world, lengths=data.lengths,
                             bucket=cfg.batch_size * world * cfg.bucket_batches)
    return DataLoader(data.dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      collate_fn=data.collate)


# -- the steps --------------------------------------------------------------------------------
@dataclass
class Pace:
    """The wall clock of the optimizer steps: the throughput's seconds, and when and at what
    pace ``--time-budget`` is fitted (``budget_s`` seconds for these steps: the budget less the
    warm-up stage)."""

    clock: Clock
    t0: float
    window: tuple[int, int] | None
    budget_s: float
    probe_t0: float | None = None

    @classmethod
    def start(cls, run: Run, clock: Clock) -> Pace:
        # The budget is fitted in a fresh run only: a resumed one keeps the length it was given.
        window = probe_window(run.cfg.warmup, run.schedule.total) if run.cfg.time_budget > 0 and run.step == 0 else None
        warm_s = run.warm[-1]["seconds"] if run.warm else 0.0
        return cls(clock=clock, t0=clock(), window=window, budget_s=run.cfg.time_budget * 60 - warm_s)

    def lap(self, step: int) -> tuple[float, float | None]:
        """Seconds since the start, read once at the end of ``step``; and the pace (seconds a
        step since the timing window began) when the fit is due: at the window's end, then
        every window's length of steps (the machine may slow down later). Else None."""
        elapsed = self.clock() - self.t0
        if self.window and step == self.window[0]:
            self.probe_t0 = elapsed
        if self.probe_t0 is None or step < self.window[1] or step % self.window[1]:
            return elapsed, None
        return elapsed, (elapsed - self.probe_t0) / (step - self.window[0])


@dataclass
class Tally:
    """What this process has trained on since the run (or its resumption) began."""

    samples: int = 0  # global: every process's
    questions: int = 0  # this process's


def run_steps(run: Run, *, clock: Clock = time.perf_counter,
              on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Optimizer steps up to the schedule's ``total``, which the time budget may lower as the
    run goes; returns one record per step."""
    bar = tqdm(total=run.schedule.total, initial=run.step, desc="train", dynamic_ncols=True, mininterval=2.0,
               disable=run.cfg.no_progress or not run.accelerator.is_main_process)
    pace, tally, history = Pace.start(run, clock), Tally(), []
    run.model.train()
    while run.step < run.schedule.total:
        parts, questions = optimizer_step(run)
        run.step += 1
        tally.samples += run.global_batch
        tally.questions += questions
        elapsed, seconds_a_step = pace.lap(run.step)
        if seconds_a_step is not None:  # before sched.step(), so that the next learning rate follows a cut
            _fit_budget(run, bar, elapsed=elapsed, pace=seconds_a_step, budget_s=pace.budget_s)
        run.sched.step()
        rec = record_step(run, parts, tally, elapsed)
        history.append(rec)
        log_step(run, rec, bar)
        save_step(run)
        if on_step is not None:
            on_step(rec)
    bar.close()
    return history


def optimizer_step(run: Run) -> tuple[dict[str, float], int]:
    """One optimizer step over ``grad_accum`` micro-batches; returns the loss and its parts
    (means over the micro-batches) and the questions (or a family's items) trained on."""
    acc, cfg = run.accelerator, run.cfg
    parts: dict[str, float] = {}
    questions = 0
    for _ in range(cfg.grad_accum):
        batch = _to_device(next(run.batches), acc.device)
        questions += count_items(batch)
        with acc.accumulate(run.model):
            out = run.model(**batch)
            loss = _global_mean_loss(acc, out)
            if not torch.isfinite(loss).all():
                raise TrainingDivergedError(
                    f"non-finite loss ({loss.item()}) at step {run.step + 1} "
                    f"(parts: { {k: round(v.item(), 4) for k, v in out.parts.items()} }); stopping")
            acc.backward(loss)
            if acc.sync_gradients and cfg.clip > 0:
                acc.clip_grad_norm_(run.model.parameters(), cfg.clip)
            run.opt.step()
            run.opt.zero_grad(set_to_none=True)
        for k, v in {"loss": loss.detach(), **out.parts}.items():
            parts[k] = parts.get(k, 0.0) + float(v) / cfg.grad_accum
    return parts, questions


def _fit_budget(run: Run, bar, *, elapsed: float, pace: float, budget_s: float) -> None:
    """Shorten the run if its remaining steps would overrun ``budget_s`` seconds at ``pace``,
    saying so. Every process takes the slowest process's figures, so all settle on one length."""
    acc, schedule = run.accelerator, run.schedule
    if acc.num_processes > 1:
        t = acc.gather(torch.tensor([[elapsed, pace]], device=acc.device, dtype=torch.float64))
        elapsed, pace = t.max(0).values.tolist()
    fit = fitted_steps(schedule.total, done=run.step, elapsed=elapsed, pace=pace, budget=budget_s)
    if fit < schedule.total:
        if acc.is_main_process:
            bar.write(f"time budget: {fit} of {schedule.total} steps fit in {budget_s / 60:.3g} min at "
                      f"{pace:.3f} s a step; the learning-rate decay now ends at step {fit}")  # a line of its own
        schedule.shorten(fit, at=run.step)
    bar.total = schedule.total


def record_step(run: Run, parts: dict[str, float], tally: Tally, elapsed: float) -> dict:
    """The step's record: learning rate, loss parts (means over the processes, one
    collective) and the throughput since the run (or its resumption) began."""
    means = _mean_over_processes(run.accelerator, {**parts, "questions": float(tally.questions)})
    questions = means.pop("questions") * run.accelerator.num_processes
    return {"step": run.step, "lr": run.sched.get_last_lr()[0], **means,
            "samples_per_s": tally.samples / elapsed, "questions_per_s": questions / elapsed}


def log_step(run: Run, rec: dict, bar) -> None:
    """The record to the trackers (every ``log_every`` steps and the last) and the progress bar."""
    if run.step % run.cfg.log_every == 0 or run.step == run.schedule.total:
        run.accelerator.log({k: v for k, v in rec.items() if k != "step"}, step=run.step)
    bar.set_postfix({k: f"{rec[k]:.3g}" for k in POSTFIX if k in rec})
    bar.update(1)


def save_step(run: Run) -> None:
    """A checkpoint every ``save_every`` steps and at the last."""
    if run.step % run.cfg.save_every == 0 or run.step == run.schedule.total:
        save_checkpoint(run.accelerator, run.run_dir, step=run.step, sample_pos=run.step * run.global_batch,
                        total_steps=run.schedule.total, config=run.cfg)


def save_final(run: Run, history: list[dict]) -> Path:
    """``RUN/final`` (the model, loadable with :func:`pixellm.load_predictor`, and the run's
    config) and ``RUN/history.json``; ends the trackers (and a multi-process run's process group)."""
    acc, final = run.accelerator, run.run_dir / "final"
    state = acc.get_state_dict(run.model)  # every process: FSDP gathers the full weights (to the main one)
    if acc.is_main_process:
        save_pretrained(acc.unwrap_model(run.model), final, state_dict=state)
        run.cfg.save(final)
        (run.run_dir / "history.json").write_text(json.dumps(history))
    acc.wait_for_everyone()
    acc.end_training()
    return final


# -- helpers ----------------------------------------------------------------------------------
def count_turns(labels: torch.Tensor) -> int:
    """Questions in a batch: the supervised (answer) runs of ``labels`` (B, T), one per turn."""
    return int(answer_starts(labels).sum())


def count_items(batch: dict) -> int:
    """Questions in a batch (LLM families: answer turns); a family's own items otherwise."""
    if "labels" in batch:
        return count_turns(batch["labels"])
    return len(next(v for v in batch.values() if isinstance(v, torch.Tensor)))


def _global_mean_loss(accelerator, out) -> torch.Tensor:
    """The loss whose DDP-averaged gradient equals one process's on the whole global batch.

    Each process's term (text, mask, region) is a mean over its own count (tokens, masks,
    covered patch weight); reweighting it by local count * world / global count turns the
    average of process means into the global mean.
    """
    world = accelerator.num_processes
    if world == 1:
        return out.loss
    names = list(out.terms)
    local = torch.tensor([float(out.counts[n]) for n in names], device=accelerator.device, dtype=torch.float64)
    total = accelerator.reduce(local.clone(), reduction="sum")
    w = (local * world / total.clamp(min=1e-6)).float()
    return sum(out.terms[n] * w[i] for i, n in enumerate(names))


def _mean_over_processes(accelerator, parts: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return parts
    keys = sorted(parts)
    t = torch.tensor([parts[k] for k in keys], device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist()))


def _to_device(batch: dict, device) -> dict:
    """Tensors (and lists of tensors) to ``device``; anything else (label strings) as is."""
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        return [move(y) for y in x] if isinstance(x, list) else x
    return {k: move(v) for k, v in batch.items()}


__all__ = ["Run", "TrainingDivergedError", "count_turns", "model_config", "param_groups", "run_steps", "setup",
           "train"]
