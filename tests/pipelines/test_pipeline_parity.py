"""Oracle parity of the whole txt2img pipeline: our ``Pipeline`` against diffusers' ``StableDiffusionPipeline`` on one
tiny random SD 1.x checkpoint file that each side loads itself.

diffusers reads the file through ``StableDiffusionPipeline.from_single_file`` with an original-style (CompVis) YAML
written here from the tiny model's config, a transformers ``CLIPTextModel`` holding our text-encoder weights, and our
offline tokenizer. Nothing downloads: ``local_files_only=True``, ``HF_HUB_OFFLINE=1`` and, while diffusers loads,
every socket connect raises. With an ``original_config`` and no cached hub config diffusers falls back to its "legacy"
loading, which builds the UNet, the VAE and the scheduler from the YAML through its CompVis converters.

Scheduler mapping (``DIFFUSERS_SCHEDULERS``): each of our sampler names is the diffusers scheduler below on top of the
schedule the YAML gives (scaled-linear β 0.00085 → 0.012, 1000 steps, ``steps_offset=1``, ``set_alpha_to_one=False``)
with the scheduler class's own default ``timestep_spacing``, as SD's hub ``scheduler_config.json`` (which sets none)
gives them. One convention difference: diffusers' legacy single-file loader writes ``timestep_spacing="leading"``
into the scheduler config it builds, and ``Scheduler.from_config(pipe.scheduler.config)`` then carries "leading" over
to Euler / Heun / DPM-Solver / UniPC, whose defaults (and ours) are "linspace". Pass
``SampleOptions(spacing="leading")`` to ``latent_diffusion.diffusion.sample`` to match that (tests/diffusion/test_samplers.py checks it); see docs/sampling.md.

Seeds: both sides get ``torch.Generator("cpu").manual_seed(s)`` (a list ``[s, s+1, ...]`` for batches). Ancestral and
SDE samplers (euler_a, dpmpp_sde, ddpm) draw their per-step noise from that same generator, one ``(1, C, h, w)`` draw
per sample per step after the initial noise, exactly as diffusers' schedulers do — so giving both sides the same
generator feeds both the same noise; no injection is needed at the pipeline level (tests/diffusion/test_samplers.py also
injects explicit noise at the sampler level).

Tolerances (fp32): final latents ≤ 1e-4 max abs relative to their scale, i.e. ``max|ours - ref| ≤ 1e-4 ·
max(1, max|ref|)``. A random ε-model does not denoise, so its latents end at |z| ≈ 20-70 instead of SD's O(1);
the float32 rounding differences of two UNet implementations (~1e-7 relative, amplified ×7.5 by CFG and by 1/√ᾱ_T
≈ 15 at the first step) then scale with them. Decoded uint8 images: at most 1 level apart on ≥ 99 % of the values.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers / huggingface_hub are imported, when this is first

from latent_diffusion.config import DiffusionConfig, to_dict  # noqa: E402
from latent_diffusion.pipelines import Pipeline  # noqa: E402
from latent_diffusion.tiny import tiny_model  # noqa: E402
from parity_common import checkpoint_with_yaml, fp32_pipeline, no_network  # noqa: E402
from latent_diffusion.tokenizer import clip_tokenize, get_tokenizer  # noqa: E402
from latent_diffusion.yaml_compat import load_yaml_config

from oracle import needs_oracle, oracle_names
(DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
 HeunDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline, UniPCMultistepScheduler) = oracle_names(
    "diffusers", "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler", "HeunDiscreteScheduler", "PNDMScheduler", "StableDiffusionPipeline",
    "UniPCMultistepScheduler")
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]

LATENT_TOL = 1e-4  # relative to max(1, max|ref|), see the module docstring
PROMPT, NEGATIVE = "a red circle above a blue square", "blurry, low quality"
CASE = dict(steps=5, cfg=7.5, seed=1234, height=32, width=48)  # latents (4, 16, 24): catches an H/W swap

DIFFUSERS_SCHEDULERS = {  # our sampler -> diffusers scheduler class, config on top of the YAML's schedule
    "ddim": (DDIMScheduler, {"timestep_spacing": "leading"}),
    "plms": (PNDMScheduler, {"skip_prk_steps": True, "timestep_spacing": "leading"}),
    "euler": (EulerDiscreteScheduler, {"timestep_spacing": "linspace"}),
    "heun": (HeunDiscreteScheduler, {"timestep_spacing": "linspace"}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                               "timestep_spacing": "linspace", "final_sigmas_type": "zero"}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                      "use_karras_sigmas": True, "final_sigmas_type": "zero"}),
    "unipc": (UniPCMultistepScheduler, {"solver_type": "bh2", "solver_order": 2, "predict_x0": True,
                                        "timestep_spacing": "linspace"}),
    # ancestral / SDE: same generator on both sides = same noise (see the module docstring)
    "euler_a": (EulerAncestralDiscreteScheduler, {"timestep_spacing": "linspace"}),
    "dpmpp_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                                "timestep_spacing": "linspace", "final_sigmas_type": "zero"}),
    "ddpm": (DDPMScheduler, {"timestep_spacing": "leading", "variance_type": "fixed_small"}),
}


def original_yaml(cfg: DiffusionConfig) -> dict:
    """The CompVis ``v1-inference.yaml`` layout describing ``cfg`` (the text encoder's shape is not in such files:
    SD's FrozenCLIPEmbedder named a hub model; here the encoder is handed to diffusers built)."""
    unet = to_dict(cfg.unet)
    unet.pop("num_classes")
    unet.pop("num_head_channels" if cfg.unet.num_head_channels == -1 else "num_heads")
    ddconfig = to_dict(cfg.autoencoder)
    embed_dim = ddconfig.pop("embed_dim")
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
        "linear_start": cfg.linear_start, "linear_end": cfg.linear_end, "timesteps": cfg.timesteps,
        "scale_factor": cfg.scale_factor, "conditioning_key": cfg.conditioning_key, "parameterization": "eps",
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL",
                               "params": {"embed_dim": embed_dim, "ddconfig": ddconfig}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}}}}


