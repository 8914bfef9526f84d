"""Draw per-target masks over an image (used by the CLI, the web demo and the benchmark report).

Each mask is blended in its colour and named by a label placed *outside* it: above or below
(else beside) the mask's box, clamped inside the canvas, at the free spot that covers the
fewest mask pixels and no other label, with a thin leader line from the label to the mask's
nearest pixel. The text is white with a black outline on a dark box edged in the mask's
colour, so it reads on any background; small images are upscaled first.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PAD = 2  # pixels between a label's text and its box edge
GAP = 3  # pixels between a label's box and the mask's box


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated RGB colours (golden-ratio hue steps)."""
    return [tuple(int(c * 255) for c in colorsys.hsv_to_rgb((0.61803 * i) % 1.0, 0.85, 1.0)) for i in range(n)]


@lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # FreeType (Pillow >= 10.1)
    except (TypeError, ValueError, OSError, ImportError):  # no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def font_size(width: int, height: int) -> int:
    """Label font size (pixels) for a canvas: about 1/24 of its short side, within [11, 32]."""
    return int(min(32, max(11, round(min(width, height) / 24))))


def blend(rgb: np.ndarray, masks: list[np.ndarray], *, alpha: float = 0.5) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with each (H, W) bool mask blended in its :func:`palette` colour
    (later masks over earlier ones); what :func:`draw_overlay` draws its labels on."""
    out = rgb.astype(np.float32)
    for m, c in zip(masks, palette(len(masks))):
        m = np.asarray(m, bool)
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(c, np.float32)
    return out.round().astype(np.uint8)


@dataclass(frozen=True)
class LabelBox:
    """Where :func:`place_labels` put one label, in canvas pixels (max exclusive).

    box: (x0, y0, x1, y1) of the label's box. anchor: (x, y) of the mask pixel its leader
    line points at, or None (an empty mask: no line). text: the text drawn (maybe shortened
    to fit the canvas)."""

    box: tuple[int, int, int, int]
    anchor: tuple[float, float] | None
    text: str


def _integral(a: np.ndarray) -> np.ndarray:
    """(H+1, W+1) summed-area table of a bool/int array."""
    out = np.zeros((a.shape[0] + 1, a.shape[1] + 1), np.int64)
    out[1:, 1:] = a.astype(np.int64).cumsum(0).cumsum(1)
    return out


def _area(table: np.ndarray, box, scale: int) -> int:
    """Mask pixels (at the original size) under a canvas box."""
    x0, y0, x1, y1 = box
    c0, r0 = x0 // scale, y0 // scale
    c1, r1 = -(-x1 // scale), -(-y1 // scale)
    return int(table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0])


def _overlap(a, b) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def _fit(text: str, font, width: int) -> str:
    """``text``, cut with an ellipsis so that it is at most ``width`` pixels wide."""
    if font.getlength(text) <= width:
        return text
    lo, hi = 0, len(text)  # the longest prefix that fits with the ellipsis: binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if font.getlength(text[:mid] + "…") <= width else (lo, mid - 1)
    return text[:lo].rstrip() + "…"


def place_labels(masks: list[np.ndarray], labels: list[str], canvas: tuple[int, int], *,
                 scale: int = 1, size: int | None = None) -> list[LabelBox]:
    """Lay out one label per mask outside the masks.

    Candidate spots sit above and below the mask's box (left-aligned, centred, right-aligned,
    and stacked one or two label heights further out), then left and right of it, each
    clamped inside the canvas. The chosen one minimises, in this order of weight: pixels of
    its own mask covered, then pixels of other masks and of labels already placed covered,
    then distance from the mask's box; when no near spot is free, the whole canvas is scanned
    for one. An empty mask's label goes to the top-left corner stack.

    Args:
        masks: (h, w) bool each, at the original size. labels: one per mask.
        canvas: (width, height) of the (upscaled) image the labels are drawn on.
        scale: canvas pixels per mask pixel (an integer upscale).
        size: font size; None: :func:`font_size` of the canvas.
    Returns:
        one :class:`LabelBox` per mask, in order.
    """
    W, H = canvas
    font = _font(size or font_size(W, H))
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (11, 0)
    bh = ascent + descent + 2 + 2 * PAD  # box height: text, outline, padding
    masks = [np.asarray(m, bool) for m in masks]
    union = np.logical_or.reduce(masks) if masks else None
    union_t = None if union is None else _integral(union)
    placed: list[LabelBox] = []
    for m, text in zip(masks, labels):
        text = _fit(text, font, max(1, W - 2 * PAD - 2))
        bw = min(W, int(np.ceil(font.getlength(text))) + 2 * PAD + 2)
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            mb, own = (0, 0, 0, 0), None
            cands = [(0, k * (bh + 1)) for k in range(len(masks) + 1)]
        else:
            mb = (int(xs.min()) * scale, int(ys.min()) * scale, (int(xs.max()) + 1) * scale,
                  (int(ys.max()) + 1) * scale)
            own = _integral(m)
            cands = _near_spots(mb, bw, bh)
        spot = _Spots(W, H, bw, bh, mb, own, union_t, scale, [p.box for p in placed])
        best = min((spot.cost(x, y, k) for k, (x, y) in enumerate(cands)), key=lambda r: r[0])
        if best[1] > 0:  # nothing near is free: scan the canvas for a free spot
            step_x, step_y = max(4, bw // 4), max(4, bh // 2)
            while (W // step_x + 1) * (H // step_y + 1) > 4000:
                step_x, step_y = step_x * 2, step_y * 2
            grid = [(x, y) for y in range(0, max(H - bh, 0) + step_y, step_y)
                    for x in range(0, max(W - bw, 0) + step_x, step_x)]
            best = min([best, *(spot.cost(x, y, len(cands) + k) for k, (x, y) in enumerate(grid))],
                       key=lambda r: r[0])
        box = best[2]
        anchor = None
        if len(xs):  # the mask pixel (its centre, canvas pixels) nearest the box's centre
            bx, by = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            xs_c, ys_c = (xs + 0.5) * scale, (ys + 0.5) * scale
            i = int(np.argmin((xs_c - bx) ** 2 + (ys_c - by) ** 2))
            anchor = (float(xs_c[i]), float(ys_c[i]))
        placed.append(LabelBox(box, anchor, text))
    return placed


def _near_spots(mb, bw: int, bh: int) -> list[tuple[int, int]]:
    """Top-left corners of a ``bw`` x ``bh`` label around the mask box ``mb``, best first:
    above and below (left-aligned, centred, right-aligned; then one and two rows further
    out), then left and right of it."""
    x0, y0, x1, y1 = mb
    cx, cy = (x0 + x1) // 2 - bw // 2, (y0 + y1) // 2 - bh // 2
    spots = []
    for k in range(3):
        off = k * (bh + 1)
        for x in (x0, cx, x1 - bw):
            spots += [(x, y0 - GAP - bh - off), (x, y1 + GAP + off)]
    for y in (cy, y0, y1 - bh):
        spots += [(x0 - GAP - bw, y), (x1 + GAP, y)]
    return spots


@dataclass
class _Spots:
    """Scores spots for one label (see :func:`place_labels`)."""

    W: int
    H: int
    bw: int
    bh: int
    mb: tuple[int, int, int, int]
    own: np.ndarray | None  # its mask's summed-area table (None: empty mask)
    union: np.ndarray | None  # all masks' summed-area table
    scale: int
    placed: list[tuple[int, int, int, int]]

    def cost(self, x: int, y: int, order: int) -> tuple[float, int, tuple[int, int, int, int]]:
        """(cost, canvas pixels of masks and labels covered, box) of the spot clamped inside
        the canvas."""
        x = int(min(max(x, 0), max(self.W - self.bw, 0)))
        y = int(min(max(y, 0), max(self.H - self.bh, 0)))
        box = (x, y, x + self.bw, y + self.bh)
        s2 = self.scale * self.scale
        own = 0 if self.own is None else _area(self.own, box, self.scale) * s2
        other = (0 if self.union is None else _area(self.union, box, self.scale) * s2) - own
        labels = sum(_overlap(box, p) for p in self.placed)
        dx = max(self.mb[0] - box[2], box[0] - self.mb[2], 0)
        dy = max(self.mb[1] - box[3], box[1] - self.mb[3], 0)
        return own * 10_000 + (other + labels) * 100 + dx + dy + order * 1e-3, own + other + labels, box


def _edge_point(box, target) -> tuple[float, float]:
    """Where the segment from ``box``'s centre to ``target`` leaves the box."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    dx, dy = target[0] - cx, target[1] - cy
    hw, hh = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    t = min(hw / abs(dx) if dx else np.inf, hh / abs(dy) if dy else np.inf, 1.0)
    return cx + t * dx, cy + t * dy


