"""``SampleOptions``: every bad setting is refused when the options are built, with a one-line ``ConfigError`` naming
the value and what is accepted; good ones are kept as given."""

from __future__ import annotations

import dataclasses

import pytest

from latent_diffusion.diffusion import SampleOptions
from latent_diffusion.errors import ConfigError


def test_defaults_and_frozen():
    o = SampleOptions(steps=20)
    assert (o.cfg_scale, o.guidance_rescale, o.eta, o.s_noise, o.spacing, o.steps_offset, o.start_step,
            o.progress) == (1.0, 0.0, None, 1.0, None, 1, 0, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.steps = 5
    assert dataclasses.replace(o, progress="image 1/2").progress == "image 1/2"
    with pytest.raises(TypeError):
        SampleOptions(20)  # keyword-only: no positional mix-ups


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"steps": 2.5}, "steps must be an integer >= 1, got 2.5"),
    ({"steps": True}, "steps must be an integer >= 1, got True"),
    ({"cfg_scale": float("nan")}, "cfg_scale must be a finite number \\(1 = no guidance\\), got nan"),
    ({"guidance_rescale": 1.5}, "guidance_rescale must be in \\[0, 1\\], got 1.5"),
    ({"eta": -0.1}, "eta must be a finite number >= 0 or None \\(the sampler's default\\), got -0.1"),
    ({"s_noise": -1}, "s_noise must be a finite number >= 0, got -1"),
    ({"spacing": "cosine"}, "unknown spacing 'cosine'; accepted: leading, trailing, linspace, uniform, karras, "
                            "exponential or None"),
    ({"steps_offset": -1}, "steps_offset must be an integer >= 0, got -1"),
    ({"start_step": 10}, "start_step must be in \\[0, 9\\] for 10 steps, got 10"),
    ({"start_step": -1}, "start_step must be in \\[0, 9\\] for 10 steps, got -1"),
    ({"progress": 1}, "progress must be a bool or a label string, got 1"),
])
def test_bad_values_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        SampleOptions(**{"steps": 10, **kwargs})
