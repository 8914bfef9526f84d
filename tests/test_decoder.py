"""Pixel decoder: shapes, batching, coarse-to-fine modulation, post-processing, and learning."""

import math

import pytest
import torch

from pixellm.codebook import CodebookFusion
from pixellm.decoder import (
    PixelDecoder,
    iou_loss,
    mask_iou,
    mask_losses,
    postprocess_masks,
    scale_factors,
)
from pixellm.decoder.common import SinePositionEncoding

DIM, GRID = 32, 8


def _decoder(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(in_dims=(32, 32), dim=DIM, num_scales=2, heads=4, mlp_dim=64, upscale=4)
    return PixelDecoder(**{**args, **kw}).eval()


def _features(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 32, GRID, GRID, generator=g) for _ in range(2)]


def _run_per_scale(dec, *args):
    """The decoder's output and each scale's mask logits (its mask head's), deepest first."""
    seen = []
    hooks = [head.register_forward_hook(lambda m, i, o: seen.append(o[0])) for head in dec.heads]
    try:
        out = dec(*args)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


@pytest.mark.parametrize("k", [0, 1, 5])
def test_output_shapes(k):
    out, per_scale = _run_per_scale(_decoder(), _features(), torch.randn(k, 2, DIM),
                                    torch.randint(0, 2, (k,)))
    assert out.logits.shape == (k, 32, 32)
    assert [tuple(p.shape) for p in per_scale] == [(k, 16, 16), (k, 32, 32)]
    assert torch.isfinite(out.logits).all()
    assert out.iou_logits.shape == (k,) and out.iou.shape == (k,)
    assert torch.isfinite(out.iou_logits).all() and ((out.iou > 0) & (out.iou < 1)).all()
    assert torch.allclose(out.iou, torch.sigmoid(out.iou_logits))


@pytest.mark.parametrize("k", [0, 1, 5])
def test_without_the_iou_head(k):
    dec = _decoder(iou_head=False)
    out = dec(_features(), torch.randn(k, 2, DIM), torch.randint(0, 2, (k,)))
    assert out.logits.shape == (k, 32, 32) and out.iou_logits is None and out.iou is None
    assert not [n for n in dec.state_dict() if "iou" in n]
    with_head = {n for n in _decoder().state_dict() if "iou" in n}
    assert {n.split(".")[0] + "." + n.split(".")[2] if n.startswith("heads.") else n.split(".")[0]
            for n in with_head} == {"heads.iou_token", "iou_prediction_head"}
    assert {n for n in with_head if n.startswith("heads.")} == {"heads.0.iou_token.weight",
                                                                 "heads.1.iou_token.weight"}


def test_iou_prediction_reads_every_scale_and_leaves_the_masks_alone():
    dec, feats = _decoder(), _features()
    targets, index = torch.randn(3, 2, DIM), torch.tensor([0, 1, 1])
    out = dec(feats, targets, index)
    out.iou_logits.sum().backward()
    for head in dec.heads:  # the MLP reads the IoU tokens of both scales
        assert head.iou_token.weight.grad.abs().sum() > 0
    with torch.no_grad():
        dec.iou_prediction_head.layers[-1].bias.add_(1.0)
        moved = dec(feats, targets, index)
    assert torch.equal(moved.logits, out.logits.detach())
    assert torch.allclose(moved.iou_logits, out.iou_logits.detach() + 1.0, atol=1e-6)


def test_final_logits_sum_the_scales():
    out, per_scale = _run_per_scale(_decoder(), _features(), torch.randn(3, 2, DIM),
                                    torch.tensor([0, 1, 1]))
    coarse = torch.nn.functional.interpolate(
        per_scale[0][:, None], size=(32, 32), mode="bilinear", align_corners=False
    )[:, 0]
    assert torch.allclose(out.logits, per_scale[1] + coarse, atol=1e-6)


