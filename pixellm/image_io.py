"""Image loading and longest-side resize + pad preprocessing.

Conventions: sizes are (H, W); images enter as HxWx3 uint8 RGB; model input is a 3xSxS float
tensor whose valid (unpadded) region is the top-left ``valid_size``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import InputError

ImageLike = str | Path | Image.Image | np.ndarray


def _array_to_rgb(arr: np.ndarray, where: str) -> np.ndarray:
    """Any HxW / HxWx{1,3,4} array of uint8/uint16/float/bool -> HxWx3 uint8."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(f"{where}: expected an HxW, HxWx3 or HxWx4 image array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{where}: image has zero size {arr.shape[:2]}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr / 257.0).round().astype(np.uint8)  # 16-bit -> 8-bit, 65535 -> 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{where}: float image contains NaN or inf")
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        arr = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[2] == 4:  # composite RGBA on white, as a viewer would show it
        rgb, a = arr[..., :3].astype(np.float32), arr[..., 3:].astype(np.float32) / 255.0
        arr = (rgb * a + 255.0 * (1 - a)).round().astype(np.uint8)
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(img).astype(np.uint16) if img.mode != "I" else np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return np.asarray(img.convert("RGBA"))
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    return np.asarray(img.convert("RGB"))


def load_image(image: ImageLike) -> np.ndarray:
    """Read a path, PIL image or numpy array into an HxWx3 uint8 RGB array.

    Accepts RGB, grayscale, RGBA (composited on white), palette and 16-bit input.

    Raises:
        InputError: unreadable, corrupt or zero-sized image; the message names the source.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                return _array_to_rgb(_pil_to_array(img), str(path))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise InputError(f"cannot read image {path}: {e}") from e
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise InputError(f"PIL image has zero size {image.size}")
        return _array_to_rgb(_pil_to_array(image), "PIL image")
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, "numpy image")
    raise InputError(f"unsupported image type {type(image).__name__}; use a path, PIL image or numpy array")


@dataclass(frozen=True)
class Preprocessed:
    """One image ready for the model.

    pixels: (3, S, S) float32, normalised; valid_size: (h, w) of the resized image inside the
    padded square (top-left); original_size: (H, W) of the input.
    """

    pixels: torch.Tensor
    valid_size: tuple[int, int]
    original_size: tuple[int, int]


def resized_size(h: int, w: int, *, size: int) -> tuple[int, int]:
    """(h', w') of an (h, w) image resized so that its longest side is ``size``; each >= 1."""
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_longest_and_pad(
    rgb: np.ndarray, *, size: int, mean: list[float], std: list[float]
) -> Preprocessed:
    """Resize so the longest side is ``size`` (bilinear, antialiased), normalise, pad bottom/right with 0.

    Args:
        rgb: (H, W, 3) uint8.
        size: side S of the square model input.
    Returns:
        :class:`Preprocessed` with pixels (3, S, S).
    """
    h, w = rgb.shape[:2]
    nh, nw = resized_size(h, w, size=size)
    x = torch.from_numpy(np.ascontiguousarray(rgb).copy() if not rgb.flags.writeable else rgb).permute(2, 0, 1).float().div_(255.0)[None]  # (1, 3, H, W)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    x = (x[0] - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    out = torch.zeros(3, size, size)  # zeros after normalisation = the mean colour
    out[:, :nh, :nw] = x
    return Preprocessed(pixels=out, valid_size=(nh, nw), original_size=(h, w))


def resize_mask_to_input(mask: np.ndarray, *, size: int) -> torch.Tensor:
    """Resize an (K, H, W) bool mask stack like :func:`resize_longest_and_pad`; returns (K, S, S) float."""
    k, h, w = mask.shape
    nh, nw = resized_size(h, w, size=size)
    out = torch.zeros(k, size, size)
    if k:
        m = torch.from_numpy(mask.astype(np.float32))[None]
        out[:, :nh, :nw] = (F.interpolate(m, size=(nh, nw), mode="bilinear", align_corners=False)[0] >= 0.5).float()
    return out


def preprocess_images(images, *, size: int, mean: list[float], std: list[float]) -> list[Preprocessed]:
    """:func:`resize_longest_and_pad` of :func:`load_image` for each image; a bad image of a
    batch of several raises :class:`InputError` naming its position ("batch item i: ...")."""
    out = []
    for i, img in enumerate(images):
        try:
            out.append(resize_longest_and_pad(load_image(img), size=size, mean=mean, std=std))
        except InputError as e:
            raise InputError(f"batch item {i}: {e}") if len(images) > 1 else e from None
    return out
