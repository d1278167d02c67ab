"""Autoencoder evaluation: metrics on a tiny model, PSNR by hand, codebook stats, report tables."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from latent_diffusion.config import AutoencoderConfig, VQConfig
from latent_diffusion.eval.autoencoder_eval import evaluate_autoencoder, markdown_table
from latent_diffusion.eval.features import VGGPoolFeatures
from latent_diffusion.eval.image_metrics import codebook_stats, psnr
from latent_diffusion.losses.lpips import LPIPS
from latent_diffusion.models.autoencoder import AutoencoderKL
from latent_diffusion.models.vq import VQModel

CFG = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=3, embed_dim=3, resolution=32)


def test_psnr_by_hand() -> None:
    x = torch.zeros(1, 3, 4, 4)
    y = torch.full((1, 3, 4, 4), -0.8)  # [0, 1] scale: 0.5 vs 0.1 → MSE 0.16
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(1 / 0.16), rel=1e-5)


def test_codebook_stats_by_hand() -> None:
    s = codebook_stats(torch.tensor([0, 0, 1, 1]), n_embed=4)
    assert s["codebook_usage"] == 0.5 and s["perplexity"] == pytest.approx(2.0)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_evaluate_tiny_models(kind: str) -> None:
    torch.manual_seed(0)
    model = AutoencoderKL(AutoencoderConfig(**CFG)) if kind == "kl" else VQModel(VQConfig(**CFG, n_embed=8))
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = evaluate_autoencoder(model, images, batch_size=4, lpips=LPIPS(), fid_features=VGGPoolFeatures())
    assert r["n_images"] == 6 and r["latent_shape"] == [3, 16, 16] and math.isfinite(r["rfid"])
    assert 0 < r["psnr"] < 60 and -1 <= r["ssim"] <= 1 and r["lpips"] >= 0 and not r["lpips_pretrained"]
    if kind == "vq":
        assert 0 < r["codebook_usage"] <= 1 and r["perplexity"] >= 1
    table = markdown_table([{"name": kind} | r])
    assert table.splitlines()[0].startswith("| model | PSNR (dB) | SSIM")


def test_inception_layout_loads_and_rejects_wrong_files(tmp_path) -> None:
    from latent_diffusion.errors import CheckpointError
    from latent_diffusion.eval.inception import InceptionV3Features

    torch.manual_seed(0)
    net = InceptionV3Features()
    sd = net.state_dict() | {"fc.weight": torch.zeros(1008, 2048), "AuxLogits.conv0.conv.weight": torch.zeros(1)}
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in sd
    torch.save(sd, tmp_path / "inception.pth")
    back = InceptionV3Features.from_file(tmp_path / "inception.pth")
    x = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = net(x), back(x)
    assert a.shape == (1, 2048) and torch.allclose(a, b)
    del sd["Mixed_5b.branch1x1.conv.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="Inception-v3"):
        InceptionV3Features.from_file(tmp_path / "bad.pth")
