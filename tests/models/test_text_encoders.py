"""Text encoders and conditioners: parity with transformers' CLIPTextModel and diffusers' OpenCLIP converter,
exact state-dict keys, frozen behaviour, build_conditioner. Tiny seeded models on CPU, fp32.

Tolerances: CLIP vs transformers <= 1e-5 max abs; OpenCLIP vs diffusers-converted transformers <= 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig
from transformers import CLIPTextModel as HFCLIPTextModel

from latent_diffusion.config import ConditionerConfig
from latent_diffusion.errors import ConfigError
from latent_diffusion.models.clip_text import CLIPTextModel
from latent_diffusion.models.conditioners import (
    ClassEmbedder,
    FrozenCLIPEmbedder,
    FrozenOpenCLIPEmbedder,
    build_conditioner,
)
from latent_diffusion.models.open_clip_text import OpenCLIPTextModel
from latent_diffusion.tokenizer import clip_tokenize

PROMPTS = ["a photo of an astronaut riding a horse on mars", "", "a red cube, studio lighting, 4k"]
TINY = dict(vocab_size=49408, max_length=77, width=32, heads=4, mlp_ratio=4.0)


def perturb_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Add seeded noise to every parameter so LayerNorm gains / biases are not trivially 1 / 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


def hf_config(layers: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, max_position_embeddings=77, hidden_act=act)


# --- parity -------------------------------------------------------------------------------------------------


def test_clip_text_matches_transformers():
    torch.manual_seed(0)
    ours = perturb_(CLIPTextModel(**TINY, layers=3, act="quick_gelu"), seed=1)
    hf = HFCLIPTextModel(hf_config(3, "quick_gelu")).eval()
    # transformers 5.x flattened CLIPTextModel: its keys are ours without the "text_model." prefix
    hf.load_state_dict({k.removeprefix("text_model."): v for k, v in ours.state_dict().items()}, strict=True)
    tokens = clip_tokenize(PROMPTS)  # (3, 77), SD1 padding
    with torch.no_grad():
        out = hf(input_ids=tokens, output_hidden_states=True)
        ref_last = out.last_hidden_state
        ref_penult = hf.final_layer_norm(out.hidden_states[-2])
        last, penult = ours(tokens, "last"), ours(tokens, "penultimate")
    assert last.shape == (3, 77, 32)
    assert (last - ref_last).abs().max().item() <= 1e-5
    assert (penult - ref_penult).abs().max().item() <= 1e-5
    assert (last - penult).abs().max().item() > 1e-2  # the two layers really differ


def test_open_clip_matches_diffusers_converter():
    """SD 2.x path: 24-block tower -> diffusers' converter (drops block 23) -> 23-layer transformers model.

    The converter's output model IS the SD 2 "penultimate" encoder: its last_hidden_state (after final LN)
    must equal our ``layer="penultimate"`` output.
    """
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    torch.manual_seed(0)
    ours = perturb_(OpenCLIPTextModel(**TINY, layers=24, output_dim=24, act="gelu"), seed=2)
    ckpt = {f"cond_stage_model.model.{k}": v for k, v in ours.state_dict().items()}
    hf = HFCLIPTextModel(hf_config(23, "gelu")).eval()
    converted = convert_open_clip_checkpoint(hf, ckpt, prefix="cond_stage_model.model.")
    hf.load_state_dict({k.removeprefix("text_model."): v for k, v in converted.items()}, strict=True)
    tokens = clip_tokenize(PROMPTS, pad_with_zero=True)  # SD2 / open_clip padding
    with torch.no_grad():
        ref = hf(input_ids=tokens).last_hidden_state
        penult = ours(tokens, "penultimate")
    assert penult.shape == (3, 77, 32)
    assert (penult - ref).abs().max().item() <= 1e-4


# --- state-dict keys ----------------------------------------------------------------------------------------


def clip_keys(layers: int) -> set[str]:
    keys = {"text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
            "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias"}
    for i in range(layers):
        pre = f"text_model.encoder.layers.{i}."
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                  "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {pre + m + ".weight", pre + m + ".bias"}
    return keys


def open_clip_keys(layers: int) -> set[str]:
    keys = {"token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
            "text_projection", "logit_scale"}
    for i in range(layers):
        pre = f"transformer.resblocks.{i}."
        keys |= {pre + "attn.in_proj_weight", pre + "attn.in_proj_bias"}
        for m in ("ln_1", "ln_2", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"):
            keys |= {pre + m + ".weight", pre + m + ".bias"}
    return keys


def test_clip_text_keys_and_position_ids_flag():
    model = CLIPTextModel(**TINY, layers=2)
    assert set(model.state_dict()) == clip_keys(2)  # position_ids absent by default
    model.set_position_ids_persistent(True)
    sd = model.state_dict()
    assert set(sd) == clip_keys(2) | {"text_model.embeddings.position_ids"}
    pid = sd["text_model.embeddings.position_ids"]
    assert pid.shape == (1, 77) and pid.dtype == torch.int64 and pid[0].tolist() == list(range(77))
    model.load_state_dict(sd, strict=True)  # an older SD1 file with the buffer loads strictly
    model.set_position_ids_persistent(False)
    assert set(model.state_dict()) == clip_keys(2)


def test_open_clip_keys_have_no_attn_mask():
    model = OpenCLIPTextModel(**TINY, layers=2, output_dim=24)
    sd = model.state_dict()
    assert set(sd) == open_clip_keys(2)
    assert sd["text_projection"].shape == (32, 24) and sd["logit_scale"].shape == ()


def test_full_size_key_shapes_match_sd1_and_sd2():
    """Default sizes (on the meta device: no memory) have SD 1.x ViT-L/14 and SD 2.x ViT-H/14 shapes."""
    with torch.device("meta"):
        sd1 = FrozenCLIPEmbedder().state_dict()
        sd2 = FrozenOpenCLIPEmbedder().state_dict()
    assert len(sd1) == 196 and all(k.startswith("transformer.text_model.") for k in sd1)
    assert sd1["transformer.text_model.embeddings.token_embedding.weight"].shape == (49408, 768)
    assert sd1["transformer.text_model.encoder.layers.11.mlp.fc1.weight"].shape == (3072, 768)
    assert len(sd2) == 294 and all(k.startswith("model.") for k in sd2)
    assert sd2["model.transformer.resblocks.23.attn.in_proj_weight"].shape == (3072, 1024)
    assert sd2["model.positional_embedding"].shape == (77, 1024)


# --- conditioners -------------------------------------------------------------------------------------------


def test_class_embedder():
    torch.manual_seed(0)
    emb = ClassEmbedder(n_classes=10, embed_dim=16)
    assert list(emb.state_dict()) == ["embedding.weight"]
    ids = torch.tensor([3, 0, 9])
    out = emb(ids)
    assert out.shape == (3, 1, 16)
    assert torch.equal(out[:, 0], emb.embedding.weight[ids])


def test_frozen_encoders_stay_frozen_and_encode():
    cfg = ConditionerConfig(kind="open_clip", width=32, layers=2, heads=4, output_dim=24, act="gelu",
                            layer="penultimate")
    enc = build_conditioner(cfg)
    assert isinstance(enc, FrozenOpenCLIPEmbedder)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.model.training
    with torch.no_grad():
        out = enc.encode(PROMPTS)
        ref = enc.model(clip_tokenize(PROMPTS, pad_with_zero=True), "penultimate")
    assert out.shape == (3, 77, 32)
    assert torch.equal(out, ref)

    clip = build_conditioner(ConditionerConfig(kind="clip", width=32, layers=2, heads=4))
    assert isinstance(clip, FrozenCLIPEmbedder) and not clip.training
    assert not any(p.requires_grad for p in clip.parameters())
    with torch.no_grad():
        assert torch.equal(clip.encode(PROMPTS), clip.transformer(clip_tokenize(PROMPTS), "last"))


def test_build_conditioner_kinds_and_errors():
    assert build_conditioner(ConditionerConfig(kind="none")) is None
    assert isinstance(build_conditioner(ConditionerConfig(kind="class", n_classes=5, embed_dim=8)), ClassEmbedder)
    with pytest.raises(ConfigError, match=r"'t5'.*'none', 'class', 'clip', 'open_clip'"):
        build_conditioner(ConditionerConfig(kind="t5"))
    with pytest.raises(ConfigError, match="layer"):
        build_conditioner(ConditionerConfig(kind="clip", width=32, layers=2, heads=4, layer="hidden"))
    with pytest.raises(ConfigError, match="divisible"):
        build_conditioner(ConditionerConfig(kind="clip", width=30, layers=2, heads=4))
