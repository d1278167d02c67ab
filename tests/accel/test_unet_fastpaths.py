"""The UNet's inference fast paths (in-place residual adds, split GEGLU; accel's channels_last, GEMM-lowered convs
and oneDNN Linears) change nothing under autograd.

Training runs with grad enabled, sampling without; both paths must give the same numbers (≤ 1e-6, fp32) and the
gradients must be those of the plain formulas (≤ 1e-5).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latent_diffusion.accel import accelerate
from latent_diffusion.config import UNetConfig
from latent_diffusion.models.attention import GEGLU
from latent_diffusion.models.unet import UNetModel

CONFIGS = {
    "sd1": UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                      num_heads=2, context_dim=24, use_spatial_transformer=True, legacy=False),
    "sd2": UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                      num_heads=-1, num_head_channels=16, context_dim=24, use_spatial_transformer=True,
                      use_linear_in_transformer=True, legacy=False),
}


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_geglu_matches_chunked_formula_and_its_gradient():
    torch.manual_seed(0)
    geglu = GEGLU(8, 16)
    x = torch.randn(2, 5, 8, requires_grad=True)
    out = geglu(x)
    value, gate = F.linear(x, geglu.proj.weight, geglu.proj.bias).chunk(2, dim=-1)
    ref = value * F.gelu(gate)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    g_out = torch.autograd.grad(out.square().sum(), [x, geglu.proj.weight])
    g_ref = torch.autograd.grad(ref.square().sum(), [x, geglu.proj.weight])
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(geglu(x), ref, rtol=0, atol=1e-6)


def test_unet_same_output_with_and_without_grad_and_backward_runs():
    """Training (grad on, train mode) runs NCHW through oneDNN; inference runs NHWC with the GEMM lowering: the two
    layouts sum in different orders, so they agree to fp32 rounding (measured 5e-6 on outputs of magnitude ~2)."""
    for name in ("sd1", "sd2"):
        unet = accelerate(UNetModel(CONFIGS[name]))
        randomize(unet)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 4, 16, 16, generator=g)
        t = torch.tensor([10.0, 900.0])
        ctx = torch.randn(2, 7, CONFIGS[name].context_dim, generator=g)
        out = unet(x, t, context=ctx)
        out.square().mean().backward()
        grads = [p.grad for p in unet.parameters()]
        assert all(gr is not None and torch.isfinite(gr).all() for gr in grads), name
        with torch.inference_mode():
            torch.testing.assert_close(unet(x, t, context=ctx), out.detach(), rtol=0, atol=2e-5)
        assert unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        unet(x, t, context=ctx)  # training again: back to NCHW weights
        assert unet.input_blocks[0][0].weight.is_contiguous()



def test_layout_switch_inside_inference_mode_leaves_trainable_weights():
    """The first forward (which switches conv weights to channels_last) may run under inference_mode, as sampling
    does; training afterwards must still work."""
    unet = accelerate(UNetModel(CONFIGS["sd1"]))
    randomize(unet)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([5.0]), torch.randn(1, 3, 24)
    with torch.inference_mode():
        unet(x, t, context=ctx)
    unet(x, t, context=ctx).square().mean().backward()
    assert all(p.grad is not None for p in unet.parameters())
    assert unet.input_blocks[0][0].weight.is_contiguous()  # training runs NCHW (faster backward on CPU)


def test_gemm_lowered_conv_casts_its_weight_once_inside_cache_weight_casts():
    """Under bf16 autocast a GEMM-lowered conv re-casts its weight view on every call, except inside
    ``cache_weight_casts`` (entered by the sampling loop): one cast per weight, redone when the weight changes in
    place, dropped at the end of the block; the outputs are those of the uncached path, bit for bit."""
    from latent_diffusion.accel import gemm_conv as conv_mod

    torch.manual_seed(0)
    conv = conv_mod.GemmConv2d(8, 6, 3, padding=1)
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    assert conv._lower_to_gemm(x)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        ref = conv(x)
        assert getattr(conv_mod._local, "casts", None) is None
        with conv_mod.cache_weight_casts():
            first, second = conv(x), conv(x)
            assert len(conv_mod._local.casts) == 1
            cast = next(iter(conv_mod._local.casts.values()))[-1]
            assert cast.dtype == torch.bfloat16 and cast.shape == (6, 72)
            conv(x)
            assert next(iter(conv_mod._local.casts.values()))[-1] is cast  # reused, not re-cast
            conv.weight.mul_(2.0)  # changed in place: cast again
            doubled = conv(x)
            assert next(iter(conv_mod._local.casts.values()))[-1] is not cast
        assert conv_mod._local.casts is None
        with pytest.raises(RuntimeError), conv_mod.cache_weight_casts():  # dropped on an error too
            conv(x)
            raise RuntimeError("a failing sampling step")
        assert conv_mod._local.casts is None
        conv.weight.mul_(0.5)
    torch.testing.assert_close(first, ref, rtol=0, atol=0)
    torch.testing.assert_close(second, ref, rtol=0, atol=0)
    bias = conv.bias.to(torch.bfloat16).float().view(1, -1, 1, 1)
    torch.testing.assert_close(doubled.float() - bias, 2 * (ref.float() - bias), rtol=0.02, atol=0.05)
    with conv_mod.cache_weight_casts(), torch.autocast("cpu", torch.bfloat16):  # training: nothing cached
        conv(x).float().sum().backward()
        assert conv_mod._local.casts == {}
