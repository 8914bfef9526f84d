"""The LTS family: shapes, the dynamic kernel, the position-prior loss, the transformer variant,
the ablation without the prior, data, persistence, the APIs and errors, and training."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MICRO_LTS, TEXTS
from test_train import losses

import pixellm
from pixellm.build import build_model
from pixellm.config import get_model_config
from pixellm.errors import ConfigError, InputError
from pixellm.families import config_from_dict
from pixellm.llm import train_word_tokenizer
from pixellm.lts import (
    LTS,
    KernelLocate,
    LTSPredictor,
    coord_maps,
    expression_index,
    scaled_dilations,
)
from pixellm.train.main import main as train_main

WORDS = TEXTS + ["the leftmost shape", "the red ring", "the smallest shape"]


def micro(**overrides):
    d = json.loads(json.dumps(MICRO_LTS))
    d.update(overrides)
    return config_from_dict(d)


def build(**overrides):
    torch.manual_seed(0)
    return build_model(micro(**overrides), tokenizer=train_word_tokenizer(WORDS)).eval()


@pytest.fixture(scope="module")
def model():
    return build()


def batch(model, exprs=("the red ring", "the leftmost shape")):
    ids, lengths = model.encode_text(list(exprs))
    return torch.randn(len(exprs), 3, 32, 32), ids, lengths


def image(h=40, w=56, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# -- configs and the model ----------------------------------------------------------------
def test_configs_are_registered_and_validated():
    tiny = get_model_config("lts-tiny")
    assert tiny.vision.open_clip_config == get_model_config("pixellm-tiny").vision.open_clip_config
    big = get_model_config("lts-darknet53")
    assert (big.vision.kind, big.vision.model_name, big.input_size) == ("timm", "darknet53", 416)
    for bad in ({"locate": "attention"}, {"kernel_size": 2}, {"aspp_dilations": []}):
        with pytest.raises(ConfigError):
            micro(**bad)


def test_forward_shapes_and_losses(model):
    pixels, ids, lengths = batch(model)
    gt = torch.zeros(2, 32, 32)
    gt[0, :8, :8] = 1
    out = model(pixels, ids, lengths, gt)
    assert out.mask_logits.shape == (2, 32, 32) and out.heatmap.shape == (2, 8, 8)  # finest side 2g = 8
    assert set(out.parts) == {"seg", "locate"} and torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx((out.parts["seg"] + out.parts["locate"]).item(), rel=1e-6)
    assert model(pixels, ids, lengths).loss is None


def test_dynamic_kernel_equals_a_per_sample_loop():
    torch.manual_seed(0)
    loc = KernelLocate(sentence=6, dim=4, k=3)
    x, s = torch.randn(3, 4, 5, 7), torch.randn(3, 6)
    out = loc(x, s)
    params = loc.generate(s)
    for b in range(3):
        w = params[b, :-1].reshape(1, 4, 3, 3) / (4 * 9) ** 0.5
        ref = F.conv2d(x[b:b + 1], w, params[b, -1:], padding=1)
        assert torch.allclose(out[b:b + 1], ref, atol=1e-5), b


def test_position_prior_loss_by_hand(model, monkeypatch):
    """The locate loss is BCE of the heatmap against the ground truth's cover of each cell."""
    pixels, ids, lengths = batch(model, ["the red ring"])
    gt = torch.zeros(1, 32, 32)
    gt[0, :4, :8] = 1  # cells (0, 0) and (0, 1) of the 8x8 grid half covered
    heat = torch.zeros(1, 1, 8, 8)
    monkeypatch.setattr(model.locate, "forward", lambda *a, **k: heat)
    assert model(pixels, ids, lengths, gt).parts["locate"].item() == pytest.approx(math.log(2), rel=1e-6)
    heat = torch.full((1, 1, 8, 8), -20.0)
    heat[0, 0, 0, :2] = 0.0  # logit 0 where half covered: -(0.5 log 0.5 + 0.5 log 0.5) there
    expect = (2 * math.log(2) + 62 * F.softplus(torch.tensor(-20.0)).item()) / 64
    monkeypatch.setattr(model.locate, "forward", lambda *a, **k: heat)
    assert model(pixels, ids, lengths, gt).parts["locate"].item() == pytest.approx(expect, rel=1e-5)


def test_ablation_without_the_prior():
    m = build(use_prior=False)
    pixels, ids, lengths = batch(m)
    out = m(pixels, ids, lengths, torch.zeros(2, 32, 32))
    assert out.heatmap is None and set(out.parts) == {"seg"}
    assert m.aspp.branches[0][0].in_channels == 16  # no prior channel


def test_transformer_variant_ignores_padding_words():
    m = build(locate="transformer")
    pixels, ids, lengths = batch(m, ["the red ring"])
    a = m(pixels, ids, lengths).mask_logits
    padded = torch.cat([ids, torch.full((1, 3), m.tokenizer.pad_token_id)], 1)
    b = m(pixels, padded, lengths).mask_logits
    assert torch.allclose(a, b, atol=1e-5)


def test_gru_sentence_ignores_padding(model):
    ids, lengths = model.encode_text(["the red ring"])
    padded = torch.cat([ids, torch.full((1, 4), model.tokenizer.pad_token_id)], 1)
    _, s1, _ = model.text(ids, lengths)
    _, s2, m2 = model.text(padded, lengths)
    assert torch.allclose(s1, s2, atol=1e-6) and m2.sum() == 3


