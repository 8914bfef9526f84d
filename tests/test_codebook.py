"""Codebook tokens, block parsing, gathering, per-scale fusion and the phrase head."""

import random

import pytest
import torch

from pixellm.codebook import (
    CodebookFusion,
    PhraseHead,
    RegionWordHead,
    add_codebook_tokens,
    block_phrases,
    block_text,
    codebook_token_names,
    gather_blocks,
    parse_blocks,
    phrase_bags,
)

CB = [100, 101, 102, 103, 104, 105]  # L=2, N=3 block ids


# ---------------------------------------------------------------- names and tokenizer


def test_token_names_are_scale_major():
    names = codebook_token_names(num_scales=2, tokens_per_scale=3)
    assert names == [
        "<seg_s0_t0>",
        "<seg_s0_t1>",
        "<seg_s0_t2>",
        "<seg_s1_t0>",
        "<seg_s1_t1>",
        "<seg_s1_t2>",
    ]
    assert block_text(num_scales=2, tokens_per_scale=3) == "".join(names)
    with pytest.raises(ValueError):
        codebook_token_names(num_scales=0, tokens_per_scale=3)


@pytest.fixture
def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "<keep>", "the", "cup", "and", "spoon", "is", "."]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    tok.add_special_tokens({"additional_special_tokens": ["<keep>"]})
    return tok


