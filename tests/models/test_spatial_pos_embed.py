"""``UNetConfig.spatial_pos_embed``: a fixed 2-D sin-cos position on the SpatialTransformer tokens.

Off by default (CompVis / SD files and numbers untouched); on, it adds no parameters (same state-dict keys), makes
attention position-aware (a constant map no longer gives a constant output) and survives save / load.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from latent_diffusion.checkpoint import load_checkpoint, save_checkpoint
from latent_diffusion.config import ConditionerConfig, DiffusionConfig, UNetConfig
from latent_diffusion.models.attention import SpatialTransformer, spatial_position_embedding
from latent_diffusion.models.ldm import LatentDiffusion
from latent_diffusion.models.unet import UNetModel

UNET = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(1, 2), num_heads=-1, num_head_channels=16, context_dim=8,
                  use_spatial_transformer=True, legacy=False, spatial_pos_embed=True)


def test_embedding_values_shape_and_distinct_positions():
    e = spatial_position_embedding(4, 6, 8)  # (H*W, dim): 2 frequencies per axis, π and 8π
    assert e.shape == (24, 8) and e.dtype == torch.float32
    r, c = 2, 5  # token r * W + c, pixel centre ((c + 0.5) / W, (r + 0.5) / H)
    x, y = (c + 0.5) / 6, (r + 0.5) / 4
    w = [math.pi, 8 * math.pi]
    want = [math.sin(w[0] * x), math.sin(w[1] * x), math.cos(w[0] * x), math.cos(w[1] * x),
            math.sin(w[0] * y), math.sin(w[1] * y), math.cos(w[0] * y), math.cos(w[1] * y)]
    torch.testing.assert_close(e[r * 6 + c], torch.tensor(want), rtol=0, atol=1e-6)
    d = torch.cdist(e, e) + torch.eye(24) * 10
    assert d.min() > 0.1  # every pixel has its own code
    with pytest.raises(ValueError, match="divisible by 4"):
        spatial_position_embedding(4, 4, 6)


@pytest.mark.parametrize("use_linear", [False, True])  # SD1 conv proj_in, SD2 Linear proj_in
def test_constant_map_gives_position_dependent_output_only_with_the_flag(use_linear):
    torch.manual_seed(0)
    x = torch.ones(1, 32, 8, 8) + 0.1 * torch.randn(1, 32, 1, 1)  # the same vector at every pixel
    ctx = torch.randn(1, 3, 8)
    outs = {}
    for flag in (False, True):
        torch.manual_seed(1)
        st = SpatialTransformer(32, 2, 16, context_dim=8, pos_embed=flag, use_linear=use_linear)
        torch.nn.init.normal_(st.proj_out.weight, std=0.2)  # proj_out starts at zero
        with torch.no_grad():
            outs[flag] = st(x, ctx)
    spread = {f: (o - o.mean(dim=(2, 3), keepdim=True)).abs().max().item() for f, o in outs.items()}
    assert spread[False] < 1e-5  # translation-invariant: every token sees the same thing
    assert spread[True] > 1e-2
    with pytest.raises(ValueError, match="divisible by 4"):
        SpatialTransformer(30, 2, 15, context_dim=8, pos_embed=True)
    with pytest.raises(ValueError, match="needs use_spatial_transformer=True"):
        dataclasses.replace(UNET, use_spatial_transformer=False)


def test_no_new_parameters_and_the_flag_survives_save_and_load(tmp_path):
    on, off = UNetModel(UNET), UNetModel(dataclasses.replace(UNET, spatial_pos_embed=False))
    assert on.state_dict().keys() == off.state_dict().keys()
    torch.manual_seed(0)
    cfg = DiffusionConfig(first_stage="none", conditioning_key="crossattn", unet=UNET,
                          conditioner=ConditionerConfig(kind="bert", width=8, layers=1, heads=2, max_length=8))
    model = LatentDiffusion(cfg)
    for m in model.modules():  # the zero-initialised output layers would hide the flag
        if isinstance(m, SpatialTransformer):
            torch.nn.init.normal_(m.proj_out.weight, std=0.1)
    torch.nn.init.normal_(model.model.diffusion_model.out[2].weight, std=0.1)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.cfg.unet.spatial_pos_embed is True
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 5, 8)
    with torch.no_grad():
        a = model.model.diffusion_model(x, t, context=c)
        b = loaded.model.diffusion_model(x, t, context=c)
        off.load_state_dict(model.model.diffusion_model.state_dict())
        plain = off(x, t, context=c)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - plain).abs().max() > 1e-3  # the flag changes the numbers, with the same weights
