"""The training loop (Accelerate lives only in this package)."""
from __future__ import annotations

import json
import os
import time
from functools import partial
from itertools import chain
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from ..build import build_model
from ..config import PixelLMConfig, add_model_config, get_model_config
from ..data import ConversationDataset, collate, pack_turns
from ..errors import InputError, TrainingDivergedError
from ..families import family_of
from ..llm import load_tokenizer, train_word_tokenizer
from ..model import answer_starts
from ..prompting import PromptFormatter
from .budget import WarmupLinearDecay, fitted_steps, probe_window
from .checkpointing import list_checkpoints, read_state, save_checkpoint
from .mixture import MixtureSampler, load_source, parse_mix
from .optim import adamw, param_groups
from .trainable import select_trainable
from .warmup import ObjectWordDataset, warm_up_vision

_clock = time.perf_counter  # what the throughput figures and --time-budget read (tests replace it)


def model_config(args):
    """The config (of any family) named by --model (or a JSON path) with the ablation
    overrides applied (PixelLM's; another family's config rejects them with a ConfigError)."""
    name = add_model_config(args.model) if args.model.endswith(".json") else args.model
    over = {}
    loss = {**({"refine": False} if args.no_refine else {}),
            **({"block_ce": args.block_ce} if args.block_ce else {}),
            **({"phrase_weight": args.phrase_weight} if args.phrase_weight is not None else {}),
            **({"region_weight": args.region_weight} if args.region_weight is not None else {})}
    if loss:
        over["loss"] = loss
    cb = {}
    if args.tokens_per_scale:
        cb["tokens_per_scale"] = args.tokens_per_scale
    if args.fusion:
        cb["fusion"] = args.fusion
    if cb:
        over["codebook"] = cb
    return get_model_config(name, **over)


def _roots(args) -> dict:
    """source name -> its data root from the command line (None: not given)."""
    return {"shapes": args.shapes_root, "muse": args.muse_root, "refcoco": args.refcoco_root,
            "multiref": args.multiref_root or args.refcoco_root}


def _sources(args) -> dict:
    roots = _roots(args)
    return {n: load_source(n, root=roots[n], strict=not args.lenient_data) for n in parse_mix(args.mix)}


def _tokenizer(cfg: PixelLMConfig, sources: dict, run_dir: Path, accelerator):
    """A real LLM's tokenizer, or (tiny) a word tokenizer trained on the training text, saved once."""
    if cfg.llm.tokenizer or cfg.llm.name_or_path:
        return load_tokenizer(cfg.llm.tokenizer or cfg.llm.name_or_path)
    path = run_dir / "tokenizer"
    if accelerator.is_main_process and not (path / "tokenizer.json").is_file():
        # The prompt template's own words ("answer:") too: unseen, they would encode as <unk>,
        # the same id as any unknown word in a user's question.
        template = cfg.llm.prompt_template.format(image="", question="")
        texts = chain([template], (t for src in sources.values() for s in src for t in (s.question, s.answer)))
        train_word_tokenizer(texts).save_pretrained(str(path))
    # Every process waits, whatever it saw on disk: a rank that found the file only because the
    # main process had just written it used to skip this barrier and deadlock the next collective.
    accelerator.wait_for_everyone()
    return load_tokenizer(path)