def test_scale_factors_rule():
    assert scale_factors(num_scales=2, upscale=4) == [2, 4]
    assert scale_factors(num_scales=3, upscale=4) == [2, 4, 4]
    assert scale_factors(num_scales=1, upscale=8) == [2]
    with pytest.raises(ValueError):
        scale_factors(num_scales=2, upscale=3)
    out = _decoder(upscale=2)(_features(), torch.randn(2, 2, DIM), torch.tensor([0, 1]))
    assert out.logits.shape == (2, 16, 16)


def test_k_zero_backward_reaches_parameters():
    dec = _decoder().train()
    out = dec(
        _features(), torch.randn(0, 2, DIM, requires_grad=True), torch.zeros(0, dtype=torch.long)
    )
    loss = mask_losses(out.logits, torch.zeros(0, 32, 32), torch.zeros(0, dtype=torch.long))
    loss["mask"].backward()
    assert loss["mask"].item() == 0.0
    assert dec.necks[0][0].weight.grad is not None  # graph stays connected (DDP-friendly)


def test_batched_decode_equals_per_image():
    dec, feats = _decoder(), _features()
    targets = torch.randn(5, 2, DIM)
    index = torch.tensor([0, 1, 0, 1, 1])
    with torch.no_grad():
        joint = dec(feats, targets, index).logits
        for img in range(2):
            sel = (index == img).nonzero()[:, 0]
            alone = dec(
                [f[img : img + 1] for f in feats],
                targets[sel],
                torch.zeros(len(sel), dtype=torch.long),
            ).logits
            assert torch.allclose(joint[sel], alone, atol=1e-5)
    assert not torch.allclose(joint[0], joint[2])  # different targets, different masks


def test_coarse_mask_modulates_finer_scale():
    dec, feats = _decoder(), _features()
    targets, index = torch.randn(3, 2, DIM), torch.tensor([0, 1, 1])
    with torch.no_grad():
        base = _run_per_scale(dec, feats, targets, index)[1]
        dec.heads[0].hypernet.layers[-1].bias.add_(0.5)  # changes only scale 0's mask
        moved = _run_per_scale(dec, feats, targets, index)[1]
        assert not torch.allclose(base[0], moved[0])
        assert (moved[1] - base[1]).abs().max() > 1e-4  # scale 1 sees scale 0 via f*(sigmoid(m)+1)
        dec.heads[1].hypernet.layers[-1].bias.add_(0.5)  # scale 1 never feeds scale 0
        assert torch.equal(_run_per_scale(dec, feats, targets, index)[1][0], moved[0])


def test_input_validation():
    dec = _decoder()
    with pytest.raises(ValueError):
        dec(_features()[:1], torch.randn(1, 2, DIM), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError):
        dec(_features(), torch.randn(1, 3, DIM), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError):
        dec(_features(), torch.randn(1, 2, DIM), torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError):
        PixelDecoder(in_dims=(32,), dim=DIM, num_scales=2)


def test_sine_encoding_values():
    pe = SinePositionEncoding(dim=8)(4, 2)
    assert pe.shape == (8, 4, 2)
    angle_y = 2 * math.pi * (2 + 0.5) / 4  # row 2, lowest frequency is 1
    assert pe[0, 2, 1].item() == pytest.approx(math.sin(angle_y), abs=1e-6)
    assert pe[1, 2, 1].item() == pytest.approx(math.cos(angle_y), abs=1e-6)
    angle_x = 2 * math.pi * (1 + 0.5) / 2
    assert pe[4, 3, 1].item() == pytest.approx(math.sin(angle_x), abs=1e-6)
    assert torch.equal(pe[:4, :, 0], pe[:4, :, 1])  # y channels do not depend on x


