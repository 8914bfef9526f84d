"""Predictor API, checkpoints, generation edge cases and every bad-input error."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scripting import scripted

from pixellm import CheckpointError, InputError, PixelLM, PixelLMPredictor
from pixellm.cli import main as predict_main
from pixellm.decoder import DecoderOutput
from pixellm.evaluate import evaluate_generation
from pixellm.muse import Sample
from pixellm.predictor import suppress_duplicates, target_score

QUESTION = "which shapes are red?"


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)


@pytest.fixture
def saved(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_save_load_identical_outputs(tiny_model, saved, image):
    loaded = PixelLM.from_pretrained(saved)
    for a, b in zip(tiny_model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    p1 = PixelLMPredictor(tiny_model, max_new_tokens=24).predict(image, QUESTION)
    p2 = PixelLMPredictor(loaded, max_new_tokens=24).predict(image, QUESTION)
    assert p1.answer == p2.answer and len(p1.targets) == len(p2.targets)
    for t1, t2 in zip(p1.targets, p2.targets):
        assert np.array_equal(t1.mask, t2.mask) and t1.score == t2.score


def test_save_is_self_contained(saved):
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["llm"]["config"]["model_type"] == "llama" and cfg["vision"]["pretrained"] is None
    assert not list(saved.parent.glob(".ckpt.*")), "temporary save directory left behind"


def test_blocks_become_targets_with_phrases(tiny_model, image):
    pred = scripted(tiny_model, ["red", "circle", 6, ",", "blue", "square", 6, "and", "green", "star", 6, "."])
    p = pred.predict(image, QUESTION)
    assert [t.phrase for t in p.targets] == ["red circle", "blue square", "green star"]
    assert p.answer == "red circle, blue square and green star." and p.malformed == []
    for t in p.targets:
        assert t.mask.shape == (48, 80) and t.mask.dtype == bool and 0.0 <= t.score <= 1.0
        x0, y0, x1, y1 = t.bbox
        if t.mask.any():
            ys, xs = np.nonzero(t.mask)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        from pycocotools import mask as mask_utils
        assert np.array_equal(mask_utils.decode({**t.rle, "counts": t.rle["counts"].encode()}), t.mask)


def test_no_block_means_zero_targets(tiny_model, image):
    p = scripted(tiny_model, ["no", "shape", "matches", "."]).predict(image, QUESTION)
    assert p.targets == [] and p.answer == "no shape matches."


def test_truncated_final_block_is_dropped_and_reported(tiny_model, image):
    # 2 + 6 + 2 + 3 = 13 tokens: the budget cuts the second block after 3 of its 6 tokens
    pred = scripted(tiny_model, ["red", "circle", 6, "blue", "square", 6], max_new_tokens=13)
    p = pred.predict(image, QUESTION)
    assert [t.phrase for t in p.targets] == ["red circle"]
    assert len(p.malformed) == 1 and "3 of 6" in p.malformed[0]


def test_unconstrained_broken_block_keeps_other_masks(tiny_model, image):
    cb = tiny_model.codebook_ids
    pred = scripted(tiny_model, ["red", "circle", 6, "and", [cb[0], cb[2]], "blue", "square", 6, "."],
                    constrain_blocks=False)
    p = pred.predict(image, QUESTION)
    assert [t.phrase for t in p.targets] == ["red circle", "blue square"]
    assert p.malformed and "position 9" in p.malformed[0]


def test_constrained_decoding_completes_blocks(tiny_model, image):
    cb = tiny_model.codebook_ids
    # the script tries to break the block after 2 tokens; the constraint forces the other 4
    pred = scripted(tiny_model, ["red", "circle", [cb[0], cb[1]], "red", "red", "red", "red", "."])
    p = pred.predict(image, QUESTION)
    assert len(p.targets) == 1 and p.malformed == []


def test_predict_and_predict_batch_agree(tiny_model):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), rng.integers(0, 255, (40, 70, 3), dtype=np.uint8),
              rng.integers(0, 255, (90, 30), dtype=np.uint8)]
    questions = [QUESTION, "find all the stars ?", "what are the two largest shapes which have no corners ?"]
    pred = PixelLMPredictor(tiny_model, max_new_tokens=20, duplicate_iou=None)
    batch = pred.predict_batch(images, questions)
    for img, q, b in zip(images, questions, batch):
        single = pred.predict(img, q)
        assert single.answer == b.answer and len(single.targets) == len(b.targets)
        for s, t in zip(single.targets, b.targets):
            assert (s.mask == t.mask).mean() > 0.995 and abs(s.score - t.score) < 1e-3


def test_suppress_duplicates_keeps_the_higher_score_in_answer_order():
    m = torch.zeros(6, 4, 10, dtype=torch.bool)
    m[0, :, :4] = True  # A
    m[1, :, :4] = True
    m[1, 0, 4] = True  # B: A plus one pixel, IoU 16/17
    m[2, :, 6:] = True  # C: disjoint
    m[3, :2, :2] = True  # D: IoU 4/16 with A, 4/17 with B
    # m[4], m[5]: empty, IoU 1 with each other
    scores = [0.9, 0.95, 0.5, 0.4, 0.3, 0.3]
    assert suppress_duplicates(m, scores, iou=0.5) == [1, 2, 3, 4]  # A loses to B, the 2nd empty to the 1st
    assert suppress_duplicates(m, scores, iou=0.25) == [1, 2, 3, 4]
    half = torch.zeros(2, 2, 4, dtype=torch.bool)
    half[0, :, :2] = True
    half[1] = True  # IoU exactly 4/8
    assert suppress_duplicates(half, [0.9, 0.8], iou=0.5) == [0, 1]  # 0.5 is not above 0.5
    assert suppress_duplicates(half, [0.9, 0.8], iou=0.49) == [0]
    assert suppress_duplicates(m, scores, iou=0.2) == [1, 2, 4]
    assert suppress_duplicates(m, [0.9, 0.9, 0.5, 0.4, 0.3, 0.3], iou=0.5) == [0, 2, 3, 4]  # tie: answer order
    assert suppress_duplicates(m[:0], [], iou=0.5) == []
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        suppress_duplicates(m, scores, iou=0.0)
    with pytest.raises(ValueError, match="6 masks but 2 scores"):
        suppress_duplicates(m, scores[:2], iou=0.5)


def _three_blocks_two_alike(model, monkeypatch, iou_logits=(0.0, 1.0, 2.0), **kw):
    """Scripted answer with 3 blocks whose decoder masks are: left third, right third, left
    third again, with predicted IoU sigmoid(``iou_logits``) (default: the third copy is surer)."""
    kw.setdefault("duplicate_iou", 0.5)
    pred = scripted(model, ["red", "circle", 6, ",", "blue", "square", 6, "and", "green", "star", 6, "."], **kw)
    s = model.config.vision.image_size

    def decode(feats, block_hidden, batch_index):
        logits = torch.full((block_hidden.shape[0], s, s), -2.0)
        logits[0::3] = -5.0  # symmetric logits: the three masks' edges land on the same pixels
        logits[0::3, :, : s // 3] = 5.0  # the strongest mask logits: not what the score reads
        logits[1::3, :, -(s // 3):] = 2.0
        logits[2::3, :, : s // 3] = 2.0
        return DecoderOutput(logits, torch.tensor(iou_logits).repeat(block_hidden.shape[0] // 3))

    monkeypatch.setattr(model, "decode_masks", decode)
    return pred


def test_duplicate_masks_are_dropped_but_kept_aside(tiny_model, image, monkeypatch):
    p = _three_blocks_two_alike(tiny_model, monkeypatch).predict(image, QUESTION)
    assert p.answer == "red circle, blue square and green star."
    assert [(t.phrase, t.index) for t in p.targets] == [("blue square", 1), ("green star", 2)]
    assert [(t.phrase, t.index) for t in p.duplicates] == [("red circle", 0)]
    assert np.array_equal(p.duplicates[0].mask, p.targets[1].mask) and p.targets[1].mask[:, :10].all()
    raw = _three_blocks_two_alike(tiny_model, monkeypatch, duplicate_iou=None).predict(image, QUESTION)
    assert [t.index for t in raw.targets] == [0, 1, 2] and raw.duplicates == []
    # the scores are the predicted IoUs, and suppression keeps the copy predicted better
    assert [t.score for t in raw.targets] == pytest.approx([0.5, 1 / (1 + np.exp(-1)), 1 / (1 + np.exp(-2))])
    first = _three_blocks_two_alike(tiny_model, monkeypatch, iou_logits=(3.0, 1.0, -1.0)).predict(image, QUESTION)
    assert [t.index for t in first.targets] == [0, 1] and [t.index for t in first.duplicates] == [2]
    with pytest.raises(ValueError, match="duplicate_iou"):
        PixelLMPredictor(tiny_model, duplicate_iou=1.5)


def test_evaluation_scores_kept_targets_and_reports_the_duplicates(tiny_model, image, monkeypatch, tmp_path):
    Image.fromarray(image).save(tmp_path / "img.png")
    left = np.zeros((1, 48, 80), dtype=bool)
    left[0, :, :27] = True  # what the left-third mask covers at 48 x 80 (32 of 96 input px)
    sample = Sample(image_path=tmp_path / "img.png", question=QUESTION, answer="red circle {seg}.",
                    phrases=("red circle",), height=48, width=80, image_id=1, question_index=0,
                    source="test", _load_masks=lambda: left)
    pred = _three_blocks_two_alike(tiny_model, monkeypatch)
    assert pred.predict(image, QUESTION).targets[1].mask.sum() == left.sum()
    pred = _three_blocks_two_alike(tiny_model, monkeypatch)  # a fresh script
    m = evaluate_generation(pred, [sample], progress=False)
    # kept: right third (IoU 0 with nothing) + left third (IoU 1): mean over max(2, 1) pairs
    assert m["all"]["giou"] == pytest.approx(0.5) and m["all"]["count_acc"] == 0.0
    assert m["with_duplicates"]["giou"] == pytest.approx(1 / 3) and m["n_duplicates"] == 1
    assert m["duplicate_iou"] == 0.5
    assert m["phrase_giou"] == pytest.approx(1 / 3)  # the text counts every phrase it wrote
    # kept: the right third (a miss, score sigmoid(1)) and the left third (a hit, sigmoid(2))
    miss, hit = 1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(-2.0))
    assert (m["score"]["n"], m["score"]["n_hits"], m["score"]["auroc"]) == (2, 1, 1.0)
    assert m["score"]["ece"] == pytest.approx((miss + (1 - hit)) / 2, rel=1e-5)  # one per bin
    assert np.isnan(m["zero_target_rate"]) and m["n_zero_target"] == 0


def test_target_score_is_the_clipped_predicted_iou_else_the_old_heuristic():
    probs = torch.tensor([[0.9, 0.7], [0.2, 0.1]])
    mask = probs > 0.5
    assert target_score(0.42, probs, mask, 0.5) == pytest.approx(0.42)
    assert target_score(1.3, probs, mask, 0.5) == 1.0 and target_score(-0.2, probs, mask, 0.5) == 0.0
    assert target_score(None, probs, mask, 0.5) == pytest.approx(0.8 * 0.5)  # mean fg prob x block prob
    assert target_score(None, probs, torch.zeros(2, 2, dtype=torch.bool), 0.9) == 0.0


def test_scores_lie_in_0_1_and_are_the_decoders_prediction(tiny_model, image):
    seen = []
    tiny_model.decoder.register_forward_hook(lambda m, i, o: seen.append(o.iou))
    pred = scripted(tiny_model, ["red", "circle", 6, ",", "blue", "square", 6, "."])
    p = pred.predict(image, QUESTION)
    assert len(p.targets) == 2 and seen[-1].shape == (2,)
    assert [t.score for t in p.targets] == pytest.approx(seen[-1].tolist())
    assert all(0.0 <= t.score <= 1.0 for t in p.targets)


def test_checkpoint_from_before_the_iou_head_loads_and_scores(make_tokenizer, small_config, tmp_path, image):
    """A config without ``loss.iou_weight`` (written before the head) builds no head, so its
    weights load strictly; the scores fall back to the old heuristic."""
    torch.manual_seed(0)
    from pixellm.build import build_model
    model = build_model(small_config(loss={"iou_weight": 0.0}), tokenizer=make_tokenizer())
    model.save_pretrained(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["loss"]["iou_weight"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    loaded = PixelLM.from_pretrained(tmp_path / "old")
    assert loaded.config.loss.iou_weight == 0.0 and loaded.decoder.iou_prediction_head is None
    p = scripted(loaded, ["red", "circle", 6, "."]).predict(image, QUESTION)
    assert len(p.targets) == 1 and 0.0 <= p.targets[0].score <= 1.0


def test_checkpoint_missing_the_iou_head_weights_is_a_checkpoint_error(saved):
    from safetensors.torch import load_file, save_file
    sd = load_file(str(saved / "model.safetensors"))
    dropped = [k for k in sd if "iou" in k]
    assert dropped == ["decoder.heads.0.iou_token.weight", "decoder.heads.1.iou_token.weight",
                       *(f"decoder.iou_prediction_head.layers.{i}.{w}" for i in range(3) for w in ("bias", "weight"))]
    save_file({k: v for k, v in sd.items() if k not in dropped}, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: decoder\.heads\.0\.iou_token\.weight, "):
        PixelLM.from_pretrained(saved)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_image_modes_accepted(tiny_model, tmp_path, mode):
    arr = (np.arange(32 * 24) % 251).reshape(24, 32)
    img = Image.fromarray(arr.astype(np.uint16 if mode == "I;16" else np.uint8)).convert(mode) if mode != "I;16" \
        else Image.fromarray(arr.astype(np.uint16) * 200)
    path = tmp_path / f"x_{mode.replace(';', '')}.png"
    img.save(path)
    p = PixelLMPredictor(tiny_model, max_new_tokens=4).predict(path, QUESTION)
    assert all(t.mask.shape == (24, 32) for t in p.targets)


def test_bad_inputs(tiny_model, tmp_path, image):
    pred = PixelLMPredictor(tiny_model, max_new_tokens=8)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match="cannot read image .*corrupt.png"):
        pred.predict(corrupt, QUESTION)
    with pytest.raises(InputError, match="not found"):
        pred.predict(tmp_path / "missing.jpg", QUESTION)
    with pytest.raises(InputError, match="zero size"):
        pred.predict(np.zeros((0, 10, 3), np.uint8), QUESTION)
    with pytest.raises(InputError, match="question is empty"):
        pred.predict(image, "   ")
    with pytest.raises(InputError, match=r"too long: \d+ tokens, but at most \d+ fit \(context " + str(pred.formatter.max_length) + " tokens"):
        pred.predict(image, "red " * 400)
    with pytest.raises(InputError, match="batch item 1: the question is empty"):
        pred.predict_batch([image, image], [QUESTION, ""])
    with pytest.raises(InputError, match="equal-length"):
        pred.predict_batch([image], [QUESTION, QUESTION])
    with pytest.raises(InputError, match="NaN"):
        pred.predict(np.full((8, 8, 3), np.nan, np.float32), QUESTION)


def test_bad_checkpoints(saved, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        PixelLMPredictor.from_pretrained(tmp_path / "nope")
    (saved / "model.safetensors").rename(tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="incomplete checkpoint .*missing model.safetensors"):
        PixelLMPredictor.from_pretrained(saved)
    (saved / "model.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read weights .*model.safetensors"):
        PixelLMPredictor.from_pretrained(saved)


def test_strict_loading_names_keys(tiny_model, saved):
    from safetensors.torch import load_file, save_file
    sd = load_file(str(saved / "model.safetensors"))
    sd.pop("fusion.scale_weight")
    sd["decoder.extra"] = torch.zeros(1)
    save_file(sd, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match the model: missing keys: "
                       r"fusion.scale_weight; unexpected keys: decoder.extra"):
        PixelLM.from_pretrained(saved)


def test_cli_end_to_end(saved, tmp_path, image, capsys, monkeypatch):
    """The CLI loads the checkpoint (its LLM scripted to name two targets) and writes every
    target, kept, duplicate or rejected, with its phrase, score, box and a mask RLE that agree."""
    load = PixelLMPredictor.from_pretrained

    def load_scripted(cls, directory, **kw):
        pred = load(directory, **kw)
        scripted(pred.model, ["red", "circle", 6, ",", "blue", "square", 6, "."])  # swaps its LM head
        return pred

    monkeypatch.setattr(PixelLMPredictor, "from_pretrained", classmethod(load_scripted))
    img_path = tmp_path / "img.png"
    Image.fromarray(image).save(img_path)
    rc = predict_main([str(img_path), QUESTION, "--checkpoint", str(saved), "--out", str(tmp_path / "out"),
                       "--max-new-tokens", "24"])
    assert rc == 0
    rec = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert rec["question"] == QUESTION and rec["answer"] == "red circle, blue square."
    assert rec["answer"] == capsys.readouterr().out.splitlines()[0]
    written = sorted(rec["targets"] + rec["duplicates"] + rec["rejected"], key=lambda t: t["index"])
    assert [(t["index"], t["phrase"]) for t in written] == [(0, "red circle"), (1, "blue square")]
    assert rec["malformed_blocks"] == []
    from pycocotools import mask as mask_utils
    for t in written:
        assert t["rle"]["size"] == [48, 80] and 0.0 <= t["score"] <= 1.0
        mask = mask_utils.decode({**t["rle"], "counts": t["rle"]["counts"].encode()}).astype(bool)
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if mask.any() else [0, 0, 0, 0]
        assert t["bbox_xyxy"] == box
    overlay = Image.open(tmp_path / "out" / "overlay.png")
    assert overlay.mode == "RGB" and overlay.width >= 80
    assert predict_main([str(tmp_path / "none.png"), QUESTION, "--checkpoint", str(saved)]) == 2
    with pytest.raises(SystemExit) as exit_:
        predict_main([str(img_path), QUESTION, "--checkpoint", str(saved), "--duplicate-iou", "0"])
    assert exit_.value.code == 2 and "an IoU in (0, 1], got 0" in capsys.readouterr().err


class RowHead(torch.nn.Module):
    """Row 0 always wants to start a block; row 1 always says "red" (never a block)."""

    def __init__(self, vocab, block_start, red):
        super().__init__()
        self.vocab, self.block_start, self.red = vocab, block_start, red

    def forward(self, h):
        out = torch.full((*h.shape[:-1], self.vocab), -10.0)
        out[0, ..., self.block_start] = 10.0
        out[1, ..., self.red] = 10.0
        return out


def test_block_chunked_decoding_equals_token_by_token(tiny_model):
    from pixellm.data import left_pad
    tok = tiny_model.tokenizer
    base = tiny_model.base_llm
    base.lm_head = RowHead(base.lm_head.out_features, tiny_model.codebook_ids[0], tok.convert_tokens_to_ids("red"))
    fmt = PixelLMPredictor(tiny_model).formatter
    ids, attn = left_pad([fmt.prompt_ids("which shapes are red?"), fmt.prompt_ids("red?")], pad_id=tok.pad_token_id)
    size = tiny_model.config.vision.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    runs = [tiny_model.generate(pixels, ids, attn, max_new_tokens=20, eos_id=tok.eos_token_id,
                                pad_id=tok.pad_token_id, chunk_blocks=c) for c in (True, False)]
    chunked, stepwise = runs
    assert chunked.tokens == stepwise.tokens
    assert len(chunked.tokens[0]) == 20 and chunked.block_starts[0] == [0, 6, 12]
    assert chunked.malformed[0] == stepwise.malformed[0] != []  # the 4th block is cut at 20 tokens
    assert chunked.block_starts[1] == [] and chunked.tokens[1] == [tok.convert_tokens_to_ids("red")] * 20
    assert torch.allclose(chunked.mask_logits[0], stepwise.mask_logits[0], atol=1e-4)


def test_targets_scored_below_min_score_are_rejected_not_lost(tiny_model, image, monkeypatch):
    """Scores 0.5, 0.73, 0.88 (sigmoid of 0, 1, 2): the first repeats the third's mask."""
    p = _three_blocks_two_alike(tiny_model, monkeypatch, min_score=0.8).predict(image, QUESTION)
    assert [t.index for t in p.targets] == [2] and [t.index for t in p.rejected] == [1]
    assert [t.index for t in p.duplicates] == [0]
    assert p.rejected[0].score == pytest.approx(1 / (1 + np.exp(-1)))
    assert p.rejected[0].predicted_iou == pytest.approx(p.rejected[0].score)  # no calibration
    assert 0.0 <= p.rejected[0].text_prob <= 1.0
    keep = _three_blocks_two_alike(tiny_model, monkeypatch).predict(image, QUESTION)
    assert [t.index for t in keep.targets] == [1, 2] and keep.rejected == []
    with pytest.raises(ValueError, match="min_score"):
        PixelLMPredictor(tiny_model, min_score=1.5)
