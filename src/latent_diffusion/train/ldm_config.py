"""Typed config of a stage-2 (latent diffusion) training run, read from YAML; unknown keys are an error.

Sections: ``model`` (our ``DiffusionConfig``: UNet, schedule, parameterisation, conditioner, first stage),
``task`` (what the data supplies as the condition), ``first_stage_path`` (a trained autoencoder file, frozen),
``data`` (ShapesWorld, an image folder or tar shards: ``data/config.py``), ``diffusion`` (training-only knobs: loss weighting, condition dropout, EMA, caching),
``optim``, ``run`` and ``prior`` (DreamBooth prior preservation, off when absent). The task decides which item fields become the condition; the model config must agree
(e.g. ``superres`` needs a concat UNet with ``in_channels = latent + 3``), checked by ``check_task``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import DiffusionConfig, from_dict, to_dict
from ..data.config import DataConfig
from ..errors import ConfigError

# task -> (conditioning_key(s) it works with, conditioner kinds it works with, extra concat channels)
TASKS: dict[str, tuple[tuple[str | None, ...], tuple[str, ...]]] = {
    "unconditional": ((None,), ("none",)),
    "class": (("crossattn", "adm"), ("class", "none")),
    "txt2img": (("crossattn",), ("bert", "minilm", "clip", "open_clip")),
    "layout": (("crossattn",), ("layout",)),
    "semantic": (("concat",), ("none",)),
    "superres": (("concat",), ("none",)),
    "inpaint": (("concat", "hybrid"), ("none", "bert", "minilm", "clip", "open_clip")),
}


@dataclass
class DiffusionTrainConfig:
    min_snr_gamma: float | None = None  # Hang et al. 2023: weight min(SNR, γ) (per parameterisation); None = off
    offset_noise: float = 0.0  # ε += offset · N(0, 1) per (sample, channel)
    cond_drop_prob: float = 0.1  # replace the condition by the null one (empty caption / null class / zeros)
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # CompVis LitEma: decay_n = min(decay, (1 + n) / (10 + n))
    scale_factor: float | None = None  # None: 1 / std of the first batch's latents (paper appendix G)
    cache_latents: bool = False  # encode data.length items once (posterior mean; inpaint: the masked images too)
    sample_posterior: bool = False  # KL: sample z ~ q(z|x) instead of its mean (ignored with cache_latents)
    # with cache_latents: keep the encoded latents on disk in this folder, one file per (first stage file, data
    # config), so that re-runs, resumes and variants of a recipe skip the encoding; None = in memory only
    latent_cache_dir: str | None = None
    # train the text encoder with the UNet: None = the conditioner's own way (a jointly trained BERT-like encoder is
    # trained; CLIP, OpenCLIP and MiniLM stay frozen); true / false = train / freeze it
    train_text_encoder: bool | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"diffusion.cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"diffusion.ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ValueError(f"diffusion.min_snr_gamma must be > 0 or null, got {self.min_snr_gamma}")
        check_scale_factor(self.scale_factor, "diffusion.scale_factor", allow_none=True)
        if self.latent_cache_dir is not None and not self.cache_latents:
            raise ValueError("diffusion.latent_cache_dir keeps the latent cache on disk: it needs cache_latents: true")


@dataclass
class LDMOptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear learning-rate warm-up (optimiser steps)
    grad_clip: float | None = 1.0
    accumulate: int = 1

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.accumulate < 1:
            raise ValueError(f"optim.accumulate must be >= 1, got {self.accumulate}")


@dataclass
class PriorConfig:
    """DreamBooth's prior preservation (Ruiz et al. 2023): each micro-batch pairs its B instance samples with B
    samples of ``class_dir`` captioned ``class_prompt``; loss = instance loss + ``loss_weight`` · class loss. Class
    images the folder lacks (fewer than ``num_class_images``) are made by the init model before training."""

    class_prompt: str = ""  # e.g. "a photo of a dog": every class image's caption, and the prompt that makes them
    class_dir: str | None = None  # None: run.out_dir/class_images
    num_class_images: int = 100  # the folder is filled up to this many images (existing ones are kept and counted)
    loss_weight: float = 1.0
    sample_steps: int = 50  # DDIM steps of the class images the run makes
    sample_cfg: float = 7.5  # their classifier-free guidance scale
    sample_batch: int = 4  # images per sampling call (image k's seed does not depend on it)

    def __post_init__(self) -> None:
        if not isinstance(self.class_prompt, str) or not self.class_prompt.strip():
            raise ValueError(f"prior.class_prompt must be a non-empty caption (e.g. 'a photo of a dog'), got "
                             f"{self.class_prompt!r}")
        for name in ("num_class_images", "sample_steps", "sample_batch"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or \
                    getattr(self, name) < 1:
                raise ValueError(f"prior.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.loss_weight, (int, float)) or not 0.0 <= self.loss_weight < float("inf"):
            raise ValueError(f"prior.loss_weight must be a finite number >= 0, got {self.loss_weight!r}")
        if not isinstance(self.sample_cfg, (int, float)) or not 1.0 <= self.sample_cfg < float("inf"):
            raise ValueError(f"prior.sample_cfg must be a finite number >= 1, got {self.sample_cfg!r}")


# lightning.Trainer precision values run.precision passes through (the CPU ones: 32 and bf16-*)
PRECISIONS = ("32", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")


@dataclass
class LDMRunConfig:
    max_steps: int = 1000  # optimiser steps
    max_minutes: float | None = None  # also stop after this much training wall-clock (equal-compute comparisons)
    batch_size: int = 16  # per process; the global batch is batch_size · devices · num_nodes (· optim.accumulate)
    precision: str = "32"  # Lightning's names (PRECISIONS); 16-mixed / 16-true on GPUs only
    seed: int = 0
    epoch_steps: int = 250  # optimiser steps between checkpoints (one Lightning "epoch")
    log_every: int = 25
    out_dir: str = "runs/ldm"
    num_threads: int | None = None
    devices: int = 1  # processes per node (CPU: gloo DDP when > 1); all passed to lightning.Trainer unchanged
    num_nodes: int = 1  # machines; under torchrun / SLURM devices · num_nodes must be their world size
    strategy: str = "auto"  # Lightning's names: auto | ddp | ddp_spawn | fsdp (GPU only)
    accelerator: str = "cpu"  # cpu | gpu | cuda | auto
    sample_every_epoch: bool = True  # write a sample grid of a few prompts at each checkpoint
    sample_steps: int = 20
    # also keep each checkpoint's model as out_dir/models/step-NNNNNN.safetensors (EMA included; ~ quality vs steps)
    keep_epoch_models: bool = False
    # gradient checkpointing of the UNet's blocks (model.unet.use_checkpoint turns it on too): recompute activations
    # in backward instead of keeping them, less memory for more time; the same loss and gradients
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"run.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"run.max_minutes must be > 0 (or null: no time limit), got {self.max_minutes!r}")
        for name in ("max_steps", "batch_size", "epoch_steps", "log_every", "devices", "num_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"run.{name} must be >= 1, got {getattr(self, name)}")


# fields that may differ between a run and its resumption (they do not change the result's definition)
RESUMABLE_CHANGES = ("run.max_steps", "run.max_minutes", "run.out_dir", "run.num_threads", "run.log_every",
                     "run.sample_every_epoch", "run.sample_steps", "run.keep_epoch_models",
                     "run.gradient_checkpointing", "model.unet.use_checkpoint", "diffusion.latent_cache_dir",
                     "prior.sample_batch")


def _legacy_data_keys(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data.dataset`` (configs and checkpoints written before image folders) reads as ``data.source``."""
    section = data.get("data")
    if isinstance(section, dict) and "dataset" in section:
        section = dict(section)
        old = section.pop("dataset")
        if section.setdefault("source", old) != old:
            raise ConfigError(f"{where}: data.dataset={old!r} and data.source={section['source']!r} disagree; "
                              "use data.source")
        data = {**data, "data": section}
    return data


