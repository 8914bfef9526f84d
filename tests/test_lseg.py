"""The LSeg family: shapes, label-order equivariance, the fixed temperature, the regularisation
blocks, label maps from LVIS files, the zero-shot word list, persistence, the APIs and their
errors, and training through the shared loop."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import MICRO_LSEG
from test_train import losses

import pixellm
from pixellm.build import build_model
from pixellm.config import get_model_config
from pixellm.errors import CheckpointError, ConfigError, InputError
from pixellm.families import config_from_dict
from pixellm.lseg import (
    OTHER,
    UNSEEN_WORDS,
    LabelMapDataset,
    LabelMapSource,
    LSeg,
    LSegPredictor,
    SpatialRegularisation,
)
from pixellm.lseg.data import paint
from pixellm.lseg.evaluate import evaluate_split, label_queries
from pixellm.text_encoder import FrozenTextEncoder
from pixellm.train.main import main as train_main


def micro(**overrides):
    d = json.loads(json.dumps(MICRO_LSEG))
    d.update(overrides)
    return config_from_dict(d)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(micro()).eval()


def image(h=40, w=56, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# -- configs and the model ----------------------------------------------------------------
def test_configs_are_registered_and_validated():
    tiny = get_model_config("lseg-tiny")
    assert tiny.family == "lseg" and tiny.text.kind == "transformers" and tiny.temperature == 0.07
    assert tiny.vision.open_clip_config == get_model_config("pixellm-tiny").vision.open_clip_config
    big = get_model_config("lseg-vitl16")
    assert (big.vision.model_name, big.vision.image_size, big.text.name_or_path, big.embed_dim) == \
        ("ViT-L-16", 480, "ViT-B-32", 512)
    for bad in ({"reg_blocks": 3}, {"reg_kind": "dense"}, {"temperature": 0.0}):
        with pytest.raises(ConfigError):
            micro(**bad)
    with pytest.raises(ConfigError, match="4 distinct"):
        config_from_dict({**MICRO_LSEG, "vision": {**MICRO_LSEG["vision"], "layers": [3, 2, 1, 0]}})


def test_forward_shapes_and_loss(model):
    pixels = torch.randn(2, 3, 32, 32)
    sets = [["other", "red", "circle"], ["other", "ring"]]
    target = torch.tensor([0, 1, 2])[torch.randint(0, 3, (32, 32))][None].repeat(2, 1, 1)
    target[1] = target[1].clamp(max=1)
    target[:, -4:] = -100
    out = model(pixels, sets, target)
    assert [lg.shape for lg in out.logits] == [(3, 32, 32), (2, 32, 32)]
    ce = sum(torch.nn.functional.cross_entropy(lg[None], t[None], ignore_index=-100, reduction="sum")
             for lg, t in zip(out.logits, target)) / (2 * 28 * 32)
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(ce.item(), rel=1e-5)
    assert out.counts == {"pixel": 2 * 28 * 32} and set(out.terms) == {"pixel"}
    assert model(pixels, sets).loss is None
    with pytest.raises(ValueError, match="label sets"):
        model(pixels, sets[:1])


def test_pixel_embeddings_are_unit_vectors_at_half_the_patch_grid_times_eight(model):
    pix = model.pixel_embeddings(torch.randn(1, 3, 32, 32))
    assert pix.shape == (1, 16, 32, 32)  # 8g with g = 32 / 8
    assert torch.allclose(pix.norm(dim=1), torch.ones(1, 32, 32), atol=1e-5)


@pytest.mark.parametrize("kind", ["depthwise", "bottleneck"])
@pytest.mark.parametrize("depth", [0, 1, 2, 4])
def test_logits_are_equivariant_to_label_order(kind, depth):
    torch.manual_seed(1)
    m = build_model(micro(reg_kind=kind, reg_blocks=depth)).eval()
    labels = ["other", "red", "circle", "blue ring", "star"]
    perm = [3, 0, 4, 1, 2]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = m(x, [labels]).logits[0]
        b = m(x, [[labels[i] for i in perm]]).logits[0]
    assert torch.allclose(a[perm], b, atol=1e-5)


def test_temperature_is_fixed_and_scales_cosines():
    torch.manual_seed(0)
    m = build_model(micro(reg_blocks=0)).eval()
    assert not any("temperature" in n for n, _ in m.named_parameters())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        pix = m.pixel_embeddings(x)[0]
        lab = m.label_embeddings(["other", "red"])
        cos = torch.einsum("chw,kc->khw", pix, lab)
        logits = m(x, [["other", "red"]]).logits[0]
    expect = torch.nn.functional.interpolate(cos[None] / 0.07, size=(32, 32), mode="bilinear",
                                             align_corners=False)[0]
    assert torch.allclose(logits, expect, atol=1e-4)
    assert logits.abs().max() <= 1 / 0.07 + 1e-4


def test_regularisation_blocks_by_hand():
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]], [[-1.0, 4.0], [0.0, 2.0]]]])  # (1, K=2, 2, 2)
    assert torch.equal(SpatialRegularisation("depthwise", 0)(x), x)
    for kind in ("depthwise", "bottleneck"):
        block = SpatialRegularisation(kind, 2)
        with torch.no_grad():
            block.conv.weight.zero_()
            block.conv.weight[0, 0, 1, 1] = 2.0  # the 3x3 kernel is the identity times 2
            block.conv.bias.fill_(0.5)
        y1 = 2 * x + 0.5 + (x.max(1, keepdim=True).values if kind == "bottleneck" else 0)
        y1 = torch.relu(y1)  # every block but the last is activated
        y2 = 2 * y1 + 0.5 + (y1.max(1, keepdim=True).values if kind == "bottleneck" else 0)
        assert torch.allclose(block(x), y2), kind


def test_text_encoder_is_frozen_and_cached(model):
    text = model.text
    assert all(not p.requires_grad for p in text.parameters())
    a = text(["red", "circle"])
    assert a.shape == (2, 384) and set(text._cache) >= {"red", "circle"}
    assert torch.equal(text(["circle"])[0], a[1])
    model.train()
    assert not text.training  # dropout off even in a training model
    model.eval()


def test_unseen_words_are_nearest_to_one_of_their_targets():
    """The protocol's unseen words: the frozen MiniLM relates each to a label it stands for."""
    enc = FrozenTextEncoder(get_model_config("lseg-tiny").text)
    kinds = {"colour": ["red", "green", "blue", "yellow", "purple", "orange"],
             "category": ["circle", "square", "triangle", "star", "hexagon", "diamond", "ring"]}
    for word, targets in UNSEEN_WORDS.items():
        vocab = next(v for v in kinds.values() if set(targets) <= set(v))
        sims = torch.nn.functional.normalize(enc([word]), dim=-1) @ torch.nn.functional.normalize(enc(vocab), dim=-1).T
        assert vocab[int(sims.argmax())] in targets, word
        assert word not in vocab and not any(t in word for t in vocab), word