def test_add_codebook_tokens_distinct_idempotent_round_trip(word_tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = word_tokenizer
    base = len(tok)
    ids = add_codebook_tokens(tok, num_scales=2, tokens_per_scale=3)
    assert len(ids) == 6 and len(set(ids)) == 6
    assert sorted(ids) == list(range(base, base + 6))  # new rows at the end of the vocabulary
    assert len(tok) == base + 6
    assert add_codebook_tokens(tok, num_scales=2, tokens_per_scale=3) == ids  # idempotent
    assert len(tok) == base + 6
    assert "<keep>" in tok.all_special_tokens  # earlier special tokens survive
    assert set(codebook_token_names(num_scales=2, tokens_per_scale=3)) <= set(
        tok.all_special_tokens
    )

    block = block_text(num_scales=2, tokens_per_scale=3)
    text = f"the cup {block} and spoon{block} ."
    enc = tok(text)["input_ids"]
    assert enc == [3, 4, *ids, 5, 6, *ids, 8]
    assert parse_blocks(enc, ids).starts == [2, 10]
    assert tok.decode(enc, skip_special_tokens=True) == "the cup and spoon ."

    tok.save_pretrained(tmp_path)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert (
        loaded.convert_tokens_to_ids(codebook_token_names(num_scales=2, tokens_per_scale=3)) == ids
    )
    assert loaded(text)["input_ids"] == enc
    assert add_codebook_tokens(loaded, num_scales=2, tokens_per_scale=3) == ids
    assert len(loaded) == base + 6


# ---------------------------------------------------------------- parse_blocks


def test_parse_complete_blocks_with_text():
    p = parse_blocks([1, 2, *CB, 3, *CB, *CB], CB)
    assert p.starts == [2, 9, 15] and p.malformed == [] and p.num_targets == 3


def test_parse_zero_blocks():
    assert parse_blocks([1, 2, 3], CB).starts == []
    assert parse_blocks([], CB).malformed == []
    assert parse_blocks(torch.tensor([5, 6]), CB).num_targets == 0


def test_parse_truncated_final_block_keeps_earlier():
    p = parse_blocks([1, *CB, 2, *CB[:3]], CB)
    assert p.starts == [1]
    assert p.malformed == ["truncated block at position 8 (3 of 6 tokens, at end of sequence)"]


def test_parse_out_of_order_keeps_following_block():
    seq = [*CB[:2], CB[3], CB[2], *CB[4:], 7, *CB]
    p = parse_blocks(seq, CB)
    assert p.starts == [7]
    assert len(p.malformed) == 2
    assert p.malformed[0].startswith("truncated block at position 0 (2 of 6 tokens")
    assert p.malformed[1].startswith("out-of-order codebook tokens at positions 2-5 (4 tokens")


def test_parse_scales_swapped_is_malformed():
    p = parse_blocks([*CB[3:], *CB[:3]], CB)
    assert p.starts == []
    assert [m.split(" ")[0] for m in p.malformed] == ["out-of-order", "truncated"]


def test_parse_text_inside_block():
    p = parse_blocks([*CB[:3], 5, *CB[3:], *CB, CB[5]], CB)
    assert p.starts == [7]
    assert "interrupted at 3" in p.malformed[0]
    assert "positions 4-6" in p.malformed[1]
    assert "positions 13-13" in p.malformed[2]  # the stray token after the complete block


def test_parse_random_sequences_find_every_complete_block():
    rng = random.Random(0)
    alphabet = CB + [0, 1, 2]
    for _ in range(2000):
        seq = []
        while len(seq) < rng.randrange(0, 40):
            seq += CB if rng.random() < 0.15 else [rng.choice(alphabet)]
        p = parse_blocks(seq, CB)
        occurrences = [i for i in range(len(seq)) if seq[i : i + 6] == CB]
        assert p.starts == occurrences
        inside = {i for s in p.starts for i in range(s, s + 6)}
        stray = any(t in CB for i, t in enumerate(seq) if i not in inside)
        assert bool(p.malformed) == stray


def test_parse_rejects_bad_codebook():
    with pytest.raises(ValueError):
        parse_blocks([1], [])
    with pytest.raises(ValueError):
        parse_blocks([1], [5, 5])


# ---------------------------------------------------------------- gather_blocks


def test_gather_blocks_picks_rows():
    b, t = 3, 12
    pos = torch.arange(t, dtype=torch.float32)
    hidden = torch.stack([100 * i + pos for i in range(b)])[..., None].repeat(1, 1, 2)  # (3, 12, 2)
    hidden[..., 1] *= -1
    blocks, index = gather_blocks(hidden, [[1, 6], [], [0]], 6)
    assert blocks.shape == (3, 6, 2)
    assert index.tolist() == [0, 0, 2] and index.dtype == torch.long
    assert blocks[0, :, 0].tolist() == [1, 2, 3, 4, 5, 6]
    assert blocks[1, :, 0].tolist() == [6, 7, 8, 9, 10, 11]
    assert blocks[2, :, 0].tolist() == [200, 201, 202, 203, 204, 205]
    assert torch.equal(blocks[..., 1], -blocks[..., 0])


def test_gather_blocks_empty_and_errors():
    hidden = torch.randn(2, 10, 4)
    blocks, index = gather_blocks(hidden, [[], []], 6)
    assert blocks.shape == (0, 6, 4) and index.shape == (0,)
    with pytest.raises(ValueError):
        gather_blocks(hidden, [[5], []], 6)  # runs past T
    with pytest.raises(ValueError):
        gather_blocks(hidden, [[0]], 6)  # one list for two sequences


# ---------------------------------------------------------------- CodebookFusion


def _fusion(mode="linear"):
    torch.manual_seed(0)
    return CodebookFusion(llm_dim=16, out_dim=8, num_scales=2, tokens_per_scale=3, fusion=mode)


@pytest.mark.parametrize("k", [0, 1, 5])
@pytest.mark.parametrize("mode", ["linear", "mean"])
def test_fusion_shapes(k, mode):
    out = _fusion(mode)(torch.randn(k, 6, 16))
    assert out.shape == (k, 2, 8)


def test_fusion_weights_are_trained_and_saved():
    fusion = _fusion()
    state = fusion.state_dict()
    assert state["scale_weight"].shape == (2, 3) and state["scale_bias"].shape == (2, 8)
    params = dict(fusion.named_parameters())
    assert "scale_weight" in params and "scale_bias" in params
    before = fusion.scale_weight.detach().clone()
    assert torch.allclose(before, torch.full((2, 3), 1 / 3))

    target = torch.randn(4, 2, 8)
    loss = (fusion(torch.randn(4, 6, 16)) - target).pow(2).mean()
    loss.backward()
    assert fusion.scale_weight.grad is not None and fusion.scale_weight.grad.abs().sum() > 0
    assert fusion.scale_bias.grad.abs().sum() > 0
    torch.optim.SGD(fusion.parameters(), lr=0.1).step()
    assert not torch.allclose(fusion.scale_weight.detach(), before)

    clone = _fusion()
    clone.load_state_dict(fusion.state_dict())
    assert torch.equal(clone.scale_weight, fusion.scale_weight)


def test_fusion_linear_starts_at_mean_and_mean_mode_is_fixed():
    x = torch.randn(5, 6, 16)
    linear, mean = _fusion("linear"), _fusion("mean")
    mean.proj.load_state_dict(linear.proj.state_dict())
    expected = mean.proj(x).view(5, 2, 3, 8).mean(2)  # (K, L, out)
    assert torch.allclose(mean(x), expected, atol=1e-6)
    assert torch.allclose(linear(x), expected, atol=1e-6)  # 1/N weights, zero bias at init
    names = [n for n, _ in mean.named_parameters()]
    assert all(n.startswith("proj.") for n in names)
    assert all(k.startswith("proj.") for k in mean.state_dict())


def test_fusion_rejects_bad_input():
    with pytest.raises(ValueError):
        CodebookFusion(llm_dim=4, out_dim=4, num_scales=2, tokens_per_scale=3, fusion="max")
    with pytest.raises(ValueError):
        _fusion()(torch.randn(2, 5, 16))


def test_projection_is_the_mlp_and_retired_config_keys_are_read(micro_config):
    from torch import nn

    from pixellm.errors import ConfigError
    from pixellm.families import config_from_dict

    proj = _fusion().proj  # LISA's / PixelLM's MLP: Linear, ReLU, Linear
    assert [type(m) for m in proj] == [nn.Linear, nn.ReLU, nn.Linear]
    old = {**micro_config, "codebook": {**micro_config.get("codebook", {}), "projection": "mlp"},
           "loss": {**micro_config.get("loss", {}), "block_ce": "all"}}
    assert config_from_dict(old).codebook.fusion == "linear"  # a config written before retiring them
    for section, key, value in (("codebook", "projection", "linear"), ("loss", "block_ce", "first")):
        with pytest.raises(ConfigError, match=f"{key}={value!r} is no longer supported"):
            config_from_dict({**micro_config, section: {**micro_config.get(section, {}), key: value}})


def test_block_phrases_stop_at_blocks_questions_and_start():
    cb = [90, 91]
    # question (unscored) | "red circle" B , "blue" B . || next turn: question | "star" B
    ids = [5, 6, 10, 11, 90, 91, 12, 13, 90, 91, 14, 7, 8, 15, 90, 91]
    scored = [False, False, True, True, True, True, True, True, True, True, True, False, False, True, True, True]
    starts = [4, 8, 14]
    assert block_phrases(ids, scored, starts, cb) == [[10, 11], [12, 13], [15]]
    # a block right after the question, and one right after another block: empty phrases
    assert block_phrases([5, 90, 91, 90, 91], [False, True, True, True, True], [1, 3], cb) == [[], []]
    # a scored run reaching the sequence start; tensors are accepted
    assert block_phrases(torch.tensor([3, 4, 90, 91]), torch.tensor([True] * 4), [2], cb) == [[3, 4]]
    with pytest.raises(ValueError, match="scored has 2 entries for 3 tokens"):
        block_phrases([1, 2, 3], [True, True], [], cb)


def test_phrase_head_loss_is_the_soft_cross_entropy_of_the_word_bags():
    torch.manual_seed(0)
    head = PhraseHead(in_dim=2 * 4, vocab_size=6)
    targets = torch.randn(3, 2, 4)
    loss = head.loss(targets, [[1, 2, 2], [], [5]])  # repeats count once; empty bags are skipped
    logp = torch.log_softmax(head(targets), -1)
    want = (-(logp[0, 1] + logp[0, 2]) / 2 - logp[2, 5]) / 2
    assert head(targets).shape == (3, 6)
    assert torch.allclose(loss, want)
    none = head.loss(targets, [[], [], []])
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="3 target embeddings but 2 phrases"):
        head.loss(targets, [[1], [2]])


