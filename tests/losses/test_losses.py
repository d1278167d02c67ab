"""Stage-1 losses on tiny tensors: hand-computed values (fp32 tolerance 1e-5 relative), adaptive λ, GAN warm-up,
LPIPS weight files and fallback, PatchGAN shapes, VQ straight-through gradient and codebook update."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from latent_diffusion.errors import CheckpointError
from latent_diffusion.losses import lpips as lpips_mod
from latent_diffusion.losses.autoencoder_loss import (AutoencoderLossConfig, LPIPSWithDiscriminator,
                                                       VQLPIPSWithDiscriminator, adaptive_weight)
from latent_diffusion.losses.discriminator import (ActNorm, NLayerDiscriminator, hinge_d_loss, vanilla_d_loss)
from latent_diffusion.losses.lpips import CHANNELS, LPIPS, normalize_channels
from latent_diffusion.models.autoencoder import DiagonalGaussian
from latent_diffusion.models.vq import VectorQuantizer

RTOL = 1e-5


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def lpips_fallback() -> LPIPS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LPIPS()


# -- GAN losses --------------------------------------------------------------------------------------
def test_hinge_and_vanilla_by_hand() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # hinge: relu(1 - real) = [0, .5, 2] → mean 5/6; relu(1 + fake) = [0, 1, 2] → mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1.0), rel=RTOL)
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    want = 0.5 * (sum(sp(-r) for r in [2.0, 0.5, -1.0]) / 3 + sum(sp(f) for f in [-2.0, 0.0, 1.0]) / 3)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(want, rel=RTOL)


def test_patchgan_shapes_and_keys() -> None:
    d = NLayerDiscriminator(3, ndf=8, n_layers=3)
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert "main.0.weight" in d.state_dict() and "main.2.bias" not in d.state_dict()  # BatchNorm: no conv bias
    assert "main.3.loc" in NLayerDiscriminator(3, ndf=8, norm="actnorm").state_dict()
    with pytest.raises(ValueError, match="norm"):
        NLayerDiscriminator(norm="group")


def test_actnorm_data_dependent_init() -> None:
    an = ActNorm(4).train()
    x = torch.randn(8, 4, 5, 5, generator=g(0)) * 3 + 2
    y = an(x)
    assert int(an.initialized) == 1
    per_channel = y.transpose(0, 1).reshape(4, -1)
    assert per_channel.mean(1).abs().max() < 1e-5 and (per_channel.std(1) - 1).abs().max() < 1e-4


# -- LPIPS -------------------------------------------------------------------------------------------
def test_normalize_channels() -> None:
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    assert torch.allclose(normalize_channels(x).flatten(), torch.tensor([0.6, 0.8]))


def test_lpips_fallback_warns_once_and_is_mean_cosine_distance(monkeypatch, lpips_fallback) -> None:
    monkeypatch.setattr(lpips_mod, "_warned", set())
    monkeypatch.delenv(lpips_mod.VGG_ENV, raising=False)
    monkeypatch.delenv(lpips_mod.LIN_ENV, raising=False)
    with pytest.warns(UserWarning, match="fallback"):
        LPIPS()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LPIPS()  # second build: silent
    m = lpips_fallback
    assert not m.pretrained
    x = torch.rand(2, 3, 32, 32, generator=g(1)) * 2 - 1
    y = torch.rand(2, 3, 32, 32, generator=g(2)) * 2 - 1
    d = m(x, y)
    assert d.shape == (2, 1, 1, 1)
    assert m(x, x).abs().max() < 1e-6
    # by hand: mean over the 5 taps of the spatially averaged (1 - cosine similarity)
    fx, fy = m.net((x - m.shift) / m.scale), m.net((y - m.shift) / m.scale)
    want = sum((1 - F.cosine_similarity(a, b, dim=1, eps=1e-20)).mean(dim=(1, 2)) for a, b in zip(fx, fy)) / 5
    assert torch.allclose(d.flatten(), want, rtol=1e-4, atol=1e-6)


def test_lpips_loads_weight_files_and_rejects_wrong_layouts(tmp_path, lpips_fallback) -> None:
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g(i)) for i, c in enumerate(CHANNELS)}
    torch.save(heads, tmp_path / "vgg.pth")
    vgg = {k: v.clone() for k, v in lpips_fallback.net.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # a full torchvision file carries the classifier: ignored
    torch.save(vgg, tmp_path / "vgg16.pth")
    m = LPIPS(vgg_path=tmp_path / "vgg16.pth", lin_path=tmp_path / "vgg.pth")
    assert m.pretrained
    assert torch.equal(m.lin2.model[1].weight, heads["lin2.model.1.weight"])
    x = torch.rand(1, 3, 32, 32, generator=g(3)) * 2 - 1
    y = torch.rand(1, 3, 32, 32, generator=g(4)) * 2 - 1
    fx, fy = m.net((x - m.shift) / m.scale), m.net((y - m.shift) / m.scale)
    want = sum(((normalize_channels(a) - normalize_channels(b)) ** 2 * heads[f"lin{i}.model.1.weight"]).sum(1).mean()
               for i, (a, b) in enumerate(zip(fx, fy)))
    assert m(x, y).item() == pytest.approx(want.item(), rel=1e-4)
    bad_heads = {f"lin{i}.weight": v for i, v in enumerate(heads.values())}
    torch.save(bad_heads, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="lin0.model.1.weight"):
        LPIPS(vgg_path=tmp_path / "vgg16.pth", lin_path=tmp_path / "bad.pth")
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "badvgg.pth")
    with pytest.raises(CheckpointError, match="torchvision-layout VGG16"):
        LPIPS(vgg_path=tmp_path / "badvgg.pth", lin_path=tmp_path / "vgg.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        LPIPS(vgg_path=tmp_path / "missing.pth", lin_path=tmp_path / "vgg.pth")


# -- combined losses ---------------------------------------------------------------------------------
def _cfg(**kw) -> AutoencoderLossConfig:
    return AutoencoderLossConfig(**({"perceptual_weight": 0.0, "disc_start": 10, "disc_ndf": 8} | kw))


def test_kl_loss_by_hand() -> None:
    loss = LPIPSWithDiscriminator(_cfg(kl_weight=1e-6, l2_weight=0.5, logvar_init=0.3))
    x = torch.rand(2, 3, 4, 4, generator=g(0)) * 2 - 1
    xr = torch.rand(2, 3, 4, 4, generator=g(1)) * 2 - 1
    moments = torch.randn(2, 4, 2, 2, generator=g(2))
    post = DiagonalGaussian(moments)
    total, log = loss.generator_loss(x, xr, post, step=0)
    lv = 0.3
    rec = (x - xr).abs() + 0.5 * (x - xr) ** 2
    nll = (rec / math.exp(lv) + lv).sum() / 2
    mean, logvar = moments[:, :2], moments[:, 2:]
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum() / 2
    assert log["nll"].item() == pytest.approx(nll.item(), rel=RTOL)
    assert log["kl"].item() == pytest.approx(kl.item(), rel=RTOL)
    assert total.item() == pytest.approx((nll + 1e-6 * kl).item(), rel=RTOL)
    assert log["g_loss"].item() == 0 and log["d_weight"].item() == 0


def test_vq_loss_by_hand() -> None:
    loss = VQLPIPSWithDiscriminator(_cfg(codebook_weight=2.0))
    x = torch.rand(2, 3, 4, 4, generator=g(0))
    xr = torch.rand(2, 3, 4, 4, generator=g(1))
    q = torch.tensor(0.25)
    total, log = loss.generator_loss(x, xr, q, step=0)
    assert total.item() == pytest.approx(((x - xr).abs().mean() + 2.0 * 0.25).item(), rel=RTOL)


def test_adaptive_weight_is_gradient_norm_ratio() -> None:
    w = torch.nn.Parameter(torch.randn(3, 2, generator=g(0)))
    a, b = torch.randn(2, generator=g(1)), torch.randn(2, generator=g(2))
    nll = (w @ a).pow(2).sum()
    gan = (w @ b).sin().sum()
    lam = adaptive_weight(nll, gan, w)
    g1 = torch.autograd.grad(nll, w, retain_graph=True)[0]
    g2 = torch.autograd.grad(gan, w, retain_graph=True)[0]
    assert lam.item() == pytest.approx((g1.norm() / (g2.norm() + 1e-4)).item(), rel=RTOL)
    assert not lam.requires_grad
    zero_gan = (w * 0).sum()  # ‖∇L_GAN‖ = 0 → λ = ‖∇nll‖ / 1e-4, clamped to 1e4
    assert adaptive_weight(nll * 1e6, zero_gan, w).item() == pytest.approx(1e4)


def test_discriminator_off_before_disc_start_on_after() -> None:
    torch.manual_seed(0)
    loss = LPIPSWithDiscriminator(_cfg(disc_start=5, disc_weight=0.5))
    calls = []
    loss.discriminator.register_forward_hook(lambda *a: calls.append(1))
    w = torch.nn.Parameter(torch.ones(1, 3, 1, 1))
    x = torch.rand(2, 3, 32, 32, generator=g(0)) * 2 - 1
    post = DiagonalGaussian(torch.zeros(2, 8, 4, 4))
    xr = torch.tanh(w * torch.rand(2, 3, 32, 32, generator=g(1)))
    total, log = loss.generator_loss(x, xr, post, step=4, last_layer=w)
    assert log["d_weight"].item() == 0 and loss.discriminator_loss(x, xr, 4)[0] is None and not calls
    total, log = loss.generator_loss(x, xr, post, step=5, last_layer=w)
    assert log["d_weight"].item() > 0 and log["disc_factor"].item() == 1.0
    want = log["nll"] + 1e-6 * log["kl"] + log["d_weight"] * log["g_loss"]
    assert total.item() == pytest.approx(want.item(), rel=1e-5)
    d, dlog = loss.discriminator_loss(x, xr, 5)
    assert d is not None and d.requires_grad and calls


def test_loss_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="disc_loss"):
        AutoencoderLossConfig(disc_loss="wgan")
    with pytest.raises(ValueError, match="kl_weight"):
        AutoencoderLossConfig(kl_weight=-1)


# -- VQ ----------------------------------------------------------------------------------------------
def test_vq_straight_through_gradient_and_codebook_update() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(n_embed=4, embed_dim=2, beta=0.25)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    z = torch.tensor([[0.9, 0.2], [-0.1, -0.7]]).t().reshape(1, 2, 1, 2).clone().requires_grad_(True)
    zq, q_loss, idx = vq(z)
    assert idx.flatten().tolist() == [0, 3]
    weights = torch.randn(zq.shape, generator=g(0))
    (zq * weights).sum().backward()
    assert torch.allclose(z.grad, weights)  # straight-through: d z_q / d z = identity
    z2 = z.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD(vq.parameters(), lr=0.5)
    before = vq.embedding.weight.detach().clone()
    _, q_loss, _ = vq(z2)
    q_loss.backward()
    # CompVis "legacy" form (models/vq.py): ‖sg[z_q] − z‖² + β‖z_q − sg[z]‖², β = 0.25, means over 2 vectors × 2 dims
    e0_grad = 0.25 * 2 * (before[0] - z2.detach()[0, :, 0, 0]) / 4
    assert torch.allclose(vq.embedding.weight.grad[0], e0_grad, atol=1e-6)
    assert torch.allclose(z2.grad[0, :, 0, 0], 2 * (z2.detach()[0, :, 0, 0] - before[0]) / 4, atol=1e-6)
    opt.step()
    after = vq.embedding.weight.detach()
    target = z2.detach()[0, :, 0, 0]
    assert (after[0] - target).norm() < (before[0] - target).norm()  # the used code moved toward z
    assert torch.equal(after[1], before[1])  # unused codes do not move
