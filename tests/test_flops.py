"""Compute report: hand-counted FLOPs, the anchors, the LISA reference and the CLI."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixellm.benchmarks.flop_utils import (
    QueryBudget,
    affine_sum,
    count_flops,
    decode_step,
    prefill,
    prompt_embeds,
)
from pixellm.benchmarks.flops import (
    ANCHORS,
    COMPONENTS,
    PIPELINES,
    anchor_flops,
    build_pipeline,
    count_query,
    decode_cost,
    latency,
    main,
)
from pixellm.config import get_model_config
from pixellm.lisa import build_sam

B, T, WIDTH, HEADS = 2, 16, 32, 4


class SdpaAttention(nn.Module):
    """Explicit q/k/v/out projections around F.scaled_dot_product_attention."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(WIDTH, WIDTH) for _ in range(4))

    def forward(self, x):
        split = lambda y: y.view(B, T, HEADS, -1).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.o(out.transpose(1, 2).flatten(2))


class FusedAttention(nn.Module):
    """nn.MultiheadAttention: under eval + no_grad it takes a fused fast path."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def _hand_count() -> int:
    linear = 2 * B * T * (WIDTH * 64 + 64 * WIDTH)  # Linear(32, 64), Linear(64, 32)
    projections = 4 * 2 * B * T * WIDTH * WIDTH  # q, k, v, out
    scores = 2 * B * HEADS * T * T * (WIDTH // HEADS)  # QK^T; AV is the same
    return linear + projections + 2 * scores


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("attention", [SdpaAttention, FusedAttention])
def test_count_matches_hand_formula(device, attention):
    with torch.device(device):
        model = nn.Sequential(nn.Linear(WIDTH, 64), nn.Linear(64, WIDTH), attention()).eval()
        x = torch.randn(B, T, WIDTH)
    out, flops = count_flops(lambda: model(x))
    assert out.shape == (B, T, WIDTH)
    assert flops == _hand_count() == 589_824  # 262144 + 262144 + 2 * 32768


def test_answer_budget():
    budget = QueryBudget()
    assert budget.prompt_tokens(256) == 286
    assert [budget.answer_tokens(k, 6) for k in (1, 3, 10)] == [10, 28, 91]  # PixelLM blocks
    assert [budget.answer_tokens(k, 1) for k in (1, 3, 10)] == [5, 13, 41]  # LISA [SEG]
    # latency: a PixelLM block is one decode step of 6 tokens; every fed token is counted once
    assert budget.decode_schedule(3, 6) == [1, 1, 6, 1] * 3 and sum(budget.decode_schedule(10, 6)) == 90
    assert len(budget.decode_schedule(3, 1)) == 12
    assert affine_sum(10, 3, 4) == 10 + 13 + 16 + 19


def test_affine_decode_matches_step_by_step():
    pipe = build_pipeline("pixellm", "tiny")
    lm, budget = pipe.causal_lm, QueryBudget()
    with torch.device("meta"):
        _, image_tokens = pipe.encode_image(torch.empty(1, 3, pipe.image_size, pipe.image_size))
        embeds = prompt_embeds(lm, image_tokens, budget)
        start = embeds.shape[1]
        first, slope = decode_cost(lm, prefill(lm, embeds)[2], start)
        past, token = prefill(lm, embeds)[2], torch.zeros(1, dtype=torch.long)
        steps = [count_flops(lambda i=i: decode_step(lm, past, token, start + i))[1]
                 for i in range(6)]
    assert slope == 2 * 2 * lm.config.hidden_size * lm.config.num_hidden_layers  # QK^T + AV
    assert sum(steps) == affine_sum(first, slope, 6)


@pytest.fixture(scope="module")
def anchors():
    return anchor_flops()


@pytest.mark.parametrize("name", list(ANCHORS))
def test_anchor_within_5_percent(anchors, name):
    assert anchors[name] == pytest.approx(ANCHORS[name], rel=0.05)


def test_sam_decoder_cost_is_per_target():
    with torch.device("meta"):
        sam = build_sam(get_model_config("lisa-7b").sam, load_weights=False).eval().requires_grad_(False)  # ViT-H
        emb = torch.empty(1, 256, 64, 64)
        pe = sam.get_image_wide_positional_embeddings()
        _, dense = sam.prompt_encoder(None, None, None, None)
        decode = lambda k: sam.mask_decoder(  # noqa: E731  (k prompts in one point batch)
            emb, pe, torch.empty(1, k, 1, 256), dense, multimask_output=False)
        (masks, _), one = count_flops(lambda: decode(1))
        _, three = count_flops(lambda: decode(3))
    assert masks.shape == (1, 1, 1, 256, 256)
    assert three == 3 * one > 0


def test_lisa_pipeline_takes_saved_sam_weights(tmp_path):
    """``pixellm-flops --sam-weights DIR`` times LISA with real SAM weights."""
    torch.manual_seed(0)
    sam = build_sam(get_model_config("lisa-tiny").sam)
    sam.save_pretrained(tmp_path)
    pipe = build_pipeline("lisa", "tiny", device="cpu", sam_weights=str(tmp_path))
    for name, tensor in sam.state_dict().items():
        assert torch.equal(pipe.model.sam.state_dict()[name], tensor), name
    feats = pipe.encode_mask_image(torch.zeros(1, 3, pipe.mask_image_size, pipe.mask_image_size))
    logits = pipe.decode_masks(feats, pipe.project_targets(torch.zeros(2, 1, 128)))
    g = pipe.mask_image_size // 16
    assert logits.shape == (2, 4 * g, 4 * g) and torch.isfinite(logits).all()


def test_tiny_query_flops_per_component():
    """What grows with K: the decode (more answer tokens), the target projection (one block per
    target) and the mask decoder (affinely: per-target work on top of a per-image part, PixelLM's
    neck); the image and prompt stages do not."""
    budget, rows = QueryBudget(), {}
    for kind in PIPELINES:
        pipe = build_pipeline(kind, "tiny")
        for r in count_query(pipe, budget, [1, 2, 3]):
            assert set(r["flops"]) == set(COMPONENTS) and r["total"] == sum(r["flops"].values())
            assert r["answer_tokens"] == budget.answer_tokens(r["k"], pipe.block_len)
            rows[r["pipeline"], r["k"]] = r["flops"]
    for name in ("pixellm-tiny", "lisa-tiny"):
        f1, f2, f3 = (rows[name, k] for k in (1, 2, 3))
        for c in ("vision", "llm_prefill", "mask_encoder"):
            assert f1[c] == f2[c] == f3[c]
        assert 0 < f1["llm_decode"] < f2["llm_decode"] < f3["llm_decode"]
        assert f2["target_proj"] == 2 * f1["target_proj"] > 0 and f3["target_proj"] == 3 * f1["target_proj"]
        assert f3["mask_decoder"] - f2["mask_decoder"] == f2["mask_decoder"] - f1["mask_decoder"] > 0
    assert rows["pixellm-tiny", 2]["mask_decoder"] < 2 * rows["pixellm-tiny", 1]["mask_decoder"]  # the neck
    assert rows["pixellm-tiny", 1]["mask_encoder"] == 0 < rows["lisa-tiny", 1]["mask_encoder"]


def test_latency_rows_have_every_field():
    """Structure only (timings belong to benchmarks, not tests): every component is timed."""
    rows = latency(["tiny"], [2], QueryBudget(), device=torch.device("cpu"), dtype=torch.float32,
                   repeats=1, warmup=0)
    assert [(r["pipeline"], r["k"]) for r in rows] == [("pixellm-tiny", 2), ("lisa-tiny", 2)]
    for r, fed in zip(rows, (18, 8), strict=True):  # T - 1 = 2 x (2 + block + 1) fed tokens
        assert set(r["ms"]) == set(COMPONENTS)
        timed = {c: v for c, v in r["ms"].items() if (c, r["pipeline"]) != ("mask_encoder", "pixellm-tiny")}
        assert all(math.isfinite(v) and v > 0 for v in timed.values()), r["ms"]
        assert r["total_ms"] == pytest.approx(sum(r["ms"].values()))
        assert r["decode_ms_per_token"] == pytest.approx(r["ms"]["llm_decode"] / fed)
        assert r["llm_weight_bytes"] > 0 and r["decode_bound_ms_per_token"] is None
        assert r["peak_memory_bytes"] is None  # CPU: no allocator statistics
    assert rows[0]["ms"]["mask_encoder"] == 0  # PixelLM has no mask encoder


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("flops")
    assert main(["--out", str(out), "--sizes", "7b", "--targets", "3", "--no-latency"]) == 0
    return out, json.loads(next(out.glob("flops_*.json")).read_text())


def test_main_writes_json_markdown_and_plots(report):
    out, data = report
    meta = data["meta"]
    stem = f"flops_{meta['device']}_{meta['dtype']}_torch{meta['torch']}"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}.json", f"{stem}.md", f"{stem}_pixellm-7b.png", f"{stem}_lisa-7b.png"])
    assert "| pixellm-7b | 3 | 286 | 6 | 28 |" in next(out.glob("*.md")).read_text()
    assert data["latency"] == [] and meta["device"] in ("cpu", "cuda")


def test_pixellm_cheaper_than_lisa_7b_k3(report):
    _, data = report
    rows = {r["pipeline"]: r for r in data["flops"]}
    pixellm, lisa = rows["pixellm-7b"], rows["lisa-7b"]
    for row in (pixellm, lisa):
        assert row["total"] == sum(row["flops"].values())
    # same LLM and prompt length: the prefill only differs by the 5 extra lm_head rows
    # (6 codebook tokens vs one [SEG]); the gap is SAM's encoder
    d = 4096
    assert pixellm["flops"]["llm_prefill"] - lisa["flops"]["llm_prefill"] == 5 * 2 * d
    sam_h = ANCHORS["SAM ViT-H encoder @1024"]
    assert lisa["flops"]["mask_encoder"] == pytest.approx(sam_h, rel=0.05)
    assert pixellm["flops"]["llm_decode"] > lisa["flops"]["llm_decode"]  # 27 vs 12 fed tokens
    assert pixellm["total"] < lisa["total"]
    assert data["ratios"][0]["ratio"] == pytest.approx(pixellm["total"] / lisa["total"])
