"""Shared by the diffusers parity tests: a tiny checkpoint beside its original-style YAML, our fp32 pipeline on it,
and a context in which any network connection fails the test."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from latent_diffusion.checkpoint import save_checkpoint
from latent_diffusion.models.ldm import LatentDiffusion
from latent_diffusion.pipelines import Pipeline


def checkpoint_with_yaml(model: LatentDiffusion, folder: Path, stem: str, original: dict) -> tuple[Path, Path]:
    """``folder/stem.safetensors`` (our keys) and ``folder/stem.yaml`` (the CompVis inference config ``original``)."""
    path = save_checkpoint(model, folder / f"{stem}.safetensors")
    config = folder / f"{stem}.yaml"
    config.write_text(yaml.safe_dump(original, sort_keys=False))
    return path, config


def fp32_pipeline(path: Path) -> Pipeline:
    """Our pipeline on ``path`` in fp32, as diffusers runs (our default is bf16 on AMX / AVX-512 BF16 CPUs)."""
    return Pipeline.from_checkpoint(path, precision="fp32")


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Every socket connect raises while diffusers loads (with ``local_files_only`` and ``HF_HUB_OFFLINE`` as well)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"the parity test tried to open a network connection: {args}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield
