"""Oracle parity of img2img and 9-channel inpainting: our ``Pipeline.img2img`` / ``Pipeline.inpaint`` against
diffusers' ``StableDiffusionImg2ImgPipeline`` / ``StableDiffusionInpaintPipeline``, for SD 1.x (ε) and SD 2.x
(v-prediction) tiny random checkpoints.

Loading (as tests/pipelines/test_pipeline_parity.py): each side reads the same tiny ``.safetensors`` file itself — ours through
``Pipeline.from_checkpoint`` (config from the file's metadata), diffusers through ``from_single_file`` with an
original-style (CompVis) YAML written here, offline (``local_files_only``, ``HF_HUB_OFFLINE``, sockets blocked), so
its UNet and VAE come from diffusers' own CompVis converters. Cases:

- ``sd1``: img2img, ε; ``sd2``: img2img, v-prediction (OpenCLIP text, linear transformer projections);
- ``sd1-inpaint``: the 9-channel ``hybrid`` SD 1.x inpainting UNet (``[x, mask, masked-image latents]``);
- ``sd2-inpaint``: the SD 2.x tiny architecture with a 9-channel ``hybrid`` UNet, built here (``latent_diffusion.tiny``
  has no such family). It is v-parameterised to exercise v through the concat path (Stability's real
  512-inpainting model is ε; both parameterisations go through the same code otherwise).

Text: diffusers gets ``prompt_embeds`` / ``negative_prompt_embeds`` from our text encoder (``text_encoder=None``): the
encoders' own parity is tests/models/test_text_encoders.py and the SD 1.x tokenizer path is covered by
tests/pipelines/test_pipeline_parity.py, so here only the image paths are compared.

Schedulers: built from the model's own schedule (scaled-linear, ``steps_offset=1``, ``set_alpha_to_one=False``,
``prediction_type`` from the YAML's ``parameterization``; diffusers' legacy loader would guess "epsilon" for a toy SD 2
model, whose shapes it cannot recognise), with the spacing of tests/pipelines/test_pipeline_parity.py.

Same inputs by construction — the documented convention differences (docs/sampling.md, "img2img and inpainting"):

- **VAE encode.** diffusers *samples* the VAE posterior with the pipeline's generator (``retrieve_latents``, before
  the initial noise in img2img); ours takes the posterior mode and draws nothing. So diffusers is handed our encoded
  latents (img2img: ``image=`` a 4-channel latent tensor, which it uses as is; inpaint: ``masked_image_latents=``),
  and its generator then draws the initial noise first, as ours does. ``test_encodings_agree`` checks separately
  that those latents are diffusers' own ``vae.encode(...).latent_dist.mode() · scaling_factor`` of diffusers' own
  preprocessed image / masked image (≤ 1e-5), and that the mask diffusers derives itself is ours.
- **Inpaint strength** is 1 (pure noise start): for strength < 1 diffusers also encodes the unmasked image with the
  generator (a posterior sample) before drawing the noise. Only 9-channel models are compared: for ordinary 4-channel
  UNets diffusers re-noises the original latents and blends them in after each step, while ours replaces the x0
  prediction in the kept region (pipelines/blend.py) — different algorithms by design.
- **img2img strength** → start step: both run the last ``int(steps · strength)`` steps (5 steps, 0.6: steps 3-5).

Tolerances (fp32): final latents within 1e-4 max abs while max|ref| ≤ 5, and within 2e-5 relative to max|ref| beyond
(``1e-4 · max(1, max|ref| / 5)``); decoded uint8 images at most 1 level apart on ≥ 99.9 % of the values. The relative
part is for ``sd1-inpaint`` only: its start from pure noise is txt2img's situation (tests/pipelines/test_pipeline_parity.py,
which bounds 1e-4 *relative*): a random ε-model does not denoise, its latents end at |z| ≈ 20-50, and the float32
rounding differences of the two UNets (amplified by CFG and 1/√ᾱ_T) grow with them: measured 1.2e-4 to 3.5e-4 abs,
6.4e-6 to 6.9e-6 relative. Run in float64 on both sides the same cases differ by 0.8e-5 to 2.7e-5 (the rest: diffusers'
float32 schedule and timestep embedding), so the gap is rounding, not a different algorithm. The img2img and
sd2 (v) cases end at |z| ≤ 10 and stay within 5e-5 abs. Measured errors are in docs/sampling.md.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers / huggingface_hub are imported, when this is first

from latent_diffusion.config import DiffusionConfig, to_dict  # noqa: E402
from latent_diffusion.models.ldm import LatentDiffusion  # noqa: E402
from latent_diffusion.pipelines import Pipeline  # noqa: E402
from latent_diffusion.pipelines.images import load_mask, pil_to_tensor  # noqa: E402
from latent_diffusion.tiny import tiny_config, tiny_model  # noqa: E402
from parity_common import checkpoint_with_yaml, fp32_pipeline, no_network  # noqa: E402

from oracle import needs_oracle, oracle_names
(DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline,
 StableDiffusionInpaintPipeline) = oracle_names(
    "diffusers", "DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
    "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]

LATENT_TOL, LATENT_SCALE = 1e-4, 5.0  # bound 1e-4 · max(1, max|ref| / 5), see the module docstring
IMAGE_WITHIN_1 = 0.999
PROMPT, NEGATIVE = "a red circle above a blue square", "blurry, low quality"
CASE = dict(steps=5, cfg=7.5, seed=4321, strength=0.6)
HEIGHT, WIDTH = 32, 48  # latents (4, 16, 24): catches an H/W swap
BOX = (14, 6, 38, 22)  # (x0, y0, x1, y1) repainted: even, so latent pixels are wholly in or out
SCHEDULERS = {  # our sampler -> diffusers scheduler (as tests/pipelines/test_pipeline_parity.py)
    "ddim": (DDIMScheduler, {"timestep_spacing": "leading"}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                               "timestep_spacing": "linspace", "final_sigmas_type": "zero"}),
    "euler": (EulerDiscreteScheduler, {"timestep_spacing": "linspace"}),
}
IMG2IMG, INPAINT = ("sd1", "sd2"), ("sd1-inpaint", "sd2-inpaint")


def sd2_inpaint_config() -> DiffusionConfig:
    """The tiny SD 2.x architecture with SD's 9-channel inpainting UNet (4 latents + mask + masked-image latents)."""
    cfg = tiny_config("sd2")
    return dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, in_channels=9), conditioning_key="hybrid")


