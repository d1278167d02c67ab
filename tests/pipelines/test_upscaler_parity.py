"""Oracle parity of the SD x4 upscaler: our ``Pipeline.upscale`` against diffusers' ``StableDiffusionUpscalePipeline``
on one tiny random ``sd-x4-upscaler`` checkpoint file (x4-upscaling.yaml's structure at toy size: KL-f4, 7 UNet input
channels, noise level as class label, per-level disable_self_attentions, OpenCLIP text, v-prediction).

Both sides read the same ``.safetensors`` file: ours through ``load_checkpoint`` (strict keys, including the
``low_scale_model.*`` schedule buffers), diffusers through its own CompVis converters
(``diffusers.loaders.single_file_utils``: ``create_unet_diffusers_config_from_ldm`` / ``convert_ldm_unet_checkpoint``
and the VAE pair) fed the original-style YAML written here, which our YAML reader must also map back to the model's
config. The low-res noise scheduler is the one diffusers' single-file loader builds for this pipeline (DDPM,
scaled-linear 1e-4 → 0.02, 1000 steps); the sampling scheduler is built from the YAML's schedule with
``prediction_type="v_prediction"`` (diffusers' single-file loader would say "epsilon" for this model type).

Text: diffusers gets ``prompt_embeds`` / ``negative_prompt_embeds`` computed by our OpenCLIP encoder (the encoder's
own parity with diffusers' ``convert_open_clip_checkpoint`` is tests/models/test_text_encoders.py), so no tokenizer or text
tower is built on its side. Nothing downloads: sockets are blocked while diffusers is used.

Seeds: no noise is injected. For ONE image, diffusers draws the low-res noise ``(1, 3, h, w)`` and then the initial
latents from its generator; our image i draws the same two, in the same order, from ``Generator().manual_seed(s + i)``
(see pipelines/upscale.py), and ancestral samplers go on drawing from it. So image i of our n-image call equals
diffusers' single-image call with seed s + i. (diffusers' own n-image call shares one noised low-res image drawn from
the first generator, so only its first image would match ours; it is not compared.)

Tolerances (fp32): final latents within 1e-4 max abs; decoded uint8 images at most 1 level apart.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latent_diffusion.checkpoint import load_checkpoint  # noqa: E402
from latent_diffusion.config import DiffusionConfig, to_dict  # noqa: E402
from latent_diffusion.errors import LDMError  # noqa: E402
from latent_diffusion.pipelines import Pipeline  # noqa: E402
from latent_diffusion.safe_load import read_state_dict  # noqa: E402
from latent_diffusion.tiny import tiny_config, tiny_model  # noqa: E402
from latent_diffusion.yaml_compat import load_yaml_config
from parity_common import checkpoint_with_yaml, fp32_pipeline, no_network  # noqa: E402

from oracle import needs_oracle, oracle_names
(AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
 StableDiffusionUpscalePipeline, UNet2DConditionModel) = oracle_names(
    "diffusers", "AutoencoderKL", "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler", "StableDiffusionUpscalePipeline", "UNet2DConditionModel")
(sfu,) = oracle_names("diffusers.loaders", "single_file_utils")

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]

LATENT_TOL = 1e-4
PROMPT, NEGATIVE = "a red circle above a blue square", "blurry"
CASE = dict(steps=4, cfg=7.5, noise_level=20, seed=77)
LOW_RES = (12, 8)  # (W, H) → latents (4, 8, 12), images 48×32: catches an H/W swap
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "scaled_linear",
            "prediction_type": "v_prediction", "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}
SCHEDULERS = {  # our sampler -> diffusers scheduler (as tests/pipelines/test_pipeline_parity.py)
    "ddim": (DDIMScheduler, {"timestep_spacing": "leading"}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                               "timestep_spacing": "linspace", "final_sigmas_type": "zero"}),
    "euler_a": (EulerAncestralDiscreteScheduler, {"timestep_spacing": "linspace"}),  # per-step noise too
}
LOW_RES_SCHEDULER = {"beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "scaled_linear", "clip_sample": True,
                     "num_train_timesteps": 1000, "prediction_type": "epsilon", "variance_type": "fixed_small"}


def original_yaml(cfg: DiffusionConfig) -> dict:
    """x4-upscaling.yaml's layout describing ``cfg``."""
    unet = to_dict(cfg.unet)
    unet["disable_self_attentions"] = unet.pop("disable_self_attn")
    unet.pop("num_head_channels")
    ddconfig = to_dict(cfg.autoencoder)
    embed_dim = ddconfig.pop("embed_dim")
    low = cfg.low_scale
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion", "params": {
        "parameterization": "v", "low_scale_key": "lr", "linear_start": cfg.linear_start,
        "linear_end": cfg.linear_end, "timesteps": cfg.timesteps, "scale_factor": cfg.scale_factor,
        "conditioning_key": "hybrid-adm",
        "low_scale_config": {"target": "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation",
                             "params": {"noise_schedule_config": {"linear_start": low.linear_start,
                                                                  "linear_end": low.linear_end},
                                        "max_noise_level": low.max_noise_level}},
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL",
                               "params": {"embed_dim": embed_dim, "ddconfig": ddconfig}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                              "params": {"freeze": True, "layer": "penultimate"}}}}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model = tiny_model("sd-x4-upscaler")
    return checkpoint_with_yaml(model, tmp_path_factory.mktemp("x4"), "tiny-x4", original_yaml(model.cfg))


