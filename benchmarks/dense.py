"""Compute of the families without an LLM (LSeg; LTS follows), in the flops harness's terms.

Such a model answers a question with forward passes of ``model.query(pixels, text)`` (LSeg:
one pass labelling the question against "other", whatever the number of targets K; a
referring model: one pass per expression, so K passes). FLOPs are counted on the meta device
with the harness's counter (:func:`benchmarks.flop_utils.count_flops`, a multiply-add = 2),
and latency is the median wall time on a device with random weights, the text side included
(each question is new text, so nothing is cached).
"""
from __future__ import annotations

import torch

from pixellm.build import build_model
from pixellm.config import get_model_config

from .flop_utils import count_flops, median_ms, synchronizer


def _model(name: str, device: str | torch.device):
    with torch.device(device):
        model = build_model(get_model_config(name), load_weights=False)
    return model.eval().requires_grad_(False)


def query_flops(name: str, ks: list[int]) -> dict[int, int]:
    """FLOPs of one query with K targets, per K in ``ks``, for the registered config ``name``."""
    model = _model(name, "meta")
    side = model.input_size
    with torch.device("meta"):
        pixels = torch.empty(1, 3, side, side)
        _, one = count_flops(lambda: model.query(pixels, "which shapes are red?"))
    return {k: one * model.passes_per_query(k) for k in ks}


def query_ms(name: str, ks: list[int], *, device: torch.device, repeats: int, warmup: int = 1) -> dict[int, float]:
    """Median ms per query with K targets (random weights), per K in ``ks``."""
    model = _model(name, device)
    side = model.input_size
    pixels = torch.randn(1, 3, side, side, device=device)
    sync = synchronizer(device)
    counter = iter(range(10**9))

    def one():  # a new question each time: its text is encoded, as a user's would be
        model.query(pixels, f"which shapes are red? {next(counter)}")

    ms = median_ms(one, repeats=repeats, warmup=warmup, sync=sync)
    return {k: ms * model.passes_per_query(k) for k in ks}
