"""The LISA family: forward shapes, gradients and the frozen SAM encoder, checkpoints through
``load_predictor``, SAM weights from a saved ``SamModel``, meta builds, the merged variant and
training through the shared loop."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from launching import free_port, launch, torchrun
from scripting import scripted
from test_train import args, losses
from transformers import SamConfig, SamModel

import pixellm
from pixellm.build import build_model
from pixellm.config import get_model_config, list_models
from pixellm.data import Encoded, collate
from pixellm.errors import ConfigError
from pixellm.families import config_from_dict, family_names, get_family
from pixellm.lisa import Lisa, LisaPredictor, adapt_samples, build_sam
from pixellm.muse import Sample
from pixellm.muse.records import merge_targets
from pixellm.train.main import main as train_main
from pixellm.train.trainable import select_trainable

S = get_model_config("lisa-tiny").input_size  # SAM's side: 4x CLIP's
G = S // 16  # SAM's patch grid; masks come out at 4 G
ANSWERS = ["no shape matches.", "purple triangle {seg}.", "red circle {seg}, blue square {seg} and green star {seg}."]
QUESTION = "which shapes are red?"
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def small_lisa(name="lisa-tiny", **overrides):
    """lisa-tiny with a 2-layer LLM: the same code paths, faster."""
    cfg = get_model_config(name, **overrides)
    cfg.llm.config = {**cfg.llm.config, "num_hidden_layers": 2}
    return cfg


@pytest.fixture
def lisa(make_tokenizer):
    torch.manual_seed(0)
    return build_model(small_lisa(), tokenizer=make_tokenizer()).eval()


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)


def make_batch(model, answers, *, seed=0):
    fmt = LisaPredictor(model).formatter
    g = torch.Generator().manual_seed(seed)
    items = []
    for a in answers:
        ids, labels = fmt.training_pair(QUESTION, a)
        masks = (torch.rand(a.count("{seg}"), S, S, generator=g) > 0.7).float()
        items.append(Encoded(torch.randn(3, S, S, generator=g), torch.tensor(ids), torch.tensor(labels), masks))
    return collate(items, pad_id=model.tokenizer.pad_token_id)


def test_families_and_configs_are_registered():
    assert {"pixellm", "lisa"} <= set(family_names())
    names = list_models()
    assert {"pixellm-tiny", "pixellm-7b", "lisa-tiny", "lisa-tiny-merged", "lisa-7b", "lisa-13b"} <= set(names)
    assert get_model_config("lisa-7b").family == "lisa" and get_model_config("pixellm-tiny").family == "pixellm"
    with pytest.raises(ConfigError, match="unknown model family 'nope'"):
        get_family("nope")
    d = get_model_config("lisa-tiny").to_dict()
    with pytest.raises(ConfigError, match="one CLIP block"):
        config_from_dict({**d, "vision": {**d["vision"], "layers": [1, 2]}})
    with pytest.raises(ConfigError, match="below CLIP"):
        config_from_dict({**d, "sam": {**d["sam"], "image_size": 64}})
    with pytest.raises(ConfigError, match="malformed LISA config"):
        config_from_dict({k: v for k, v in d.items() if k != "sam"})


def test_sam_positional_frequencies_are_sams_own():
    """transformers initialises SAM's random Fourier features with std = hidden / 2 (16 for the
    tiny encoder: position noise a from-scratch SAM cannot segment with); SAM's own is 1."""
    for name in ("lisa-tiny", "lisa-tiny-merged", "lisa-7b", "lisa-13b"):
        assert get_model_config(name).sam.config["vision_config"]["scale"] == 1.0, name
    torch.manual_seed(0)
    pe = build_sam(get_model_config("lisa-tiny").sam).shared_image_embedding.positional_embedding
    assert 0.5 < pe.std().item() < 1.5


def test_from_scratch_sam_starts_with_pytorch_default_weights():
    """transformers draws SAM's image encoder with initializer_range 1e-10 (zero weights: the
    encoder sees a constant image); a from-scratch SAM gets PyTorch's defaults, as SAM's code."""
    torch.manual_seed(0)
    sam = build_sam(get_model_config("lisa-tiny").sam)
    enc = sam.vision_encoder
    qkv = enc.layers[0].attn.qkv
    bound = 1 / qkv.in_features ** 0.5  # nn.Linear's default: kaiming uniform, |w| <= 1 / sqrt(fan_in)
    assert 0.3 * bound < qkv.weight.std().item() and qkv.weight.abs().max().item() <= bound
    for name, p in enc.named_parameters():
        if p.dim() > 1 and "rel_pos" not in name and "pos_embed" not in name:  # SAM starts those at zero
            assert p.std().item() > 1e-3, name
    # and the encoder's output depends on the image
    x = torch.randn(2, 3, enc.config.image_size, enc.config.image_size)
    out = enc(x).last_hidden_state
    assert (out[0] - out[1]).abs().mean() > 1e-2
    # the mask decoder's tokens are nn.Embedding's N(0, 1), as in SAM
    assert 0.5 < sam.mask_decoder.mask_tokens.weight.std().item() < 1.5


