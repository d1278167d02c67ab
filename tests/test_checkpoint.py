"""load_checkpoint / save_checkpoint / config inference / original YAMLs / key errors, on tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from latent_diffusion.checkpoint import inspect_checkpoint, load_checkpoint, save_checkpoint
from latent_diffusion.config import to_dict
from latent_diffusion.errors import CheckpointError, ConfigError, KeyMismatchError
from latent_diffusion.infer import infer_config
from latent_diffusion.models.ldm import LatentDiffusion
from latent_diffusion.tiny import tiny_config, tiny_model
from latent_diffusion.yaml_compat import load_yaml_config

DATA = Path(__file__).parent / "fixtures"
FAMILIES = ["sd1", "sd2", "sd1-inpaint", "class", "uncond-vq"]
POS_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("family", FAMILIES)
def test_roundtrip_with_stored_config(family: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    path = save_checkpoint(model, tmp_path / f"{family}.safetensors")
    loaded = load_checkpoint(path)
    assert to_dict(loaded.cfg) == to_dict(model.cfg)
    assert_same_weights(model.state_dict(), loaded.state_dict())
    assert loaded.model.diffusion_model is not None and loaded.first_stage_model is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_config_inferred_from_weights_reproduces_every_shape(family: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    sd = model.state_dict()
    path = tmp_path / "plain.safetensors"
    save_file(sd, str(path))  # no metadata: the loader must infer
    loaded = load_checkpoint(path, parameterization=model.cfg.parameterization)
    assert_same_weights(sd, loaded.state_dict())
    inferred, original = to_dict(infer_config(sd)), to_dict(model.cfg)
    for field in ("conditioning_key", "first_stage", "timesteps", "linear_start", "linear_end", "scale_factor"):
        assert inferred[field] == original[field], field
    assert inferred["unet"]["channel_mult"] == original["unet"]["channel_mult"]
    assert sorted(inferred["unet"]["attention_resolutions"]) == sorted(original["unet"]["attention_resolutions"])


def test_family_and_sd_shapes_from_original_yamls() -> None:
    """The released SD 1.x / 2.x YAMLs build models with the released parameter counts."""
    expected = {"v1-inference": (859_520_964, 83_653_863, 123_060_480, "eps"),
                "v2-inference-v": (865_910_724, 83_653_863, 354_032_641, "v")}
    for name, (unet, vae, text, param) in expected.items():
        cfg = load_yaml_config(DATA / f"{name}.yaml")
        with torch.device("meta"):
            model = LatentDiffusion(cfg)
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        assert (count(model.model), count(model.first_stage_model), count(model.cond_stage_model)) == (unet, vae, text)
        assert cfg.parameterization == param and cfg.scale_factor == 0.18215
        assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in model.state_dict()


def test_lightning_ckpt_with_ema_position_ids_and_callbacks(tmp_path: Path) -> None:
    model = tiny_model("sd1")
    model.enable_ema()
    sd = model.state_dict()
    ema_keys = [k for k in sd if k.startswith("model_ema.") and k not in ("model_ema.decay", "model_ema.num_updates")]
    assert "model_ema.diffusion_modelinput_blocks00weight" in ema_keys
    for k in ema_keys:
        sd[k] = sd[k] + 1.0  # EMA weights differ from the raw ones
    sd[POS_IDS] = torch.arange(77)[None]
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 1234, "epoch": 3, "callbacks": {"ModelCheckpoint": {"k": 1}}}, path)

    raw = load_checkpoint(path, tiny_config("sd1"))
    assert POS_IDS in raw.state_dict() and set(raw.state_dict()) == set(sd)
    w = raw.model.diffusion_model.input_blocks[0][0].weight
    assert torch.equal(w, sd["model.diffusion_model.input_blocks.0.0.weight"])

    ema = load_checkpoint(path, tiny_config("sd1"), use_ema=True)
    assert torch.equal(ema.model.diffusion_model.input_blocks[0][0].weight,
                       sd["model.diffusion_model.input_blocks.0.0.weight"] + 1.0)


def test_use_ema_without_ema_weights_is_an_error(tmp_path: Path) -> None:
    path = save_checkpoint(tiny_model("class"), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="no model_ema"):
        load_checkpoint(path, use_ema=True)


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_half_precision_files_cast_to_requested_dtype(stored: torch.dtype, tmp_path: Path) -> None:
    model = tiny_model("sd1")
    cfg = model.cfg
    sd = {k: v.to(stored) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "half.safetensors"
    save_file(sd, str(path))
    loaded = load_checkpoint(path, cfg)
    w = loaded.model.diffusion_model.out[2].weight
    assert w.dtype == torch.float32 and torch.equal(w, sd["model.diffusion_model.out.2.weight"].float())
    assert loaded.betas.dtype == torch.float32
    bf = load_checkpoint(path, cfg, dtype=torch.bfloat16)
    assert bf.model.diffusion_model.out[2].weight.dtype == torch.bfloat16
    assert bf.alphas_cumprod.dtype == torch.float32  # schedule buffers stay float32


def test_checkpoint_without_schedule_buffers_and_with_scale_factor_buffer(tmp_path: Path) -> None:
    model = tiny_model("uncond-vq")
    sd = {k: v for k, v in model.state_dict().items() if k not in ("betas", "alphas_cumprod") and
          not k.startswith(("sqrt_", "log_", "posterior_", "alphas_"))}
    sd["scale_factor"] = torch.tensor(0.75)
    path = tmp_path / "m.safetensors"
    save_file(sd, str(path))
    loaded = load_checkpoint(path)  # inferred config
    assert set(loaded.state_dict()) == set(sd)
    assert float(loaded.scale_factor) == 0.75 and loaded.cfg.scale_factor == 0.75


def test_original_yaml_tiny_class_model(tmp_path: Path) -> None:
    model = tiny_model("class")
    cfg = model.cfg
    unet = to_dict(cfg.unet)
    yaml_text = f"""