def draw_overlay(rgb: np.ndarray, masks: list[np.ndarray], labels: list[str], *, alpha: float = 0.5,
                 min_side: int = 256, legend: list[str] | None = None) -> Image.Image:
    """Blend coloured masks onto ``rgb`` and name each with a label outside it.

    Labels are laid out by :func:`place_labels` (outside the masks, inside the canvas, not on
    each other where a free spot exists), joined to their mask by a thin leader line in the
    mask's colour that stops at the mask's edge (lines are never drawn over a mask), and
    written white on a dark box edged in the mask's colour.

    Args:
        rgb: (H, W, 3) uint8. masks: (H, W) bool each. labels: one per mask.
        alpha: mask opacity.
        min_side: small images are upscaled (nearest) so labels stay readable.
        legend: one line per mask (e.g. its description), written under the image in the
            mask's colour; None: no legend.
    Returns:
        RGB PIL image (the upscaled image, plus the legend strip).
    """
    colours = palette(len(masks))
    img = Image.fromarray(blend(rgb, masks, alpha=alpha))
    scale = max(1, int(np.ceil(min_side / max(1, min(img.size)))))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if masks:
        size = font_size(*img.size)
        font = _font(size)
        boxes = place_labels(masks, labels, img.size, scale=scale, size=size)
        lines = Image.new("RGBA", img.size, (0, 0, 0, 0))
        ld = ImageDraw.Draw(lines)
        for b, c in zip(boxes, colours):
            if b.anchor is not None:
                start = _edge_point(b.box, b.anchor)
                ld.line([start, b.anchor], fill=(0, 0, 0, 255), width=3)
                ld.line([start, b.anchor], fill=(*c, 255), width=1)
        covered = np.zeros(masks[0].shape, bool)
        for m in masks:
            covered |= np.asarray(m, bool)
        if scale > 1:
            covered = covered.repeat(scale, 0).repeat(scale, 1)
        a = np.asarray(lines).copy()
        a[covered, 3] = 0  # leader lines stop at the masks' edges
        img = Image.alpha_composite(img.convert("RGBA"), Image.fromarray(a))
        box_layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        bd = ImageDraw.Draw(box_layer)
        for b, c in zip(boxes, colours):
            x0, y0, x1, y1 = b.box
            bd.rectangle([x0, y0, x1 - 1, y1 - 1], fill=(0, 0, 0, 170), outline=(*c, 255), width=1)
        img = Image.alpha_composite(img, box_layer).convert("RGB")
        draw = ImageDraw.Draw(img)
        for b in boxes:
            draw.text((b.box[0] + PAD + 1, b.box[1] + PAD), b.text, font=font, fill=(255, 255, 255),
                      stroke_width=1, stroke_fill=(0, 0, 0))
    return img if not legend else _with_legend(img, legend, colours)


def _with_legend(img: Image.Image, lines: list[str], colours) -> Image.Image:
    """``img`` over a black strip holding one line of text per mask, after a swatch of its colour."""
    font = _font(font_size(*img.size))
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (11, 0)
    row = ascent + descent + 4
    sw = row - 4  # swatch side
    width = max(img.width, max(int(font.getlength(t)) + sw + 14 for t in lines))
    out = Image.new("RGB", (width, img.height + row * len(lines) + 4), (0, 0, 0))
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (text, c) in enumerate(zip(lines, colours)):
        y = img.height + 2 + row * i
        draw.rectangle([4, y + 2, 4 + sw - 1, y + 2 + sw - 1], fill=c, outline=(255, 255, 255))
        draw.text((sw + 10, y + 1), text, font=font, fill=c, stroke_width=1, stroke_fill=(0, 0, 0))
    return out
