"""Draw per-target masks over an image (used by the CLI and the benchmark report)."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated RGB colours (golden-ratio hue steps)."""
    return [tuple(int(c * 255) for c in colorsys.hsv_to_rgb((0.61803 * i) % 1.0, 0.85, 1.0)) for i in range(n)]


def draw_overlay(rgb: np.ndarray, masks: list[np.ndarray], labels: list[str], *, alpha: float = 0.5,
                 min_side: int = 256) -> Image.Image:
    """Blend coloured masks onto ``rgb`` and label each at its top-left corner.

    Args:
        rgb: (H, W, 3) uint8. masks: (H, W) bool each. labels: one per mask.
        min_side: small images are upscaled (nearest) so labels stay readable.
    Returns:
        RGB PIL image.
    """
    out = rgb.astype(np.float32)
    colours = palette(len(masks))
    for m, c in zip(masks, colours):
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(c, np.float32)
    img = Image.fromarray(out.round().astype(np.uint8))
    scale = max(1, int(np.ceil(min_side / max(1, min(img.size)))))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for i, (m, c, text) in enumerate(zip(masks, colours, labels)):
        ys, xs = np.nonzero(m)
        x, y = (int(xs.min()) * scale, int(ys.min()) * scale) if len(xs) else (2, 2 + 12 * i)
        draw.rectangle([x, y, x + 6 * len(text) + 4, y + 11], fill=(0, 0, 0))
        draw.text((x + 2, y), text, fill=c)
    return img
