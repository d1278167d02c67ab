"""Noise schedules, timestep spacing and the timestep <-> σ map, against diffusers' schedulers as the oracle.

Tolerances: β tables 2e-6 relative, σ 5e-5 relative (diffusers computes them in float32), timesteps exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_diffusion.diffusion import schedules as S
from latent_diffusion.errors import ConfigError

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' np.array(tensor) on numpy 2
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,  # noqa: E402
                       PNDMScheduler, UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as hf_rescale  # noqa: E402

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
          set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False)
STEPS = [1, 2, 7, 10, 17, 50, 250, 999]


def sd_alphas_cumprod() -> torch.Tensor:
    return S.alphas_cumprod_from_betas(S.make_beta_schedule("scaled_linear", 1000, 0.00085, 0.012))


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-6) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=0)


@pytest.mark.parametrize("ours,theirs", [(("scaled_linear", 0.00085, 0.012), "scaled_linear"),
                                         (("linear_beta", 1e-4, 2e-2), "linear"),
                                         (("cosine", 1e-4, 2e-2), "squaredcos_cap_v2")])
def test_betas_match_diffusers(ours, theirs):
    name, start, end = ours
    betas = S.make_beta_schedule(name, 1000, start, end)
    ref = DDIMScheduler(beta_start=start, beta_end=end, beta_schedule=theirs).betas
    assert close(betas, ref, 2e-6)


def test_rescale_zero_terminal_snr_matches_diffusers():
    betas = S.make_beta_schedule("scaled_linear", 1000, 0.00085, 0.012)
    ours = S.rescale_zero_terminal_snr(betas)
    # diffusers rescales in float32 (a cumprod of 1000 factors, a square root, a shift towards ᾱ_T = 0); ours is
    # float64. Measured on an AMD EPYC: max abs difference 5.5e-6, max relative 2e-4 (an AMX Xeon passed 1e-6 / 1e-5,
    # the vectorised float32 cumprod rounds differently by machine)
    torch.testing.assert_close(ours.float(), hf_rescale(betas.float()), rtol=5e-4, atol=2e-5)
    ac = S.alphas_cumprod_from_betas(ours)
    assert ac[-1] == 0 and torch.isclose(ac[0], S.alphas_cumprod_from_betas(betas)[0])


def test_sigmas_match_diffusers():
    ref = EulerDiscreteScheduler.from_config(SD).sigmas[:-1].flip(0)  # diffusers keeps them descending, plus a 0
    # diffusers' float32 ᾱ loses digits in 1 - ᾱ near t = 0 (ᾱ_0 = 0.99915): 1.3e-5 relative there
    assert close(S.sigmas_from_alphas_cumprod(sd_alphas_cumprod()), ref, 5e-5)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", STEPS)
def test_discrete_spacing_matches_ddim(spacing, steps):
    sched = DDIMScheduler.from_config({**SD, "timestep_spacing": spacing})
    sched.set_timesteps(steps)
    assert S.spaced_timesteps(steps, spacing).tolist() == sched.timesteps.double().tolist()


@pytest.mark.parametrize("steps", [2, 10, 17, 50])
def test_plms_uses_the_ddim_grid(steps):
    sched = PNDMScheduler.from_config(SD)
    sched.set_timesteps(steps)
    ts = sched.timesteps.tolist()  # n + 1 calls: the second timestep is evaluated twice
    assert [ts[0]] + ts[2:] == S.spaced_timesteps(steps, "leading").tolist()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", STEPS)
def test_fractional_spacing_matches_euler(spacing, steps):
    sched = EulerDiscreteScheduler.from_config({**SD, "timestep_spacing": spacing})
    sched.set_timesteps(steps)
    ours = S.spaced_timesteps(steps, spacing, integer=False)
    assert torch.equal(ours.float(), sched.timesteps)


@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, UniPCMultistepScheduler])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", STEPS)
def test_multistep_spacing_matches_dpm_solver(cls, spacing, steps):
    sched = cls.from_config({**SD, "timestep_spacing": spacing})
    sched.set_timesteps(steps)
    if sched.timesteps.max() > 999:  # diffusers would index past the table; ours refuses
        with pytest.raises(ConfigError, match="outside"):
            S.spaced_timesteps(steps, spacing, drop_last=True)
        return
    assert S.spaced_timesteps(steps, spacing, drop_last=True).tolist() == sched.timesteps.double().tolist()


def test_trailing_has_exactly_steps_entries():
    # np.arange(T, 0, -T/n) yields n + 1 values for some n (61, 103, ...); ours never does
    for n in (61, 103, 121):
        t = S.spaced_timesteps(n, "trailing")
        assert len(t) == n and t[0] == 999 and t.min() >= 0


def test_karras_sigmas_match_dpm_solver():
    sched = DPMSolverMultistepScheduler.from_config({**SD, "use_karras_sigmas": True})
    sched.set_timesteps(12)
    sig = S.sigmas_from_alphas_cumprod(sd_alphas_cumprod())
    ours = S.karras_sigmas(12, float(sig[0]), float(sig[-1]))
    assert ours[-1] == 0 and len(ours) == 13
    assert close(ours, sched.sigmas, 5e-5)  # σ_min from float64 vs float32 ᾱ_0


def test_sigma_to_t_matches_diffusers_log_interpolation():
    sched = EulerDiscreteScheduler.from_config(SD)
    log_sigmas = S.sigmas_from_alphas_cumprod(sd_alphas_cumprod()).log()
    sigma = torch.tensor([14.0, 3.3, 1.0, 0.2, 0.05, 0.0292])
    ref = sched._sigma_to_t(sigma.numpy(), log_sigmas.numpy())
    assert np.allclose(S.sigma_to_t(sigma, log_sigmas).numpy(), ref, atol=1e-4)
    assert torch.equal(S.sigma_to_t(sigma, log_sigmas, quantize=True), torch.from_numpy(ref).round())


def test_t_sigma_round_trip_and_integer_nodes():
    log_sigmas = S.sigmas_from_alphas_cumprod(sd_alphas_cumprod()).log()
    t = torch.tensor([0.0, 0.3, 1.5, 52.58, 500.0, 998.9, 999.0], dtype=torch.float64)
    assert torch.allclose(S.sigma_to_t(S.t_to_sigma(t, log_sigmas), log_sigmas), t, atol=1e-9)
    ints = torch.tensor([0, 10, 999])
    assert torch.allclose(S.t_to_sigma(ints, log_sigmas), log_sigmas.exp()[ints], rtol=1e-12)


@pytest.mark.parametrize("steps", [0, -1, 1001, 2.5, True])
def test_bad_step_counts_are_config_errors(steps):
    with pytest.raises(ConfigError, match="steps must be an integer in \\[1, 1000\\]"):
        S.spaced_timesteps(steps)


def test_leading_offset_past_the_end_and_unknown_spacing():
    with pytest.raises(ConfigError, match="outside \\[0, 999\\].*trailing"):
        S.spaced_timesteps(1000, "leading")
    assert S.spaced_timesteps(1000, "trailing").tolist() == list(range(999, -1, -1))
    with pytest.raises(ConfigError, match="leading, trailing, linspace"):
        S.spaced_timesteps(10, "uniform")