def test_tiny_config_matches_pixellm_tiny_towers():
    lisa, pix = get_model_config("lisa-tiny"), get_model_config("pixellm-tiny")
    assert lisa.llm.config == pix.llm.config and lisa.vision.open_clip_config == pix.vision.open_clip_config
    assert lisa.input_size == 4 * lisa.vision.image_size  # SAM at 4x CLIP's side, as LISA's 1024 vs 224
    assert (lisa.loss.ce_weight, lisa.loss.bce_weight, lisa.loss.dice_weight) == (1.0, 2.0, 0.5)


def test_forward_shapes_zero_one_many(lisa):
    batch = make_batch(lisa, ANSWERS)
    out = lisa(**batch)
    assert out.mask_logits.shape == (4, 4 * G, 4 * G)  # one SAM decoder run per [SEG]
    assert out.batch_index.tolist() == [1, 2, 2, 2]
    assert out.text_logits.shape[:2] == batch["input_ids"].shape
    assert set(out.parts) == {"ce", "bce", "dice", "iou"} and torch.isfinite(out.loss)
    assert out.iou.shape == (4,)
    one = lisa(**make_batch(lisa, ANSWERS[1:2]))
    assert one.mask_logits.shape == (1, 4 * G, 4 * G) and one.iou.shape == (1,)
    zero = lisa(**make_batch(lisa, ANSWERS[:1]))
    assert zero.mask_logits.shape == (0, 4 * G, 4 * G) and torch.isfinite(zero.loss)
    assert zero.loss.item() == pytest.approx(zero.terms["text"].item())  # no mask, no mask loss


def test_each_seg_gets_its_own_mask(lisa):
    """Masks depend on their own [SEG] state only: the per-target decoder runs independently."""
    feats, _ = lisa.encode_images(torch.randn(2, 3, S, S))
    hidden = torch.randn(3, 1, lisa.base_llm.config.hidden_size)
    all3 = lisa.decode_masks(feats, hidden, torch.tensor([0, 1, 1])).logits
    one = lisa.decode_masks(feats, hidden[2:], torch.tensor([1])).logits
    assert torch.allclose(all3[2], one[0], atol=1e-5) and not torch.allclose(all3[1], all3[2])


def test_gt_count_mismatch_is_an_error(lisa):
    batch = make_batch(lisa, ANSWERS[1:2])
    batch["gt_masks"] = [torch.zeros(2, S, S)]
    with pytest.raises(ValueError, match=r"1 \[SEG\] tokens in the answers but 2 gt masks"):
        lisa(**batch)


def test_gradients_reach_trainable_parts_and_frozen_sam_encoder_stays(make_tokenizer):
    """The 7B recipe on a small SAM-shaped model: CLIP frozen, LoRA LLM, SAM encoder frozen,
    prompt encoder + mask decoder + text_hidden_fcs trained."""
    torch.manual_seed(0)
    cfg = small_lisa(vision={"freeze": True}, llm={"lora": LORA})
    cfg.sam.freeze_encoder = True
    model = build_model(cfg, tokenizer=make_tokenizer())
    counts = select_trainable(model, verbose=False)
    assert counts["vision"][0] == 0 and counts["sam_encoder"][0] == 0
    assert counts["sam_decoder"][0] == counts["sam_decoder"][1] > 0 and counts["lora"][0] > 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    assert not model.sam.vision_encoder.training and model.sam.mask_decoder.training
    model(**make_batch(model, ANSWERS)).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for part in ("lora_B", "seg_projection.", "sam.mask_decoder.", "sam.prompt_encoder.no_mask_embed",
                 "projector.", "embed_tokens"):
        hit = [n for n in grads if part in n]
        assert hit and any(grads[n] is not None and grads[n].abs().sum() > 0 for n in hit), part
    assert model.base_llm.get_input_embeddings().weight.grad[model.codebook_ids].abs().sum() > 0
    opt.step()
    after = dict(model.named_parameters())
    for prefix in ("vision.", "sam.vision_encoder."):
        frozen = [n for n in before if n.startswith(prefix)]
        assert frozen and all(torch.equal(before[n], after[n]) for n in frozen), prefix
    assert not torch.equal(before["seg_projection.2.weight"], after["seg_projection.2.weight"])