@pytest.fixture(scope="module")
def ours(checkpoint) -> Pipeline:
    return fp32_pipeline(checkpoint[0])


@pytest.fixture(scope="module")
def reference(checkpoint):
    path, config = checkpoint
    original = yaml.safe_load(config.read_text())

    with no_network():
        sd, _ = read_state_dict(path)
        unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, sd)
        unet = UNet2DConditionModel(**unet_cfg)
        unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(sd, unet_cfg), strict=True)
        vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, sd)
        vae = AutoencoderKL(**vae_cfg)
        vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(sd, vae_cfg), strict=True)
        pipe = StableDiffusionUpscalePipeline(
            vae=vae.eval(), text_encoder=None, tokenizer=None, unet=unet.eval(),
            low_res_scheduler=DDPMScheduler.from_config(LOW_RES_SCHEDULER), scheduler=DDIMScheduler(**SCHEDULE),
            max_noise_level=original["model"]["params"]["low_scale_config"]["params"]["max_noise_level"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def low_res_image() -> Image.Image:
    w, h = LOW_RES
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8))


def diffusers_run(ours: Pipeline, pipe, name: str, seed: int) -> tuple[torch.Tensor, Image.Image]:
    cls, extra = SCHEDULERS[name]
    pipe.scheduler = cls.from_config({**SCHEDULE, **extra})
    with torch.no_grad():
        emb = ours.model.get_learned_conditioning([PROMPT, NEGATIVE])
        z = pipe(image=low_res_image(), prompt_embeds=emb[:1], negative_prompt_embeds=emb[1:],
                 num_inference_steps=CASE["steps"], guidance_scale=CASE["cfg"], noise_level=CASE["noise_level"],
                 generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images
        x = pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return z, pipe.image_processor.postprocess(x, output_type="pil")[0]


def ours_run(ours: Pipeline, name: str, n: int = 1, **kw) -> torch.Tensor:
    return ours.upscale(low_res_image(), PROMPT, NEGATIVE, steps=CASE["steps"], sampler=name,
                        cfg_scale=CASE["cfg"], noise_level=CASE["noise_level"], seed=CASE["seed"], n=n,
                        output="latent", **kw)


def assert_close(z: torch.Tensor, ref: torch.Tensor, image: Image.Image, ref_image: Image.Image) -> None:
    err = (z - ref).abs().max().item()
    assert err <= LATENT_TOL, f"latents differ by {err:.3g} (max |ref| {ref.abs().max().item():.3g})"
    a, b = np.asarray(image).astype(int), np.asarray(ref_image).astype(int)
    assert a.shape == b.shape == (LOW_RES[1] * 4, LOW_RES[0] * 4, 3)
    assert np.abs(a - b).max() <= 1, f"images differ by up to {np.abs(a - b).max()} levels"


# -- loading ---------------------------------------------------------------------------------------
def test_original_yaml_and_inference_describe_the_checkpoint(checkpoint, ours: Pipeline) -> None:
    """Guards the oracle: the YAML diffusers reads is the tiny model (our reader agrees; the text tower's size is
    not in such files: FrozenOpenCLIPEmbedder means ViT-H); the file loads strictly, with the
    ``low_scale_model.*`` buffers, from its metadata, from the YAML plus the toy text tower, and from the weights."""
    expected = tiny_config("sd-x4-upscaler")
    from_yaml = load_yaml_config(checkpoint[1])
    assert from_yaml.conditioner.kind == "open_clip" and from_yaml.conditioner.width == 1024
    assert dataclasses.replace(from_yaml, conditioner=expected.conditioner) == expected
    assert ours.cfg == expected and ours.kind == "text_upscale"
    keys = set(ours.model.state_dict())
    assert {"low_scale_model.betas", "low_scale_model.sqrt_one_minus_alphas_cumprod"} <= keys
    assert load_checkpoint(checkpoint[0], dataclasses.replace(from_yaml, conditioner=expected.conditioner))
    sd, _ = read_state_dict(checkpoint[0])
    from latent_diffusion.infer import infer_config

    inferred = infer_config(sd)  # weights alone: x4 rules (8 heads: not the toy's 2)
    assert (inferred.conditioning_key, inferred.parameterization, inferred.scale_factor) == ("hybrid-adm", "v", 0.08333)
    assert inferred.low_scale == expected.low_scale and inferred.unet.disable_self_attn[1:] == (True, False)


@needs_oracle
def test_low_res_noise_matches_diffusers_add_noise(ours: Pipeline, reference) -> None:
    """ᾱ_t in float64 then float32 (the original's numpy schedule) vs diffusers' float32 cumprod: ≤ 1e-5 apart."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    levels = torch.tensor([0, 349])
    ref = reference.low_res_scheduler.add_noise(x, noise, levels)
    assert (ours.model.low_scale_model(x, levels, noise) - ref).abs().max().item() <= 1e-5


# -- parity ----------------------------------------------------------------------------------------
@needs_oracle
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_upscale_matches_diffusers(ours: Pipeline, reference, name: str) -> None:
    ref, ref_image = diffusers_run(ours, reference, name, CASE["seed"])
    z = ours_run(ours, name)
    assert z.shape == ref.shape == (1, 4, LOW_RES[1], LOW_RES[0])
    assert_close(z, ref, ours._decode(z, "pil")[0], ref_image)


@needs_oracle
def test_image_i_of_n_is_diffusers_single_run_with_seed_plus_i(ours: Pipeline, reference) -> None:
    z = ours_run(ours, "euler_a", n=2, batch_size=2)
    for i in range(2):
        ref, ref_image = diffusers_run(ours, reference, "euler_a", CASE["seed"] + i)
        assert_close(z[i:i + 1], ref, ours._decode(z[i:i + 1], "pil")[0], ref_image)


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [-1, 351, 2.5, True, "20"])
def test_noise_level_out_of_range_is_an_error(ours: Pipeline, level) -> None:
    with pytest.raises(LDMError, match=r"noise_level must be an integer in \[0, 350\]"):
        ours.upscale(low_res_image(), PROMPT, steps=1, noise_level=level)


def test_guidance_and_noise_level_need_the_text_upscaler(ours: Pipeline) -> None:
    """A concat LDM super-resolution model has no text to guide with and no noise augmentation."""
    cfg = tiny_config("semantic")
    cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, in_channels=cfg.unet.out_channels + 3))
    from latent_diffusion.models.ldm import LatentDiffusion

    torch.manual_seed(0)
    concat = Pipeline(LatentDiffusion(cfg).eval(), precision="fp32")
    assert concat.kind == "concat"
    with pytest.raises(LDMError, match="no unconditional input; use cfg_scale=1"):
        concat.upscale(low_res_image(), steps=1, cfg_scale=7.5)
    with pytest.raises(LDMError, match="takes no noise_level"):
        concat.upscale(low_res_image(), steps=1, noise_level=20)
    with pytest.raises(LDMError, match="strength < 1 is for concat upscalers"):
        ours.upscale(low_res_image(), PROMPT, steps=2, strength=0.5)
    with pytest.warns(UserWarning, match="takes no prompt"):
        concat.upscale(low_res_image(), "a cat", steps=1, output="latent")
    with pytest.raises(LDMError, match="prompts must be strings"):
        ours.upscale(low_res_image(), None, steps=1)