def build_model(family: str) -> LatentDiffusion:
    if family != "sd2-inpaint":
        return tiny_model(family)
    torch.manual_seed(0)  # as tiny_model: small random weights, zero-initialised layers randomised too
    model = LatentDiffusion(sd2_inpaint_config())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def original_yaml(cfg: DiffusionConfig) -> dict:
    """The CompVis / Stability inference YAML layout describing ``cfg`` (v1-inference, v2-inference-v,
    v1/v2-inpainting)."""
    unet = to_dict(cfg.unet)
    unet.pop("num_classes")
    unet.pop("num_head_channels" if cfg.unet.num_head_channels == -1 else "num_heads")
    ddconfig = to_dict(cfg.autoencoder)
    embed_dim = ddconfig.pop("embed_dim")
    text = "FrozenCLIPEmbedder" if cfg.conditioner.kind == "clip" else "FrozenOpenCLIPEmbedder"
    target = "LatentDiffusion" if cfg.conditioning_key == "crossattn" else "LatentInpaintDiffusion"
    return {"model": {"target": f"ldm.models.diffusion.ddpm.{target}", "params": {
        "linear_start": cfg.linear_start, "linear_end": cfg.linear_end, "timesteps": cfg.timesteps,
        "scale_factor": cfg.scale_factor, "conditioning_key": cfg.conditioning_key,
        "parameterization": cfg.parameterization,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL",
                               "params": {"embed_dim": embed_dim, "ddconfig": ddconfig}},
        "cond_stage_config": {"target": f"ldm.modules.encoders.modules.{text}"}}}}