def test_phrase_head_learns_to_name_distinct_embeddings():
    """Four fixed 'targets', each with its own two-word phrase: the loss falls to near its floor
    (log 2, a uniform split over the two words) and the two words rank first for each."""
    torch.manual_seed(0)
    head = PhraseHead(in_dim=8, vocab_size=12)
    targets, bags = torch.randn(4, 2, 4), [[0, 4], [1, 5], [2, 6], [3, 7]]
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        loss = head.loss(targets, bags)
        loss.backward()
        opt.step()
    assert loss.item() < 0.72  # log 2 = 0.693
    top2 = head(targets).topk(2, dim=-1).indices.sort(-1).values.tolist()
    assert top2 == [sorted(b) for b in bags]


def test_phrase_bags_are_uniform_over_distinct_words():
    bags, keep = phrase_bags([[1, 2, 2], [], [4]], 5)
    assert torch.equal(bags, torch.tensor([[0, .5, .5, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1.]]))
    assert keep.tolist() == [True, False, True]


def test_region_head_sums_weight_each_patch_by_mask_coverage():
    """Two 2x2-patch images of 4x4 px: the sums are those of the coverage-weighted per-patch
    soft cross-entropies, each against the phrase of the mask covering it, in its own image."""
    torch.manual_seed(0)
    head = RegionWordHead(in_dim=3, vocab_size=5)
    feats = torch.randn(2, 3, 2, 2)
    masks = torch.zeros(3, 4, 4)
    masks[0, :2, :2] = 1  # all of patch 0
    masks[1, 2:, 0] = 1  # half of patch 2
    masks[2, :, :] = 1  # every patch, but its phrase is empty: no weight
    batch_index = torch.tensor([1, 0, 0])
    total, weight = head.sums(feats, masks, batch_index, [[1, 3], [2], []])
    logp = torch.log_softmax(head(feats), -1)  # (2, 4, 5)
    assert head(feats).shape == (2, 4, 5)
    ce0 = -(logp[1, 0, 1] + logp[1, 0, 3]) / 2  # mask 0 lies in image 1, patch 0, coverage 1
    ce1 = -logp[0, 2, 2]  # mask 1 lies in image 0, patch 2, coverage 0.5
    assert weight == pytest.approx(1.5)
    assert torch.allclose(total, 1.0 * ce0 + 0.5 * ce1)
    none, none_weight = head.sums(feats, masks[:0], batch_index[:0], [])
    assert none.item() == 0.0 and none.requires_grad and none_weight == 0.0
    with pytest.raises(ValueError, match="3 masks, 3 batch indices and 2 phrases"):
        head.sums(feats, masks, batch_index, [[1], [2]])
    with pytest.raises(ValueError, match="not a multiple of the patch grid"):
        head.sums(feats, torch.zeros(1, 5, 5), batch_index[:1], [[1]])