def _model_from_init(data: dict[str, Any]) -> bool:
    """The model is the ``init_from`` file's: ``model: from_init``, ``model: {from_init: true, ...}`` or no model."""
    m = data.get("model")
    return m == "from_init" or (isinstance(m, dict) and bool(m.get("from_init"))) or (
        m is None and data.get("init_from") is not None)


def _model_config(data: dict[str, Any], where: str) -> DiffusionConfig:
    """``model:`` as given, or the ``init_from`` file's config (stored, or inferred from its weights as
    ``load_checkpoint`` does) with the other keys of a ``model: {from_init: true, ...}`` mapping replacing its fields
    (e.g. ``parameterization: v`` for an SD 2 768-v file, which the weights cannot tell)."""
    raw = data.get("model")
    if not _model_from_init(data):
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k != "from_init"}
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"model must be a mapping or 'from_init', got {raw!r}")
        return DiffusionConfig.from_dict(raw or {})
    if data.get("init_from") is None:
        raise ConfigError("model: from_init takes the model from the init_from file; set init_from "
                          "(ldm train ldm ... --init-from PATH)")
    from .init_from import file_config

    changes = {k: v for k, v in raw.items() if k != "from_init"} if isinstance(raw, dict) else {}
    return DiffusionConfig.from_dict(_merged(to_dict(file_config(data["init_from"])), changes))