# -- data ---------------------------------------------------------------------------------
def test_paint_later_objects_win_and_padding_is_ignored():
    masks = torch.zeros(3, 4, 4)
    masks[0, :2, :2] = 1
    masks[1, 1:3, 1:3] = 1
    masks[2, 3, 3] = 1
    t = paint(masks, ["red", "blue", None], ["other", "blue", "red"], valid=(4, 3))
    expect = torch.tensor([[2, 2, 0, -100], [2, 1, 1, -100], [0, 1, 1, -100], [0, 0, 0, -100]])
    assert torch.equal(t, expect)


def test_label_map_dataset_from_generated_lvis(shapes):
    src = LabelMapSource(shapes / "lvis_instances_train.json")
    data = LabelMapDataset(src, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, subset=0.0)
    assert data.kinds == ["category", "colour", "pair"] and len(data) == 3 * len(src)
    held = json.loads((shapes / "meta.json").read_text())["held_out_pairs"]
    assert not {f"{c} {s}" for c, s in held} & set(data.label_sets["pair"])  # never in training images
    for idx in range(3):
        item = data[idx]
        assert item.labels[0] == OTHER and item.pixels.shape == (3, 32, 32)
        masks = src.masks(0)
        labels = src.labels(0, data.kinds[idx])
        # every object's visible pixels carry its label; background is "other"
        for m, lab in zip(masks, labels):
            assert (item.target[torch.from_numpy(m)] == item.labels.index(lab)).all()
        assert (item.target[~torch.from_numpy(masks.any(0))] == 0).all()


