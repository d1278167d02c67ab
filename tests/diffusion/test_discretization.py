"""Discretisation: timestep spacing and whole σ lists against diffusers' schedulers (CompVis' ``uniform`` against
hand-computed values), the start / end conventions of ``Levels``, and the errors.

Tolerances: timesteps exact; σ 5e-5 relative (diffusers computes ᾱ in float32); the Euler family's fractional
timesteps 1e-4 relative (diffusers interpolates σ linearly between integer timesteps, ours log σ as k-diffusion).
"""

from __future__ import annotations

import math

import pytest
import torch

from latent_diffusion.diffusion import SAMPLERS
from latent_diffusion.diffusion import discretization as D
from latent_diffusion.diffusion.schedules import alphas_cumprod_from_betas, make_beta_schedule, sigmas_from_alphas_cumprod
from latent_diffusion.errors import ConfigError

from oracle import needs_oracle, oracle_names
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' np.array(tensor) on numpy 2
(DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler,
 UniPCMultistepScheduler) = oracle_names(
    "diffusers", "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
    "PNDMScheduler", "UniPCMultistepScheduler")

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
          set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False)
STEPS = [1, 2, 7, 10, 17, 50, 250, 999]
TABLE = sigmas_from_alphas_cumprod(alphas_cumprod_from_betas(make_beta_schedule("scaled_linear", 1000, 0.00085,
                                                                                0.012)))  # σ_t, (1000,) float64


def close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=0)


# -- timestep spacing --------------------------------------------------------------------------------------------
@needs_oracle
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", STEPS)
def test_discrete_spacing_matches_ddim(spacing, steps):
    sched = DDIMScheduler.from_config({**SD, "timestep_spacing": spacing})
    sched.set_timesteps(steps)
    assert D.spaced_timesteps(steps, spacing).tolist() == sched.timesteps.double().tolist()


@needs_oracle
@pytest.mark.parametrize("steps", [2, 10, 17, 50])
def test_plms_uses_the_ddim_grid(steps):
    sched = PNDMScheduler.from_config(SD)
    sched.set_timesteps(steps)
    ts = sched.timesteps.tolist()  # n + 1 calls: the second timestep is evaluated twice
    assert [ts[0]] + ts[2:] == D.spaced_timesteps(steps, "leading").tolist()


@needs_oracle
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", STEPS)
def test_fractional_spacing_matches_euler(spacing, steps):
    sched = EulerDiscreteScheduler.from_config({**SD, "timestep_spacing": spacing})
    sched.set_timesteps(steps)
    ours = D.spaced_timesteps(steps, spacing, integer=False)
    assert torch.equal(ours.float(), sched.timesteps)


@needs_oracle
@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, UniPCMultistepScheduler])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", STEPS)
def test_multistep_spacing_matches_dpm_solver(cls, spacing, steps):
    sched = cls.from_config({**SD, "timestep_spacing": spacing})
    sched.set_timesteps(steps)
    if sched.timesteps.max() > 999:  # diffusers would index past the table; ours refuses
        with pytest.raises(ConfigError, match="outside"):
            D.spaced_timesteps(steps, spacing, drop_last=True)
        return
    assert D.spaced_timesteps(steps, spacing, drop_last=True).tolist() == sched.timesteps.double().tolist()


def test_trailing_has_exactly_steps_entries():
    # np.arange(T, 0, -T/n) yields n + 1 values for some n (61, 103, ...); ours never does
    for n in (61, 103, 121):
        t = D.spaced_timesteps(n, "trailing")
        assert len(t) == n and t[0] == 999 and t.min() >= 0


def test_compvis_uniform_spacing_by_hand():
    # CompVis make_ddim_timesteps("uniform", n, 1000) + 1: every ⌊1000/n⌋-th timestep, so 8 of them for n = 7
    assert D.spaced_timesteps(7, "uniform").tolist() == [995, 853, 711, 569, 427, 285, 143, 1]
    assert D.spaced_timesteps(50, "uniform").tolist() == D.spaced_timesteps(50, "leading").tolist()
    assert D.spaced_timesteps(3, "uniform", steps_offset=0).tolist() == [999, 666, 333, 0]


@needs_oracle
def test_karras_sigmas_match_dpm_solver():
    sched = DPMSolverMultistepScheduler.from_config({**SD, "use_karras_sigmas": True})
    sched.set_timesteps(12)
    ours = D.karras_sigmas(12, float(TABLE[0]), float(TABLE[-1]))
    assert ours[-1] == 0 and len(ours) == 13
    assert close(ours, sched.sigmas, 5e-5)  # σ_min from float64 vs float32 ᾱ_0


# -- whole σ lists -------------------------------------------------------------------------------------------------
def diffusers_sigmas(sched) -> torch.Tensor:
    """The σ list a VP diffusers scheduler steps through: σ of each timestep, then σ of its final ᾱ."""
    ac = sched.alphas_cumprod.double()
    final = torch.tensor([float(getattr(sched, "final_alpha_cumprod", 1.0))], dtype=torch.float64)
    return sigmas_from_alphas_cumprod(torch.cat([ac[sched.timesteps.long()], final]))


