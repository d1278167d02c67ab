"""AutoencoderKL against diffusers (via its CompVis converter), any-f shapes, and VQModel behaviour.

Tolerances: encode mean / decode max abs error ≤ 1e-4 in fp32 against diffusers.
"""

from __future__ import annotations

import pytest
import torch

from latent_diffusion.accel import accelerate
from latent_diffusion.config import AutoencoderConfig, VQConfig, to_dict
from latent_diffusion.models.autoencoder import AutoencoderKL, DiagonalGaussian
from latent_diffusion.models.vq import VQModel

TOL = 1e-4


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_kl_matches_diffusers() -> None:
    sfu = pytest.importorskip("diffusers.loaders.single_file_utils")
    from diffusers import AutoencoderKL as RefKL

    cfg = AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=32)
    ours = AutoencoderKL(cfg).eval()
    randomize(ours)
    orig = {"model": {"params": {"first_stage_config": {"params": {"embed_dim": 4, "ddconfig": to_dict(cfg)}}}}}
    dcfg = sfu.create_vae_diffusers_config_from_ldm(orig, {}, image_size=32)
    ref = RefKL(**dcfg, norm_num_groups=32)
    sd = {"first_stage_model." + k: v for k, v in ours.state_dict().items()}
    ref.load_state_dict(sfu.convert_ldm_vae_checkpoint(sd, dcfg), strict=True)
    ref.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mean = ours.encode(x).mean
        ref_mean = ref.encode(x).latent_dist.mean
        z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        dec, ref_dec = ours.decode(z), ref.decode(z).sample
    assert mean.shape == (2, 4, 8, 8)
    assert (mean - ref_mean).abs().max().item() <= TOL
    assert dec.shape == (2, 3, 32, 32)
    assert (dec - ref_dec).abs().max().item() <= TOL


@pytest.mark.parametrize("m", [0, 1, 2, 3, 4, 5])
def test_any_downsampling_factor(m: int) -> None:
    size = 64  # f = 32 still leaves a 2×2 latent (GroupNorm needs more than one value per group)
    low = size // 2**m
    cfg = AutoencoderConfig(ch=32, ch_mult=(1,) * (m + 1), num_res_blocks=1, z_channels=3, embed_dim=3,
                            resolution=size, attn_resolutions=(low,))
    ae = AutoencoderKL(cfg)
    assert ae.downsample_factor == 2**m
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        z = ae.encode(x).mode()
        assert z.shape == (1, 3, low, low)
        assert ae.decode(z).shape == x.shape
    # attention sits at the lowest resolution: the last encoder level and the first decoder level
    keys = ae.state_dict().keys()
    assert f"encoder.down.{m}.attn.0.q.weight" in keys and f"decoder.up.{m}.attn.0.q.weight" in keys
    assert m == 0 or "encoder.down.0.attn.0.q.weight" not in keys


def test_diagonal_gaussian_sample_is_seeded_and_kl_zero_at_prior() -> None:
    moments = torch.zeros(2, 8, 4, 4)  # mean 0, logvar 0 → N(0, I)
    post = DiagonalGaussian(moments)
    assert torch.allclose(post.kl(), torch.zeros(2))
    a = post.sample(torch.Generator().manual_seed(3))
    b = post.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_vq_quantisation_absorbed_in_decoder() -> None:
    torch.manual_seed(0)
    cfg = VQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=3, embed_dim=3, n_embed=16, resolution=16)
    vq = VQModel(cfg).eval()
    with torch.no_grad():
        vq.quantize.embedding.weight.normal_()
    assert vq.state_dict()["quantize.embedding.weight"].shape == (16, 3)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        h = vq.encode(x)  # pre-quantisation latents
        idx = vq.quantize.indices(h)
        assert idx.shape == (2, 8, 8)
        # brute-force nearest code
        flat = h.permute(0, 2, 3, 1).reshape(-1, 3)
        brute = torch.cdist(flat, vq.quantize.embedding.weight).argmin(1).view(2, 8, 8)
        assert torch.equal(idx, brute)
        # the straight-through sum z + (z_q - z) rounds at ~1e-7, the decoder amplifies it a little
        assert torch.allclose(vq.decode(h), vq.decode_indices(idx), atol=1e-5)
        assert not torch.allclose(vq.decode(h), vq.decode(h, force_not_quantize=True))


def test_vq_straight_through_and_commitment() -> None:
    torch.manual_seed(0)
    q = VQConfig(n_embed=8, embed_dim=2)
    from latent_diffusion.models.vq import VectorQuantizer

    vq = VectorQuantizer(q.n_embed, q.embed_dim, beta=0.25)
    z = torch.randn(1, 2, 3, 3, requires_grad=True)
    z_q, loss, idx = vq(z)
    codes = vq.lookup(idx)
    expected = ((codes - z) ** 2).mean() * 1.25
    assert torch.allclose(loss, expected, atol=1e-6)
    z_q.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # straight-through: identity gradient
    assert vq.embedding.weight.grad is None


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_cpu_inference_layout_matches_training_layout(kind: str) -> None:
    """Inference on CPU runs the encoder and decoder in channels_last (accel.memory_format), training in NCHW;
    both give the same numbers to fp32 rounding (max abs ≤ 2e-5 at |output| ~ 1), the outputs are ordinary contiguous
    tensors, and the conv weights switch layout back and forth with the mode."""
    common = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=16,
                  attn_resolutions=(8,))  # AttnBlocks at 8×8: the NHWC token view is exercised too
    model = (AutoencoderKL(AutoencoderConfig(**common)) if kind == "kl"
             else VQModel(VQConfig(**common, n_embed=16, double_z=False)))
    accelerate(model)
    randomize(model)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    model.train()  # grad enabled: the NCHW path
    ref_h, ref_x = model.encoder(x), model.decoder(z)
    assert model.decoder.conv_in.weight.is_contiguous()
    model.eval()
    with torch.no_grad():
        h, out = model.encoder(x), model.decoder(z)
    assert model.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert h.is_contiguous() and out.is_contiguous()
    torch.testing.assert_close(h, ref_h.detach(), rtol=0, atol=2e-5)
    torch.testing.assert_close(out, ref_x.detach(), rtol=0, atol=2e-5)
    model.train()
    model.decoder(z).square().mean().backward()  # back to NCHW weights, gradients flow
    assert model.decoder.conv_in.weight.is_contiguous() and model.decoder.conv_in.weight.grad is not None