def test_label_subsets_make_other_mean_none_of_the_asked_labels(shapes):
    src = LabelMapSource(shapes / "lvis_instances_train.json")
    data = LabelMapDataset(src, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, subset=1.0, seed=3)
    again = LabelMapDataset(src, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, subset=1.0, seed=3)
    for idx in range(6):
        item, kind = data[idx], data.kinds[idx % len(data.kinds)]
        assert item.labels == again[idx].labels  # seeded by the index
        objects = src.labels(idx // len(data.kinds), kind)
        asked = set(item.labels[1:])
        assert item.labels[0] == OTHER and asked <= set(data.label_sets[kind])
        assert 1 <= len(asked & set(objects)) <= 3 and len(asked - set(objects)) <= 2
        for m, lab in zip(src.masks(idx // len(data.kinds)), objects):
            expect = item.labels.index(lab) if lab in asked else 0  # left out: "other"
            assert (item.target[torch.from_numpy(m)] == expect).all()
    with pytest.raises(ValueError, match="subset"):
        LabelMapDataset(src, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, subset=1.5)


def test_label_map_source_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        LabelMapSource(tmp_path / "missing.json")


# -- persistence and the APIs -------------------------------------------------------------
def test_save_load_predictor_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "tokenizer").exists()
    pred = pixellm.load_predictor(tmp_path / "ckpt")
    assert isinstance(pred, LSegPredictor) and isinstance(pred.model, LSeg)
    for (k, a), b in zip(model.state_dict().items(), pred.model.state_dict().values()):
        assert torch.equal(a, b), k
    img = image()
    a = LSegPredictor(model).segment_labels(img, ["other", "red", "ring"])
    b = pred.segment_labels(img, ["other", "red", "ring"])
    assert np.array_equal(a.index, b.index) and np.allclose(a.scores, b.scores, atol=1e-6)
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        pixellm.load_predictor(tmp_path / "ckpt")


def test_segment_labels_gives_a_label_map_at_the_original_size(model):
    pred = LSegPredictor(model)
    lm = pred.segment_labels(image(40, 56), ["other", "red circle", "ring"])
    assert lm.index.shape == (40, 56) and lm.scores.shape == (3, 40, 56)
    assert np.allclose(lm.scores.sum(0), 1, atol=1e-5)
    assert np.array_equal(lm.index, lm.scores.argmax(0))
    assert lm.masks.shape == (3, 40, 56) and lm.masks.sum() == 40 * 56
    assert np.array_equal(lm.mask("ring"), lm.index == 2)
    batch = pred.segment_labels_batch([image(40, 56), image(20, 20, 1)], [["other", "red circle", "ring"], ["a", "b"]])
    assert np.array_equal(batch[0].index, lm.index) and batch[1].index.shape == (20, 20)


def test_label_and_question_errors_are_typed(model, tmp_path):
    pred = LSegPredictor(model)
    for labels, match in (([], "empty"), (["other", "red", "red"], "duplicate"), (["other", " "], "empty"),
                          ("red", "list of strings")):
        with pytest.raises(InputError, match=match):
            pred.segment_labels(image(), labels)
    with pytest.raises(InputError, match="empty"):
        pred.predict(image(), "  ")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError):
        pred.segment_labels(bad, ["other", "red"])
    with pytest.raises(InputError, match="batch item 1"):
        pred.predict_batch([image(), bad], ["red", "blue"])


def test_prediction_targets_are_connected_components(model):
    pred = LSegPredictor(model, min_area=3)
    index = np.zeros((10, 12), dtype=np.int64)
    index[1:4, 1:4] = 1  # a 9-px blob
    index[6:9, 8:11] = 1  # another
    index[0, 11] = 1  # a 1-px speck
    scores = np.stack([1.0 - 0.8 * index, 0.2 + 0.6 * index]).astype(np.float32)
    from pixellm.lseg.predictor import LabelMap
    p = pred._prediction(LabelMap(["other", "red shapes"], index, scores))
    assert [t.bbox for t in p.targets] == [(1, 1, 4, 4), (8, 6, 11, 9)]
    assert [t.phrase for t in p.targets] == ["red shapes"] * 2 and [t.index for t in p.targets] == [0, 1]
    assert all(t.score == pytest.approx(0.8) and t.mask.sum() == 9 for t in p.targets)
    assert len(p.rejected) == 1 and p.rejected[0].bbox == (11, 0, 12, 1)
    assert p.answer == "2 regions labelled 'red shapes'."
    one = pred.predict(image(), "red shapes")
    assert all(t.mask.shape == (40, 56) and t.rle["size"] == [40, 56] for t in one.targets)


# -- training and evaluation through the shared harness -----------------------------------
def lseg_args(run, shapes, cfg, *extra):
    return ["--model", str(cfg), "--out", str(run), "--shapes-root", str(shapes), "--steps", "6",
            "--batch-size", "4", "--warmup", "2", "--lr", "3e-3", "--save-every", "3", "--eval-split", "",
            "--no-progress", "--threads", "1", "--seed", "7", *extra]


def test_lseg_trains_deterministically_resumes_and_evaluates(tmp_path, shapes, micro_lseg_cfg, capsys):
    a_run, b_run = tmp_path / "a", tmp_path / "b"
    assert train_main(lseg_args(a_run, shapes, micro_lseg_cfg)) == 0
    assert train_main(lseg_args(b_run, shapes, micro_lseg_cfg)) == 0
    a, b = losses(a_run), losses(b_run)
    assert list(a) == list(range(1, 7)) and a == b and all(np.isfinite(list(a.values())))
    assert np.mean([a[5], a[6]]) < np.mean([a[1], a[2]])
    shutil.rmtree(b_run / "final")
    shutil.rmtree(b_run / "checkpoints" / "checkpoint_6")
    (b_run / "history.json").unlink()
    assert train_main(lseg_args(b_run, shapes, micro_lseg_cfg, "--resume")) == 0
    for step, loss in losses(b_run).items():
        assert loss == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    # the post-training table: seen and unseen mIoU on val
    capsys.readouterr()
    assert train_main(lseg_args(tmp_path / "c", shapes, micro_lseg_cfg, "--steps", "2", "--eval-split", "val")) == 0
    out = capsys.readouterr().out
    assert "| val | seen |" in out and "| val | unseen compositions |" in out
    ev = json.loads((tmp_path / "c" / "eval.json").read_text())["eval"]["groups"]
    assert 0.0 <= ev["seen"]["miou"] <= 1.0 and ev["seen"]["labels"] > 10


def test_lseg_refuses_a_warm_up_and_other_sources(tmp_path, shapes, micro_lseg_cfg, capsys):
    assert train_main(lseg_args(tmp_path / "w", shapes, micro_lseg_cfg, "--vision-warmup", "3")) == 2
    assert "no warm-up" in capsys.readouterr().err
    assert train_main(lseg_args(tmp_path / "m", shapes, micro_lseg_cfg, "--mix", "shapes=1,refcoco=1")) == 2
    assert "label-map sources" in capsys.readouterr().err


def test_label_queries_and_ious_by_hand(model, shapes):
    src = LabelMapSource(shapes / "lvis_instances_val.json")
    q = label_queries(src, shapes, train=LabelMapSource(shapes / "lvis_instances_train.json"))
    held = {f"{c} {s}" for c, s in json.loads((shapes / "meta.json").read_text())["held_out_pairs"]}
    assert set(q["unseen compositions"]) <= held and not held & set(q["seen"])
    assert set(q["unseen words"]) <= set(UNSEEN_WORDS)
    assert q["seen"]["red"] == ("colour", ("red",))
    res = evaluate_split(model, shapes, "val", groups=["seen"])
    per = res["groups"]["seen"]["per_label"]
    assert all(0 <= r["iou"] <= 1 and r["union"] >= r["intersection"] for r in per.values())
    # an image count per label matches the images that hold it
    n_red = sum("red" in src.labels(i, "colour") for i in range(len(src)))
    assert per["red"]["images"] == n_red


def test_cli_labels_and_questions_with_an_lseg_checkpoint(model, tmp_path, capsys):
    from PIL import Image

    from pixellm.cli import main as predict_main

    model.save_pretrained(tmp_path / "ckpt")
    Image.fromarray(image()).save(tmp_path / "img.png")
    rc = predict_main([str(tmp_path / "img.png"), "--labels", "other, red circle,ring", "--checkpoint",
                       str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0 and "'red circle':" in out and "% of the pixels" in out
    saved = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert saved["labels"] == ["other", "red circle", "ring"] and len(saved["rle"]) == 3
    assert (tmp_path / "out" / "label_map.png").is_file()
    assert predict_main([str(tmp_path / "img.png"), "red shapes", "--checkpoint", str(tmp_path / "ckpt")]) == 0
    assert "labelled 'red shapes'" in capsys.readouterr().out
    assert predict_main([str(tmp_path / "img.png"), "--labels", "red,red", "--checkpoint", str(tmp_path / "ckpt")]) == 2
    assert "duplicate labels" in capsys.readouterr().err


def test_open_clip_text_tower_loads_saved_weights(tmp_path):
    """The real-scale text side: an open_clip text tower by name, weights from a file."""
    import open_clip

    from pixellm.lseg import TextEncoderSpec

    clip_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                                "patch_size": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}
    open_clip.factory._MODEL_CONFIGS["lseg-test-clip"] = clip_cfg
    torch.manual_seed(0)
    clip = open_clip.create_model("lseg-test-clip")
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    spec = TextEncoderSpec(kind="open_clip", name_or_path="lseg-test-clip", pretrained=str(tmp_path / "clip.pt"),
                           config=clip_cfg)
    enc = FrozenTextEncoder(spec)
    assert enc.width == 16 and not hasattr(enc.encoder, "visual")
    with torch.no_grad():
        direct = clip.encode_text(open_clip.get_tokenizer("lseg-test-clip")(["red ring"]))[0]
    assert torch.allclose(enc(["red ring"])[0], direct, atol=1e-5)
    # an LSeg of width C = the tower's uses it as is, as the paper (no learned map)
    m = build_model(micro(text={"kind": "open_clip", "name_or_path": "lseg-test-clip", "pretrained": None,
                                "config": clip_cfg}))
    assert isinstance(m.text_projection, torch.nn.Identity)
    assert m(torch.randn(1, 3, 32, 32), [["other", "ring"]]).logits[0].shape == (2, 32, 32)
