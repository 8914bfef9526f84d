"""Vision warm-up: teach a from-scratch CLIP tower to name objects before the LLM reads it.

PixelLM starts from a pretrained CLIP tower; the tiny default has none and trains its tower
from scratch. Through the joint loss the tower learns slowly: a joint step pays for the LLM on
a batch of conversations and shows the tower only their few images, so the model long names
objects with the right colour and the wrong shape. This stage (``pixellm-train --vision-warmup
STEPS``, off by default) trains the tower alone, with the region-words head
(:class:`~pixellm.codebook.RegionWordHead`), on the targets of the training questions: the
mask-pooled patch features of each target predict its phrase's words
(:meth:`~pixellm.codebook.RegionWordHead.object_sums`). An image costs far less here than in a
joint step, so a short stage shows the tower more images than a whole joint run. The joint run
then starts from the warmed-up tower and head; docs/experiments.md has what it bought.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import InputError, TrainingDivergedError
from ..image_io import load_image, resize_longest_and_pad, resize_mask_to_input
from .budget import WarmupLinearDecay
from .mixture import MixtureSampler
from .optim import adamw


@dataclass
class Objects:
    """One image's warm-up example: pixels (3, S, S), masks (K, S, S) float, K phrase id lists."""

    pixels: torch.Tensor
    masks: torch.Tensor
    phrases: list[list[int]]