def test_sam_weights_load_from_a_saved_sam_model(tmp_path, make_tokenizer):
    spec = get_model_config("lisa-tiny").sam
    torch.manual_seed(1)
    SamModel(SamConfig(**spec.config)).save_pretrained(tmp_path / "sam")
    saved = SamModel.from_pretrained(tmp_path / "sam").state_dict()
    cfg = small_lisa(sam={"config": None, "name_or_path": str(tmp_path / "sam")})
    torch.manual_seed(2)
    model = build_model(cfg, tokenizer=make_tokenizer())
    for k, v in saved.items():
        assert torch.equal(model.sam.state_dict()[k], v), k
    random = build_sam(spec)  # the config alone: fresh weights, same shapes
    assert not torch.equal(random.state_dict()["mask_decoder.iou_token.weight"], saved["mask_decoder.iou_token.weight"])
    # the checkpoint inlines SAM's config: it reloads without the SamModel directory
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "sam" / "model.safetensors").unlink()
    written = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert written["family"] == "lisa" and written["sam"]["name_or_path"] is None
    loaded = pixellm.load_predictor(tmp_path / "ckpt").model
    assert torch.equal(loaded.sam.mask_decoder.iou_token.weight, saved["mask_decoder.iou_token.weight"])


@pytest.mark.parametrize("name,llm_params,total_range", [
    ("lisa-7b", 6.74e9, (7.6e9, 7.8e9)),
    ("lisa-13b", 13.02e9, (13.9e9, 14.1e9)),
])
def test_meta_build_real_scale(name, llm_params, total_range):
    with torch.device("meta"):
        model = build_model(name, load_weights=False)
    assert isinstance(model, Lisa)
    base = sum(p.numel() for n, p in model.base_llm.named_parameters() if "lora_" not in n)
    assert abs(base - llm_params) / llm_params < 0.01, base
    sam_encoder = sum(p.numel() for p in model.sam.vision_encoder.parameters())
    sam = sum(p.numel() for p in model.sam.parameters())
    assert 630e6 < sam_encoder < 640e6 and 4e6 < sam - sam_encoder < 5e6  # SAM ViT-H: 637M + 4M
    assert 300e6 < sum(p.numel() for p in model.vision.parameters()) < 310e6  # CLIP ViT-L/14
    total = sum(p.numel() for p in model.parameters())
    assert total_range[0] < total < total_range[1], total
    d = model.base_llm.config.hidden_size
    assert model.seg_projection[2].weight.shape == (256, d)  # text_hidden_fcs: d -> SAM prompt width
    assert model.input_size == 1024 and model.num_image_tokens == 256
    assert model.sam.vision_encoder.frozen and model.config.llm.lora is not None


def test_save_load_predictor_identical_outputs(lisa, tmp_path, image, make_tokenizer):
    lisa.save_pretrained(tmp_path / "ckpt")
    pred = pixellm.load_predictor(tmp_path / "ckpt", max_new_tokens=24)
    assert isinstance(pred, LisaPredictor) and isinstance(pred.model, Lisa)
    for (k, a), b in zip(lisa.state_dict().items(), pred.model.state_dict().values()):
        assert torch.equal(a, b), k
    script = ["red", "circle", 1, ",", "blue", "square", 1, "."]
    p1 = scripted(lisa, script, predictor_class=LisaPredictor).predict(image, QUESTION)
    p2 = scripted(pred.model, script, predictor_class=LisaPredictor).predict(image, QUESTION)
    assert p1.answer == p2.answer == "red circle, blue square." and len(p1.targets) == 2
    for t1, t2 in zip(p1.targets, p2.targets):
        assert np.array_equal(t1.mask, t2.mask) and t1.score == t2.score


def test_targets_have_every_field(lisa, image):
    p = scripted(lisa, ["red", "circle", 1, "and", "green", "star", 1, "."],
                 predictor_class=LisaPredictor).predict(image, QUESTION)
    assert [t.phrase for t in p.targets] == ["red circle", "green star"] and p.malformed == []
    from pycocotools import mask as mask_utils
    for t in p.targets:
        assert t.mask.shape == (48, 80) and t.mask.dtype == bool and 0.0 <= t.score <= 1.0
        assert np.array_equal(mask_utils.decode({**t.rle, "counts": t.rle["counts"].encode()}), t.mask)
        if t.mask.any():
            ys, xs = np.nonzero(t.mask)
            assert tuple(t.bbox) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    none = scripted(lisa, ["no", "shape", "matches", "."], predictor_class=LisaPredictor).predict(image, QUESTION)
    assert none.targets == [] and none.answer == "no shape matches."


