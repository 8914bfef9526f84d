"""DynReferPredictor: describe any region of an image (numpy in, descriptions out).

``describe(image, regions)`` takes XYXY boxes or masks and returns one
:class:`~pixellm.describe.RegionDescription` per region: a caption read at the views the
greedy pHash rule picks, and tags, attributes and a category read at the attribute views.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pixellm.checkpoint import from_pretrained
from pixellm.describe import RegionDescription, region_boxes
from pixellm.errors import InputError
from pixellm.image_io import ImageLike, load_image

from .data import normalise_image
from .views import select_views

MAX_SIDE = 1024  # larger images are downscaled (views are crops of at most this many pixels a side)
TASKS = ("caption", "attributes")


class DynReferPredictor:
    """Runs a trained :class:`~pixellm.dynrefer.DynRefer`.

    Args:
        model: a built DynRefer with ``.config`` and ``.tokenizer``.
        caption_views / attribute_views: view selection for captions and for tags,
            attributes and recognition: ``"phash"``, ``"random"`` or ``"fixed"``; None: the
            config's task-aware defaults.
        fixed: the context views of ``"fixed"`` (None: the config's).
        seed: the generator of ``"random"``.
        max_new_tokens: caption budget (None: the config's).
        control: give the predicted tags to the captioner as control words (None: the
            config's ``tag_control``; only a model trained with control words uses them).
        control_threshold: a tag is a control word when its probability reaches this (None: the
            config's).
    """

    def __init__(self, model, *, caption_views: str | None = None, attribute_views: str | None = None,
                 fixed: Sequence[float] | None = None, seed: int = 0, max_new_tokens: int | None = None,
                 control: bool | None = None, control_threshold: float | None = None) -> None:
        if model.tokenizer is None:
            raise InputError("a DynRefer predictor needs the model's tokenizer (load a checkpoint)")
        self.model, self.cfg = model.eval(), model.config
        v = self.cfg.views
        self.modes = {"caption": caption_views or v.caption_mode, "attributes": attribute_views or v.attribute_mode}
        for mode in self.modes.values():
            if mode not in ("phash", "random", "fixed"):
                raise ValueError(f"view mode must be 'phash', 'random' or 'fixed', got {mode!r}")
        self.fixed = list(fixed) if fixed is not None else list(v.fixed)
        self.rng = np.random.default_rng(seed)
        self.max_new_tokens = max_new_tokens
        self.control = self.cfg.tag_control if control is None else bool(control and self.cfg.tag_control)
        self.control_threshold = self.cfg.control_threshold if control_threshold is None else control_threshold
        self._prompts: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, directory, *, device=None, dtype=None, **kw) -> DynReferPredictor:
        """Load a checkpoint directory written by ``pixellm-train --model dynrefer-…``."""
        return cls(from_pretrained(directory, device=device, dtype=dtype), **kw)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _views(self, mode: str, image: np.ndarray, boxes) -> list[list[float]]:
        v = self.cfg.views
        return [select_views(mode, num=v.num_views, candidates=v.candidates, fixed=self.fixed, image=image,
                             box=b, rng=self.rng, side=v.phash_size) for b in boxes]

    def _prompt_vectors(self, prompts: list[str]) -> torch.Tensor:
        key = "\n".join(prompts)
        if key not in self._prompts:
            self._prompts[key] = self.model.text_vectors(prompts)
        return self._prompts[key]

    def _scored(self, region: torch.Tensor, values: Sequence[str], template: str) -> list[list[tuple[str, float]]]:
        """(K, E) region vectors -> per region, each value's match probability, best first."""
        probs = self.model.contrastive_logits(region, self._prompt_vectors([template.format(x) for x in values])).sigmoid()
        return [sorted(zip(values, map(float, row), strict=True), key=lambda x: -x[1]) for row in probs.tolist()]

    @torch.no_grad()
    def describe(self, image: ImageLike, regions, *, tasks: Sequence[str] = TASKS) -> list[RegionDescription]:
        """Describe regions of one image.

        Args:
            image: path, PIL image or numpy array.
            regions: XYXY boxes (K x 4) or (H, W) masks (see :func:`pixellm.describe.region_boxes`).
            tasks: ``"caption"`` and/or ``"attributes"`` (tags, attributes and category); a
                task left out gives an empty caption / empty lists.
        Returns:
            K :class:`RegionDescription`, in the regions' order.
        Raises:
            InputError: unreadable image; empty, inverted or out-of-image box; empty mask or a
                mask of another size (each naming the region).
        """
        rgb = load_image(image)
        h, w = rgb.shape[:2]
        boxes = region_boxes(regions, h, w)
        if not boxes:
            return []
        scale = min(1.0, MAX_SIDE / max(h, w))
        if scale < 1.0:
            from PIL import Image

            rgb = np.asarray(Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                         Image.Resampling.BILINEAR))
        model, dev = self.model, self.device
        dtype = next(model.parameters()).dtype
        pixels = normalise_image(rgb, self.cfg.vision.mean, self.cfg.vision.std).to(dev, dtype)[None]
        k = len(boxes)
        box_t = torch.tensor(boxes, device=dev, dtype=torch.float32) * scale
        size = torch.tensor([[rgb.shape[1], rgb.shape[0]]], device=dev, dtype=torch.float32).expand(k, 2)
        images = pixels.expand(k, -1, -1, -1)
        scaled = [tuple(b) for b in box_t.tolist()]
        out = {"tags": [[] for _ in boxes], "attributes": [{} for _ in boxes], "category": [[] for _ in boxes],
               "caption": [""] * k, "views": [[] for _ in boxes], "attribute_views": [[] for _ in boxes]}
        tag_probs = None
        if "attributes" in tasks or (self.control and "caption" in tasks):
            ts = self._views(self.modes["attributes"], rgb, scaled)
            tokens = model.encode_regions(images, size, box_t, torch.tensor(ts, device=dev))
            tag_probs = model.tagger(tokens).float().sigmoid()
            region = model.region_vectors(tokens)
            out["attribute_views"] = ts
            out["tags"] = [sorted(zip(self.cfg.tags, map(float, row), strict=True), key=lambda x: -x[1])
                           for row in tag_probs.tolist()]
            if "attributes" in tasks:
                groups = {g: self._scored(region, vals, self.cfg.attribute_prompts.get(g, "the {}"))
                          for g, vals in self._attribute_values().items()}
                out["attributes"] = [{g: rows[i] for g, rows in groups.items()} for i in range(k)]
                if self._classes():
                    out["category"] = self._scored(region, self._classes(), self.cfg.class_prompt)
        if "caption" in tasks:
            ts = self._views(self.modes["caption"], rgb, scaled)
            tokens = model.encode_regions(images, size, box_t, torch.tensor(ts, device=dev))
            controls = ([[t for t, p in zip(self.cfg.tags, row, strict=True) if p >= self.control_threshold]
                         for row in tag_probs.tolist()] if self.control else [[] for _ in boxes])
            out["caption"] = model.generate_captions(tokens, controls, max_new_tokens=self.max_new_tokens)
            out["views"] = ts
        if "attributes" not in tasks:
            out["tags"] = [[] for _ in boxes]
        return [RegionDescription(caption=out["caption"][i], tags=out["tags"][i], attributes=out["attributes"][i],
                                  category=out["category"][i], views=list(out["views"][i]), box=boxes[i],
                                  attribute_views=list(out["attribute_views"][i]),
                                  tag_threshold=self.control_threshold) for i in range(k)]

    def _attribute_values(self) -> dict[str, tuple[str, ...]]:
        from pixellm.muse.regions import ATTRIBUTES

        return {g: tuple(v) for g, v in (self.cfg.attributes or ATTRIBUTES).items()}

    def _classes(self) -> tuple[str, ...]:
        from pixellm.muse.regions import CLASSES

        return tuple(self.cfg.classes) if self.cfg.classes is not None else CLASSES

    def predict(self, image: ImageLike, question: str, **kw):
        raise InputError("a DynRefer model describes regions: use describe(image, regions), "
                         "or attach it to a segmentation predictor (load_predictor(seg, describer=...))")
