"""accel/: the models are plain torch layers; ``accelerate`` swaps in the fast paths without touching a key or a
value of the state dict, is undone by ``AccelOptions.plain()``, and its options are checked when they are made."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from latent_diffusion.accel import AccelOptions, Precision, Tiling, accelerate
from latent_diffusion.accel.gemm_conv import GemmConv2d
from latent_diffusion.accel.linear import OneDNNGEGLU, OneDNNLinear
from latent_diffusion.accel.memory_format import ChannelsLastDecoder, ChannelsLastEncoder, ChannelsLastUNet
from latent_diffusion.accel.tiling import TiledAutoencoderKL
from latent_diffusion.errors import ConfigError
from latent_diffusion.models.autoencoder import AutoencoderKL
from latent_diffusion.models.ldm import LatentDiffusion
from latent_diffusion.tiny import tiny_config, tiny_model

MODELS = Path(__file__).resolve().parents[2] / "src" / "latent_diffusion" / "models"
TORCH_LAYERS = {"Conv1d", "Conv2d", "Conv3d", "Linear", "LazyLinear", "Bilinear"}
FAST = (GemmConv2d, OneDNNLinear, OneDNNGEGLU, ChannelsLastUNet, ChannelsLastEncoder, ChannelsLastDecoder,
        TiledAutoencoderKL)


def test_models_define_no_conv_or_linear_subclasses() -> None:
    """No class in models/ derives from a torch Conv / Linear (fast paths are accel's business)."""
    bad = []
    for path in sorted(MODELS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}
                bad += [f"{path.name}:{node.lineno} {node.name}({base})" for base in bases & TORCH_LAYERS]
    assert not bad, bad


@pytest.mark.parametrize("family", ["sd1", "sd2", "class", "uncond-vq"])
def test_a_built_model_has_plain_torch_layers(family: str) -> None:
    model = LatentDiffusion(tiny_config(family))
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert convs and all(type(m) in (nn.Conv2d, nn.Linear) for m in convs)
    assert not any(isinstance(m, FAST) for m in model.modules())


@pytest.mark.parametrize("family", ["sd1", "sd2", "class", "uncond-vq"])
def test_accelerate_keeps_state_dict_keys_and_values(family: str) -> None:
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    tiling = Tiling(16, 4) if isinstance(model.first_stage_model, AutoencoderKL) else None
    accelerate(model, AccelOptions(vae_tiling=tiling))
    assert sum(isinstance(m, FAST) for m in model.modules()) > 10
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())
    assert dict(model.named_parameters()) == params  # the same Parameter objects
    fresh = LatentDiffusion(model.cfg)
    fresh.load_state_dict(after, strict=True)  # an accelerated model's keys load strictly into a plain one
    accelerate(fresh).load_state_dict(before, strict=True)  # and the other way round


def test_accelerate_covers_the_layers_of_before_and_plain_undoes_it() -> None:
    """Every UNet conv, the transformer Linears (not the timestep-embedding ones), the UNet and the autoencoder's
    encoder and decoder; ``AccelOptions.plain()`` gives the plain classes back; a second call changes nothing."""
    model = tiny_model("sd1")
    unet = model.model.diffusion_model
    accelerate(accelerate(model))
    assert type(unet) is ChannelsLastUNet
    assert type(model.first_stage_model.encoder) is ChannelsLastEncoder
    assert type(model.first_stage_model.decoder) is ChannelsLastDecoder
    assert all(type(m) is GemmConv2d for m in unet.modules() if isinstance(m, nn.Conv2d))
    assert type(unet.time_embed[0]) is nn.Linear
    block = unet.input_blocks[1][1].transformer_blocks[0]
    assert type(block.attn1.to_q) is OneDNNLinear and type(block.ff.net[0]) is OneDNNGEGLU
    assert not any(isinstance(m, FAST) for m in model.first_stage_model.decoder.modules() if m is not
                   model.first_stage_model.decoder)  # the VAE's convs keep nn.Conv2d's own path
    accelerate(model, AccelOptions.plain())
    assert not any(isinstance(m, FAST) for m in model.modules())


def test_accelerated_unet_agrees_with_the_plain_one() -> None:
    """NHWC, GEMM-lowered convs and oneDNN Linears sum in other orders: fp32 rounding only (≤ 2e-5 at |out| ~ 1)."""
    model = tiny_model("sd1")
    unet = model.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x, t, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10.0, 700.0]), torch.randn(2, 7, 32, generator=g)
    with torch.no_grad():
        plain = unet(x, t, context=ctx)
        accelerate(model)
        fast = unet(x, t, context=ctx)
    assert plain.abs().max() > 0.1 and fast.is_contiguous()
    torch.testing.assert_close(fast, plain, rtol=0, atol=2e-5)


def test_options_are_checked_when_made() -> None:
    with pytest.raises(ConfigError, match="deepcache"):
        AccelOptions(deepcache=0)
    with pytest.raises(ConfigError, match="attention_slice"):
        AccelOptions(attention_slice=True)
    with pytest.raises(ConfigError, match="compile and deepcache"):
        AccelOptions(deepcache=2, compile=True)
    with pytest.raises(ConfigError, match="resolved Precision"):
        AccelOptions("bf16")
    with pytest.raises(ConfigError, match="Tiling"):
        AccelOptions(vae_tiling=32)
    with pytest.raises(ConfigError, match="bf16 autocast only"):
        Precision("fp32", stored_bf16=True)
    assert Precision.resolve("bf16", "cpu", torch.float32, store=True) == Precision("bf16", stored_bf16=True)
    assert Precision.resolve("bf16", "cpu", torch.float32) == Precision("bf16")
    assert Precision.resolve("bf16", "cpu", torch.bfloat16, store=True) == Precision("bf16")
