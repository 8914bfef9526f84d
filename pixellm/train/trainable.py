"""Which parameters train, printed and checked (any family, through its
``trainable_components()``)."""
from __future__ import annotations

from torch import nn


def trainable_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """component -> (trainable params, total params), in the family's component order; 'lora'
    counts adapter weights (inside 'llm')."""
    out = {}
    for name, (module, _) in model.trainable_components().items():
        ps = list(module.parameters())
        out[name] = (sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps))
    llm = getattr(model, "llm", None)  # families without an LLM (LSeg, LTS) have no adapters
    lora = [] if llm is None else [p for n, p in llm.named_parameters() if "lora_" in n]
    out["lora"] = (sum(p.numel() for p in lora if p.requires_grad), sum(p.numel() for p in lora))
    return out


def select_trainable(model: nn.Module, *, verbose: bool = True) -> dict[str, tuple[int, int]]:
    """Check the trainable selection implied by the config and print it.

    Asserts: a frozen vision tower has no trainable weight; the components the family marks
    as trained fully (projector, mask head...) are; a component with a ``frozen`` flag set
    (e.g. LISA's SAM image encoder at real scale) has no trainable weight; with LoRA, adapters
    train and the base LLM's other weights (except the embeddings / LM head) are frozen.

    Returns:
        :func:`trainable_counts`.
    """
    cfg = model.config
    counts = trainable_counts(model)
    for name, (module, full) in model.trainable_components().items():
        if getattr(module, "frozen", False) and counts[name][0]:
            raise AssertionError(f"{name} is configured frozen but has {counts[name][0]} trainable params")
        if full and counts[name][0] != counts[name][1]:
            raise AssertionError(f"{name} must train fully: {counts[name]}")
    if getattr(cfg, "llm", None) is not None and cfg.llm.lora is not None:
        if not counts["lora"][0]:
            raise AssertionError("LoRA is configured but no adapter weight trains")
        base = model.base_llm
        emb = {id(base.get_input_embeddings().weight), id(base.get_output_embeddings().weight)}
        stray = [n for n, p in base.named_parameters() if p.requires_grad and "lora_" not in n and id(p) not in emb]
        if stray:
            raise AssertionError(f"LoRA run trains base LLM weights: {stray[:5]}")
    if verbose:
        total = sum(t for c, (t, _) in counts.items() if c != "lora")
        rows = ", ".join(f"{c} {t / 1e6:.2f}M/{n / 1e6:.2f}M" for c, (t, n) in counts.items())
        print(f"trainable: {total / 1e6:.2f}M ({rows})")
    return counts