def test_scaled_dilations_and_coord_maps():
    assert scaled_dilations([1, 6, 12, 18], 52, 52) == [1, 6, 12, 18]
    assert scaled_dilations([1, 6, 12, 18], 24, 52) == [1, 3, 6, 8]
    assert scaled_dilations([1, 6, 12, 18], 8, 52) == [1, 2, 3, 4]  # kept distinct
    c = coord_maps(2, 2, 4)
    assert c.shape == (2, 8, 2, 4)
    assert torch.allclose(c[0, :, 0, 0], torch.tensor([-1, -1, -0.5, 0, -0.75, -0.5, 0.25, 0.5]))


# -- data ---------------------------------------------------------------------------------
def test_expression_index_keeps_each_image_phrase_once(shapes):
    from pixellm.muse import load_split

    samples = load_split(shapes, "train")
    idx = expression_index(samples)
    keys = [(samples[i].image_id, samples[i].phrases[k].lower()) for i, k in idx]
    assert len(keys) == len(set(keys)) > 0
    every = {(s.image_id, p.lower()) for s in samples for p in s.phrases}
    assert set(keys) == every


# -- persistence and the APIs -------------------------------------------------------------
def test_save_load_predictor_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    pred = pixellm.load_predictor(tmp_path / "ckpt")
    assert isinstance(pred, LTSPredictor) and isinstance(pred.model, LTS)
    for (k, a), b in zip(model.state_dict().items(), pred.model.state_dict().values()):
        assert torch.equal(a, b), k
    t1 = LTSPredictor(model).segment_expression(image(), "the red ring")
    t2 = pred.segment_expression(image(), "the red ring")
    assert np.array_equal(t1.mask, t2.mask) and t1.score == t2.score


def test_segment_expression_gives_a_full_target(model):
    pred = LTSPredictor(model)
    t = pred.segment_expression(image(40, 56), "  the red ring ")
    assert t.phrase == "the red ring" and t.mask.shape == (40, 56) and t.mask.dtype == bool
    assert 0.0 <= t.score <= 1.0 and t.rle["size"] == [40, 56] and len(t.bbox) == 4
    many = pred.segment_expressions([image(40, 56), image(20, 30, 1)], ["the red ring", "the leftmost shape"])
    assert np.array_equal(many[0].mask, t.mask) and many[1].mask.shape == (20, 30)
    p = pred.predict_expressions(image(40, 56), ["the red ring", "the leftmost shape"])
    assert len(p.targets) + len(p.rejected) == 2


def test_expression_errors_are_typed(model, tmp_path):
    pred = LTSPredictor(model)
    for bad in ("", "   ", None):
        with pytest.raises(InputError, match="empty"):
            pred.segment_expression(image(), bad)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError):
        pred.segment_expression(broken, "the red ring")
    with pytest.raises(InputError, match="item 1"):
        pred.segment_expressions([image(), image()], ["the red ring", ""])
    with pytest.raises(InputError, match="list of strings"):
        pred.predict_expressions(image(), "the red ring")


def test_meta_build_real_scale():
    with torch.device("meta"):
        m = build_model("lts-darknet53", load_weights=False)
    enc = sum(p.numel() for p in m.encoder.parameters())
    assert 38e6 < enc < 42e6  # DarkNet-53's convolutional trunk
    assert m.encoder.strides == [8, 16, 32] and m.aspp.branches[3][0].dilation == (18, 18)


# -- training and evaluation through the shared harness -----------------------------------
def lts_args(run, shapes, cfg, *extra):
    return ["--model", str(cfg), "--out", str(run), "--shapes-root", str(shapes), "--steps", "6",
            "--batch-size", "4", "--warmup", "2", "--lr", "3e-3", "--save-every", "3", "--eval-split", "",
            "--no-progress", "--threads", "1", "--seed", "7", *extra]


def test_lts_trains_deterministically_resumes_and_evaluates(tmp_path, shapes, micro_lts_cfg, capsys):
    a_run, b_run = tmp_path / "a", tmp_path / "b"
    assert train_main(lts_args(a_run, shapes, micro_lts_cfg)) == 0
    assert train_main(lts_args(b_run, shapes, micro_lts_cfg)) == 0
    a, b = losses(a_run), losses(b_run)
    assert list(a) == list(range(1, 7)) and a == b and all(np.isfinite(list(a.values())))
    assert np.mean([a[5], a[6]]) < np.mean([a[1], a[2]])
    shutil.rmtree(b_run / "final")
    shutil.rmtree(b_run / "checkpoints" / "checkpoint_6")
    (b_run / "history.json").unlink()
    assert train_main(lts_args(b_run, shapes, micro_lts_cfg, "--resume")) == 0
    for step, loss in losses(b_run).items():
        assert loss == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    capsys.readouterr()
    assert train_main(lts_args(tmp_path / "c", shapes, micro_lts_cfg, "--steps", "2", "--eval-split", "val")) == 0
    assert "| val |" in capsys.readouterr().out
    ev = json.loads((tmp_path / "c" / "eval.json").read_text())["eval"]
    assert ev["n_expressions"] >= ev["n"] > 0 and 0 <= ev["aligned"]["giou"] <= 1


def test_cli_with_an_lts_checkpoint(model, tmp_path, capsys):
    from PIL import Image

    from pixellm.cli import main as predict_main

    model.save_pretrained(tmp_path / "ckpt")
    Image.fromarray(image()).save(tmp_path / "img.png")
    rc = predict_main([str(tmp_path / "img.png"), "the red ring", "--checkpoint", str(tmp_path / "ckpt"),
                       "--out", str(tmp_path / "out")])
    assert rc == 0
    saved = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert len(saved["targets"]) + len(saved["rejected"]) == 1
    assert predict_main([str(tmp_path / "img.png"), "--labels", "a,b", "--checkpoint", str(tmp_path / "ckpt")]) == 2
    assert "label-map model" in capsys.readouterr().err
