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


def test_weights_load_with_safetensors_load_model(tmp_path, micro_lisa_cfg, make_tokenizer):
    """A tensor a model holds under two names (LISA's SAM positional embedding) is stored once
    and restored under both; a file that holds both (as saved before) loads too; a mismatch is a
    CheckpointError naming the keys and shapes."""
    import json

    from safetensors.torch import load_file, save_file

    from pixellm.checkpoint import from_pretrained
    from pixellm.errors import CheckpointError
    from pixellm.families import config_from_dict

    torch.manual_seed(0)
    model = build_model(config_from_dict(json.loads(micro_lisa_cfg.read_text())), tokenizer=make_tokenizer())
    shared = "sam.shared_image_embedding.positional_embedding"
    kept = "sam.prompt_encoder.shared_embedding.positional_embedding"
    model.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    sd = load_file(str(weights))
    assert kept in sd and shared not in sd and len(sd) == len(model.state_dict()) - 1
    loaded = from_pretrained(tmp_path / "ckpt")
    assert loaded.state_dict()[shared].data_ptr() == loaded.state_dict()[kept].data_ptr()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    save_file({**sd, shared: sd[kept].clone()}, str(weights))  # both names, as files written before
    assert torch.equal(from_pretrained(tmp_path / "ckpt").state_dict()[shared], sd[kept])
    wrong = {**sd, "sam.mask_decoder.iou_token.weight": torch.zeros(3)}
    save_file(wrong, str(weights))
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match the model: shape mismatch: "
                                              r"sam.mask_decoder.iou_token.weight$"):
        from_pretrained(tmp_path / "ckpt")
    save_file({k: v for k, v in sd.items() if k != "sam.mask_decoder.iou_token.weight"} | {"x.y": torch.ones(1)},
              str(weights))
    with pytest.raises(CheckpointError, match=r"missing keys: sam.mask_decoder.iou_token.weight; "
                                              r"unexpected keys: x.y$"):
        from_pretrained(tmp_path / "ckpt")
