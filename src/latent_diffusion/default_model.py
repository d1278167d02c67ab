"""The embedded default model: a small text-to-image LDM trained by this project on ShapesWorld (64×64).

``assets/default-txt2img.safetensors`` holds the UNet (EMA weights), the KL-f4 autoencoder and the jointly trained
word-level text encoder, with the config and ``scale_factor`` in the file (fp16 storage, loaded as fp32).
See docs/training.md for how it was trained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import CheckpointError

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default-txt2img.safetensors"
DEFAULT_SIZE = 64  # the resolution it was trained at


def default_model_path() -> Path:
    if not DEFAULT_MODEL.is_file():
        raise CheckpointError(f"the embedded default model {DEFAULT_MODEL} is missing (a broken install?); "
                              "reinstall the package or pass --ckpt with a checkpoint")
    return DEFAULT_MODEL


def load_default_model(*, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):  # noqa: ANN201
    """The default model as a ``LatentDiffusion`` (eval mode)."""
    from .checkpoint import load_checkpoint

    return load_checkpoint(default_model_path(), dtype=dtype, device=device)
