"""PixelLM assembly: forward shapes, gradient flow, frozen parts, fusion training, meta builds."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixellm.build import build_model
from pixellm.config import ConfigError, LossConfig, PixelLMConfig, get_model_config
from pixellm.data import Encoded, collate
from pixellm.decoder import DecoderOutput, iou_loss, mask_losses
from pixellm.model import block_questions
from pixellm.predictor import PixelLMPredictor
from pixellm.train.trainable import select_trainable

S = get_model_config("pixellm-tiny").vision.image_size  # the tiny model's input side

ANSWERS = ["no shape matches.", "purple triangle {seg}.", "red circle {seg}, blue square {seg} and green star {seg}."]


def make_batch(model, answers, *, seed=0):
    fmt = PixelLMPredictor(model).formatter
    g = torch.Generator().manual_seed(seed)
    items = []
    for a in answers:
        ids, labels = fmt.training_pair("which shapes are red?", a)
        k = a.count("{seg}")
        masks = (torch.rand(k, S, S, generator=g) > 0.7).float()
        items.append(Encoded(torch.randn(3, S, S, generator=g), torch.tensor(ids), torch.tensor(labels), masks))
    return collate(items, pad_id=model.tokenizer.pad_token_id)


def test_forward_shapes_zero_one_many(tiny_model):
    batch = make_batch(tiny_model, ANSWERS)
    out = tiny_model(**batch)
    assert out.mask_logits.shape == (4, S // 2, S // 2)  # 0 + 1 + 3 targets, patch-8 grid upscaled 4x
    assert out.batch_index.tolist() == [1, 2, 2, 2]
    assert out.text_logits.shape[:2] == batch["input_ids"].shape
    assert set(out.parts) == {"ce", "bce", "dice", "refine", "phrase", "region", "iou"}
    assert torch.isfinite(out.loss)
    assert out.iou.shape == (4,) and ((out.iou > 0) & (out.iou < 1)).all()
    one = tiny_model(**make_batch(tiny_model, ANSWERS[1:2]))
    assert one.mask_logits.shape == (1, S // 2, S // 2) and one.iou.shape == (1,)
    only_zero = tiny_model(**make_batch(tiny_model, ANSWERS[:1]))
    assert only_zero.mask_logits.shape == (0, S // 2, S // 2) and torch.isfinite(only_zero.loss)
    assert only_zero.iou.shape == (0,) and only_zero.parts["iou"] == 0


def test_gt_count_mismatch_is_an_error(tiny_model):
    batch = make_batch(tiny_model, ANSWERS[1:2])
    batch["gt_masks"] = [torch.zeros(2, S, S)]
    with pytest.raises(ValueError, match="1 codebook blocks in the answers but 2 gt masks"):
        tiny_model(**batch)


def test_gradients_reach_trainable_parts_and_frozen_parts_stay(tokenizer, small_config):
    torch.manual_seed(0)
    cfg = small_config(vision={"freeze": True},
                       llm={"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}})
    model = build_model(cfg, tokenizer=tokenizer)
    counts = select_trainable(model, verbose=False)
    assert counts["vision"][0] == 0 and counts["lora"][0] > 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    out = model(**make_batch(model, ANSWERS))
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    # lora_B starts at zero, so lora_A only gets gradient from the second step on (checked below)
    for part in ("lora_B", "fusion.scale_weight", "fusion.proj", "projector.", "decoder.", "embed_tokens",
                 "phrase_head.", "region_head."):
        hit = [n for n in grads if part in n]
        assert hit, part
        assert any(grads[n] is not None and grads[n].abs().sum() > 0 for n in hit), f"no gradient reaches {part}"
    # the codebook rows of the input embedding get gradient (they are new tokens)
    emb = model.base_llm.get_input_embeddings().weight
    assert emb.grad[model.codebook_ids].abs().sum() > 0
    opt.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("vision."))
    frozen_llm = [n for n in before if "base_layer" in n or ("mlp" in n and n.startswith("llm."))]
    assert frozen_llm and all(torch.equal(before[n], after[n]) for n in frozen_llm)
    assert not torch.equal(before["fusion.scale_weight"], after["fusion.scale_weight"])
    opt.zero_grad()
    model(**make_batch(model, ANSWERS, seed=1)).loss.backward()
    lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert lora_a and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_a)


def test_fusion_weights_are_saved_parameters(tiny_model):
    sd = tiny_model.state_dict()
    assert "fusion.scale_weight" in sd and sd["fusion.scale_weight"].shape == (2, 3)
    assert tiny_model.fusion.scale_weight.requires_grad


def test_ablation_variants_build(make_tokenizer, small_config):
    n1 = build_model(small_config(codebook={"tokens_per_scale": 1}), tokenizer=make_tokenizer())
    assert len(n1.codebook_ids) == 2 and n1(**make_batch(n1, ANSWERS)).mask_logits.shape[0] == 4
    mean = build_model(small_config(codebook={"fusion": "mean"}), tokenizer=make_tokenizer())
    assert "fusion.scale_weight" not in mean.state_dict()


@pytest.mark.parametrize("name,llm_params,total_range", [
    ("pixellm-7b", 6.74e9, (6.9e9, 7.3e9)),
    ("pixellm-13b", 13.02e9, (13.1e9, 13.6e9)),
])
def test_meta_build_real_scale(name, llm_params, total_range):
    with torch.device("meta"):
        model = build_model(name, load_weights=False)
    llm = sum(p.numel() for p in model.llm.get_base_model().parameters() if "lora_" not in str(p))
    base = sum(p.numel() for n, p in model.base_llm.named_parameters() if "lora_" not in n)
    assert abs(base - llm_params) / llm_params < 0.01, base  # LLaMA-2 shapes (+7 new token rows)
    total = sum(p.numel() for p in model.parameters())
    assert total_range[0] < total < total_range[1], total
    assert model.vision.width == 1024 and model.vision.patch_size == 14
    feats = model.vision(torch.empty(1, 3, 448, 448, device="meta"))
    assert [tuple(f.shape) for f in feats] == [(1, 1024, 32, 32)] * 2
    assert model.num_image_tokens == 256
    assert llm > 0


def test_text_loss_scores_every_codebook_token(tiny_model):
    batch = make_batch(tiny_model, ANSWERS)
    out = tiny_model(**batch)
    labels = batch["labels"]
    assert out.counts["text"] == int((labels[:, 1:] != -100).sum())
    in_blocks = torch.isin(labels[:, 1:], torch.tensor(tiny_model.codebook_ids))
    assert int(in_blocks.sum()) == 4 * len(tiny_model.codebook_ids)  # every token of the 4 blocks is scored
    logits = out.text_logits[:, :-1].flatten(0, 1)
    want = torch.nn.functional.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100)
    assert torch.allclose(out.parts["ce"], want, atol=1e-6)


def test_loss_is_the_weighted_text_ce_plus_the_other_terms(tiny_model):
    batch = make_batch(tiny_model, ANSWERS)
    full = tiny_model(**batch)
    tiny_model.ce_weight = 0.25
    quarter = tiny_model(**batch)
    assert torch.allclose(quarter.parts["ce"], full.parts["ce"])  # the CE itself is unweighted
    assert torch.allclose(quarter.terms["text"], 0.25 * full.parts["ce"])
    assert torch.allclose(quarter.terms["mask"], full.terms["mask"])
    assert torch.allclose(quarter.loss, full.loss - 0.75 * full.parts["ce"], atol=1e-6)
    assert torch.allclose(quarter.loss, sum(quarter.terms.values()))


def test_phrase_loss_joins_the_mask_term_and_trains_the_fusion(tiny_model, make_tokenizer, small_config):
    batch = make_batch(tiny_model, ANSWERS)
    out = tiny_model(**batch)
    assert tiny_model.phrase_weight == 1.0 and out.parts["phrase"] > 0  # pixellm-tiny turns it on
    parts = out.parts
    cfg = tiny_model.loss_cfg
    mask_only = cfg["bce_weight"] * (parts["bce"] + parts["refine"]) + cfg["dice_weight"] * parts["dice"]
    assert tiny_model.iou_weight == 1.0 and parts["iou"] > 0  # pixellm-tiny has the IoU head
    want = mask_only + parts["phrase"] + tiny_model.iou_weight * parts["iou"]
    assert torch.allclose(out.terms["mask"], want, atol=1e-6)
    assert torch.allclose(out.terms["region"], tiny_model.region_weight * parts["region"])
    assert torch.allclose(out.loss, out.terms["text"] + out.terms["mask"] + out.terms["region"])
    # the phrase loss alone sends gradient through the fusion into the LLM, not into the decoder
    tiny_model.zero_grad()
    phrases = [["purple", "triangle"], ["red", "circle"], [",", "blue", "square"], ["and", "green", "star"]]
    ids = [[tiny_model.tokenizer.convert_tokens_to_ids(w) for w in p] for p in phrases]
    fused = tiny_model.fusion(torch.randn(4, len(tiny_model.codebook_ids), tiny_model.base_llm.config.hidden_size,
                                        requires_grad=True))
    tiny_model.phrase_head.loss(fused, ids).backward()
    assert tiny_model.fusion.proj[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_model.decoder.parameters())
    off = build_model(small_config(loss={"phrase_weight": 0.0}), tokenizer=make_tokenizer())
    assert off.phrase_head is None and not any(k.startswith("phrase_head.") for k in off.state_dict())
    assert "phrase" not in off(**make_batch(off, ANSWERS)).parts
    with pytest.raises(ConfigError, match="phrase_weight must be >= 0"):
        small_config(loss={"phrase_weight": -1.0})


def test_region_loss_is_its_own_term_and_trains_the_vision_tower(tiny_model, make_tokenizer, small_config):
    batch = make_batch(tiny_model, ANSWERS)
    out = tiny_model(**batch)
    assert tiny_model.region_weight == 1.0 and out.parts["region"] > 0  # pixellm-tiny turns it on
    # the same value as the head's loss on the deep scale, the batch's masks and the answers' phrases
    feats = tiny_model.vision(batch["pixels"])
    words = [["purple", "triangle"], ["red", "circle"], [",", "blue", "square"], ["and", "green", "star"]]
    ids = [[tiny_model.tokenizer.convert_tokens_to_ids(w) for w in p] for p in words]
    total, weight = tiny_model.region_head.sums(feats[0], torch.cat(batch["gt_masks"]), out.batch_index, ids)
    want = total / weight
    assert torch.allclose(out.parts["region"], want, atol=1e-6)
    assert out.counts["region"] == pytest.approx(weight)
    assert weight == pytest.approx(float(torch.cat(batch["gt_masks"]).sum()) / 64)  # 8x8-px patches
    # its gradient reaches the vision tower and nothing downstream of it
    tiny_model.zero_grad()
    want.backward()
    assert tiny_model.vision.visual.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for m in (tiny_model.decoder, tiny_model.fusion, tiny_model.projector, tiny_model.llm)
               for p in m.parameters())
    off = build_model(small_config(loss={"region_weight": 0.0}), tokenizer=make_tokenizer())
    assert off.region_head is None and not any(k.startswith("region_head.") for k in off.state_dict())
    assert "region" not in off(**make_batch(off, ANSWERS)).parts
    with pytest.raises(ConfigError, match="region_weight must be >= 0"):
        small_config(loss={"region_weight": -0.5})


def test_block_questions_separate_the_turns_of_a_sequence():
    # row 0: prompt | answer 1 (2 blocks) | question 2 | answer 2 (1 block); row 1: one answer, 1 block
    labels = torch.tensor([[-100, -100, 5, 90, 91, 6, 90, 91, -100, -100, 7, 90, 91],
                           [-100, 8, 90, 91, -100, -100, -100, -100, -100, -100, -100, -100, -100]])
    got = block_questions(labels, [[3, 6, 11], [2]])
    assert got[0] == got[1] and got[2] != got[0] and got[3] not in got[:3]
    assert got.dtype == torch.long and got.shape == (4,)


def test_refinement_loss_compares_the_masks_of_one_question_only(tiny_model):
    """Two turns of one image, one target each, both masks claiming every pixel (a hook makes
    the logits positive): no question has two masks, so the refinement term is 0; grouping by
    image would weigh every pixel."""
    fmt = PixelLMPredictor(tiny_model).formatter
    ids, labels = fmt.conversation([("which shapes are red?", "red circle {seg}."),
                                    ("which shapes are round?", "red circle {seg}.")])
    mask = torch.zeros(2, S, S)
    mask[:, 10:30, 10:30] = 1
    batch = collate([Encoded(torch.randn(3, S, S), torch.tensor(ids), torch.tensor(labels), mask)],
                    pad_id=tiny_model.tokenizer.pad_token_id)
    hook = tiny_model.decoder.register_forward_hook(
        lambda m, i, o: DecoderOutput(o.logits.abs() + 1, o.iou_logits))
    try:
        out = tiny_model(**batch)
    finally:
        hook.remove()
    assert out.mask_logits.shape[0] == 2 and out.batch_index.tolist() == [0, 0]
    questions = block_questions(batch["labels"], [[i for i, t in enumerate(batch["input_ids"][0].tolist())
                                                   if t == tiny_model.codebook_ids[0]]])
    assert questions[0] != questions[1]
    logits = F.interpolate(out.mask_logits[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    by_question = mask_losses(logits, mask, questions, **tiny_model.loss_cfg)
    by_image = mask_losses(logits, mask, out.batch_index, **tiny_model.loss_cfg)
    assert torch.allclose(out.parts["refine"], by_question["refine"], atol=1e-6)
    assert by_question["refine"] == 0 and by_image["refine"] > 0


def test_iou_loss_scores_the_actual_iou_at_the_mask_loss_resolution(tiny_model):
    """The "iou" part is iou_loss of the decoder's IoU logits against the IoU of the logits
    upsampled to the ground truth's S x S (where BCE and Dice are computed), in the mask term."""
    seen = []
    hook = tiny_model.decoder.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        batch = make_batch(tiny_model, ANSWERS)
        out = tiny_model(**batch)
    finally:
        hook.remove()
    dec, gt = seen[0], torch.cat(batch["gt_masks"])  # (4, S, S)
    up = F.interpolate(dec.logits[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(out.parts["iou"], iou_loss(dec.iou_logits, up, gt), atol=1e-6)
    assert not torch.allclose(out.parts["iou"], iou_loss(dec.iou_logits, dec.logits, gt[:, ::2, ::2]))
    # the IoU term trains the IoU head; the actual IoU is a label (no gradient through it), so the
    # finest scale's mask hypernetwork gets none. (The coarse one does, through the features it
    # modulates, which the finest IoU token reads: see pixellm.decoder.pixel_decoder.)
    tiny_model.zero_grad()
    iou_loss(dec.iou_logits, up, gt).backward()
    assert tiny_model.decoder.iou_prediction_head.layers[0].weight.grad.abs().sum() > 0
    assert tiny_model.decoder.heads[-1].hypernet.layers[-1].weight.grad is None


def test_iou_weight_zero_builds_no_iou_head(make_tokenizer, small_config):
    off = build_model(small_config(loss={"iou_weight": 0.0}), tokenizer=make_tokenizer())
    assert off.decoder.iou_prediction_head is None and not any("iou" in k for k in off.state_dict())
    out = off(**make_batch(off, ANSWERS))
    assert out.iou is None and "iou" not in out.parts and torch.isfinite(out.loss)
    with pytest.raises(ConfigError, match="iou_weight must be >= 0"):
        small_config(loss={"iou_weight": -1.0})


def test_iou_weight_defaults():
    assert LossConfig().iou_weight == 0.0  # configs written before the IoU head: none is built
    for name in ("pixellm-tiny", "pixellm-7b", "pixellm-13b"):
        assert get_model_config(name).loss.iou_weight == 1.0
    d = get_model_config("pixellm-tiny").to_dict()
    del d["loss"]["iou_weight"]
    assert PixelLMConfig.from_dict(d).loss.iou_weight == 0.0