def test_predict_and_predict_batch_agree(lisa):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), rng.integers(0, 255, (40, 70, 3), dtype=np.uint8),
              rng.integers(0, 255, (90, 30), dtype=np.uint8)]
    questions = [QUESTION, "find all the stars ?", "what are the two largest shapes which have no corners ?"]
    script = ["red", "circle", 1, ",", "blue", "square", 1, "and", "green", "star", 1, "."]
    batch = scripted(lisa, script, predictor_class=LisaPredictor).predict_batch(images, questions)
    for img, q, b in zip(images, questions, batch):
        single = scripted(lisa, script, predictor_class=LisaPredictor).predict(img, q)  # a script plays once
        assert single.answer == b.answer and len(single.targets) == len(b.targets) == 3
        for s, t in zip(single.targets, b.targets):
            assert (s.mask == t.mask).mean() > 0.995 and abs(s.score - t.score) < 1e-3


def test_bad_inputs_are_typed_errors(lisa, tmp_path):
    pred = LisaPredictor(lisa)
    with pytest.raises(pixellm.InputError, match="question"):
        pred.predict(np.zeros((8, 8, 3), np.uint8), "  ")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(pixellm.InputError, match="bad.png"):
        pred.predict(tmp_path / "bad.png", QUESTION)
    lisa.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**cfg, "family": "sam2"}))
    with pytest.raises(pixellm.CheckpointError, match="unknown model family 'sam2'"):
        pixellm.load_predictor(tmp_path / "ckpt")


def _sample(answer, phrases, masks):
    return Sample(image_path=None, question="q?", answer=answer, phrases=tuple(phrases), height=4, width=4,
                  image_id=1, question_index=0, source="t", target_ids=tuple(range(len(phrases))),
                  names=tuple(phrases), _load_masks=lambda: masks)


def test_merge_targets_joins_phrases_and_unions_masks():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, 0, 0] = masks[1, 1, 1] = masks[2, 3, 3] = True
    s = _sample("the red circle {seg}, the blue ring {seg} and a star {seg}.", ["red circle", "blue ring", "star"], masks)
    m = merge_targets(s)
    assert m.answer == "the red circle, the blue ring and a star {seg}." and m.num_targets == 1
    assert m.phrases == ("red circle, blue ring and star",)
    assert m.masks().shape == (1, 4, 4) and m.masks()[0].sum() == 3 and s.num_targets == 3
    one = _sample("a star {seg}.", ["star"], masks[:1])
    zero = _sample("nothing.", [], masks[:0])
    assert merge_targets(one) is one and merge_targets(zero) is zero
    merged = adapt_samples(get_model_config("lisa-tiny-merged"), [s, one])
    assert len(merged) == 2 and merged[0].num_targets == 1
    assert adapt_samples(get_model_config("lisa-tiny"), [s])[0] is s


# -- training through the shared loop, on a micro LISA -------------------------------------
def train_args(run, shapes, cfg, *extra):
    """test_train's short run, without the vision warm-up (a PixelLM region-words head's)."""
    return args(run, shapes, cfg, "--vision-warmup", "0", *extra)


@pytest.fixture(scope="module")
def lisa_run(tmp_path_factory, shapes, micro_lisa_cfg):
    run = tmp_path_factory.mktemp("lisa_ref")
    assert train_main(train_args(run, shapes, micro_lisa_cfg)) == 0
    return run


def test_lisa_trains_deterministically_and_resumes(lisa_run, tmp_path, shapes, micro_lisa_cfg):
    again = tmp_path / "again"
    assert train_main(train_args(again, shapes, micro_lisa_cfg)) == 0
    a, b = losses(lisa_run), losses(again)
    assert list(a) == list(range(1, 9)) and a == b
    assert np.mean([a[7], a[8]]) < np.mean([a[1], a[2]])
    # a run stopped after its step-4 checkpoint resumes to the same losses
    shutil.rmtree(again / "final")
    shutil.rmtree(again / "checkpoints" / "checkpoint_8")
    (again / "history.json").unlink()
    assert train_main(train_args(again, shapes, micro_lisa_cfg, "--resume")) == 0
    resumed = losses(again)
    assert min(resumed) == 5 and max(resumed) == 8
    for step, loss in resumed.items():
        assert loss == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    pred = pixellm.load_predictor(lisa_run / "final")
    assert isinstance(pred, LisaPredictor) and pred.model.config.name == "lisa-micro-test"


