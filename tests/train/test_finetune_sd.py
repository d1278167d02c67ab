"""Fine-tuning Stable Diffusion files (``init_from`` with ``model: from_init``) on a caption folder: tiny SD 1.x (ε)
and SD 2.x (v) files in the real key layout, the recipes in configs/finetune/, 32-px images.

Oracle tolerance: diffusers' UNet (``from_single_file`` with the CompVis inference YAML of tests/fixtures, its shapes
set to the tiny model's) and ours on the same exported file give outputs within 1e-5 abs (fp32; measured 1.5e-6 (SD 1) and 1.2e-6 (SD 2) at max|out| ≈ 1.5).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers / huggingface_hub are imported, when this is first

from latent_diffusion.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from latent_diffusion.config import to_dict  # noqa: E402
from latent_diffusion.errors import ConfigError  # noqa: E402
from latent_diffusion.pipelines import Pipeline  # noqa: E402
from latent_diffusion.safe_load import read_state_dict  # noqa: E402
from latent_diffusion.tiny import tiny_model  # noqa: E402
from latent_diffusion.train.ldm import build_training_model  # noqa: E402
from latent_diffusion.train.ldm_config import LDMTrainConfig  # noqa: E402
from latent_diffusion.train.ldm_run import inference_model, train_ldm  # noqa: E402
from ldm_tiny_config import tiny  # noqa: E402
from oracle import needs_oracle, oracle_names  # noqa: E402
from parity_common import no_network  # noqa: E402

(StableDiffusionPipeline,) = oracle_names("diffusers", "StableDiffusionPipeline")

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {"sd1": ROOT / "configs/finetune/sd1.yaml", "sd2": ROOT / "configs/finetune/sd2-v.yaml"}
FIXTURES = {"sd1": ROOT / "tests/fixtures/v1-inference.yaml", "sd2": ROOT / "tests/fixtures/v2-inference-v.yaml"}
LONG = "a watercolour painting of " + " and ".join(f"a tiny red house number {i}" for i in range(20))
UNET_TOL = 1e-5


def caption_folder(root: Path) -> Path:
    """6 PNGs (40×36, cropped to 32) with a sidecar caption each; one caption is longer than 77 CLIP tokens."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(LONG if i == 0 else f"a photo of thing {i} on a table")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """The data folder and one tiny SD file per family (our writer's CompVis layout, config in its metadata)."""
    root = tmp_path_factory.mktemp("finetune")
    out = {"data": caption_folder(root / "captions")}
    for family in RECIPES:
        out[family] = save_checkpoint(tiny_model(family), root / f"tiny-{family}.safetensors")
    return out


def recipe(family: str, init, data: Path, out: Path, **run) -> LDMTrainConfig:
    """configs/finetune/<family>.yaml at test size: 32 px, 4 steps of batch 2, fp32 on the CPU (bf16 covered once)."""
    raw = yaml.safe_load(RECIPES[family].read_text())
    raw["init_from"] = str(init)
    raw["data"] |= {"root": str(data), "size": 32}
    raw["optim"] |= {"lr": 1e-3, "warmup_steps": 0}
    raw["run"] |= {"out_dir": str(out), "max_steps": 4, "batch_size": 2, "epoch_steps": 2, "log_every": 1,
                   "num_threads": 1, "accelerator": "cpu", "precision": "32"} | run
    return LDMTrainConfig.from_dict(raw)


class Keep:
    """A callback that keeps the trained LightningModule (the in-memory model)."""

    def __init__(self) -> None:
        import lightning as L

        outer = self

        class _CB(L.Callback):
            def on_train_end(self, trainer, module) -> None:
                outer.module = module

        self.callback = _CB()


def train(family: str, files: dict, out: Path, export: Path | None = None, **run) -> tuple[dict, object]:
    keep = Keep()
    cfg = recipe(family, files[family], files["data"], out, **run)
    summary = train_ldm(cfg, echo=False, progress=False, export=None if export is None else str(export),
                        callbacks=[keep.callback])
    return summary, keep.module


def parts(sd: dict) -> dict[str, dict]:
    prefixes = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text": "cond_stage_model."}
    return {name: {k: v for k, v in sd.items() if k.startswith(p)} for name, p in prefixes.items()}


@pytest.mark.parametrize("family", list(RECIPES))
def test_finetune_trains_the_unet_only_and_exports_the_sd_layout(files, tmp_path, family) -> None:
    with pytest.warns(UserWarning, match="1 of 6 captions are longer than the text encoder's 77 tokens") as rec:
        summary, module = train(family, files, tmp_path / "run", export=tmp_path / "export.safetensors",
                                precision="bf16-mixed" if family == "sd1" else "32")
    assert sum("captions are longer" in str(w.message) for w in rec) == 1  # once, not per batch
    assert summary["steps"] == 4
    model = module.model
    assert module.cfg.first_stage_path == str(files[family])  # the file's own VAE
    assert not any(p.requires_grad for p in model.first_stage_model.parameters())
    assert not any(p.requires_grad for p in model.cond_stage_model.parameters())
    assert not model.first_stage_model.training and not model.cond_stage_model.training
    trained = {id(p) for p in module.optimizers().optimizer.param_groups[0]["params"]}
    assert trained == {id(p) for p in model.model.parameters()}  # the UNet, nothing else
    assert float(model.scale_factor) == pytest.approx(0.18215)  # the file's (SD's), not 1/std of a batch

    before = parts(read_state_dict(files[family])[0])
    for name in ("run/model.safetensors", "export.safetensors"):
        after = parts(read_state_dict(tmp_path / name)[0])
        assert any(not torch.equal(after["unet"][k], v) for k, v in before["unet"].items()), name
        for part in ("vae", "text"):
            assert after[part].keys() == before[part].keys()
            assert all(torch.equal(after[part][k], v) for k, v in before[part].items()), (name, part)
    # the run's file keeps the raw UNet and its EMA under model_ema.* (CompVis LitEma names); the export the EMA UNet
    run_sd = read_state_dict(tmp_path / "run/model.safetensors")[0]
    assert "model_ema.diffusion_modelinput_blocks00weight" in run_sd and "model_ema.num_updates" in run_sd
    assert not any(k.startswith("model_ema.") for k in read_state_dict(tmp_path / "export.safetensors")[0])
    ema = load_checkpoint(tmp_path / "run/model.safetensors", use_ema=True)  # strict load
    exported = load_checkpoint(tmp_path / "export.safetensors")
    for k, v in exported.model.state_dict().items():
        assert torch.equal(v, ema.model.state_dict()[k]), k
    assert exported.cfg.parameterization == ("v" if family == "sd2" else "eps")

    ours = Pipeline(inference_model(model), precision="fp32")  # the in-memory trained model, EMA weights
    loaded = Pipeline.from_checkpoint(tmp_path / "export.safetensors", precision="fp32")
    kw = dict(steps=4, sampler="ddim", cfg_scale=3.0, seed=7, height=32, width=32, output="latent")
    a, b = ours.txt2img("a photo of thing 2", **kw), loaded.txt2img("a photo of thing 2", **kw)
    assert torch.equal(a, b)


def test_train_text_encoder_trains_it(files, tmp_path) -> None:
    cfg = recipe("sd1", files["sd1"], files["data"], tmp_path / "run", max_steps=2)
    import dataclasses

    cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, train_text_encoder=True))
    with pytest.warns(UserWarning, match="captions are longer"):
        train_ldm(cfg, echo=False, progress=False)
    before, after = (parts(read_state_dict(p)[0]) for p in (files["sd1"], tmp_path / "run/model.safetensors"))
    assert any(not torch.equal(after["text"][k], v) for k, v in before["text"].items())
    assert all(torch.equal(after["vae"][k], v) for k, v in before["vae"].items())