def _merged(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merged(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: init_skip must be a list of key patterns (strings), got {value!r}")
    return tuple(value)


@dataclass
class LDMTrainConfig:
    task: str = "txt2img"
    model: DiffusionConfig = field(default_factory=DiffusionConfig)
    first_stage_path: str | None = None  # autoencoder .safetensors (ours or an LDM / SD file); None = random init
    # start the UNet and conditioner from a checkpoint (SD 1.x / 2.x, a CompVis LDM, or one this project exported; a
    # fine-tune: fresh optimiser, fresh EMA, the file's scale_factor); None = random init. With model: from_init (or
    # no model:) the model config, first stage and text encoder are the file's too
    init_from: str | None = None
    # glob patterns on full state-dict keys that init_from does not load (they keep their initialisation: a new text
    # encoder and the cross-attention keys / values reading it), e.g. ["cond_stage_model.*",
    # "model.diffusion_model.*.attn2.to_[kv].*"]
    init_skip: tuple[str, ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    optim: LDMOptimConfig = field(default_factory=LDMOptimConfig)
    run: LDMRunConfig = field(default_factory=LDMRunConfig)
    prior: PriorConfig | None = None  # DreamBooth prior preservation; None = off

    def __post_init__(self) -> None:
        check_task(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "LDMTrainConfig":
        data = dict(data or {})
        data = _legacy_data_keys(data, where)
        sections = {"data": DataConfig, "diffusion": DiffusionTrainConfig, "optim": LDMOptimConfig,
                    "run": LDMRunConfig}
        accepted = sorted([*sections, "model", "task", "first_stage_path", "init_from", "init_skip", "prior"])
        unknown = sorted(set(data) - set(accepted))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {where}; accepted: {accepted}")
        parts: dict[str, Any] = {}
        for name, typ in sections.items():
            value = data.get(name) or {}
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section {name!r} must be a mapping, got {type(value).__name__}")
            parts[name] = from_dict(typ, value, where=f"{where}.{name}")
        prior = data.get("prior")
        if prior is not None:
            if not isinstance(prior, dict):
                raise ConfigError(f"{where}: section 'prior' must be a mapping (class_prompt, class_dir, "
                                  f"num_class_images, loss_weight, ...), got {type(prior).__name__}")
            parts["prior"] = from_dict(PriorConfig, prior, where=f"{where}.prior")
        try:
            model, first_stage_path = _model_config(data, where), data.get("first_stage_path")
            if first_stage_path is None and _model_from_init(data) and model.first_stage != "none":
                first_stage_path = data["init_from"]  # the file's own frozen autoencoder
            return cls(task=data.get("task", "txt2img"), model=model, first_stage_path=first_stage_path,
                       init_from=data.get("init_from"), init_skip=_patterns(data.get("init_skip"), where),
                       **parts)
        except (ValueError, TypeError) as e:
            if isinstance(e, ConfigError):
                raise ConfigError(f"{where}: {e}") from e
            raise ConfigError(f"{where}: {e}") from e

    @classmethod
    def from_yaml(cls, path: str | Path, *, data: dict[str, Any] | None = None,
                  init_from: str | None = None) -> "LDMTrainConfig":
        """Read ``path``; ``data`` replaces keys of its ``data:`` section first (the command line's ``--data``),
        ``init_from`` its ``init_from`` (``--init-from``)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        raw = yaml.safe_load(p.read_text())
        if not isinstance(raw, dict):
            raise ConfigError(f"{p} must hold a mapping (task, model, data, diffusion, optim, run)")
        if data:
            raw = _legacy_data_keys(raw, str(p))
            raw["data"] = {**(raw.get("data") or {}), **data}
        if init_from is not None:
            raw["init_from"] = init_from
        return cls.from_dict(raw, where=str(p))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace_run(self, **changes: Any) -> "LDMTrainConfig":
        return dataclasses.replace(self, run=dataclasses.replace(self.run, **changes))


def check_scale_factor(value: Any, name: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    import math

    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0 (1/std of the latents), got {value!r}")


def extra_concat_channels(task: str, latent_channels: int, n_segment_classes: int = 41) -> int:
    """Channels the task concatenates to the UNet input."""
    return {"semantic": n_segment_classes, "superres": 3, "inpaint": 1 + latent_channels}.get(task, 0)


# what a source needs for a task beyond images (data fields); shards carry images, captions and labels only
_FOLDER_TASK_NEEDS = {"semantic": ("segmentation_root", "num_segment_classes"), "layout": ("layout_json",)}


def segment_classes(cfg: LDMTrainConfig) -> int:
    """Label values of the semantic task's maps (the one-hot channels the UNet's input concatenates)."""
    from ..data.shapes import NUM_SEGMENT_CLASSES

    return NUM_SEGMENT_CLASSES if cfg.data.source == "shapes" else int(cfg.data.num_segment_classes or 0)


def check_task(cfg: LDMTrainConfig) -> None:
    """The task must be one the data source can supply and the model config must be able to take its condition.
    (The class count of an image folder is checked once the folder is read: ``check_class_count``.)"""
    from ..data.shapes import NUM_CLASSES, TASKS as ALL_TASKS

    if cfg.task not in ALL_TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; tasks: {list(ALL_TASKS)}")
    _check_prior(cfg)
    d = cfg.data
    if d.source == "shards" and cfg.task in _FOLDER_TASK_NEEDS:
        raise ConfigError(f"task {cfg.task!r} reads per-image annotations beside an image folder; train it from the "
                          "folder (data.source: folder), shards carry images, captions and class labels only")
    if d.source == "folder":
        lacking = [k for k in _FOLDER_TASK_NEEDS.get(cfg.task, ()) if getattr(d, k) in (None, "", 0)]
        if lacking:
            raise ConfigError(f"task {cfg.task!r} from an image folder needs data.{' and data.'.join(lacking)}")
    if d.source == "latents" and cfg.diffusion.cache_latents:
        raise ConfigError("data.source 'latents' is already encoded: turn off diffusion.cache_latents")
    if cfg.diffusion.cache_latents and d.source in ("folder", "shards") and (d.crop == "random" or d.flip):
        raise ConfigError("diffusion.cache_latents encodes one fixed view of each image (centre crop, no flip), but "
                          f"data asks for crop={d.crop!r}, flip={d.flip}: set data.crop: center and data.flip: false, "
                          "or turn off diffusion.cache_latents (or pre-encode with `ldm data encode`)")
    if d.buckets and cfg.diffusion.cache_latents:
        raise ConfigError("data.buckets cuts each image to its own bucket size; cached latents need one fixed view: "
                          "turn off diffusion.cache_latents")
    keys, kinds = TASKS[cfg.task]
    m = cfg.model
    if m.conditioning_key not in keys:
        raise ConfigError(f"task {cfg.task!r} needs model.conditioning_key in {list(keys)}, got {m.conditioning_key!r}")
    if m.conditioner.kind not in kinds:
        raise ConfigError(f"task {cfg.task!r} needs model.conditioner.kind in {list(kinds)}, got {m.conditioner.kind!r}")
    latent = m.unet.out_channels
    want = latent + extra_concat_channels(cfg.task, latent, segment_classes(cfg))
    if m.unet.in_channels != want:
        raise ConfigError(f"task {cfg.task!r} with {latent} latent channels needs model.unet.in_channels = {want}, "
                          f"got {m.unet.in_channels}")
    if m.first_stage != "none" and m.autoencoder.embed_dim != latent:
        raise ConfigError(f"model.autoencoder.embed_dim={m.autoencoder.embed_dim} (latent channels) does not match "
                          f"model.unet.out_channels={latent}")
    if m.first_stage == "none" and latent != 3:
        raise ConfigError(f"pixel-space training (first_stage: none) needs model.unet.out_channels = 3, got {latent}")
    if cfg.task == "class" and d.source == "shapes":
        _check_class_labels(cfg, NUM_CLASSES)
    check_scale_factor(m.scale_factor, "model.scale_factor")


def _check_prior(cfg: LDMTrainConfig) -> None:
    """Prior preservation captions its class images: it needs the text-to-image task and a text encoder."""
    if cfg.prior is None:
        return
    kind = cfg.model.conditioner.kind
    if cfg.task != "txt2img" or kind not in TASKS["txt2img"][1]:
        raise ConfigError(f"prior.class_prompt {cfg.prior.class_prompt!r} needs a text-to-image model (task txt2img "
                          f"and a text encoder, model.conditioner.kind in {list(TASKS['txt2img'][1])}); got task "
                          f"{cfg.task!r}, conditioner {kind!r}")
    if cfg.data.buckets:
        raise ConfigError("prior preservation pairs each instance sample with a square class image of data.size; "
                          "turn off data.buckets")


def class_image_dir(cfg: LDMTrainConfig) -> Path:
    """``prior.class_dir``, or ``run.out_dir/class_images``."""
    assert cfg.prior is not None
    return Path(cfg.prior.class_dir) if cfg.prior.class_dir else Path(cfg.run.out_dir) / "class_images"


def check_class_count(cfg: LDMTrainConfig, class_names: tuple[str, ...]) -> None:
    """The model must have a label for each of the data's classes (and a null label for condition dropout); the
    layout encoder a class for each category."""
    if cfg.task == "class":
        _check_class_labels(cfg, len(class_names))
    if cfg.task == "layout" and cfg.model.conditioner.layout_classes < len(class_names):
        raise ConfigError(f"the layout file has {len(class_names)} categories; model.conditioner.layout_classes is "
                          f"{cfg.model.conditioner.layout_classes}")


def _check_class_labels(cfg: LDMTrainConfig, data_classes: int) -> None:
    from ..models.conditioners import null_class, num_class_labels

    n, null = num_class_labels(cfg.model), null_class(cfg.model)
    if n is None or n < data_classes:
        raise ConfigError(f"task 'class' needs {data_classes} class labels (conditioner n_classes or unet.num_classes),"
                          f" got {n}")
    if cfg.diffusion.cond_drop_prob > 0 and (null is None or not data_classes <= null < n):
        raise ConfigError(f"condition dropout (diffusion.cond_drop_prob={cfg.diffusion.cond_drop_prob}) needs a "
                          f"'no class' label outside the dataset's {data_classes} classes: set "
                          f"model.conditioner.null_class in [{data_classes}, {n}), e.g. n_classes = {data_classes + 1}"
                          f" and null_class = {data_classes}; got null_class={null}")


def config_value(d: dict[str, Any], dotted: str) -> Any:
    """``d``'s value at a dotted name from ``diff_configs`` (None where the path is missing)."""
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def diff_configs(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields where two config dicts differ."""
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        name = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out