@pytest.mark.slow
def test_two_cpu_processes_match_one(lisa_run, tmp_path, shapes, micro_lisa_cfg):
    run = tmp_path / "ddp"
    rc, err = launch(torchrun(free_port()), train_args(run, shapes, micro_lisa_cfg, "--batch-size", "2"))
    assert rc == 0, err[-3000:]
    two, one = losses(run), losses(lisa_run)  # 2 x 2 vs 1 x 4: the same global batches
    assert list(two) == list(one)
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-3), (step, two[step], one[step])


def test_cli_predicts_with_a_lisa_checkpoint(lisa_run, tmp_path, capsys):
    from PIL import Image

    from pixellm.cli import main as predict_main

    img = np.random.default_rng(3).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    rc = predict_main([str(tmp_path / "img.png"), QUESTION, "--checkpoint", str(lisa_run / "final"),
                       "--out", str(tmp_path / "out"), "--max-new-tokens", "16"])
    assert rc == 0
    rec = json.loads((tmp_path / "out" / "prediction.json").read_text())
    direct = pixellm.load_predictor(lisa_run / "final", max_new_tokens=16).predict(img, QUESTION)
    assert rec["answer"] == direct.answer == capsys.readouterr().out.splitlines()[0]
    assert [t["phrase"] for t in rec["targets"]] == [t.phrase for t in direct.targets]
    w, h = Image.open(tmp_path / "out" / "overlay.png").size
    assert w >= 56 and w * 40 == h * 56  # the image (scaled up for legibility)


def test_merged_variant_trains_on_one_union_mask(tmp_path, shapes, micro_lisa_cfg, capsys):
    cfg = json.loads(micro_lisa_cfg.read_text())
    path = tmp_path / "merged.json"
    path.write_text(json.dumps({**cfg, "name": "lisa-micro-merged", "merge_targets": True}))
    run = tmp_path / "merged"
    assert train_main(train_args(run, shapes, path, "--steps", "2", "--eval-split", "val", "--eval-limit", "4")) == 0
    assert "| val | 4 |" in capsys.readouterr().out
    summary = json.loads((run / "eval.json").read_text())
    assert summary["eval"]["n_questions"] == 4 and np.isfinite(summary["eval"]["giou"])


def test_point_prompts_fall_inside_their_masks():
    from pixellm.lisa.warmup import point_prompts

    masks = torch.zeros(3, 8, 8)
    masks[0, 2:4, 5:7] = 1
    masks[1, 7, 0] = 1
    pts = point_prompts(masks, torch.Generator().manual_seed(0))
    assert pts.shape == (3, 2)
    for k in (0, 1):
        x, y = int(pts[k, 0]), int(pts[k, 1])
        assert masks[k, y, x] == 1 and pts[k, 0] % 1 == 0.5
    assert 0 <= pts[2].min() and pts[2].max() < 8  # an empty mask gets some point, no error


def test_sam_warm_up_trains_sam_on_point_prompts_within_the_budget(tmp_path, shapes, micro_lisa_cfg, capsys):
    """``--vision-warmup`` runs LISA's stage: SAM learns point-prompted masks, before the run."""
    run = tmp_path / "warm"
    assert train_main(train_args(run, shapes, micro_lisa_cfg, "--steps", "2", "--vision-warmup", "30",
                                 "--vision-warmup-batch", "4", "--vision-warmup-lr", "3e-3")) == 0
    out = capsys.readouterr().out
    assert "lisa warm-up: 30 steps of 4 images" in out and "sam_mask loss" in out
    hist = json.loads((run / "vision_warmup.json").read_text())
    assert [r["step"] for r in hist] == list(range(1, 31))
    first, last = np.mean([r["sam_mask"] for r in hist[:5]]), np.mean([r["sam_mask"] for r in hist[-5:]])
    assert last < first and all(np.isfinite(r["sam_mask"]) for r in hist)


def test_sam_warm_up_refuses_a_frozen_sam(micro_lisa_cfg, shapes, tmp_path, capsys):
    cfg = json.loads(micro_lisa_cfg.read_text())
    cfg["sam"]["freeze_encoder"] = True
    path = tmp_path / "frozen.json"
    path.write_text(json.dumps({**cfg, "name": "lisa-micro-frozen"}))
    assert train_main(train_args(tmp_path / "f", shapes, path, "--vision-warmup", "3")) == 2
    assert "SAM's image encoder: it is frozen" in capsys.readouterr().err
