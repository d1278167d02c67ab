"""``DenoisingLoss``: the ε / x0 / v regression targets and min-SNR weighting on known tensors (exact up to fp32
arithmetic: 1e-6), and the parameterisation check."""

from __future__ import annotations

import pytest
import torch

from latent_diffusion.diffusion import DenoisingLoss
from latent_diffusion.diffusion.parameterization import PARAMETERIZATIONS, training_target, v_target
from latent_diffusion.errors import ConfigError

AC = torch.tensor([0.99, 0.5, 0.01])  # ᾱ_t of a three-step schedule


def batch():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    return x0, noise, torch.tensor([0, 2])


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_the_exact_output_has_zero_loss(parameterization):
    x0, noise, t = batch()
    a, s = AC[t].sqrt().view(2, 1, 1, 1), (1 - AC[t]).sqrt().view(2, 1, 1, 1)
    target = training_target(x0, noise, a, s, parameterization)
    exact = lambda x_t, tt, cond: target  # noqa: E731
    assert DenoisingLoss(parameterization)(exact, x0, noise, t, None, AC) == 0
    assert DenoisingLoss(parameterization, 5.0)(exact, x0, noise, t, None, AC) == 0


def test_v_loss_with_min_snr_by_hand():
    x0, noise, t = batch()
    seen = {}

    def zero(x_t, tt, cond):
        seen["x_t"], seen["t"] = x_t, tt
        return torch.zeros_like(x_t)

    loss = DenoisingLoss("v", min_snr_gamma=5.0)(zero, x0, noise, t, None, AC)
    a, s = AC[t].sqrt().view(2, 1, 1, 1), (1 - AC[t]).sqrt().view(2, 1, 1, 1)
    snr = (AC[t] / (1 - AC[t]))
    want = (snr.clamp(max=5.0) / (snr + 1) * v_target(x0, noise, a, s).pow(2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(seen["x_t"], a * x0 + s * noise, rtol=0, atol=0)
    assert torch.equal(seen["t"], t)  # the model sees the integer timesteps as given


def test_bad_settings():
    with pytest.raises(ConfigError, match="unknown parameterization 'epsilon'; accepted: eps, x0, v"):
        DenoisingLoss("epsilon")
    with pytest.raises(ConfigError, match="min_snr_gamma must be > 0 or None, got 0"):
        DenoisingLoss("eps", 0)