def schedule(original: dict) -> dict:
    p = original["model"]["params"]
    return {"num_train_timesteps": p["timesteps"], "beta_start": p["linear_start"], "beta_end": p["linear_end"],
            "beta_schedule": "scaled_linear", "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False,
            "prediction_type": {"eps": "epsilon", "v": "v_prediction"}[p["parameterization"]]}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory):
    """family -> (ours, diffusers, expected config), built on first use."""
    root, cache = tmp_path_factory.mktemp("img2img-inpaint"), {}

    def get(family: str) -> tuple[Pipeline, object, DiffusionConfig]:
        if family not in cache:
            model = build_model(family)
            original = original_yaml(model.cfg)
            path, config = checkpoint_with_yaml(model, root, f"tiny-{family}", original)
            ours = fp32_pipeline(path)
            cls = StableDiffusionInpaintPipeline if family in INPAINT else StableDiffusionImg2ImgPipeline
            with no_network():
                ref = cls.from_single_file(
                    os.fspath(path), original_config=os.fspath(config), text_encoder=None, tokenizer=None,
                    scheduler=DDIMScheduler(**schedule(original)), safety_checker=None, feature_extractor=None,
                    requires_safety_checker=False, local_files_only=True)
            ref.set_progress_bar_config(disable=True)
            ref.schedule = schedule(original)
            cache[family] = ours, ref, model.cfg
        return cache[family]

    return get


def init_image() -> Image.Image:
    """A smooth colour field plus noise (48×32)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH] / np.array([HEIGHT, WIDTH])[:, None, None]
    base = np.stack([x, y, 1 - (x + y) / 2], axis=-1) * 200 + 20
    noise = np.random.default_rng(5).normal(0, 20, (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def box_mask() -> Image.Image:
    m = np.zeros((HEIGHT, WIDTH), np.uint8)
    x0, y0, x1, y1 = BOX
    m[y0:y1, x0:x1] = 255
    return Image.fromarray(m, mode="L")


def text_embeddings(ours: Pipeline) -> dict:
    with torch.no_grad():
        emb = ours.model.get_learned_conditioning([PROMPT, NEGATIVE])
    return {"prompt_embeds": emb[:1], "negative_prompt_embeds": emb[1:]}


def decode_reference(pipe, z: torch.Tensor) -> list[Image.Image]:
    """The rest of the diffusers pipelines' ``__call__`` for output_type="pil" (no safety checker)."""
    with torch.no_grad():
        x = pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(x, output_type="pil", do_denormalize=[True] * z.shape[0])


