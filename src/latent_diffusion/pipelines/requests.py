"""Typed requests for the generating commands: what to load (``ModelRequest``), how many images and where
(``RunRequest``), and each task's own inputs. The CLI builds them from its arguments; ``generate.py`` runs them.
Every default that does not need the model is the dataclass field's; the ones that do (size, the upscaler's
guidance) are resolved by the task (``defaults.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .defaults import IMG2IMG, INPAINT, UPSCALE
from .limits import Limits


@dataclass(frozen=True)
class ModelRequest:
    """``ckpt`` None: the task's embedded ShapesWorld model. ``dtype``: "fp32" / "fp16" / "bf16" weights;
    ``precision``: the UNet's compute precision ("auto" / "fp32" / "bf16"); the rest: ``Pipeline.set_fast_paths``."""

    ckpt: str | None = None
    config: str | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    ema: bool = False
    precision: str = "auto"
    deepcache: int | None = None
    attention_slice: int | None = None
    compile: bool = False
    vae_tiling: bool = False


@dataclass(frozen=True)
class RunRequest:
    """``n`` images into the folder ``out``, ``batch_size`` sampled together, image i with seed ``seed + i`` (None: a
    random seed); ``cfg_scale`` None: the model's (upscalers). ``quiet``: no progress, no messages."""

    out: str
    steps: int
    sampler: str
    cfg_scale: float | None
    seed: int | None = None
    n: int = 1
    batch_size: int = 1
    quiet: bool = False
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Txt2Img:
    prompt: str
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None
    guidance_rescale: float = 0.0


@dataclass(frozen=True)
class Img2Img:
    init_image: str
    prompt: str
    negative_prompt: str = ""
    strength: float = IMG2IMG.strength
    guidance_rescale: float = 0.0


@dataclass(frozen=True)
class Inpaint:
    init_image: str
    mask: str
    prompt: str
    negative_prompt: str = ""
    strength: float = INPAINT.strength
    guidance_rescale: float = 0.0
    paste_back: bool = False
    blend_latents: bool = False  # 9-channel models: also blend the unmasked latents (ordinary models always do)


@dataclass(frozen=True)
class Upscale:
    init_image: str
    prompt: str = ""
    negative_prompt: str = ""
    noise_level: int | None = None
    strength: float = UPSCALE.strength
    height: int | None = None
    width: int | None = None


@dataclass(frozen=True)
class Sample:
    class_label: str | None = None  # an integer or a class name, resolved against the model's classes
    height: int | None = None
    width: int | None = None


@dataclass(frozen=True)
class Layout2Img:
    """The layout one way: ``objects`` (class, x0, y0, x1, y1 as typed), held-out ShapesWorld scene ``example``,
    or a ``prompt`` the layout planner (``planner`` None: the embedded one) turns into boxes."""

    objects: tuple[tuple[str, ...], ...] | None = None
    example: int | None = None
    prompt: str | None = None
    planner: str | None = None
    height: int | None = None
    width: int | None = None


@dataclass(frozen=True)
class Semantic2Img:
    """The label map from the PNG ``map`` or held-out ShapesWorld scene ``example``."""

    map: str | None = None
    example: int | None = None