model:
  base_learning_rate: 1.0e-06
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.0015
    linear_end: 0.0155
    timesteps: 1000
    first_stage_key: image
    cond_stage_key: class_label
    image_size: 32
    channels: 4
    cond_stage_trainable: true
    conditioning_key: crossattn
    monitor: val/loss
    use_ema: false
    scale_factor: 1.0
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params: {unet}
    first_stage_config:
      target: ldm.models.autoencoder.VQModelInterface
      params:
        embed_dim: 4
        n_embed: 64
        ddconfig: {{double_z: false, z_channels: 4, resolution: 32, in_channels: 3, out_ch: 3, ch: 32,
                   ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}}
        lossconfig: {{target: torch.nn.Identity}}
    cond_stage_config:
      target: ldm.modules.encoders.modules.ClassEmbedder
      params: {{embed_dim: 16, n_classes: 10, key: class_label}}
"""
    yaml_path = tmp_path / "cin.yaml"
    yaml_path.write_text(yaml_text.replace("None", "null"))
    ckpt = tmp_path / "cin.safetensors"
    save_file(model.state_dict(), str(ckpt))
    loaded = load_checkpoint(ckpt, yaml_path)
    assert to_dict(loaded.cfg) == to_dict(cfg)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 500])
    with torch.no_grad():
        c = loaded.get_learned_conditioning(torch.tensor([1, 2]))
        assert torch.equal(loaded.apply_model(x, t, c), model.apply_model(x, t, model.get_learned_conditioning(
            torch.tensor([1, 2]))))

    bad = yaml_path.read_text().replace("use_ema: false", "use_ema: false\n    not_a_key: 3")
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(ConfigError, match="not_a_key"):
        load_checkpoint(ckpt, tmp_path / "bad.yaml")
    evil = yaml_path.read_text().replace("ldm.modules.encoders.modules.ClassEmbedder", "os.system")
    (tmp_path / "evil.yaml").write_text(evil)
    with pytest.raises(ConfigError, match="unknown target 'os.system'"):
        load_checkpoint(ckpt, tmp_path / "evil.yaml")


def test_missing_unexpected_and_shape_mismatch_are_listed(tmp_path: Path) -> None:
    model = tiny_model("sd1")
    cfg = model.cfg
    sd = model.state_dict()
    sd.pop("model.diffusion_model.out.2.bias")
    sd["model.diffusion_model.extra.weight"] = torch.zeros(1)
    path = tmp_path / "keys.safetensors"
    save_file(sd, str(path))
    with pytest.raises(KeyMismatchError) as e:
        load_checkpoint(path, cfg)
    msg = str(e.value)
    assert "1 missing key(s)" in msg and "model.diffusion_model.out.2.bias" in msg
    assert "1 unexpected key(s)" in msg and "model.diffusion_model.extra.weight" in msg and str(path) in msg

    sd = model.state_dict()
    sd["model.diffusion_model.out.2.weight"] = torch.zeros(4, 32, 1, 1)
    save_file(sd, str(path))
    with pytest.raises(KeyMismatchError, match=r"shape mismatch at model.diffusion_model.out.2.weight: "
                                               r"model expects \(4, 32, 3, 3\), checkpoint has \(4, 32, 1, 1\)"):
        load_checkpoint(path, cfg)


def test_not_an_ldm_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no UNet found"):
        load_checkpoint(path)


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    model = tiny_model("class")
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="overwrite"):
        save_checkpoint(tiny_model("class", seed=1), path)
    assert path.read_bytes() == before
    save_checkpoint(tiny_model("class", seed=1), path, overwrite=True)
    assert path.read_bytes() != before


def test_inspect_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from latent_diffusion.cli import main

    path = tmp_path / "sd2.safetensors"
    assert main(["make-tiny", "sd2", "--out", str(path)]) == 0
    info = inspect_checkpoint(path)
    assert info["family"] == "Stable Diffusion 2.x (v-prediction)" and not info["ema"]
    assert info["parameters"]["unet"] == sum(p.numel() for p in tiny_model("sd2").model.parameters())
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Stable Diffusion 2.x" in out and "unet params:" in out
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
