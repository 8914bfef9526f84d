"""Multi-turn training sequences: formatter, packing by image, dataset items, model loss."""
from __future__ import annotations

import pytest
import torch

from pixellm.data import ConversationDataset, SegmentationDataset, collate, pack_turns
from pixellm.errors import InputError
from pixellm.muse import GenConfig, generate_dataset, load_split
from pixellm.predictor import PixelLMPredictor
from pixellm.train.loop import count_turns


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv_shapes")
    generate_dataset(GenConfig(seed=5, train=10, val=2, test=2, image_size=64), out, workers=1)
    return out


@pytest.fixture
def fmt(tiny_model):
    return PixelLMPredictor(tiny_model).formatter


def test_one_turn_is_the_training_pair(fmt):
    q, a = "which shapes are red?", "red circle {seg} and red star {seg}."
    assert fmt.conversation([(q, a)]) == fmt.training_pair(q, a)


def test_later_turns_append_prompt_without_image_and_label_only_answers(fmt, tiny_model):
    turns = [("which shapes are red?", "red circle {seg}."), ("find all the stars.", "no shape matches."),
             ("what are the two largest shapes?", "blue square {seg} and green star {seg}.")]
    ids, labels = fmt.conversation(turns)
    first, first_labels = fmt.training_pair(*turns[0])
    assert ids[:len(first)] == first and labels[:len(first)] == first_labels
    rest = ids[len(first):]
    p2, a2 = fmt.followup_ids(turns[1][0]), fmt.answer_ids(turns[1][1])
    assert rest[:len(p2) + len(a2)] == p2 + a2
    assert ids.count(tiny_model.image_token_id) == tiny_model.num_image_tokens  # image only once
    assert fmt.tokenizer.bos_token_id not in rest
    supervised = [t for t, lab in zip(ids, labels) if lab != -100]
    assert supervised == fmt.answer_ids(turns[0][1]) + a2 + fmt.answer_ids(turns[2][1])
    assert ids.count(tiny_model.codebook_ids[0]) == 3  # one block per target, over all turns


def test_conversation_errors_name_the_problem(fmt):
    with pytest.raises(InputError, match="at least one"):
        fmt.conversation([])
    with pytest.raises(InputError, match="empty"):
        fmt.conversation([("which shapes are red?", "no shape matches."), ("  ", "no shape matches.")])
    long_answer = " and ".join(["red circle {seg}"] * 12) + "."
    with pytest.raises(InputError, match=f"more than the context of {fmt.max_length}"):
        fmt.conversation([("which shapes are red?", long_answer)] * 3)


def test_pack_turns_covers_every_sample_once_per_image_within_limits(shapes, fmt):
    samples = load_split(shapes, "train")
    longest = max(len(fmt.training_pair(s.question, s.answer)[0]) for s in samples)
    fmt.max_length = longest + 8  # tight: every question fits, but not every pair of them
    groups = pack_turns(samples, formatter=fmt, turns=2, seed=0)
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(len(samples)))
    for g in groups:
        assert 1 <= len(g) <= 2
        assert len({(samples[i].source, samples[i].image_id) for i in g}) == 1
        assert len(fmt.conversation([(samples[i].question, samples[i].answer) for i in g])[0]) <= fmt.max_length
    assert any(len(g) == 2 for g in groups)
    assert len(groups) > len({samples[i].image_id for i in range(len(samples))})  # budget split some
    assert pack_turns(samples, formatter=fmt, turns=2, seed=0) == groups
    assert pack_turns(samples, formatter=fmt, turns=1, seed=0) == [[i] for i in range(len(samples))]
    with pytest.raises(ValueError, match="turns"):
        pack_turns(samples, formatter=fmt, turns=0)
    fmt.max_length = longest - 1  # the longest question + answer no longer fits: named
    with pytest.raises(InputError, match=r"muse_train.json image \d+ question \d+: the question is too long"):
        pack_turns(samples, formatter=fmt, turns=2, seed=0)


