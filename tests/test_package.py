"""The package's front door: ``from latent_diffusion import Pipeline`` (and the other top-level names) works, plain
``import latent_diffusion`` stays light (no torch), and ``ldm --version`` answers."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_top_level_names_resolve_lazily() -> None:
    code = ("import sys, latent_diffusion as ld; light = 'torch' not in sys.modules; "
            "from latent_diffusion import Pipeline, load_checkpoint, save_checkpoint, DiffusionConfig, LDMError; "
            "print(light, Pipeline.__name__, load_checkpoint.__module__, ld.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == ["True", "Pipeline", "latent_diffusion.checkpoint"] and out[3] != ""


def test_an_unknown_name_is_an_attribute_error() -> None:
    import latent_diffusion

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        latent_diffusion.Nope  # noqa: B018


def test_ldm_version() -> None:
    r = subprocess.run([sys.executable, "-m", "latent_diffusion.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("ldm (latent-diffusion) ")