def train(args) -> dict:
    """Train per ``args`` (see :mod:`pixellm.train.args`); returns a summary dict."""
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.out)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.grad_accum, mixed_precision=args.mixed_precision,
        log_with="tensorboard", project_dir=str(run_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_seed(args.seed)
    cfg = model_config(args)
    family = family_of(cfg)
    ckpts = list_checkpoints(run_dir) if args.resume else []
    setup = (_setup_conversations if family.train_data is None else _setup_own_data)(
        args, accelerator, cfg, family, run_dir, resuming=bool(ckpts))
    model, warm = setup["model"], setup["warm"]
    warm_secs = warm[-1]["seconds"] if warm else 0.0
    opt = adamw(param_groups(model, lr=args.lr, head_lr_mult=args.head_lr_mult,
                             vision_lr_mult=args.vision_lr_mult),
                lr=args.lr, betas=args.betas, weight_decay=args.weight_decay)
    schedule = WarmupLinearDecay(warmup=args.warmup, total=args.steps, min_ratio=args.min_lr_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(sched)
    step, pos = 0, 0
    if ckpts:
        accelerator.load_state(str(ckpts[-1]))
        state = read_state(ckpts[-1])
        step, pos = state["step"], state["sample_pos"]
        # A run that --time-budget shortened keeps its length (and so its schedule) on resume.
        schedule.total = min(args.steps, state.get("total_steps", args.steps)) if args.time_budget else args.steps
        accelerator.print(f"resumed from {ckpts[-1]} at step {step} of {schedule.total}")
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = args.batch_size * world * args.grad_accum
    sampler = MixtureSampler(sizes=setup["sizes"], rates=list(parse_mix(args.mix).values()), seed=args.seed,
                             start=pos, rank=rank, world=world, lengths=setup["lengths"],
                             bucket=args.batch_size * world * args.bucket_batches)
    loader = DataLoader(setup["dataset"], batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        collate_fn=setup["collate"])
    accelerator.init_trackers("pixellm", config={k: str(v) for k, v in vars(args).items()})
    history = _loop(args, accelerator, model, opt, sched, iter(loader), step, global_batch, run_dir,
                    budget_s=args.time_budget * 60 - warm_secs)
    final = run_dir / "final"
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(final)
        (run_dir / "history.json").write_text(json.dumps(history))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes trackers and (multi-process) the process group
    return {"final": str(final), "history": history, "trainable": setup["counts"], "accelerator": accelerator,
            "steps": schedule.total, "planned_steps": args.steps, "vision_warmup": warm}


def _setup_conversations(args, accelerator, cfg, family, run_dir: Path, *, resuming: bool) -> dict:
    """The LLM families: tokenizer, model, the vision (or SAM) warm-up and the packed
    conversations of the mix's MUSE-format sources."""
    sources = _sources(args)
    tok = _tokenizer(cfg, sources, run_dir, accelerator)
    if family.adapt_samples is not None:  # e.g. LISA's merged variant: one target per question
        sources = {n: family.adapt_samples(cfg, s) for n, s in sources.items()}
    torch.manual_seed(args.seed)
    model = build_model(cfg, tokenizer=tok, dtype=None)
    counts = select_trainable(model, verbose=accelerator.is_main_process)
    fmt = PromptFormatter(tokenizer=tok, template=cfg.llm.prompt_template,
                          num_image_tokens=model.num_image_tokens,
                          block="".join(tok.convert_ids_to_tokens(model.codebook_ids)),
                          max_length=cfg.llm.max_length)
    samples = ConcatDataset(list(sources.values()))
    warm = [] if resuming else _vision_warmup(args, accelerator, model, samples, tok, run_dir)
    groups, sizes = _conversations(sources, fmt, turns=args.turns, seed=args.seed)
    dataset = ConversationDataset(samples, groups=groups, formatter=fmt, image_size=model.input_size,
                                  mean=cfg.vision.mean, std=cfg.vision.std)
    accelerator.print(f"{len(samples)} questions in {len(groups)} conversations (up to {args.turns} turns)")
    lengths = _approx_lengths(samples, cfg.block_len)
    return {"model": model, "counts": counts, "warm": warm, "dataset": dataset, "sizes": sizes,
            "lengths": [sum(lengths[i] for i in g) for g in groups],
            "collate": partial(collate, pad_id=tok.pad_token_id)}


def _setup_own_data(args, accelerator, cfg, family, run_dir: Path, *, resuming: bool) -> dict:
    """A family without an LLM (LSeg, LTS): its own dataset and collate
    (:attr:`pixellm.families.Family.train_data`); no tokenizer, no warm-up, no bucketing."""
    del run_dir, resuming
    if args.vision_warmup:
        raise InputError(f"--vision-warmup: the {family.name} family has no warm-up stage")
    data = family.train_data(cfg, roots=_roots(args), mix=parse_mix(args.mix), seed=args.seed,
                             strict=not args.lenient_data)
    torch.manual_seed(args.seed)
    model = build_model(cfg, tokenizer=data.tokenizer, dtype=None)
    counts = select_trainable(model, verbose=accelerator.is_main_process)
    accelerator.print(f"{len(data.dataset)} {data.unit} from {', '.join(parse_mix(args.mix))}")
    return {"model": model, "counts": counts, "warm": [], "dataset": data.dataset, "sizes": data.sizes,
            "lengths": None, "collate": data.collate}


def _vision_warmup(args, accelerator, model, samples, tok, run_dir: Path) -> list[dict]:
    """Run the vision warm-up (:mod:`.warmup`) of a fresh run; its records, also written to
    ``run_dir/vision_warmup.json``."""
    steps = args.vision_warmup
    if steps <= 0:
        return []
    cfg = model.config.vision
    # the family's warm-up stage: PixelLM's vision tower on object words, at CLIP's side;
    # LISA's SAM on point prompts, at the model's input side (pixellm.lisa.warmup)
    family_stage = family_of(model.config).warm_up
    stage, size = (family_stage, model.input_size) if family_stage else (warm_up_vision, cfg.image_size)
    label = f"{family_of(model.config).name} warm-up" if family_stage else "vision warm-up"
    data = ObjectWordDataset(samples, tokenizer=tok, image_size=size, mean=cfg.mean, std=cfg.std)
    accelerator.print(f"{label}: {steps} steps of {args.vision_warmup_batch * accelerator.num_processes} "
                      f"images ({len(data)} images with targets)")
    model.to(accelerator.device)
    history = stage(model, data, steps=steps, batch_size=args.vision_warmup_batch,
                             lr=args.vision_warmup_lr, accelerator=accelerator, seed=args.seed,
                             betas=args.betas, clip=args.clip,
                             progress=not args.no_progress)
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


def _loop(args, accelerator, model, opt, sched, it, step, global_batch, run_dir, *,
          budget_s: float = 0.0) -> list[dict]:
    """Optimizer steps up to the schedule's ``total``, which the time budget (``budget_s``
    seconds for these steps; ``--time-budget`` less the vision warm-up) may lower as the run goes."""
    schedule = sched.lr_lambdas[0]
    bar = tqdm(total=schedule.total, initial=step, disable=args.no_progress or not accelerator.is_main_process,
               desc="train", dynamic_ncols=True, mininterval=2.0)
    history, t0, seen, questions = [], _clock(), 0, 0
    # The budget is fitted in a fresh run only: a resumed one keeps the length it was given.
    window = probe_window(args.warmup, schedule.total) if args.time_budget > 0 and step == 0 else None
    probe_t0 = None
    # Debug throttle (seconds per step) so a test can land a SIGKILL mid-run; 0 in normal use.
    throttle = float(os.environ.get("PIXELLM_TEST_STEP_SLEEP", "0"))
    model.train()
    while step < schedule.total:
        parts_sum: dict[str, float] = {}
        for _ in range(args.grad_accum):
            batch = _to_device(next(it), accelerator.device)
            # questions (LLM families: answer turns); a family's own items otherwise
            questions += count_turns(batch["labels"]) if "labels" in batch else len(batch["pixels"])
            with accelerator.accumulate(model):
                out = model(**batch)
                loss = _global_mean_loss(accelerator, out)
                if not torch.isfinite(loss).all():
                    raise TrainingDivergedError(
                        f"non-finite loss ({loss.item()}) at step {step + 1} "
                        f"(parts: { {k: round(v.item(), 4) for k, v in out.parts.items()} }); stopping")
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            for k, v in {"loss": loss.detach(), **out.parts}.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / args.grad_accum
        step += 1
        seen += global_batch
        elapsed = _clock() - t0
        if window and step == window[0]:
            probe_t0 = elapsed
        if probe_t0 is not None and step >= window[1] and step % window[1] == 0:
            # At the window's end, then every window's length of steps (the machine may slow
            # down later); before sched.step(), so that the next learning rate follows a cut.
            pace = (elapsed - probe_t0) / (step - window[0])
            note = _fit_budget(args, accelerator, schedule, step=step, elapsed=elapsed, pace=pace,
                               budget_s=budget_s)
            if note and accelerator.is_main_process:
                bar.write(note)  # a line of its own, not part of the progress bar's
            bar.total = schedule.total
        sched.step()
        means = _mean_over_processes(accelerator, {**parts_sum, "questions": float(questions)})  # one collective
        total_questions = means.pop("questions") * accelerator.num_processes
        rec = {"step": step, "lr": sched.get_last_lr()[0], **means,
               "samples_per_s": seen / elapsed, "questions_per_s": total_questions / elapsed}
        history.append(rec)
        if step % args.log_every == 0 or step == schedule.total:
            accelerator.log({k: v for k, v in rec.items() if k != "step"}, step=step)
        bar.set_postfix({k: f"{rec[k]:.3g}" for k in ("ce", "bce", "dice", "refine", "phrase", "region", "seg", "locate", "lr", "questions_per_s") if k in rec})
        bar.update(1)
        if throttle:
            time.sleep(throttle)
        if step % args.save_every == 0 or step == schedule.total:
            save_checkpoint(accelerator, run_dir, step=step, sample_pos=step * global_batch, keep=args.keep,
                            total_steps=schedule.total)
    bar.close()
    return history


def _fit_budget(args, accelerator, schedule: WarmupLinearDecay, *, step: int, elapsed: float,
                pace: float, budget_s: float) -> str | None:
    """Shorten the run if its remaining steps would overrun ``budget_s`` seconds at ``pace``.

    Every process takes the slowest process's figures, so all settle on the same length.
    Returns a note saying so, or None when the run fits.
    """
    if accelerator.num_processes > 1:
        t = accelerator.gather(torch.tensor([[elapsed, pace]], device=accelerator.device, dtype=torch.float64))
        elapsed, pace = t.max(0).values.tolist()
    fit = fitted_steps(schedule.total, done=step, elapsed=elapsed, pace=pace, budget=budget_s)
    if fit >= schedule.total:
        return None
    note = (f"time budget: {fit} of {schedule.total} steps fit in {budget_s / 60:.3g} min at "
            f"{pace:.3f} s a step; the learning-rate decay now ends at step {fit}")
    schedule.shorten(fit, at=step)
    return note


def count_turns(labels: torch.Tensor) -> int:
    """Questions in a batch: the supervised (answer) runs of ``labels`` (B, T), one per turn."""
    return int(answer_starts(labels).sum())


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



__all__ = ["TrainingDivergedError", "count_turns", "model_config", "param_groups", "train"]