def run_img2img(ours: Pipeline, pipe, name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    cls, extra = SCHEDULERS[name]
    pipe.scheduler = cls.from_config({**pipe.schedule, **extra})
    z0 = ours._encode(pil_to_tensor(init_image()))  # posterior mode · scale factor (see the module docstring)
    with torch.no_grad():
        ref = pipe(image=z0, strength=CASE["strength"], num_inference_steps=CASE["steps"],
                   guidance_scale=CASE["cfg"], generator=torch.Generator("cpu").manual_seed(seed),
                   output_type="latent", **text_embeddings(ours)).images
    z = ours.img2img(init_image(), PROMPT, NEGATIVE, strength=CASE["strength"], steps=CASE["steps"], sampler=name,
                     cfg_scale=CASE["cfg"], seed=seed, output="latent")
    return z, ref


def run_inpaint(ours: Pipeline, pipe, name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    cls, extra = SCHEDULERS[name]
    pipe.scheduler = cls.from_config({**pipe.schedule, **extra})
    image, mask = init_image(), box_mask()
    concat = ours._inpaint_concat(pil_to_tensor(image), load_mask(mask, image.size), HEIGHT // 2, WIDTH // 2)
    with torch.no_grad():
        ref = pipe(image=image, mask_image=mask, masked_image_latents=concat[:, 1:], height=HEIGHT, width=WIDTH,
                   strength=1.0, num_inference_steps=CASE["steps"], guidance_scale=CASE["cfg"],
                   generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
                   **text_embeddings(ours)).images
    z = ours.inpaint(image, mask, PROMPT, NEGATIVE, steps=CASE["steps"], sampler=name, cfg_scale=CASE["cfg"],
                     seed=seed, output="latent")
    return z, ref


def assert_close(ours: Pipeline, pipe, z: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert z.shape == ref.shape == (1, 4, HEIGHT // 2, WIDTH // 2)
    err, scale = (z - ref).abs().max().item(), ref.abs().max().item()
    print(f"{what}: max abs latent error {err:.3g} (max |ref| {scale:.3g})")
    bound = LATENT_TOL * max(1.0, scale / LATENT_SCALE)
    assert err <= bound, f"{what}: latents differ by {err:.3g} > {bound:.3g} (max |ref| {scale:.3g})"
    a = np.asarray(ours._decode(z, "pil")[0]).astype(int)
    b = np.asarray(decode_reference(pipe, ref)[0]).astype(int)
    assert a.shape == b.shape == (HEIGHT, WIDTH, 3)
    within = (np.abs(a - b) <= 1).mean()
    print(f"{what}: image max diff {np.abs(a - b).max()} levels, {within:.4%} within 1")
    assert within >= IMAGE_WITHIN_1, f"{what}: {within:.3%} of values within 1 level (max {np.abs(a - b).max()})"


# -- the oracle's inputs ---------------------------------------------------------------------------
@needs_oracle
@pytest.mark.parametrize("family", IMG2IMG + INPAINT)
def test_checkpoint_loads_as_the_model(pipelines, family: str) -> None:
    """Guards the oracle: our loader gives the model that was saved; diffusers built the matching UNet."""
    ours, pipe, cfg = pipelines(family)
    assert ours.cfg == cfg
    assert ours.kind == ("inpaint" if family in INPAINT else "text")
    assert ours.cfg.parameterization == ("v" if family.startswith("sd2") else "eps")
    assert pipe.unet.config.in_channels == cfg.unet.in_channels
    assert pipe.unet.config.use_linear_projection == cfg.unet.use_linear_in_transformer
    assert pipe.vae.config.scaling_factor == cfg.scale_factor


@needs_oracle
@pytest.mark.parametrize("family", ["sd1-inpaint", "sd2-inpaint"])
def test_encodings_agree(pipelines, family: str) -> None:
    """What diffusers is handed (our latents) is what it would compute with the posterior mode instead of a
    sample: the preprocessed image, the binarised mask at latent size, the (masked-)image latents."""
    ours, pipe, _ = pipelines(family)
    image, mask = init_image(), box_mask()
    x, m = pil_to_tensor(image), load_mask(mask, image.size)
    x_ref = pipe.image_processor.preprocess(image, height=HEIGHT, width=WIDTH)
    m_ref = pipe.mask_processor.preprocess(mask, height=HEIGHT, width=WIDTH)
    assert torch.allclose(x, x_ref, atol=1e-6) and torch.equal(m, m_ref)
    sf = pipe.vae.config.scaling_factor
    with torch.no_grad():
        z_ref = pipe.vae.encode(x_ref).latent_dist.mode() * sf
        masked_ref = pipe.vae.encode(x_ref * (m_ref < 0.5)).latent_dist.mode() * sf
    assert (ours._encode(x) - z_ref).abs().max().item() <= 1e-5
    concat = ours._inpaint_concat(x, m, HEIGHT // 2, WIDTH // 2)
    assert torch.equal(concat[:, :1], F.interpolate(m_ref, size=(HEIGHT // 2, WIDTH // 2)))
    assert (concat[:, 1:] - masked_ref).abs().max().item() <= 1e-5


# -- parity ----------------------------------------------------------------------------------------
@needs_oracle
@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("family", IMG2IMG)
def test_img2img_matches_diffusers(pipelines, family: str, name: str) -> None:
    ours, pipe, _ = pipelines(family)
    z, ref = run_img2img(ours, pipe, name, CASE["seed"])
    assert_close(ours, pipe, z, ref, f"{family} img2img {name}")


@needs_oracle
@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("family", INPAINT)
def test_inpaint_9_channel_matches_diffusers(pipelines, family: str, name: str) -> None:
    ours, pipe, _ = pipelines(family)
    z, ref = run_inpaint(ours, pipe, name, CASE["seed"])
    assert_close(ours, pipe, z, ref, f"{family} inpaint {name}")


@needs_oracle
def test_img2img_image_i_of_n_is_diffusers_with_seed_plus_i(pipelines) -> None:
    ours, pipe, _ = pipelines("sd1")
    z = ours.img2img(init_image(), PROMPT, NEGATIVE, strength=CASE["strength"], steps=CASE["steps"],
                     sampler="dpmpp_2m", cfg_scale=CASE["cfg"], seed=CASE["seed"], n=2, batch_size=1,
                     output="latent")
    for i in range(2):
        _, ref = run_img2img(ours, pipe, "dpmpp_2m", CASE["seed"] + i)
        assert_close(ours, pipe, z[i:i + 1], ref, f"sd1 img2img dpmpp_2m image {i} of 2")