def test_postprocess_crops_padding_and_resizes():
    logits = torch.full((1, 8, 8), 100.0)  # right half is padding
    logits[0, :4, :4], logits[0, 4:, :4] = 1.0, -1.0
    out = postprocess_masks(logits, padded_size=(8, 8), valid_size=(8, 4), original_size=(16, 8))
    assert out.shape == (1, 16, 8)
    # bilinear x2 of a 1 / -1 step at row 4: rows 7 and 8 sit a quarter pixel from it
    expected_rows = [1.0] * 7 + [0.5, -0.5] + [-1.0] * 7
    assert torch.allclose(out[0], torch.tensor(expected_rows)[:, None].expand(16, 8))


def test_postprocess_from_low_resolution():
    logits = torch.zeros(2, 4, 4)
    logits[:, :, 2:] = -7.0  # the padded columns, once upsampled to 8x8
    out = postprocess_masks(logits, padded_size=(8, 8), valid_size=(8, 3), original_size=(8, 3))
    assert out.shape == (2, 8, 3)
    assert torch.equal(out, torch.zeros(2, 8, 3))  # columns 0-2 of the 8-wide map are pure 0
    assert postprocess_masks(
        torch.zeros(0, 4, 4), padded_size=(8, 8), valid_size=(8, 3), original_size=(5, 2)
    ).shape == (0, 5, 2)
    with pytest.raises(ValueError):
        postprocess_masks(logits, padded_size=(8, 8), valid_size=(9, 3), original_size=(8, 3))


def _iou(logits, masks):
    pred = logits > 0
    inter = (pred & masks).flatten(1).sum(1)
    union = (pred | masks).flatten(1).sum(1)
    return inter / union


def test_fusion_and_decoder_learn_two_targets_per_image():
    torch.manual_seed(0)
    fusion = CodebookFusion(llm_dim=16, out_dim=DIM, num_scales=2, tokens_per_scale=3)
    dec = _decoder().train()
    feats = _features()
    hidden = torch.randn(4, 6, 16)  # two targets per image
    index = torch.tensor([0, 0, 1, 1])
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[0, 2:14, 3:20] = True
    masks[1, 16:30, 10:28] = True
    masks[2, 4:28, 4:12] = True
    masks[3, 8:16, 14:30] = True
    opt = torch.optim.Adam([*fusion.parameters(), *dec.parameters()], lr=3e-3)
    for _ in range(300):
        out = dec(feats, fusion(hidden), index)
        loss = mask_losses(out.logits, masks, index)["mask"] + iou_loss(out.iou_logits, out.logits, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if _iou(out.logits.detach(), masks).min() > 0.9:
            break
    with torch.no_grad():
        out = dec(feats, fusion(hidden), index)
        iou = _iou(out.logits, masks)
    assert iou.min() > 0.8, iou  # with the IoU loss in the objective
    assert torch.allclose(mask_iou(out.logits, masks), iou)


def test_iou_head_learns_each_masks_iou():
    """Fixed (untrained) masks of different quality: trained alone, the IoU-prediction MLP
    learns each mask's own IoU from the IoU tokens, which no constant could match."""
    dec, feats = _decoder(seed=2), _features()
    targets, index = torch.randn(8, 2, DIM), torch.arange(8) % 2
    masks = torch.zeros(8, 32, 32, dtype=torch.bool)
    for k in range(8):
        masks[k, 2 * k : 2 * k + 12, k : 3 * k + 8] = True
    seen = []
    dec.iou_prediction_head.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        out = dec(feats, targets, index)
    tokens, logits = seen[0], out.logits  # (8, 2 * DIM) the IoU tokens of both scales
    actual = mask_iou(logits, masks)
    assert actual.max() - actual.min() > 0.1, actual
    head = dec.iou_prediction_head
    assert torch.equal(head(tokens)[:, 0], out.iou_logits)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        iou_loss(head(tokens)[:, 0], logits, masks).backward()
        opt.step()
    with torch.no_grad():
        trained = dec(feats, targets, index)
    assert torch.equal(trained.logits, logits)  # the masks never moved
    assert (trained.iou - actual).abs().max() < 0.03, (trained.iou, actual)
