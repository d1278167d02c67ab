"""DreamBooth prior preservation (``prior:``, configs/finetune/sd1-dreambooth.yaml) on a tiny SD 1.x file in the real key
layout, 32-px images: class images made once by the init model, loss = instance + weight · class on the module's
per-sample draws, weight 0 = no prior, bit-identical resume, config errors.

A class image made again (alone instead of in a batch) is within 2/255 per pixel of the first (the same seed and noise;
only the batched GEMMs' rounding differs). Tolerance of the hand-computed loss: 1e-6 relative (fp32; the same operations on the same draws, in another order of
batching; measured differences are 0 or a few ulp).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from latent_diffusion.checkpoint import save_checkpoint
from latent_diffusion.data.seeds import seed_of
from latent_diffusion.diffusion.parameterization import alpha_sigma_from_alphas_cumprod
from latent_diffusion.errors import ConfigError
from latent_diffusion.pipelines.metadata import parse_parameters, read_png_parameters
from latent_diffusion.tiny import tiny_model
from latent_diffusion.train.ldm import LatentDiffusionModule
from latent_diffusion.train.ldm_config import LDMTrainConfig, PriorConfig
from latent_diffusion.train.ldm_run import class_image_seed, make_class_images, train_ldm

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]

RECIPE = Path(__file__).resolve().parents[2] / "configs/finetune/sd1-dreambooth.yaml"
PROMPT = "a photo of a dog"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny SD 1.x file, 3 instance images captioned "a photo of sks dog", and a class folder made once."""
    root = tmp_path_factory.mktemp("dreambooth")
    data = root / "sks"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text("a photo of sks dog")
    out = {"init": save_checkpoint(tiny_model("sd1"), root / "tiny-sd1.safetensors"), "data": data,
           "class_dir": root / "class_images"}
    assert len(make_class_images(recipe(out, root / "unused"))) == 3
    return out


def recipe(files: dict, out: Path, prior: dict | None = None, **run) -> LDMTrainConfig:
    """The DreamBooth recipe at test size: 32 px, batch 1 (+ 1 class image), 2 steps, fp32 CPU, 3 class images made
    with 2 DDIM steps; ``prior`` replaces keys of its ``prior:`` section (None: the section as given)."""
    raw = yaml.safe_load(RECIPE.read_text())
    raw["init_from"] = str(files["init"])
    raw["data"] |= {"root": str(files["data"]), "size": 32}
    raw["optim"] |= {"lr": 1e-3}
    raw["run"] |= {"out_dir": str(out), "max_steps": 2, "epoch_steps": 2, "log_every": 1, "num_threads": 1,
                   "accelerator": "cpu", "precision": "32"} | run
    raw["prior"] |= {"class_dir": str(files["class_dir"]), "num_class_images": 3, "sample_steps": 2,
                     "sample_batch": 2} | (prior or {})
    return LDMTrainConfig.from_dict(raw)


def test_class_images_are_made_once_with_their_parameters(files, tmp_path) -> None:
    folder = files["class_dir"]
    made = sorted(folder.glob("class-*.png"))
    assert [p.name for p in made] == ["class-00000.png", "class-00001.png", "class-00002.png"]
    cfg = recipe(files, tmp_path / "run")
    for k, p in enumerate(made):
        prompt, _, s = parse_parameters(read_png_parameters(p))
        assert prompt == PROMPT and s["Steps"] == "2" and s["Size"] == "32x32"
        assert int(s["Seed"]) == class_image_seed(cfg, k)  # derived from the run seed
    assert make_class_images(cfg) == []  # the folder is full: nothing made, nothing replaced

    # a folder holding a user's image and a gap: the user's file counts, only the missing one is made, the same again
    own = tmp_path / "class"
    own.mkdir()
    Image.new("RGB", (32, 32)).save(own / "mine.png")
    (own / "class-00000.png").write_bytes(made[0].read_bytes())
    cfg = recipe(files, tmp_path / "run", {"class_dir": str(own)})
    assert [p.name for p in make_class_images(cfg)] == ["class-00001.png"]
    again, first = (np.asarray(Image.open(f), dtype=np.int16) for f in (own / "class-00001.png", made[1]))
    assert np.abs(again - first).max() <= 2  # its seed again; alone vs in a batch of 2: GEMM rounding only
    assert make_class_images(cfg) == [] and (own / "mine.png").is_file()


