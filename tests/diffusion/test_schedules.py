"""Noise schedules and the timestep <-> σ map, against diffusers' schedulers as the oracle (timestep spacing:
test_discretization.py).

Tolerances: β tables 2e-6 relative, σ 5e-5 relative (diffusers computes them in float32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_diffusion.diffusion import schedules as S

from oracle import needs_oracle, oracle_names
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' np.array(tensor) on numpy 2
DDIMScheduler, EulerDiscreteScheduler = oracle_names("diffusers", "DDIMScheduler", "EulerDiscreteScheduler")
(hf_rescale,) = oracle_names("diffusers.schedulers.scheduling_ddim", "rescale_zero_terminal_snr")

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
          set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False)


def sd_alphas_cumprod() -> torch.Tensor:
    return S.alphas_cumprod_from_betas(S.make_beta_schedule("scaled_linear", 1000, 0.00085, 0.012))


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-6) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=0)


@needs_oracle
@pytest.mark.parametrize("ours,theirs", [(("scaled_linear", 0.00085, 0.012), "scaled_linear"),
                                         (("linear_beta", 1e-4, 2e-2), "linear"),
                                         (("cosine", 1e-4, 2e-2), "squaredcos_cap_v2")])
def test_betas_match_diffusers(ours, theirs):
    name, start, end = ours
    betas = S.make_beta_schedule(name, 1000, start, end)
    ref = DDIMScheduler(beta_start=start, beta_end=end, beta_schedule=theirs).betas
    assert close(betas, ref, 2e-6)


@needs_oracle
def test_rescale_zero_terminal_snr_matches_diffusers():
    betas = S.make_beta_schedule("scaled_linear", 1000, 0.00085, 0.012)
    ours = S.rescale_zero_terminal_snr(betas)
    # diffusers rescales in float32 (a cumprod of 1000 factors, a square root, a shift towards ᾱ_T = 0); ours is
    # float64. Measured on an AMD EPYC: max abs difference 5.5e-6, max relative 2e-4 (an AMX Xeon passed 1e-6 / 1e-5,
    # the vectorised float32 cumprod rounds differently by machine)
    torch.testing.assert_close(ours.float(), hf_rescale(betas.float()), rtol=5e-4, atol=2e-5)
    ac = S.alphas_cumprod_from_betas(ours)
    assert ac[-1] == 0 and torch.isclose(ac[0], S.alphas_cumprod_from_betas(betas)[0])


@needs_oracle
def test_sigmas_match_diffusers():
    ref = EulerDiscreteScheduler.from_config(SD).sigmas[:-1].flip(0)  # diffusers keeps them descending, plus a 0
    # diffusers' float32 ᾱ loses digits in 1 - ᾱ near t = 0 (ᾱ_0 = 0.99915): 1.3e-5 relative there
    assert close(S.sigmas_from_alphas_cumprod(sd_alphas_cumprod()), ref, 5e-5)


@needs_oracle
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
