"""Our UNet against diffusers' UNet2DConditionModel loaded through diffusers' own CompVis converter.

Tolerance: max abs error ≤ 1e-4 in fp32 (tiny random models; outputs are O(1)).
"""

from __future__ import annotations

import pytest
import torch

from latent_diffusion.config import UNetConfig, to_dict
from latent_diffusion.models.unet import UNetModel
from latent_diffusion.yaml_compat import load_yaml_config

sfu = pytest.importorskip("diffusers.loaders.single_file_utils")
from diffusers import UNet2DConditionModel  # noqa: E402

TOL = 1e-4


def original_config(unet: UNetConfig) -> dict:
    """The v1-inference.yaml layout diffusers' converter reads."""
    params = to_dict(unet)
    if unet.num_classes is None:
        params.pop("num_classes")
    if unet.num_head_channels == -1:
        params.pop("num_head_channels")
    else:
        params.pop("num_heads")
    return {"model": {"params": {
        "unet_config": {"params": params},
        "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}},
    }}}


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (zero-initialised output convs would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def diffusers_twin(ours: UNetModel) -> UNet2DConditionModel:
    orig = original_config(ours.cfg)
    cfg = sfu.create_unet_diffusers_config_from_ldm(orig, {})
    sd = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    converted = sfu.convert_ldm_unet_checkpoint(sd, cfg)
    ref = UNet2DConditionModel(**cfg, norm_num_groups=32)
    ref.load_state_dict(converted, strict=True)
    return ref.eval()


CONFIGS = {
    "sd1": UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                      num_heads=2, context_dim=24, use_spatial_transformer=True, legacy=False),
    "sd2": UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(2, 4),
                      num_heads=-1, num_head_channels=16, context_dim=24, use_spatial_transformer=True,
                      use_linear_in_transformer=True, transformer_depth=1, legacy=False),
    "class": UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                        num_heads=4, context_dim=16, use_spatial_transformer=True, num_classes=10),
    "inpaint": UNetConfig(in_channels=9, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(1,), num_heads=2, context_dim=24, use_spatial_transformer=True,
                          transformer_depth=2, legacy=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_matches_diffusers(name: str) -> None:
    torch.manual_seed(0)
    cfg = CONFIGS[name]
    ours = UNetModel(cfg).eval()
    randomize(ours)
    ref = diffusers_twin(ours)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, 16, 16, generator=g)
    t = torch.tensor([10.0, 900.0])
    ctx = torch.randn(2, 5, cfg.context_dim, generator=g)
    y = torch.tensor([3, 7]) if cfg.num_classes else None
    with torch.no_grad():
        a = ours(x, t, context=ctx, y=y)
        b = ref(x, t, encoder_hidden_states=ctx, class_labels=y).sample
    assert a.shape == (2, cfg.out_channels, 16, 16)
    err = (a - b).abs().max().item()
    assert err <= TOL, f"{name}: max abs error {err:.2e} > {TOL}"


def test_unet_keys_follow_compvis_layout() -> None:
    ours = UNetModel(CONFIGS["sd1"])
    keys = set(ours.state_dict())
    for k in ["time_embed.0.weight", "input_blocks.0.0.weight", "input_blocks.1.0.in_layers.0.weight",
              "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "input_blocks.2.0.op.weight",
              "middle_block.1.proj_in.weight", "output_blocks.1.2.conv.weight", "out.2.weight",
              "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"]:
        assert k in keys, k


def test_label_required_iff_num_classes() -> None:
    ours = UNetModel(CONFIGS["class"])
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 16)
    with pytest.raises(ValueError, match="num_classes"):
        ours(x, torch.tensor([1]), context=ctx)


@pytest.mark.slow
def test_sd15_full_size_unet_matches_diffusers() -> None:
    """The released SD 1.5 UNet shape (859.5 M parameters), random weights, one forward at 32×32 latents."""
    from pathlib import Path

    cfg = load_yaml_config(Path(__file__).parents[1] / "fixtures" / "v1-inference.yaml").unet
    torch.manual_seed(0)
    ours = UNetModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ours.parameters():  # keep activations O(1) through 25 blocks: fan-in scaled weights
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5 if p.ndim > 1 else torch.randn(p.shape, generator=g) * 0.1)
    assert sum(p.numel() for p in ours.parameters()) == 859_520_964
    ref = diffusers_twin(ours)
    x = torch.randn(1, 4, 32, 32, generator=g)
    ctx = torch.randn(1, 77, 768, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        a = ours(x, t, context=ctx)
        b = ref(x, t, encoder_hidden_states=ctx).sample
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= TOL * max(1.0, scale), f"max abs error {err:.2e} (output scale {scale:.2f})"
