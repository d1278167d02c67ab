"""Each task's defaults in one table: the ``Pipeline`` task functions' keyword defaults and the CLI's argparse
defaults both read it, so the two cannot drift apart. The defaults that depend on the model (the image size, the
upscaler's guidance and noise level) are resolved by the functions here, called by the task alone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SizeRule = Literal["text", "native", "input", "input_x_factor"]


@dataclass(frozen=True)
class TaskDefaults:
    """``cfg_scale`` None: the model decides (``upscale_cfg_scale``); ``strength`` None: the task takes none.
    ``size``: where height / width come from when not given — "text" (``text_size``), "native" (``native_size``),
    "input" (the input image's or map's size), "input_x_factor" (the input's size times the latent factor)."""

    steps: int
    sampler: str
    cfg_scale: float | None
    size: SizeRule
    strength: float | None = None


TXT2IMG = TaskDefaults(20, "dpmpp_2m", 7.5, "text")
IMG2IMG = TaskDefaults(20, "dpmpp_2m", 7.5, "input", strength=0.75)
INPAINT = TaskDefaults(20, "dpmpp_2m", 7.5, "input", strength=1.0)
UPSCALE = TaskDefaults(50, "ddim", None, "input_x_factor", strength=1.0)
SAMPLE = TaskDefaults(50, "ddim", 1.0, "native")
LAYOUT2IMG = TaskDefaults(50, "ddim", 1.0, "native")
SEMANTIC2IMG = TaskDefaults(50, "ddim", 1.0, "input")  # no guidance: the map is the only condition

TASKS: dict[str, TaskDefaults] = {"txt2img": TXT2IMG, "img2img": IMG2IMG, "inpaint": INPAINT, "upscale": UPSCALE,
                                  "sample": SAMPLE, "layout2img": LAYOUT2IMG, "semantic2img": SEMANTIC2IMG}



@dataclass(frozen=True)
class DemoDefaults:
    """``ldm demo``: the embedded ShapesWorld models drawn at the settings they are judged at (docs/results.md), not
    the task defaults above, which are Stable Diffusion's: a small model trained with condition dropout wants less
    guidance than SD's 7.5. ``cfg_scale``: per demo task; a task not listed (or a model that cannot guide) uses 1."""

    steps: int = 20
    sampler: str = "ddim"
    n: int = 4
    rows: int = 6
    cfg_scale: tuple[tuple[str, float], ...] = (("txt2img", 5.0), ("grounded", 3.0), ("class", 3.0),
                                                ("layout", 3.0), ("inpaint", 1.0), ("mnist", 3.0))


DEMO = DemoDefaults()

UPSCALE_NOISE_LEVEL = 20  # the SD x4 upscaler's: diffusers' and Stability's demo default
UPSCALE_CFG_SCALE = 9.0  # the SD x4 upscaler's: diffusers' StableDiffusionUpscalePipeline default


def text_size(checkpoint_path: str | os.PathLike | None) -> int:
    """txt2img's default height and width: the training size of an embedded ShapesWorld model (64), else 512
    (SD 1.x and 2-base; a file's nominal ``autoencoder.resolution`` does not say what it was trained at)."""
    from ..default_model import ASSETS, DEFAULT_SIZE

    embedded = checkpoint_path is not None and Path(checkpoint_path).resolve().parent == ASSETS.resolve()
    return DEFAULT_SIZE if embedded else 512


def native_size(cfg: Any) -> int:
    """The resolution the model was trained at (its autoencoder's), 64 for pixel-space models."""
    return cfg.autoencoder.resolution if cfg.first_stage != "none" else 64


def text_hw(pipe: Any, height: int | None, width: int | None) -> tuple[int, int]:
    """The "text" size rule: a size left None is ``pipe.text_size``."""
    return (pipe.text_size if height is None else height), (pipe.text_size if width is None else width)


def native_hw(pipe: Any, height: int | None, width: int | None) -> tuple[int, int]:
    """The "native" size rule: a size left None (or 0) is ``native_size``."""
    return height or native_size(pipe.cfg), width or native_size(pipe.cfg)


def upscale_cfg_scale(kind: str, cfg_scale: float | None) -> float:
    """``cfg_scale``, or when None the model's: guidance for the SD x4 upscaler, none (1) for a concat LDM."""
    if cfg_scale is not None:
        return cfg_scale
    return UPSCALE_CFG_SCALE if kind == "text_upscale" else 1.0


def upscale_noise_level(noise_level: Any) -> Any:
    """The SD x4 upscaler's ``noise_level``, ``UPSCALE_NOISE_LEVEL`` when None (checked by the task)."""
    return UPSCALE_NOISE_LEVEL if noise_level is None else noise_level
