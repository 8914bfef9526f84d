"""Real-scale loading path and configs: open_clip weights from a file, LLaMA from a directory."""
from __future__ import annotations

import copy

import pytest
import torch

from pixellm import list_models
from pixellm.build import build_model
from pixellm.config import PixelLMConfig, add_model_config, get_model_config
from pixellm.errors import ConfigError
from pixellm.llm import build_causal_lm


def test_registry_and_overrides():
    assert {"pixellm-tiny", "pixellm-7b", "pixellm-13b"} <= set(list_models())
    c7 = get_model_config("pixellm-7b")
    assert (c7.vision.model_name, c7.vision.image_size, c7.vision.layers) == ("ViT-L-14-336", 448, [22, 12])
    assert (c7.codebook.num_scales, c7.codebook.tokens_per_scale, c7.decoder.dim) == (2, 3, 256)
    assert c7.llm.lora.r == 8 and c7.llm.lora.alpha == 16 and c7.llm.config["hidden_size"] == 4096
    assert get_model_config("pixellm-13b").llm.config["hidden_size"] == 5120
    assert get_model_config("pixellm-tiny", loss={"refine": False}).loss.refine is False
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        get_model_config("nope")
    bad = get_model_config("pixellm-tiny").to_dict()
    bad["name"], bad["vision"]["layers"] = "bad", [1]
    with pytest.raises(ConfigError, match="vision.layers has 1 entries"):
        add_model_config(bad)
    assert PixelLMConfig.from_dict(get_model_config("pixellm-7b").to_dict()) == c7


def test_real_weight_files_load_through_user_path(tmp_path, tokenizer):
    """Save small random open_clip + LLaMA weights, then build from them as a real user would."""
    import open_clip

    base = get_model_config("pixellm-tiny")
    oc = copy.deepcopy(base.vision.open_clip_config)
    open_clip.factory._MODEL_CONFIGS["test-real-vit"] = oc
    clip = open_clip.create_model("test-real-vit")
    torch.save({"state_dict": clip.state_dict()}, tmp_path / "clip.pt")
    llm = build_causal_lm(name_or_path=None, config={**base.llm.config, "vocab_size": 40, "num_hidden_layers": 2})
    llm.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")

    d = base.to_dict()
    d["name"] = "test-real"
    d["vision"].update(model_name="test-real-vit", pretrained=str(tmp_path / "clip.pt"), image_size=96,
                       open_clip_config=None)
    d["llm"].update(name_or_path=str(tmp_path / "llama"), config=None,
                    lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    model = build_model(PixelLMConfig.from_dict(d))
    # CLIP weights came from the file; the positional embedding was interpolated 8x8 -> 12x12 (+cls)
    visual = model.vision.visual
    assert torch.equal(visual.conv1.weight, clip.visual.conv1.weight)
    assert visual.positional_embedding.shape == (1 + 12 * 12, 128)
    assert torch.equal(visual.positional_embedding[0], clip.visual.positional_embedding[0])
    # LLaMA weights came from the directory (q_proj now sits under a LoRA wrapper)
    q = model.base_llm.model.layers[0].self_attn.q_proj
    assert torch.equal(q.base_layer.weight, llm.model.layers[0].self_attn.q_proj.weight)
    assert model.tokenizer is not None and len(model.tokenizer) == model.base_llm.config.vocab_size
    feats = model.vision(torch.randn(1, 3, 96, 96))
    assert feats[0].shape == (1, 128, 12, 12)


def test_user_config_registered_first_keeps_builtins(micro_config, monkeypatch):
    import pixellm.config as config
    monkeypatch.setattr(config, "_REGISTRY", {})
    monkeypatch.setattr(config, "_BUILTIN_LOADED", False)
    add_model_config(micro_config)
    assert {"pixellm-micro-test", "pixellm-tiny", "pixellm-7b"} <= set(list_models())