def transformers_text_encoder(model) -> CLIPTextModel:
    """A transformers ``CLIPTextModel`` of the tiny conditioner's shape with its weights (keys minus our prefix)."""
    c = model.cfg.conditioner
    hf = CLIPTextModel(CLIPTextConfig(vocab_size=c.vocab_size, hidden_size=c.width, num_hidden_layers=c.layers,
                                      intermediate_size=int(c.width * c.mlp_ratio), num_attention_heads=c.heads,
                                      max_position_embeddings=c.max_length, hidden_act=c.act))
    sd = {k.removeprefix("transformer.text_model."): v for k, v in model.cond_stage_model.state_dict().items()}
    hf.load_state_dict(sd, strict=True)
    return hf.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model = tiny_model("sd1")
    return checkpoint_with_yaml(model, tmp_path_factory.mktemp("parity"), "tiny-sd1", original_yaml(model.cfg))


@pytest.fixture(scope="module")
def ours(checkpoint) -> Pipeline:
    return fp32_pipeline(checkpoint[0])


@pytest.fixture(scope="module")
def reference(checkpoint, ours: Pipeline):
    path, config = checkpoint

    with no_network():
        pipe = StableDiffusionPipeline.from_single_file(
            os.fspath(path), original_config=os.fspath(config), text_encoder=transformers_text_encoder(ours.model),
            tokenizer=get_tokenizer(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    # the schedule diffusers read from the YAML, kept apart: each test swaps in another scheduler, whose config
    # must not inherit the previous one's options (use_karras_sigmas, algorithm_type, ...)
    pipe.yaml_schedule = {k: v for k, v in pipe.scheduler.config.items()
                          if not k.startswith("_") and k != "timestep_spacing"}
    return pipe


def diffusers_scheduler(pipe, name: str):
    cls, extra = DIFFUSERS_SCHEDULERS[name]
    return cls.from_config({**pipe.yaml_schedule, **extra})


def run_both(ours: Pipeline, pipe, name: str, n: int = 1) -> tuple[torch.Tensor, torch.Tensor, list, list]:
    """Final latents and decoded images of both pipelines for sampler ``name`` and image count ``n``."""
    c = CASE
    pipe.scheduler = diffusers_scheduler(pipe, name)
    gens = [torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(n)]
    with torch.no_grad():
        ref = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=c["steps"], guidance_scale=c["cfg"],
                   height=c["height"], width=c["width"], num_images_per_prompt=n, generator=gens if n > 1 else gens[0],
                   output_type="latent").images
        # the rest of StableDiffusionPipeline.__call__ for output_type="pil" (no safety checker)
        decoded = pipe.vae.decode(ref / pipe.vae.config.scaling_factor, return_dict=False)[0]
        ref_images = pipe.image_processor.postprocess(decoded, output_type="pil", do_denormalize=[True] * n)
    z = ours.txt2img(PROMPT, NEGATIVE, steps=c["steps"], sampler=name, cfg_scale=c["cfg"], seed=c["seed"], n=n,
                     height=c["height"], width=c["width"], output="latent")
    return z, ref, ours._decode(z, "pil"), ref_images


def assert_images_close(images: list, ref_images: list) -> None:
    for im, ref in zip(images, ref_images, strict=True):
        a, b = np.asarray(im).astype(int), np.asarray(ref).astype(int)
        assert a.shape == b.shape == (CASE["height"], CASE["width"], 3)
        within = (np.abs(a - b) <= 1).mean()
        assert within >= 0.99, f"only {within:.2%} of the values within 1 level (max diff {np.abs(a - b).max()})"


def test_the_yaml_describes_the_checkpoint(checkpoint, ours: Pipeline) -> None:
    """Guards the oracle: the YAML diffusers reads is the tiny model (our reader agrees), tokens are equal."""
    cfg = load_yaml_config(checkpoint[1])
    for part in ("unet", "autoencoder", "scale_factor", "linear_start", "linear_end", "timesteps", "parameterization"):
        assert getattr(cfg, part) == getattr(ours.cfg, part), part
    hf_ids = get_tokenizer()([PROMPT, NEGATIVE], padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
    assert torch.equal(hf_ids, clip_tokenize([PROMPT, NEGATIVE]))


@needs_oracle
@pytest.mark.parametrize("name", list(DIFFUSERS_SCHEDULERS))
def test_txt2img_matches_diffusers(ours: Pipeline, reference, name: str) -> None:
    z, ref, images, ref_images = run_both(ours, reference, name)
    assert z.shape == ref.shape == (1, 4, CASE["height"] // 2, CASE["width"] // 2)
    err, scale = (z - ref).abs().max().item(), max(1.0, ref.abs().max().item())
    assert err <= LATENT_TOL * scale, f"{name}: max abs error {err:.3g} at latent scale {scale:.3g}"
    assert_images_close(images, ref_images)


@needs_oracle
@pytest.mark.parametrize("name", ["dpmpp_2m", "euler_a"])
def test_batch_seeds_match_a_diffusers_generator_list(ours: Pipeline, reference, name: str) -> None:
    """Image i of ``n`` with seed s = diffusers with ``generator=[Generator().manual_seed(s + i) for i]``."""
    z, ref, images, ref_images = run_both(ours, reference, name, n=2)
    assert (z - ref).abs().max().item() <= LATENT_TOL * max(1.0, ref.abs().max().item())
    assert not torch.allclose(z[0], z[1])
    assert_images_close(images, ref_images)
