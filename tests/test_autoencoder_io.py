"""Stand-alone autoencoder files: round trip (fp32 / fp16 storage), VQ, from a full LDM checkpoint, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latent_diffusion.autoencoder_io import autoencoder_scale_factor, load_autoencoder, save_autoencoder
from latent_diffusion.checkpoint import save_checkpoint
from latent_diffusion.config import AutoencoderConfig, DiffusionConfig, UNetConfig, VQConfig
from latent_diffusion.errors import CheckpointError, KeyMismatchError
from latent_diffusion.models.autoencoder import AutoencoderKL
from latent_diffusion.models.ldm import LatentDiffusion
from latent_diffusion.models.vq import VQModel
from latent_diffusion.safe_load import save_safetensors_atomic
from latent_diffusion.tiny import tiny_model

CFG = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=3, embed_dim=3, resolution=32)


def test_kl_round_trip_fp16_storage(tmp_path) -> None:
    torch.manual_seed(0)
    ae = AutoencoderKL(AutoencoderConfig(**CFG)).eval()
    save_autoencoder(ae, tmp_path / "ae.safetensors", dtype=torch.float16, scale_factor=0.9)
    back = load_autoencoder(tmp_path / "ae.safetensors")
    assert back.cfg == ae.cfg and autoencoder_scale_factor(tmp_path / "ae.safetensors") == pytest.approx(0.9)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert (back.encode(x).mean - ae.encode(x).mean).abs().max() < 5e-2  # fp16 weights, fp32 compute
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_autoencoder(ae, tmp_path / "ae.safetensors")


def test_vq_round_trip_exact(tmp_path) -> None:
    torch.manual_seed(0)
    vq = VQModel(VQConfig(**CFG, n_embed=16)).eval()
    save_autoencoder(vq, tmp_path / "vq.safetensors")
    back = load_autoencoder(tmp_path / "vq.safetensors")
    assert isinstance(back, VQModel)
    for k, v in vq.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])


def test_first_stage_of_a_full_ldm_checkpoint(tmp_path) -> None:
    model = tiny_model("sd1")
    save_checkpoint(model, tmp_path / "ldm.safetensors")
    ae = load_autoencoder(tmp_path / "ldm.safetensors")
    for k, v in model.first_stage_model.state_dict().items():
        assert torch.equal(v, ae.state_dict()[k])


def test_bad_files(tmp_path) -> None:
    save_safetensors_atomic({"foo": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="holds no autoencoder"):
        load_autoencoder(tmp_path / "x.safetensors")
    ae = AutoencoderKL(AutoencoderConfig(**CFG))
    sd = {k: v for k, v in ae.state_dict().items() if not k.startswith("decoder.conv_out")}
    save_safetensors_atomic(sd, tmp_path / "cut.safetensors")
    with pytest.raises(KeyMismatchError, match="decoder.conv_out"):
        load_autoencoder(tmp_path / "cut.safetensors")


ASSETS = Path(__file__).resolve().parents[1] / "src" / "latent_diffusion" / "assets"


@pytest.mark.parametrize("name", ["kl-f4-shapes", "kl-f8-shapes", "vq-f4-shapes"])
def test_committed_assets_load_and_serve_as_first_stage(name: str) -> None:
    path = ASSETS / f"{name}.safetensors"
    if not path.exists():
        pytest.skip(f"{path.name} not trained yet")
    ae = load_autoencoder(path)
    scale = autoencoder_scale_factor(path)
    assert scale is not None and 0.05 < scale < 20
    kind = "vq" if isinstance(ae, VQModel) else "kl"
    cfg = DiffusionConfig(first_stage=kind, autoencoder=ae.cfg, scale_factor=scale, conditioning_key=None,
                          unet=UNetConfig(in_channels=ae.cfg.embed_dim, out_channels=ae.cfg.embed_dim,
                                          model_channels=32, channel_mult=(1,), num_res_blocks=1,
                                          attention_resolutions=(), num_heads=1))
    ldm = LatentDiffusion(cfg)
    ldm.first_stage_model.load_state_dict(ae.state_dict(), strict=True)
    x = torch.zeros(1, 3, 64, 64)
    z = ldm.encode_first_stage(x)
    f = ae.downsample_factor
    assert z.shape == (1, ae.cfg.embed_dim, 64 // f, 64 // f)
    assert ldm.decode_first_stage(z).shape == (1, 3, 64, 64)