def test_conversation_item_masks_follow_blocks_and_model_trains_on_it(shapes, fmt, tiny_model):
    samples = load_split(shapes, "train")
    groups = [g for g in pack_turns(samples, formatter=fmt, turns=3, seed=1) if len(g) == 3][:2]
    assert groups, "fixture images have 3 questions each"
    size = tiny_model.config.vision.image_size
    kw = dict(formatter=fmt, image_size=size, mean=[0.5] * 3, std=[0.25] * 3)
    conv = ConversationDataset(samples, groups=groups, **kw)
    single = SegmentationDataset(samples, **kw)
    item = conv[0]
    parts = [single[i] for i in groups[0]]
    assert torch.equal(item.pixels, parts[0].pixels)
    assert torch.equal(item.masks, torch.cat([p.masks for p in parts]))
    assert int((item.input_ids == tiny_model.codebook_ids[0]).sum()) == item.masks.shape[0]
    batch = collate([conv[0], conv[1]], pad_id=fmt.tokenizer.pad_token_id)
    out = tiny_model(**batch)
    assert out.counts["mask"] == sum(m.shape[0] for m in batch["gt_masks"])
    assert torch.isfinite(out.loss)


def test_count_turns_counts_answer_runs_through_padding(shapes, fmt, tiny_model):
    size = tiny_model.config.vision.image_size
    samples = load_split(shapes, "train")
    groups = pack_turns(samples, formatter=fmt, turns=3, seed=0)
    conv = ConversationDataset(samples, groups=groups[:4], formatter=fmt, image_size=size,
                               mean=[0.5] * 3, std=[0.25] * 3)
    batch = collate([conv[i] for i in range(4)], pad_id=fmt.tokenizer.pad_token_id)
    assert count_turns(batch["labels"]) == sum(len(g) for g in groups[:4])
    assert count_turns(torch.full((2, 5), -100)) == 0


def test_same_targets_is_an_order_free_multiset_match():
    from pixellm.evaluate import same_targets
    assert same_targets(["Blue  square", "red circle"], ["red circle", "blue square"])
    assert same_targets([], [])
    assert not same_targets(["red circle"], ["red circle", "red circle"])  # duplicates count
    assert not same_targets(["red circle"], [])
    assert not same_targets(["red star"], ["red circle"])


def test_phrase_iou_scores_the_named_targets_as_perfect_masks():
    from pixellm.evaluate import phrase_iou
    assert phrase_iou([], []) == 1.0 and phrase_iou(["red circle"], []) == 0.0
    assert phrase_iou([], ["red circle"]) == 0.0
    assert phrase_iou(["Blue square", "red circle"], ["red circle", "blue  square"]) == 1.0
    assert phrase_iou(["red circle", "red star"], ["red circle"]) == 0.5  # a wrong extra target
    assert phrase_iou(["red circle"], ["red circle", "red star", "blue ring"]) == 1 / 3  # missed two
    assert phrase_iou(["red circle", "red circle"], ["red circle"]) == 0.5  # a repeat earns once


def test_formatter_memo_gives_fresh_lists_equal_to_the_tokenizer(fmt, monkeypatch):
    q, a = "which shapes are red?", "red circle {seg}."
    first = fmt.training_pair(q, a)
    ids = fmt._ids("red circle")
    assert ids == fmt.tokenizer("red circle", add_special_tokens=False)["input_ids"]
    ids.append(-1)  # a caller's edit must not reach the memo
    assert fmt._ids("red circle")[-1] != -1
    calls = []
    real = fmt.tokenizer.__class__.__call__
    monkeypatch.setattr(fmt.tokenizer.__class__, "__call__", lambda self, *x, **k: calls.append(x) or real(self, *x, **k))
    assert fmt.training_pair(q, a) == first and calls == []  # served from the memo
    monkeypatch.setattr(type(fmt), "MEMO_SIZE", len(fmt._memo))  # full: new texts are encoded, not kept
    n = len(fmt._memo)
    assert fmt._ids("blue star") == real(fmt.tokenizer, "blue star", add_special_tokens=False)["input_ids"]
    assert len(calls) == 1 and len(fmt._memo) == n
