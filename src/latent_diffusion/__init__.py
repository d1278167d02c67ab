"""Latent Diffusion Models (Rombach et al., CVPR 2022) in plain PyTorch, with the original checkpoint keys.

    from latent_diffusion import Pipeline
    pipe = Pipeline.from_checkpoint()            # the embedded text-to-image model; or a path to an SD / LDM file
    images = pipe.txt2img("a red circle above a blue square", seed=0)

The names below are imported on first use, so ``import latent_diffusion`` (and ``ldm --help``) stays light.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("latent-diffusion")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

_EXPORTS = {"Pipeline": "pipelines.pipeline", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
            "DiffusionConfig": "config", "LDMError": "errors"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'latent_diffusion' has no attribute {name!r}")
