"""Samplers: parity with diffusers' schedulers on the same model function, convergence on a Gaussian mixture whose
exact denoiser is known, order of accuracy, and the pure-function / error contracts.

Tolerances: oracle parity ≤ 1e-4 max abs in fp32 (outputs O(1)); batch invariance ≤ 1e-5; moments within ~4 Monte
Carlo standard errors of the data's after enough steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latent_diffusion.diffusion import Denoiser, SAMPLERS, SampleOptions, randn, sample, start_step_for_strength
from latent_diffusion.diffusion.discretization import karras_sigmas, spaced_timesteps
from latent_diffusion.diffusion.samplers_dpm import sample_dpmpp_2m, sample_unipc
from latent_diffusion.diffusion.samplers_euler import sample_euler, sample_heun
from latent_diffusion.diffusion.schedules import (alphas_cumprod_from_betas, make_beta_schedule,
                                                  sigmas_from_alphas_cumprod, t_to_sigma)
from latent_diffusion.errors import ConfigError, NonFiniteError
from latent_diffusion.tiny import tiny_model

from oracle import needs_oracle, oracle_names
(DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
 HeunDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler) = oracle_names(
    "diffusers", "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler", "HeunDiscreteScheduler", "PNDMScheduler", "UniPCMultistepScheduler")

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # diffusers' np.array(tensor) on numpy 2
TOL = 1e-4
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
          set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False)
ORACLES = {  # our name -> diffusers scheduler and the config on top of SD's
    "ddim": (DDIMScheduler, {}), "plms": (PNDMScheduler, {}), "euler": (EulerDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}), "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}), "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddpm": (DDPMScheduler, {}), "dpmpp_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
}


class TinyModel:
    """The model function both sides call: 0.1 × a tiny random SD UNet, plus σ_t·x (the exact ε of N(0, I) data)
    for ε models, so outputs and latents stay O(1)."""

    def __init__(self, family: str) -> None:
        self.unet = tiny_model(family)
        self.alphas_cumprod = self.unet.alphas_cumprod
        self.parameterization = self.unet.parameterization

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = 0.1 * self.unet.apply_model(x, t, cond)
        if self.parameterization == "eps":  # ᾱ linearly interpolated at fractional t (any fixed function would do)
            lo = t.floor().long().clamp(max=998)
            ac = torch.lerp(self.alphas_cumprod[lo], self.alphas_cumprod[lo + 1], t - lo)
            out = out + (1 - ac).sqrt().view(-1, 1, 1, 1) * x
        return out


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def tiny(request):
    model = TinyModel(request.param)
    with torch.no_grad():
        cond = model.unet.get_learned_conditioning(["a red square", "two blue circles"])
    return model, cond


def gens(seed: int, n: int = 2) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def oracle_gens(name: str, seed: int) -> list[torch.Generator] | None:
    """Generators for diffusers' ``step`` where our sampler draws noise (its scheduler's ``step`` takes them)."""
    return gens(seed) if SAMPLERS[name].noisy else None


def oracle(name: str, model, steps: int, **config):
    """diffusers' scheduler for sampler ``name`` from SD's config (+ ``config``), timesteps set."""
    cls, extra = ORACLES[name]
    pred = "v_prediction" if model.parameterization == "v" else "epsilon"
    sched = cls.from_config({**SD, **extra, **config, "prediction_type": pred})
    sched.set_timesteps(steps)
    return sched


def run_diffusers(model, cond, sched, latents, generator=None, begin=0, variance_noise=None, **step_kwargs):
    """diffusers' denoising loop (as its SD pipelines run it) with ``model.apply_model`` as the UNet; ``generator``
    only for schedulers whose ``step`` takes one."""
    timesteps = sched.timesteps[begin * sched.order:]
    if generator is not None:
        step_kwargs["generator"] = generator
    for i, t in enumerate(timesteps):
        with torch.no_grad():
            out = model.apply_model(sched.scale_model_input(latents, t), t.expand(latents.shape[0]).float(), cond)
        noise = {} if variance_noise is None else {"variance_noise": variance_noise[i]}
        latents = sched.step(out, t, latents, **noise, **step_kwargs).prev_sample
    return latents


# -- oracle parity -----------------------------------------------------------------------------------------------
@needs_oracle
@pytest.mark.parametrize("steps", [10, 17])
@pytest.mark.parametrize("name", list(ORACLES))
def test_matches_diffusers(tiny, name, steps):
    model, cond = tiny
    if name == "plms" and model.parameterization == "v":
        pytest.skip("diffusers' PNDM mixes raw v outputs across steps; ours (as CompVis) mixes ε")
    noise = randn((2, 4, 8, 8), gens(0))
    sched = oracle(name, model, steps)
    ref = run_diffusers(model, cond, sched, noise * sched.init_noise_sigma, generator=oracle_gens(name, 100))
    ours = sample(name, model, noise, SampleOptions(steps=steps), cond=cond, generator=gens(100))
    assert (ours - ref).abs().max() <= TOL


@needs_oracle
@pytest.mark.parametrize("name,spacing", [("ddim", "trailing"), ("plms", "trailing"), ("euler", "leading"),
                                          ("euler", "trailing"), ("euler", "karras"), ("heun", "karras"),
                                          ("dpmpp_2m", "leading"), ("dpmpp_2m", "trailing"), ("unipc", "karras")])
def test_spacing_overrides_match_diffusers(name, spacing):
    model = TinyModel("sd1")
    with torch.no_grad():
        cond = model.unet.get_learned_conditioning(["a", "b"])
    config = {"use_karras_sigmas": True} if spacing == "karras" else {"timestep_spacing": spacing}
    sched = oracle(name, model, 10, **config)
    noise = randn((2, 4, 8, 8), gens(0))
    ref = run_diffusers(model, cond, sched, noise * sched.init_noise_sigma)
    ours = sample(name, model, noise, SampleOptions(steps=10, spacing=spacing), cond=cond)
    assert (ours - ref).abs().max() <= TOL


@needs_oracle
@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp_2m", "dpmpp_sde"])
def test_img2img_truncated_schedule_matches_diffusers(tiny, name):
    model, cond = tiny
    steps, strength = 12, 0.6
    start = start_step_for_strength(steps, strength)  # as StableDiffusionImg2ImgPipeline.get_timesteps
    init, noise = randn((2, 4, 8, 8), gens(7)), randn((2, 4, 8, 8), gens(9))
    sched = oracle(name, model, steps)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start * sched.order)
    x = sched.add_noise(init, noise, sched.timesteps[start * sched.order:][:1])
    ref = run_diffusers(model, cond, sched, x, generator=oracle_gens(name, 3), begin=start)
    ours = sample(name, model, noise, SampleOptions(steps=steps, start_step=start), cond=cond, init_latents=init,
                  generator=gens(3))
    assert start == 5 and (ours - ref).abs().max() <= TOL


@needs_oracle
def test_injected_noise_matches_diffusers_variance_noise():
    model = TinyModel("sd1")
    with torch.no_grad():
        cond = model.unet.get_learned_conditioning(["a", "b"])
    noise = randn((2, 4, 8, 8), gens(0))
    steps = 8
    draws = [randn((2, 4, 8, 8), gens(50 + 2 * i)) for i in range(steps)]
    for name, kw in [("ddim", {"eta": 1.0}), ("dpmpp_sde", {})]:  # both start from VP x_T = noise
        ref = run_diffusers(model, cond, oracle(name, model, steps), noise, variance_noise=draws, **kw)
        it = iter(draws)
        ours = sample(name, model, noise, SampleOptions(steps=steps, **kw), cond=cond,
                      noise_sampler=lambda *_: next(it))
        assert (ours - ref).abs().max() <= TOL, name


# -- a 1-D Gaussian mixture with an exact denoiser ----------------------------------------------------------------
W, MU, STD = (torch.tensor(v, dtype=torch.float64) for v in ([0.4, 0.6], [-1.2, 0.8], [0.3, 0.5]))
DATA_MEAN = float((W * MU).sum())
DATA_VAR = float((W * (STD**2 + MU**2)).sum()) - DATA_MEAN**2
SD_AC = alphas_cumprod_from_betas(make_beta_schedule("scaled_linear", 1000, 0.00085, 0.012)).float()
SD_LOG_SIGMAS = sigmas_from_alphas_cumprod(SD_AC.double()).log()


def exact_x0(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """E[x0 | x0 + σ·n = x] for the mixture: component posteriors times per-component Wiener filters."""
    x64, var = x.double(), STD**2 + torch.as_tensor(sigma, dtype=torch.float64) ** 2
    log_post = torch.log(W) - 0.5 * torch.log(var) - 0.5 * (x64 - MU) ** 2 / var
    return (torch.softmax(log_post, dim=-1) * (MU + STD**2 / var * (x64 - MU))).sum(-1, keepdim=True).to(x.dtype)


def mixture_eps(x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
    """Exact ε-prediction of a discrete VP model trained on the mixture (VP input x, timestep t)."""
    s = t_to_sigma(t.double(), SD_LOG_SIGMAS).view(-1, 1)
    x_ve = x.double() * (s * s + 1).sqrt()
    return ((x_ve - exact_x0(x_ve, s)) / s).to(x.dtype)


MIXTURE = Denoiser(mixture_eps, alphas_cumprod=SD_AC, parameterization="eps")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_moments_converge_to_the_data(name):
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    errs = []
    for steps in (4, 100):
        out = sample(name, MIXTURE, noise, SampleOptions(steps=steps), generator=torch.Generator().manual_seed(1))
        errs.append((abs(out.mean().item() - DATA_MEAN), abs(out.var().item() - DATA_VAR)))
    (_, var_err_few), (mean_err, var_err) = errs
    assert mean_err < 0.03 and var_err < 0.05, errs  # MC s.e.: mean 0.008, var 0.012
    assert var_err < var_err_few, errs


def slope(steps: list[int], fn) -> float:
    """Log-log slope of the mean |error| vs steps, against a 1000-step DPM++ 2M solution of the same ODE."""
    sig = SD_LOG_SIGMAS.exp()
    x_T = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * float(sig[-1])
    denoise = lambda x, s, c=None: exact_x0(x, s)  # noqa: E731
    grid = lambda n: karras_sigmas(n, float(sig[0]), float(sig[-1]))  # noqa: E731
    ref = sample_dpmpp_2m(denoise, x_T, grid(1000))
    errs = [(fn(denoise, x_T, grid(n)) - ref).abs().mean().item() for n in steps]
    return float(np.polyfit(np.log(steps), np.log(errs), 1)[0])


def test_order_of_accuracy():
    steps = [8, 16, 32, 64]
    assert -1.3 < slope(steps, sample_euler) < -0.8
    assert slope(steps, sample_dpmpp_2m) <= -1.5
    assert slope(steps, sample_heun) <= -1.5
    assert slope(steps, sample_unipc) <= -1.5


# -- pure functions, per-sample noise, errors ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_inputs_are_not_mutated(name):
    model = TinyModel("sd1")
    cond, uncond = model.unet.get_learned_conditioning(["a", "b"]), model.unet.get_learned_conditioning(["", ""])
    noise, init = randn((2, 4, 8, 8), gens(0)), randn((2, 4, 8, 8), gens(5))
    copies = [t.clone() for t in (noise, init, cond, uncond)]
    seen = []
    sample(name, model, noise, SampleOptions(steps=5, cfg_scale=3.0, start_step=1), cond=cond, uncond=uncond,
           init_latents=init, generator=gens(1), callback=lambda i, x, x0: seen.append(i))
    assert all(torch.equal(a, b) for a, b in zip(copies, (noise, init, cond, uncond)))
    assert seen == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["euler_a", "dpmpp_sde", "ddpm", "ddim"])
def test_batch_invariance_with_per_sample_generators(name):
    model, seed = TinyModel("sd1"), 1234
    prompts = ["a", "b", "c", "d"]
    cond = model.unet.get_learned_conditioning(prompts)
    g, kw = gens(seed, 4), ({} if name == "ddpm" else {"eta": 1.0})
    batch = sample(name, model, randn((4, 4, 8, 8), g), SampleOptions(steps=6, **kw), cond=cond, generator=g)
    for i in range(4):
        gi = torch.Generator().manual_seed(seed + i)
        single = sample(name, model, randn((1, 4, 8, 8), gi), SampleOptions(steps=6, **kw), cond=cond[i:i + 1],
                        generator=gi)
        assert (batch[i:i + 1] - single).abs().max() <= 1e-5


def test_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown sampler 'xyz'; accepted: ddpm, ddim, plms, euler, euler_a, heun, "
                                          "dpmpp_2m, dpmpp_2m_karras, dpmpp_sde, unipc"):
        sample("xyz", MIXTURE, torch.zeros(1, 1), SampleOptions(steps=10))


def test_bad_step_counts():
    with pytest.raises(ConfigError, match="steps must be an integer in \\[1, 1000\\].*got 1001"):
        sample("euler", MIXTURE, torch.zeros(1, 1), SampleOptions(steps=1001))  # past the model's 1000 timesteps


def test_bad_options():
    x = torch.zeros(2, 1)
    ten = SampleOptions(steps=10)
    with pytest.raises(ConfigError, match="sampler 'euler' takes no eta; samplers with eta: ddim, euler_a, dpmpp_sde"):
        sample("euler", MIXTURE, x, SampleOptions(steps=10, eta=0.5))
    with pytest.raises(ConfigError, match="sampler 'heun' draws no noise, so takes no s_noise; samplers with "
                                          "s_noise: ddpm, ddim, euler_a, dpmpp_sde"):
        sample("heun", MIXTURE, x, SampleOptions(steps=10, s_noise=1.003))
    with pytest.raises(ConfigError, match="sampler 'ddim' runs on the ddim grid, whose spacings are leading, "
                                          "trailing, linspace, uniform; got 'karras'"):
        sample("ddim", MIXTURE, x, SampleOptions(steps=10, spacing="karras"))
    with pytest.raises(ConfigError, match="3 generators for a batch of 2"):
        sample("euler_a", MIXTURE, x, ten, generator=gens(0, 3))
    with pytest.raises(ConfigError, match="start_step must be in \\[0, 9\\]"):
        sample("ddim", MIXTURE, x, SampleOptions(steps=10, start_step=10))
    with pytest.raises(ConfigError, match="strength must be in \\(0, 1\\]"):
        start_step_for_strength(10, 1.5)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nan_names_the_step(name):
    calls = []

    def poisoned(x, t, cond=None):
        calls.append(1)
        eps = mixture_eps(x, t)
        return eps * math.nan if len(calls) == 3 else eps

    label = {"dpmpp_2m_karras": "dpmpp_2m", "dpmpp_sde": "dpmpp_2m_sde"}.get(name, name)
    step = 2 if name in ("heun", "plms") else 3  # those two make two calls in their first step
    with pytest.raises(NonFiniteError,
                       match=f"{label}: NaN/Inf in the latents after step {step}/10 .*the UNet.s output was not"):
        sample(name, MIXTURE.replace(model_fn=poisoned), torch.randn(2, 1), SampleOptions(steps=10), generator=gens(0))


def test_ddim_with_eta_one_is_ddpm_in_distribution():
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    out = sample("ddim", MIXTURE, noise, SampleOptions(steps=100, eta=1.0), generator=torch.Generator().manual_seed(1))
    assert abs(out.var().item() - DATA_VAR) < 0.06


def vp_reference(name: str, noise: torch.Tensor, draws: list[torch.Tensor], steps: int, eta: float = 0.0):
    """DDIM (Song et al. eq. 12, final ᾱ_0) or DDPM (posterior mean + "fixed_small" std, final ᾱ = 1) written in VP
    x_t = √ᾱ·x0 + √(1 - ᾱ)·ε at integer timesteps, float64, on the mixture's exact ε."""
    ac, ts, x = SD_AC.double(), [int(t) for t in spaced_timesteps(steps, "leading")], noise
    for i, t in enumerate(ts):
        a = float(ac[t])
        a_next = float(ac[ts[i + 1]]) if i + 1 < steps else (float(ac[0]) if name == "ddim" else 1.0)
        eps = mixture_eps(x, torch.full((x.shape[0],), float(t)))
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        std = eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
        if name == "ddim":
            x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next - std**2) * eps + std * draws[i]
        else:
            beta = 1 - a / a_next
            mean = math.sqrt(a_next) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - a_next) / (1 - a) * x
            x = mean + std * draws[i]
    return x


@pytest.mark.parametrize("name,eta", [("ddim", 0.0), ("ddim", 0.6), ("ddpm", 1.0)])
def test_sigma_space_ddim_and_ddpm_are_the_vp_formulas(name, eta):
    # float64 throughout; the denoiser rounds each σ to float32 before its timestep lookup (≈ 6e-8 relative), which
    # bounds the agreement: measured ≤ 2e-8, tolerance 1e-7 (leaving out the final VE → VP scaling alone: 6e-4)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 1, generator=g, dtype=torch.float64)
    draws = [torch.randn(64, 1, generator=g, dtype=torch.float64) for _ in range(8)]
    it = iter(draws)
    denoiser = Denoiser(mixture_eps, alphas_cumprod=SD_AC.double(), parameterization="eps")
    ours = sample(name, denoiser, noise, SampleOptions(steps=8, eta=None if name == "ddpm" else eta),
                  noise_sampler=lambda *_: next(it))
    assert (ours - vp_reference(name, noise, draws, 8, eta)).abs().max() <= 1e-7