def test_a_model_that_is_not_the_files_is_a_clear_error(files, tmp_path) -> None:
    explicit = {**tiny(data={"source": "folder", "root": str(files["data"]), "size": 32}),
                "init_from": str(files["sd1"])}
    explicit["data"].pop("length")
    with pytest.raises(ConfigError, match=r"different model \(conditioner.kind: file 'clip', config 'bert'.*the file is "
                                          r"Stable Diffusion 1.x, the config's model CompVis LDM, bert, KL-f2\)"):
        build_training_model(LDMTrainConfig.from_dict(explicit))
    with pytest.raises(ConfigError, match=r"(?s)missing key.*the file is Stable Diffusion 2.x \(v-prediction\), "
                                          r"the config's model Stable Diffusion 2.x \(v-prediction\)"):
        raw = yaml.safe_load(RECIPES["sd2"].read_text()) | {"init_from": str(files["sd2"])}
        raw["model"] |= {"unet": {"num_res_blocks": 2}}
        raw["data"] |= {"root": str(files["data"])}
        build_training_model(LDMTrainConfig.from_dict(raw))
    with pytest.raises(ConfigError, match="model: from_init takes the model from the init_from file"):
        LDMTrainConfig.from_yaml(RECIPES["sd1"], data={"root": str(files["data"])})
    with pytest.raises(ConfigError, match="no model.diffusion_model.. weights"):
        from latent_diffusion.safe_load import save_safetensors_atomic

        save_safetensors_atomic({"encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "ae.safetensors")
        recipe("sd1", tmp_path / "ae.safetensors", files["data"], tmp_path / "x")


def test_a_file_without_our_metadata_gets_the_inferred_config(files, tmp_path) -> None:
    """A real SD file carries no ldm_config: the model is the config the loader infers from the weights."""
    from latent_diffusion.checkpoint import write_safetensors

    sd, _ = read_state_dict(files["sd1"], mmap=False)
    bare = write_safetensors(sd, tmp_path / "bare.safetensors", metadata={}, overwrite=False)
    cfg = recipe("sd1", bare, files["data"], tmp_path / "run")
    assert cfg.model.conditioner.kind == "clip" and "ldm_config" not in read_state_dict(bare)[1]
    model = build_training_model(cfg)
    for k, v in model.model.diffusion_model.state_dict().items():
        assert torch.equal(v, sd["model.diffusion_model." + k])


@pytest.mark.filterwarnings("ignore:1 of 6 captions are longer")
def test_resume_continues_bit_identically(files, tmp_path) -> None:
    full, _ = train("sd2", files, tmp_path / "full")
    train("sd2", files, tmp_path / "part", max_steps=2)
    cfg = recipe("sd2", files["sd2"], files["data"], tmp_path / "part")
    resumed = train_ldm(cfg, resume=str(tmp_path / "part/checkpoints/last.ckpt"), echo=False, progress=False)
    assert resumed["steps"] == full["steps"] == 4
    assert resumed["digest"] == full["digest"]


def original_yaml(family: str, cfg) -> Path:
    """The CompVis inference YAML of tests/fixtures with the UNet / VAE shapes set to the tiny model's."""
    doc = yaml.safe_load(FIXTURES[family].read_text())
    p = doc["model"]["params"]
    unet = to_dict(cfg.unet)
    unet.pop("num_classes")
    unet.pop("num_head_channels" if cfg.unet.num_head_channels == -1 else "num_heads")
    ddconfig = to_dict(cfg.autoencoder)
    p["first_stage_config"]["params"] = {"embed_dim": ddconfig.pop("embed_dim"), "ddconfig": ddconfig}
    p["unet_config"]["params"] = unet
    return doc


@needs_oracle
@pytest.mark.parametrize("family", list(RECIPES))
def test_diffusers_opens_the_finetuned_file(files, tmp_path, family) -> None:
    with pytest.warns(UserWarning, match="captions are longer"):
        train(family, files, tmp_path / "run", max_steps=2)
    path = tmp_path / "run/model.safetensors"  # with model_ema.*; diffusers takes the raw UNet unless asked
    ours = load_checkpoint(path)
    config = tmp_path / "original.yaml"
    config.write_text(yaml.safe_dump(original_yaml(family, ours.cfg)))
    with no_network():
        pipe = StableDiffusionPipeline.from_single_file(
            os.fspath(path), original_config=os.fspath(config), text_encoder=None, tokenizer=None,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False, local_files_only=True)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        ref = pipe.unet(x, t, encoder_hidden_states=ctx).sample
        got = ours.model.diffusion_model(x, t, context=ctx)
    assert (got - ref).abs().max() <= UNET_TOL
