"""Tiny random models of each released family, with the real key layout (tests, smoke runs, ``ldm make-tiny``)."""

from __future__ import annotations

import torch

from .config import AutoencoderConfig, ConditionerConfig, DiffusionConfig, LowScaleConfig, UNetConfig, VQConfig
from .errors import ConfigError
from .models.ldm import LatentDiffusion

_AE = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=32)
_CLIP = dict(width=32, layers=2, heads=2)


def tiny_config(family: str) -> DiffusionConfig:
    sd_unet = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                   use_spatial_transformer=True, context_dim=32, legacy=False)
    if family == "sd1":
        return DiffusionConfig(unet=UNetConfig(**sd_unet, num_heads=2), autoencoder=AutoencoderConfig(**_AE),
                               conditioner=ConditionerConfig(kind="clip", **_CLIP))
    if family == "sd1-inpaint":
        return DiffusionConfig(unet=UNetConfig(**sd_unet, num_heads=2, in_channels=9), conditioning_key="hybrid",
                               autoencoder=AutoencoderConfig(**_AE), conditioner=ConditionerConfig(kind="clip", **_CLIP))
    if family == "sd2":
        unet = UNetConfig(**sd_unet, num_heads=-1, num_head_channels=16, use_linear_in_transformer=True)
        return DiffusionConfig(unet=unet, autoencoder=AutoencoderConfig(**_AE), parameterization="v",
                               conditioner=ConditionerConfig(kind="open_clip", output_dim=32, act="gelu",
                                                             layer="penultimate", pad_with_zero=True, **_CLIP))
    if family == "sd-x4-upscaler":  # x4-upscaling.yaml at toy size: KL-f4, 7 input channels, noise level as label
        unet = UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(2, 4),
                          num_heads=2, use_spatial_transformer=True, context_dim=32, legacy=False,
                          use_linear_in_transformer=True, in_channels=7, num_classes=1000,
                          disable_self_attn=(True, True, False))
        return DiffusionConfig(unet=unet, autoencoder=AutoencoderConfig(**_AE | {"ch_mult": (1, 2, 2)}),
                               parameterization="v", linear_start=1e-4, linear_end=2e-2, scale_factor=0.08333,
                               conditioning_key="hybrid-adm", low_scale=LowScaleConfig(max_noise_level=350),
                               conditioner=ConditionerConfig(kind="open_clip", output_dim=32, act="gelu",
                                                             layer="penultimate", pad_with_zero=True, **_CLIP))
    if family == "class":
        unet = UNetConfig(**sd_unet | {"context_dim": 16}, num_heads=-1, num_head_channels=32)
        return DiffusionConfig(unet=unet, linear_start=0.0015, linear_end=0.0155, scale_factor=1.0, first_stage="vq",
                               autoencoder=VQConfig(**_AE | {"embed_dim": 4}, n_embed=64),
                               conditioner=ConditionerConfig(kind="class", n_classes=10, embed_dim=16))
    if family == "uncond-vq":
        unet = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                          num_heads=-1, num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True)
        return DiffusionConfig(unet=unet, conditioning_key=None, scale_factor=1.0, first_stage="vq",
                               autoencoder=VQConfig(**_AE, n_embed=64))
    if family == "layout":  # ShapesWorld layout-to-image: (class, box) tokens -> cross-attention
        unet = UNetConfig(**sd_unet | {"context_dim": 16}, num_heads=-1, num_head_channels=32)
        return DiffusionConfig(unet=unet, scale_factor=1.0, autoencoder=AutoencoderConfig(**_AE),
                               conditioner=ConditionerConfig(kind="layout", width=16, layers=1, heads=2,
                                                             max_length=17, layout_classes=40, layout_bins=16))
    if family == "semantic":  # ShapesWorld semantic maps: 41 one-hot channels concatenated
        unet = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                          in_channels=4 + 41)
        return DiffusionConfig(unet=unet, conditioning_key="concat", scale_factor=1.0,
                               autoencoder=AutoencoderConfig(**_AE))
    raise ConfigError(f"unknown tiny family {family!r}; accepted: sd1, sd1-inpaint, sd2, sd-x4-upscaler, class, "
                      "uncond-vq, layout, semantic")


def tiny_model(family: str, seed: int = 0) -> LatentDiffusion:
    """A ``LatentDiffusion`` of ``family`` with small random weights (zero-initialised layers randomised too)."""
    torch.manual_seed(seed)
    model = LatentDiffusion(tiny_config(family))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()
