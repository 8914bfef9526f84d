"""The optimizer: AdamW parameter groups, and torch's fused AdamW kernel where it runs.

On CPU, ``torch.optim.AdamW`` defaults to its per-tensor loop (a few small kernels for each
of ``pixellm-tiny``'s 308 parameter tensors): 37 ms a step on 2 CPU cores, against 9 ms for the
fused kernel, which does the same update (torch 2.14.1, the optimizer step timed alone).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel runs (for floating-point params)


def param_groups(model, *, lr: float, head_lr_mult: float = 1.0, vision_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups: the mask head (the components the family trains fully, less the image
    projector: PixelLM's codebook fusion, pixel decoder, phrase and region heads; LISA's
    ``text_hidden_fcs`` and SAM decoder) at ``lr * head_lr_mult``, the vision tower at
    ``lr * vision_lr_mult``, every other trainable parameter (projector, LLM, a trained SAM
    encoder) at ``lr``; frozen ones are left out."""
    head_modules = [m for name, (m, full) in model.trainable_components().items()
                    if full and name != "projector"]
    head = {id(p) for m in head_modules for p in m.parameters()}
    vision = {id(p) for p in model.vision.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in head and id(p) not in vision], "lr": lr},
              {"params": [p for p in trainable if id(p) in head], "lr": lr * head_lr_mult},
              {"params": [p for p in trainable if id(p) in vision], "lr": lr * vision_lr_mult}]
    return [g for g in groups if g["params"]]


def adamw(params: Iterable, *, lr: float, betas=(0.9, 0.95), weight_decay: float = 0.0) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params`` (tensors or groups), fused when every parameter is
    a floating-point tensor on CPU or CUDA (the same update in one kernel; the parameters may
    still move between those devices, as ``accelerator.prepare`` moves them), else torch's
    default implementation (e.g. on the ``meta`` device)."""
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in tensors)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                             **({"fused": True} if fused else {}))
