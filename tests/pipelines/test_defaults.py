"""The task defaults table (pipelines/defaults.py) is what both the Pipeline task methods and the CLI use."""

from __future__ import annotations

import argparse
import inspect
from types import SimpleNamespace

import pytest

from latent_diffusion.pipelines import defaults
from latent_diffusion.pipelines.cli_commands import add_generate_commands
from latent_diffusion.pipelines.pipeline import Pipeline

FIELDS = {"steps": "steps", "sampler": "sampler", "cfg_scale": "cfg", "strength": "strength"}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    sub = argparse.ArgumentParser().add_subparsers()
    add_generate_commands(sub)
    return sub.choices


@pytest.mark.parametrize("task", sorted(defaults.TASKS))
def test_method_and_cli_defaults_come_from_the_table(task: str) -> None:
    table = defaults.TASKS[task]
    params = inspect.signature(getattr(Pipeline, task)).parameters
    cli = _parsers()[task]
    for field, flag in FIELDS.items():
        value = getattr(table, field)
        if field in params:
            assert params[field].default == value, (task, field)
        if field != "strength" or value is not None:
            assert cli.get_default(flag) == value, (task, flag)


def test_the_cli_keeps_its_documented_defaults() -> None:
    p = _parsers()
    for task in ("txt2img", "img2img", "inpaint"):
        assert (p[task].get_default("steps"), p[task].get_default("sampler"), p[task].get_default("cfg")) == (
            20, "dpmpp_2m", 7.5)
    for task in ("sample", "layout2img", "semantic2img"):
        assert (p[task].get_default("steps"), p[task].get_default("sampler"), p[task].get_default("cfg")) == (
            50, "ddim", 1.0)
    assert (p["upscale"].get_default("steps"), p["upscale"].get_default("cfg")) == (50, None)


def test_model_dependent_defaults() -> None:
    assert defaults.upscale_cfg_scale("text_upscale", None) == 9.0
    assert defaults.upscale_cfg_scale("concat", None) == 1.0
    assert defaults.upscale_cfg_scale("text_upscale", 3.0) == 3.0
    assert defaults.upscale_noise_level(None) == 20 and defaults.upscale_noise_level(5) == 5
    pipe = SimpleNamespace(text_size=512, cfg=SimpleNamespace(first_stage="none"))
    assert defaults.text_hw(pipe, None, 64) == (512, 64)
    assert defaults.native_hw(pipe, None, 0) == (64, 64)  # 0 too means the model's native size