@needs_oracle
@pytest.mark.parametrize("steps", [1, 7, 10, 50])
@pytest.mark.parametrize("name,cls,config,rtol", [
    ("ddim", DDIMScheduler, {}, 5e-5), ("plms", DDIMScheduler, {"timestep_spacing": "trailing"}, 5e-5),
    ("ddpm", DDPMScheduler, {}, 5e-5), ("euler", EulerDiscreteScheduler, {}, 1e-4),
    ("heun", EulerDiscreteScheduler, {"timestep_spacing": "leading"}, 1e-4),
    ("euler_a", EulerDiscreteScheduler, {"use_exponential_sigmas": True}, 5e-5),
    ("dpmpp_2m", DPMSolverMultistepScheduler, {}, 5e-5),
    ("dpmpp_2m_karras", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, 5e-5),
    ("unipc", UniPCMultistepScheduler, {"timestep_spacing": "trailing"}, 5e-5),
])
def test_sigma_lists_match_diffusers(name, cls, config, rtol, steps):
    sched = cls.from_config({**SD, **config})
    sched.set_timesteps(steps)
    spacing = config.get("timestep_spacing", "exponential" if config.get("use_exponential_sigmas") else None)
    if spacing == "exponential" and steps == 1:
        pytest.skip("diffusers takes the exponential grid's σ_max from its one sampled σ, which is σ_min")
    ours = D.levels(SAMPLERS[name].grid, steps, TABLE, spacing=spacing).sigmas
    ref = sched.sigmas if hasattr(sched, "sigmas") and cls is not DDIMScheduler else diffusers_sigmas(sched)
    assert ours.shape == ref.shape and (ours[-1] == 0) == (ref[-1] == 0)  # 0, or σ at ᾱ_0 for DDIM / PNDM
    assert close(ours, ref, rtol)


@needs_oracle
@pytest.mark.parametrize("name,cls,config", [
    ("ddim", DDIMScheduler, {}), ("dpmpp_2m", DPMSolverMultistepScheduler, {}),
    ("euler", EulerDiscreteScheduler, {}), ("euler", EulerDiscreteScheduler, {"timestep_spacing": "leading"}),
    ("euler", EulerDiscreteScheduler, {"use_karras_sigmas": True}),
])
def test_pure_noise_start_matches_init_noise_sigma(name, cls, config):
    sched = cls.from_config({**SD, **config})
    sched.set_timesteps(10)
    spacing = "karras" if config.get("use_karras_sigmas") else config.get("timestep_spacing")
    lv = D.levels(SAMPLERS[name].grid, 10, TABLE, spacing=spacing)
    noise = torch.ones(1, 1)
    vp_scale = math.sqrt(float(lv.sigmas[0]) ** 2 + 1)  # diffusers' VP schedulers start at x_T = noise
    want = float(sched.init_noise_sigma) * (vp_scale if cls is DDIMScheduler or name == "dpmpp_2m" else 1.0)
    assert math.isclose(float(lv.initial_latents(noise)), want, rel_tol=5e-6)


def test_levels_start_end_and_quantisation():
    lv = D.levels(D.DDIM, 4, TABLE)
    assert lv.integer_timesteps and lv.steps == 4 and float(lv.sigmas[-1]) == float(TABLE[0])
    x0, noise = torch.full((1, 2), 0.5, dtype=torch.float64), torch.full((1, 2), 2.0, dtype=torch.float64)
    later = lv.from_step(1)
    assert later.steps == 3 and torch.equal(later.initial_latents(noise, x0), x0 + float(lv.sigmas[1]) * noise)
    x = torch.full((1, 2), 3.0, dtype=torch.float64)  # VE x at σ_0 → VP x = x·√ᾱ_0
    assert torch.allclose(lv.final_latents(x), x / math.sqrt(float(TABLE[0]) ** 2 + 1), rtol=1e-15)
    assert not D.levels(D.EULER, 4, TABLE).integer_timesteps
    assert D.levels(D.DPM_KARRAS, 4, TABLE).integer_timesteps  # diffusers' DPM-Solver rounds t(σ) on Karras σ
    z = D.levels(D.EULER, 4, TABLE)
    assert float(z.sigmas[-1]) == 0 and torch.equal(z.final_latents(x), x)


# -- errors ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [0, -1, 1001, 2.5, True])
def test_bad_step_counts_are_config_errors(steps):
    with pytest.raises(ConfigError, match="steps must be an integer in \\[1, 1000\\]"):
        D.spaced_timesteps(steps)


def test_leading_offset_past_the_end_and_unknown_spacing():
    with pytest.raises(ConfigError, match="outside \\[0, 999\\].*trailing"):
        D.spaced_timesteps(1000, "leading")
    assert D.spaced_timesteps(1000, "trailing").tolist() == list(range(999, -1, -1))
    with pytest.raises(ConfigError, match="leading, trailing, linspace"):
        D.spaced_timesteps(10, "quad")
    with pytest.raises(ConfigError, match="runs on the euler grid, whose spacings are leading, trailing, linspace, "
                                          "karras, exponential; got 'uniform'"):
        D.levels(D.EULER, 10, TABLE, spacing="uniform")
    with pytest.raises(ConfigError, match="got 'cosine' \\(unknown spacing; all: leading, trailing"):
        D.levels(D.DPM, 10, TABLE, spacing="cosine")
