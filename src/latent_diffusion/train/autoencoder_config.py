"""Typed config of a stage-1 (autoencoder) training run, read from YAML; unknown keys are an error.

Learning rate (the paper's recipe, CompVis ``main.py``): ``lr = base_lr × batch_size × accumulate`` (× number of
devices, 1 here) when ``optim.scale_lr`` is true, else ``lr = base_lr``. CompVis' stage-1 configs use
``base_lr = 4.5e-6`` with batch 12 for hundreds of thousands of steps; our minute-budget configs use a larger
``base_lr`` and say so.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import AutoencoderConfig, VQConfig, from_dict, to_dict
from ..data.autoencoder_data import ImageDataConfig
from ..errors import ConfigError
from ..losses.autoencoder_loss import AutoencoderLossConfig

GROUPS = 32  # GroupNorm groups in the CompVis blocks: every level's width must be a multiple


@dataclass
class OptimConfig:
    base_lr: float = 4.5e-6
    scale_lr: bool = True  # lr = base_lr × batch_size × accumulate (the paper's recipe)
    betas: tuple[float, float] = (0.5, 0.9)
    grad_clip: float | None = 1.0  # max global L2 norm per optimiser step (None = off)
    accumulate: int = 1  # batches per optimiser step
    learn_logvar: bool = True  # KL: train the loss' log-variance with the autoencoder (CompVis leaves it at init)

    def __post_init__(self) -> None:
        if self.base_lr <= 0:
            raise ValueError(f"optim.base_lr must be > 0, got {self.base_lr}")
        if self.accumulate < 1:
            raise ValueError(f"optim.accumulate must be >= 1, got {self.accumulate}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class RunConfig:
    max_steps: int = 1000  # training batches
    batch_size: int = 8
    precision: str = "32"  # 32 | bf16-mixed (never fp16 on CPU)
    seed: int = 0
    epoch_steps: int = 250  # every this many steps: validate, write a reconstruction grid, checkpoint
    log_every: int = 10
    out_dir: str = "runs/autoencoder"
    num_threads: int | None = None  # torch intra-op threads (None = torch's default)
    grid_images: int = 8

    def __post_init__(self) -> None:
        if self.precision not in ("32", "bf16-mixed"):
            raise ValueError(f"run.precision must be '32' or 'bf16-mixed', got {self.precision!r}")
        for name in ("max_steps", "batch_size", "epoch_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"run.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class AutoencoderTrainConfig:
    kind: str = "kl"  # kl | vq
    f: int | None = None  # optional: the intended downsampling factor, checked against model.ch_mult
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.kind not in ("kl", "vq"):
            raise ValueError(f"kind must be 'kl' or 'vq', got {self.kind!r}")
        m = self.model
        if self.kind == "kl" and not m.double_z:
            raise ValueError("kind='kl' needs model.double_z=true (mean and log-variance)")
        if self.kind == "vq" and not isinstance(m, VQConfig):
            raise ValueError("kind='vq' needs a VQ model config (n_embed, embed_dim, beta)")
        if self.f is not None:
            check_downsample_factor(self.f, m.ch_mult)
        bad = [m.ch * k for k in m.ch_mult if (m.ch * k) % GROUPS]
        if bad:
            raise ValueError(f"model.ch × ch_mult gives widths {bad} that are not multiples of {GROUPS} "
                             f"(GroupNorm groups); got ch={m.ch}, ch_mult={list(m.ch_mult)}")
        f = m.downsample_factor
        if self.data.size % f:
            raise ValueError(f"data.size={self.data.size} is not divisible by the downsampling factor f={f}")
        if self.loss.disc_start >= self.run.max_steps and self.loss.disc_factor > 0:
            warnings.warn(f"loss.disc_start={self.loss.disc_start} >= run.max_steps={self.run.max_steps}: the "
                          "discriminator will never switch on in this run", stacklevel=2)

    @property
    def lr(self) -> float:
        o = self.optim
        return o.base_lr * self.run.batch_size * o.accumulate if o.scale_lr else o.base_lr

    # -- serialisation ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "AutoencoderTrainConfig":
        data = dict(data or {})
        kind = data.get("kind", "kl")
        sections = {"model": VQConfig if kind == "vq" else AutoencoderConfig, "loss": AutoencoderLossConfig,
                    "data": ImageDataConfig, "optim": OptimConfig, "run": RunConfig}
        unknown = sorted(set(data) - set(sections) - {"kind", "f"})
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {where}; accepted: {sorted([*sections, 'kind', 'f'])}")
        parts = {}
        for name, typ in sections.items():
            value = data.get(name) or {}
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section {name!r} must be a mapping, got {type(value).__name__}")
            if name == "model" and kind == "kl":
                value = {"double_z": True} | value
            parts[name] = from_dict(typ, value, where=f"{where}.{name}")
        try:
            return cls(kind=kind, f=data.get("f"), **parts)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e

    @classmethod
    def from_yaml(cls, path: str | Path) -> "AutoencoderTrainConfig":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        data = yaml.safe_load(p.read_text())
        if not isinstance(data, dict):
            raise ConfigError(f"{p} must hold a mapping of sections (kind, model, loss, data, optim, run)")
        return cls.from_dict(data, where=str(p))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def check_downsample_factor(f: int, ch_mult: tuple[int, ...]) -> None:
    """f must be a power of two and equal 2 ** (len(ch_mult) - 1)."""
    check_power_of_two(f)
    levels = int(math.log2(f)) + 1
    if len(ch_mult) != levels:
        raise ValueError(f"ch_mult {list(ch_mult)} has {len(ch_mult)} levels, i.e. f = {2 ** (len(ch_mult) - 1)}; "
                         f"f = {f} needs len(ch_mult) = log2(f) + 1 = {levels}")


def ch_mult_for(f: int, widths: tuple[int, ...] = (1, 2, 2, 4, 4)) -> tuple[int, ...]:
    """A ch_mult with log2(f) + 1 levels (the sweep's models): the first entries of ``widths``, padded with its last."""
    check_power_of_two(f)
    n = int(math.log2(f)) + 1
    return tuple(widths[i] if i < len(widths) else widths[-1] for i in range(n))


def check_power_of_two(f: Any) -> None:
    if isinstance(f, bool) or not isinstance(f, int) or f < 1 or f & (f - 1):
        raise ValueError(f"downsampling factor f must be a power of two (1, 2, 4, 8, 16, ...), got {f!r}")
