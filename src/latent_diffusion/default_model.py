"""The embedded models: small LDMs trained by this project on ShapesWorld (64×64), one per task of the paper.

``assets/default-txt2img.safetensors`` (the default model) holds the UNet (EMA weights), the KL-f4 autoencoder and
the jointly trained word-level text encoder, with the config and ``scale_factor`` in the file (fp16 storage, loaded
as fp32). The task models (``assets/<task>-shapes.safetensors``, recipes ``configs/ldm/<task>-shapes.yaml``) are
laid out the same way. See docs/training.md for how they were trained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import CheckpointError

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default-txt2img.safetensors"
DEFAULT_SIZE = 64  # the resolution it was trained at
ASSETS = DEFAULT_MODEL.parent
# task -> embedded model file (the CLI's default --ckpt for that task's command)
TASK_MODELS: dict[str, str] = {
    "txt2img": "default-txt2img.safetensors",
    "class": "class-shapes.safetensors",
    "unconditional": "uncond-shapes.safetensors",
    "layout": "layout-shapes.safetensors",
    "semantic": "semantic-shapes.safetensors",
    "superres": "sr-shapes.safetensors",
    "inpaint": "inpaint-shapes.safetensors",
    "mnist": "class-mnist.safetensors",  # real handwritten digits, trained through the image-folder path
}


PLANNER_FILE = "planner-shapes.safetensors"  # the caption -> layout planner of grounded text-to-image


def planner_path() -> Path:
    """The embedded ShapesWorld caption -> layout planner (``ldm train planner``; docs/training.md)."""
    path = ASSETS / PLANNER_FILE
    if not path.is_file():
        raise CheckpointError(f"the embedded layout planner {path} is missing (a broken install?); reinstall the "
                              "package or pass --planner with a planner file")
    return path


def default_model_path() -> Path:
    return task_model_path("txt2img")


def task_model_path(task: str) -> Path:
    """The embedded ShapesWorld model for ``task`` (one of ``TASK_MODELS``)."""
    if task not in TASK_MODELS:
        raise CheckpointError(f"no embedded model for task {task!r}; embedded tasks: {list(TASK_MODELS)}")
    path = ASSETS / TASK_MODELS[task]
    if not path.is_file():
        raise CheckpointError(f"the embedded {task} model {path} is missing (a broken install?); reinstall the "
                              "package or pass --ckpt with a checkpoint")
    return path


def load_default_model(*, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):  # noqa: ANN201
    """The default model as a ``LatentDiffusion`` (eval mode)."""
    from .checkpoint import load_checkpoint

    return load_checkpoint(default_model_path(), dtype=dtype, device=device)
