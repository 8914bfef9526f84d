"""The vision warm-up: its dataset, its training step, its errors and its share of the time budget."""
from __future__ import annotations

import copy
import itertools
import json
from itertools import chain

import pytest
import torch
from accelerate import Accelerator

from pixellm.build import build_model
from pixellm.config import PixelLMConfig
from pixellm.errors import InputError
from pixellm.llm import train_word_tokenizer
from pixellm.muse import load_split
from pixellm.train.warmup import ObjectWordDataset, collate_objects, train_stage, warm_up_vision


@pytest.fixture(scope="module")
def train_samples(shapes):
    return load_split(shapes, "train")


@pytest.fixture(scope="module")
def word_tok(train_samples):
    return train_word_tokenizer(chain.from_iterable((s.question, s.answer) for s in train_samples))


def _dataset(samples, tok, size=32):
    return ObjectWordDataset(samples, tokenizer=tok, image_size=size, mean=[0.5] * 3, std=[0.25] * 3)


def _model(micro_config, tok, **vision):
    cfg = copy.deepcopy(micro_config)
    cfg["vision"].update(vision)
    torch.manual_seed(0)
    return build_model(PixelLMConfig.from_dict(cfg).validate(), tokenizer=tok)


def test_dataset_holds_each_image_once_with_each_target_once(train_samples, word_tok, shapes):
    """Per image: the union of its questions' targets (by annotation id), their masks at the
    input size, and their phrases as the tokenizer's ids; images without a target left out."""
    data = _dataset(train_samples, word_tok)
    records = json.loads((shapes / "muse_train.json").read_text())
    assert len(data) == sum(any(r["answers"]) for r in records)
    for i in (0, len(data) - 1):
        item = data[i]
        record = next(r for r in records if r["id"] == train_samples[data.groups[i][0]].image_id)
        ids = {a["id"] for answer in record["answers"] for a in answer}
        names = {a["id"]: a["rephrased_name"] for a in record["ann_list"]}
        assert item.pixels.shape == (3, 32, 32)
        assert item.masks.shape == (len(ids), 32, 32) and set(item.masks.unique().tolist()) <= {0.0, 1.0}
        assert all(m.sum() > 0 for m in item.masks)
        assert sorted(item.phrases) == sorted(word_tok(names[k], add_special_tokens=False)["input_ids"] for k in ids)
    batch = collate_objects([data[0], data[1]])
    assert batch["pixels"].shape == (2, 3, 32, 32)
    assert batch["batch_index"].tolist() == [0] * len(data[0].phrases) + [1] * len(data[1].phrases)
    assert len(batch["phrases"]) == batch["masks"].shape[0]


def test_warm_up_trains_only_the_tower_and_its_head_and_the_loss_falls(train_samples, word_tok, micro_config):
    model = _model(micro_config, word_tok)
    data = _dataset(train_samples, word_tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = warm_up_vision(model, data, steps=40, batch_size=8, lr=3e-3, accelerator=Accelerator(cpu=True),
                          warmup=5, progress=False)
    assert [r["step"] for r in hist] == list(range(1, 41))
    first, last = (sum(r["object_words"] for r in rs) / 5 for rs in (hist[:5], hist[-5:]))
    assert last < 0.8 * first, (first, last)
    assert hist[4]["lr"] == pytest.approx(3e-3) and hist[-1]["lr"] == pytest.approx(3e-3 * 0.05)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("vision.", "region_head.")) for n in changed), sorted(changed)[:5]
    assert any(n.startswith("region_head.") for n in changed)


def test_warm_up_needs_a_region_head_a_trainable_tower_and_targets(train_samples, word_tok, micro_config):
    acc = Accelerator(cpu=True)
    data = _dataset(train_samples, word_tok)
    no_head = copy.deepcopy(micro_config)
    no_head["loss"]["region_weight"] = 0.0
    model = build_model(PixelLMConfig.from_dict(no_head).validate(), tokenizer=word_tok)
    with pytest.raises(InputError, match="region-words head"):
        warm_up_vision(model, data, steps=1, batch_size=2, lr=1e-3, accelerator=acc, progress=False)
    with pytest.raises(InputError, match="trainable vision tower"):
        warm_up_vision(_model(micro_config, word_tok, freeze=True), data, steps=1, batch_size=2, lr=1e-3,
                       accelerator=acc, progress=False)
    empty = _dataset([s for s in train_samples if not s.phrases], word_tok)
    with pytest.raises(InputError, match="no training image with a target"):
        warm_up_vision(_model(micro_config, word_tok), empty, steps=1, batch_size=2, lr=1e-3, accelerator=acc,
                       progress=False)


def test_warm_up_stops_on_a_non_finite_loss(train_samples, word_tok, micro_config):
    from pixellm.errors import TrainingDivergedError

    model = _model(micro_config, word_tok)
    with torch.no_grad():
        model.region_head.proj.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="non-finite vision warm-up loss .* at warm-up step 1"):
        warm_up_vision(model, _dataset(train_samples, word_tok), steps=3, batch_size=2, lr=1e-3,
                       accelerator=Accelerator(cpu=True), progress=False)


def test_the_stage_goes_through_accelerate_and_leaves_it_as_it_found_it(train_samples, word_tok, micro_config):
    """The stage's modules (or, as LISA's SAM stage passes them, bare parameters) and optimizer
    are prepared by the accelerator and released after: the joint run's checkpoints hold only
    its own model, its gradient accumulation is back, and no gradient is left over for it. One
    batch a step whatever the accumulation; seconds on the injected clock."""
    data = _dataset(train_samples, word_tok)

    def run(accelerator, *, bare: bool):
        model = _model(micro_config, word_tok)
        parts = (model.vision, model.region_head)
        trained = [p for m in parts for p in m.parameters()] if bare else list(parts)
        hist = train_stage(trained, data, lambda b: model.region_head.object_sums(
                               model.vision(b["pixels"])[0], b["masks"], b["batch_index"], b["phrases"]),
                           steps=3, batch_size=4, lr=1e-3, accelerator=accelerator, seed=0, warmup=1,
                           betas=(0.9, 0.95), clip=1.0, progress=False, name="stage", key="words",
                           clock=itertools.count().__next__)
        return hist, model

    acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
    modules, _ = run(acc, bare=False)
    assert acc.gradient_accumulation_steps == 2 and acc._models == [] and acc._optimizers == []
    params, model = run(Accelerator(cpu=True), bare=True)
    assert [r["words"] for r in modules] == [r["words"] for r in params]
    assert [r["seconds"] for r in modules] == [1, 2, 3] and modules[-1]["images_per_s"] == 4.0
    assert all(p.grad is None for p in model.parameters())
