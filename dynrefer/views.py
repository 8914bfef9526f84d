"""Dynamic-resolution views of a region: the nested crops between the region and the whole
image, their crop-and-resize, and the perceptual-hash rule that picks them at inference.

A view t in [0, 1] of region box b_r in a W x H image is the crop
``b_t = b_r + t * ([0, 0, W, H] - b_r)``: t = 0 is the region itself, t = 1 the whole image.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.fft import dctn
from torchvision.ops import roi_align


def view_boxes(boxes: torch.Tensor, sizes: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The crops of every view.

    Args:
        boxes: (B, 4) XYXY region boxes in image pixels. sizes: (B, 2) image (W, H).
        ts: (B, n) view parameters in [0, 1].
    Returns:
        (B, n, 4) XYXY crop boxes in image pixels.
    """
    full = torch.zeros_like(boxes)
    full[:, 2:] = sizes.to(boxes.dtype)
    return boxes[:, None] + ts[..., None].to(boxes.dtype) * (full - boxes)[:, None]


def box_in_view(boxes: torch.Tensor, crops: torch.Tensor, side: int) -> torch.Tensor:
    """The region box re-expressed in each view's own (side x side) coordinates.

    Args:
        boxes: (B, 4) XYXY region boxes. crops: (B, n, 4) XYXY view crops (image pixels).
        side: the resized view's side.
    Returns:
        (B, n, 4) XYXY boxes in view pixels (t = 0 gives [0, 0, side, side]).
    """
    origin = crops[..., :2].repeat(1, 1, 2)
    scale = side / (crops[..., 2:] - crops[..., :2]).clamp_min(1e-6)
    return (boxes[:, None] - origin) * scale.repeat(1, 1, 2)


def crop_views(images: torch.Tensor, crops: torch.Tensor, side: int) -> torch.Tensor:
    """Crop-and-resize every view (bilinear, RoI-Align over the image itself).

    Args:
        images: (B, 3, H, W) padded images. crops: (B, n, 4) XYXY crops in image pixels.
        side: output side.
    Returns:
        (B * n, 3, side, side), views of image 0 first.
    """
    b, n = crops.shape[:2]
    idx = torch.arange(b, device=crops.device, dtype=crops.dtype).repeat_interleave(n)[:, None]
    rois = torch.cat([idx, crops.reshape(b * n, 4)], 1).to(images.dtype)
    return roi_align(images, rois, output_size=side, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def phash(gray: np.ndarray, *, side: int = 32, bits: int = 8) -> np.ndarray:
    """Perceptual hash of a grayscale image.

    Resize to ``side`` x ``side`` (area averaging), 2-D DCT-II (orthonormal), keep the
    ``bits`` x ``bits`` lowest frequencies, and set the bits above their mean.

    Args:
        gray: (H, W) float or uint8. side: the resize side. bits: low-frequency block side.
    Returns:
        (bits * bits,) bool.
    """
    from PIL import Image

    small = np.asarray(Image.fromarray(np.asarray(gray, dtype=np.float32), mode="F")
                       .resize((side, side), Image.Resampling.BOX), dtype=np.float64)
    low = dctn(small, type=2, norm="ortho")[:bits, :bits]
    return (low > low.mean()).reshape(-1)


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Number of differing bits of two hashes."""
    return int(np.count_nonzero(a != b))


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) float luma (ITU-R 601)."""
    return image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def phash_scores(image: np.ndarray, box: Sequence[float], candidates: Sequence[float], *,
                 side: int = 32) -> list[float]:
    """score(t) = Hamming(pHash(v_0), pHash(v_t)) / t for each candidate t (> 0).

    Args:
        image: (H, W, 3) uint8 RGB. box: XYXY region box. candidates: view parameters in (0, 1].
    """
    gray = to_gray(image)
    h, w = gray.shape
    b = np.asarray(box, dtype=np.float64)
    full = np.array([0, 0, w, h], dtype=np.float64)

    def crop(t: float) -> np.ndarray:
        x0, y0, x1, y1 = b + t * (full - b)
        x0, y0 = int(np.floor(max(x0, 0))), int(np.floor(max(y0, 0)))
        x1, y1 = max(int(np.ceil(min(x1, w))), x0 + 1), max(int(np.ceil(min(y1, h))), y0 + 1)
        return gray[y0:y1, x0:x1]

    base = phash(crop(0.0), side=side)
    return [hamming(base, phash(crop(t), side=side)) / t for t in candidates]


def select_views(mode: str, *, num: int, candidates: Sequence[float], fixed: Sequence[float],
                 image: np.ndarray | None = None, box: Sequence[float] | None = None,
                 rng: np.random.Generator | None = None, side: int = 32) -> list[float]:
    """The n view parameters of one region: 0 (always) and n - 1 context views.

    Args:
        mode: ``"phash"`` (the greedy rule: the n - 1 candidates of highest
            :func:`phash_scores`; needs ``image`` and ``box``), ``"random"`` (n - 1 distinct
            candidates drawn with ``rng``) or ``"fixed"`` (``fixed``).
        num: n.
    Returns:
        [0.0, t_1, ..., t_{n-1}].
    """
    k = num - 1
    if k <= 0:
        return [0.0]
    if mode == "fixed":
        ctx = list(fixed)[:k]
    elif mode == "random":
        rng = rng if rng is not None else np.random.default_rng()
        ctx = [float(candidates[i]) for i in sorted(rng.choice(len(candidates), size=k, replace=False))]
    elif mode == "phash":
        if image is None or box is None:
            raise ValueError("phash view selection needs the image and the box")
        scores = phash_scores(image, box, candidates, side=side)
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], candidates[i]))
        ctx = sorted(float(candidates[i]) for i in order[:k])
    else:
        raise ValueError(f"unknown view mode {mode!r}")
    return [0.0, *ctx]