class ObjectWordDataset(Dataset):
    """The training images with the targets of all their questions, each target once.

    Questions about one image (same ``source`` and ``image_id``) are grouped; a target is kept
    once per annotation id (targets of a source without ids are kept per question). Images no
    question has a target in are left out: they teach no word.

    Args:
        samples: any ``Sequence[Sample]`` (the joint run's training samples).
        tokenizer: the LLM tokenizer (phrase words -> ids, as the answers encode them).
        image_size, mean, std: the vision tower's input side and normalisation.
    """

    def __init__(self, samples: Sequence, *, tokenizer, image_size: int, mean: list[float],
                 std: list[float]) -> None:
        self.samples, self.tokenizer = samples, tokenizer
        self.image_size, self.mean, self.std = image_size, mean, std
        groups: dict[tuple, list[int]] = {}
        for i in range(len(samples)):
            s = samples[i]
            if s.phrases:
                groups.setdefault((s.source, s.image_id), []).append(i)
        self.groups = list(groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> Objects:
        turns = [self.samples[j] for j in self.groups[i]]
        seen, masks, phrases = set(), [], []
        for s in turns:
            keep = [k for k in range(len(s.phrases))
                    if not s.target_ids or s.target_ids[k] not in seen]
            seen.update(s.target_ids)
            if keep:
                masks.append(resize_mask_to_input(s.masks()[keep], size=self.image_size))
                names = s.names or s.phrases  # an object's name, not a referring expression
                phrases += [self.tokenizer(names[k], add_special_tokens=False)["input_ids"] for k in keep]
        pre = resize_longest_and_pad(load_image(turns[0].image_path), size=self.image_size,
                                     mean=self.mean, std=self.std)
        return Objects(pre.pixels, torch.cat(masks), phrases)


def collate_objects(batch: list[Objects]) -> dict:
    """pixels (B, 3, S, S), masks (K, S, S), batch_index (K,) and K phrase id lists."""
    return {"pixels": torch.stack([o.pixels for o in batch]),
            "masks": torch.cat([o.masks for o in batch]),
            "batch_index": torch.cat([torch.full((len(o.phrases),), b, dtype=torch.long)
                                      for b, o in enumerate(batch)]),
            "phrases": [p for o in batch for p in o.phrases]}


def warm_up_vision(model, dataset: ObjectWordDataset, *, steps: int, batch_size: int, lr: float,
                   accelerator, seed: int = 0, warmup: int = 50, betas=(0.9, 0.95), clip: float = 1.0,
                   progress: bool = True, clock: Callable[[], float] | None = None) -> list[dict]:
    """Train ``model.vision`` and ``model.region_head`` on object words for ``steps`` steps.

    Each step takes ``batch_size`` images per process (seeded per-epoch permutations of the
    dataset, every process its share of a global batch of ``batch_size * world``, as
    :class:`~pixellm.train.mixture.MixtureSampler` splits them) and takes an AdamW step on the
    global batch's mean loss (:func:`train_stage`); the learning rate warms up over ``warmup``
    steps and decays linearly to 5%. The model must not be wrapped by ``accelerator.prepare``
    yet (the stage prepares its own modules, before the joint run).

    Returns:
        one record per step: {"step", "object_words" (the loss), "lr", "images_per_s",
        "seconds" (since the stage began, on ``clock``)}.
    Raises:
        InputError: the model has no region head or a frozen vision tower, or the dataset is
            empty. TrainingDivergedError: a non-finite loss.
    """
    if getattr(model, "region_head", None) is None:
        raise InputError("the vision warm-up trains the region-words head: this model has none "
                         "(set --region-weight > 0, or --vision-warmup 0)")
    if not any(p.requires_grad for p in model.vision.parameters()):
        raise InputError("the vision warm-up needs a trainable vision tower (vision.freeze is set)")
    if len(dataset) == 0:
        raise InputError("the vision warm-up found no training image with a target")
    dev = accelerator.device
    model.vision.train()
    return train_stage(
        [model.vision, model.region_head], dataset,
        lambda batch: model.region_head.object_sums(model.vision(batch["pixels"].to(dev))[0], batch["masks"].to(dev),
                                                    batch["batch_index"].to(dev), batch["phrases"]),
        steps=steps, batch_size=batch_size, lr=lr, accelerator=accelerator, seed=seed, warmup=warmup,
        betas=betas, clip=clip, progress=progress, name="vision warm-up", key="object_words", clock=clock)


class Stage(nn.Module):
    """What ``accelerator.prepare`` wraps for a warm-up stage: the modules it trains (or, given
    bare parameters, those), with ``step_sums`` as its forward.

    ``step_sums`` may reach the modules through the model that owns them: DDP hooks the
    parameters themselves, so their gradients are averaged over the processes either way.
    """

    def __init__(self, trained: Sequence[nn.Module | torch.Tensor], step_sums: Callable[[dict], tuple]) -> None:
        super().__init__()
        self.trained = nn.ModuleList([m for m in trained if isinstance(m, nn.Module)])
        self.loose = nn.ParameterList([p for p in trained if not isinstance(p, nn.Module)])
        self.step_sums = step_sums

    def forward(self, batch: dict) -> tuple[torch.Tensor, float]:
        return self.step_sums(batch)


def train_stage(trained: Sequence[nn.Module | torch.Tensor], dataset: Dataset, step_sums, *, steps: int,
                batch_size: int, lr: float, accelerator, seed: int, warmup: int, betas, clip: float, progress: bool,
                name: str, key: str, clock: Callable[[], float] | None = None) -> list[dict]:
    """The loop of a warm-up stage (vision on object words, LISA's SAM on point prompts).

    The modules in ``trained`` (or bare parameters) and an AdamW over their trainable parameters
    go through ``accelerator.prepare`` (DDP averages the gradients, autocast and the fp16 scaler
    apply as in the joint run) and are released from the accelerator afterwards, so the joint
    run's checkpoints hold only its own model and optimizer. The stage runs under DDP or one
    process; not under FSDP (its sharding would take over the modules the joint run prepares
    again), nor DeepSpeed.

    Each step takes ``batch_size`` items per process (seeded shares of a global batch, as
    :class:`~pixellm.train.mixture.MixtureSampler` splits them), computes
    ``step_sums(batch) -> (loss summed over the process's targets, their count)``, scales it to
    the mean over the global batch's targets and takes an AdamW step (one batch a step, whatever
    the joint run's gradient accumulation); the learning rate warms up over ``warmup`` steps and
    decays linearly to 5%.

    Returns:
        one record per step: {"step", ``key`` (the loss), "lr", "images_per_s", "seconds"}
        (seconds on ``clock``, default ``time.perf_counter``).
    Raises:
        InputError: under FSDP or DeepSpeed. TrainingDivergedError: a non-finite loss.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise InputError(f"the {name} (--vision-warmup) runs under DDP or on one process, not under "
                         f"{accelerator.distributed_type.value}; pass --vision-warmup 0")
    clock = clock or time.perf_counter
    stage = Stage(trained, step_sums)
    params = [p for p in stage.parameters() if p.requires_grad]
    opt = adamw(params, lr=lr, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupLinearDecay(warmup=min(warmup, steps), total=steps, min_ratio=0.05))
    accumulation = accelerator.gradient_accumulation_steps
    accelerator.gradient_accumulation_steps = 1  # accelerator.backward divides the loss by it
    wrapped, opt = accelerator.prepare(stage, opt)
    try:
        return _stage_steps(wrapped, opt, sched, dataset, accelerator, steps=steps, batch_size=batch_size, seed=seed,
                            clip=clip, progress=progress, name=name, key=key, clock=clock)
    finally:
        accelerator.gradient_accumulation_steps = accumulation
        del wrapped, opt
        accelerator.free_memory()  # forget the stage's module and optimizer (and DDP's hooks on its parameters)


def _stage_steps(wrapped, opt, sched, dataset: Dataset, accelerator, *, steps: int, batch_size: int, seed: int,
                 clip: float, progress: bool, name: str, key: str, clock: Callable[[], float]) -> list[dict]:
    """:func:`train_stage`'s steps on the prepared stage and optimizer."""
    world, rank = accelerator.num_processes, accelerator.process_index
    # the stage's own seeded shares of each global batch (MixtureSampler), as the joint run's loader
    loader = iter(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_objects,
                             sampler=MixtureSampler(sizes=[len(dataset)], rates=[1.0], seed=seed,
                                                    rank=rank, world=world)))
    bar = tqdm(total=steps, disable=not progress or not accelerator.is_main_process, desc=name,
               dynamic_ncols=True, mininterval=2.0)
    history, t0 = [], clock()
    for step in range(1, steps + 1):
        total, count = wrapped(next(loader))
        # The mean over the global batch's targets: each process scales its sum by the global
        # count, so DDP's mean gradient is the one process's on the whole batch.
        count, total_sum = global_sums(accelerator, float(count), float(total.detach()))  # one collective
        loss = total * world / max(count, 1.0)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"non-finite {name} loss ({loss.item()}) at warm-up step {step}; stopping")
        accelerator.backward(loss)
        if clip > 0:
            accelerator.clip_grad_norm_(wrapped.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        elapsed = clock() - t0
        rec = {"step": step, key: total_sum / max(count, 1.0),
               "lr": sched.get_last_lr()[0], "images_per_s": step * batch_size * world / elapsed,
               "seconds": elapsed}
        history.append(rec)
        bar.set_postfix({k: f"{rec[k]:.3g}" for k in (key, "lr", "images_per_s")})
        bar.update(1)
    bar.close()
    return history


def global_sums(accelerator, *xs: float) -> list[float]:
    """Each of ``xs`` summed over the processes."""
    if accelerator.num_processes == 1:
        return list(xs)
    t = torch.tensor(xs, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").tolist()