def test_region_head_learns_to_name_the_patches_under_each_mask():
    """Fixed random patch features, two objects per image with their own two-word phrases: the
    head learns the words at the covered patches (the loss falls to near its log 2 floor)."""
    torch.manual_seed(0)
    head = RegionWordHead(in_dim=8, vocab_size=10)
    feats = torch.randn(2, 8, 2, 2)
    masks = torch.zeros(4, 8, 8)
    masks[0, :4, :4] = masks[1, 4:, 4:] = masks[2, :4, 4:] = masks[3, 4:, :4] = 1
    batch_index, bags = torch.tensor([0, 0, 1, 1]), [[0, 4], [1, 5], [2, 6], [3, 7]]
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        total, weight = head.sums(feats, masks, batch_index, bags)
        loss = total / weight  # as the model forms it
        loss.backward()
        opt.step()
    assert loss.item() < 0.72  # log 2 = 0.693
    top2 = head(feats).topk(2, dim=-1).indices.sort(-1).values  # (2, 4 patches, 2)
    assert top2[0, 0].tolist() == [0, 4] and top2[0, 3].tolist() == [1, 5]
    assert top2[1, 1].tolist() == [2, 6] and top2[1, 2].tolist() == [3, 7]


def test_region_head_object_sums_pool_the_covered_patches_before_the_read_out():
    """Each target's features are the coverage-weighted mean of the patches under its mask,
    in its own image; the sums are those of the soft cross-entropies of their read-out over the
    targets with a phrase and a non-empty mask (= the coverage-weighted mean of the patch logits)."""
    torch.manual_seed(0)
    head = RegionWordHead(in_dim=3, vocab_size=5)
    feats = torch.randn(2, 3, 2, 2, requires_grad=True)
    masks = torch.zeros(4, 4, 4)
    masks[0, :2, :] = 1  # patches 0 and 1, fully
    masks[1, 2:, 0] = 1  # half of patch 2
    masks[2, :, :] = 1  # every patch, but an empty phrase: left out
    batch_index = torch.tensor([1, 0, 0, 1])  # mask 3 is empty: left out
    total, count = head.object_sums(feats, masks, batch_index, [[1, 3], [2], [], [4]])
    f0 = (feats[1, :, 0, 0] + feats[1, :, 0, 1]) / 2
    logp0 = torch.log_softmax(head.proj(f0), -1)
    logp1 = torch.log_softmax(head(feats)[0, 2], -1)  # one patch: its own logits
    assert count == 2
    assert torch.allclose(total, -(logp0[1] + logp0[3]) / 2 - logp1[2])
    assert torch.allclose(head.proj(f0), (head(feats)[1, 0] + head(feats)[1, 1]) / 2, atol=1e-6)
    total.backward()
    assert feats.grad[1, :, 1, 0].abs().sum() == 0  # an uncovered patch gets no gradient
    none, none_count = head.object_sums(feats, masks[2:], batch_index[2:], [[], [4]])
    assert none.item() == 0.0 and none.requires_grad and none_count == 0
    with pytest.raises(ValueError, match="4 masks, 4 batch indices and 1 phrases"):
        head.object_sums(feats, masks, batch_index, [[1]])
    with pytest.raises(ValueError, match="not a multiple of the patch grid"):
        head.object_sums(feats, torch.zeros(1, 5, 5), batch_index[:1], [[1]])