def _hand_loss(module: LatentDiffusionModule, batch: dict, tag: tuple[str, ...]) -> torch.Tensor:
    """ε-objective of one stream written out: its images' posterior means, caption contexts, its timestep / noise
    draws ``seed_of(seed, *tag, purpose, p)``."""
    m, seed = module.model, module.cfg.run.seed
    pos = batch["position"].tolist()
    z = m.first_stage_latents(batch["image"]).float() * m.scale_factor
    ctx = m.cond_stage_model.encode(list(batch["caption"]))
    gen = [torch.Generator().manual_seed(seed_of(seed, *tag, "timestep", p)) for p in pos]
    t = torch.stack([torch.randint(0, m.num_timesteps, (), generator=g) for g in gen])
    noise = torch.stack([torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(
        seed_of(seed, *tag, "noise", p))) for p in pos])
    alpha, sigma = alpha_sigma_from_alphas_cumprod(m.alphas_cumprod[t].view(-1, 1, 1, 1))
    out = m.apply_model(alpha * z + sigma * noise, t, {"c_crossattn": ctx})
    return (out - noise).pow(2).mean()


def test_step_loss_is_instance_plus_weighted_class_loss(files, tmp_path) -> None:
    cfg = recipe(files, tmp_path / "run", {"loss_weight": 0.5}, batch_size=2)
    module = LatentDiffusionModule(cfg)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert list(batch["caption"]) == ["a photo of sks dog"] * 2 and list(batch["prior"]["caption"]) == [PROMPT] * 2
    assert batch["prior"]["position"].tolist() == batch["position"].tolist()  # the same stream positions
    with torch.no_grad():
        loss = module.training_step(batch, 0)
        inst, cls = _hand_loss(module, batch, ()), _hand_loss(module, batch["prior"], ("prior",))
    assert float(cls) != pytest.approx(float(inst))  # the class samples are other samples with other draws
    assert float(loss) == pytest.approx(float(inst + 0.5 * cls), rel=1e-6)


def test_loss_weight_zero_gives_the_same_update_as_no_prior(files, tmp_path) -> None:
    with_zero = train_ldm(recipe(files, tmp_path / "zero", {"loss_weight": 0.0}), echo=False, progress=False)
    cfg = dataclasses.replace(recipe(files, tmp_path / "none"), prior=None)
    without = train_ldm(cfg, echo=False, progress=False)
    assert with_zero["steps"] == without["steps"] == 2
    assert with_zero["digest"] == without["digest"]
    with_one = train_ldm(recipe(files, tmp_path / "one"), echo=False, progress=False)
    assert with_one["digest"] != without["digest"]  # (the class samples do train when weighted)


def test_resume_with_prior_preservation_is_bit_identical(files, tmp_path) -> None:
    full = train_ldm(recipe(files, tmp_path / "full", max_steps=4), echo=False, progress=False)
    train_ldm(recipe(files, tmp_path / "part", max_steps=2), echo=False, progress=False)
    resumed = train_ldm(recipe(files, tmp_path / "part", max_steps=4), resume=str(tmp_path / "part/checkpoints/last.ckpt"),
                        echo=False, progress=False)
    assert resumed["steps"] == full["steps"] == 4
    assert resumed["digest"] == full["digest"]
    rows = [yaml.safe_load(x) for x in (tmp_path / "part/log.jsonl").read_text().splitlines()]
    assert all("prior_loss" in r for r in rows if "loss" in r)


@pytest.mark.parametrize("change, message", [
    ({"task": "unconditional"}, "needs a text-to-image model"),
    ({"prior": {"class_prompt": "a photo of a dog", "num_class_images": 0}}, "num_class_images must be an integer >= 1"),
    ({"prior": {"num_class_images": 10}}, "class_prompt must be a non-empty caption"),
    ({"prior": {"class_prompt": "a dog", "loss_weight": -1}}, "loss_weight must be a finite number >= 0"),
])
def test_a_bad_prior_config_is_a_one_line_error(files, change, message) -> None:
    raw = yaml.safe_load(RECIPE.read_text()) | {"init_from": str(files["init"])} | change
    with pytest.raises(ConfigError, match=message) as e:
        LDMTrainConfig.from_dict(raw)
    assert "\n" not in str(e.value)


def test_prior_section_defaults() -> None:
    p = PriorConfig(class_prompt=PROMPT)
    assert (p.class_dir, p.num_class_images, p.loss_weight) == (None, 100, 1.0)
