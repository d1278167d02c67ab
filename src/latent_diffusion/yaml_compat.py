"""Read a model YAML: our own layout (``DiffusionConfig`` fields) or an original CompVis / Stable Diffusion
inference YAML (``model: {target, params: {unet_config, first_stage_config, cond_stage_config, ...}}``).

``target:`` names are looked up in ``registry`` tables (never imported). Keys that only matter for training in the
original code (``monitor``, ``use_fp16``, ``scheduler_config``, ...) are accepted and ignored; any other
unknown key is a ``ConfigError`` naming it and the file. ``use_checkpoint`` (gradient checkpointing) is read into
``UNetConfig.use_checkpoint``: it acts only in training, so inference is the same either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from . import registry
from .config import (AutoencoderConfig, ConditionerConfig, DiffusionConfig, LowScaleConfig, UNetConfig, VQConfig,
                     from_dict)
from .errors import ConfigError

# original keys with no effect on inference numerics
_IGNORED_MODEL = {
    "num_timesteps_cond", "log_every_t", "first_stage_key", "cond_stage_key", "image_size", "channels",
    "cond_stage_trainable", "monitor", "use_ema", "scheduler_config", "unet_trainable", "ckpt_path", "ignore_keys",
    "load_only_unet", "scale_by_std", "concat_mode", "cond_stage_forward", "loss_type", "original_elbo_weight",
    "l_simple_weight", "learn_logvar", "logvar_init", "use_positional_encodings", "clip_denoised", "finetune_keys",
    "masked_image_key", "depth_stage_config", "make_it_fit", "reset_ema", "reset_num_ema_updates", "low_scale_key",
    "v_posterior", "given_betas", "embedding_dropout", "noise_aug_config", "personalization_config",
}
_IGNORED_UNET = {"image_size", "use_fp16", "dims", "n_embed", "spatial_transformer_attn_type",
                 "adm_in_channels"}
_IGNORED_DD = {"attn_type"}
_IGNORED_FIRST = {"monitor", "lossconfig", "ckpt_path", "ignore_keys", "image_key", "colorize_nlabels",
                  "remap", "sane_index_shape"}
_IGNORED_COND = {"key", "version", "device", "freeze", "arch", "max_length", "ucg_rate", "use_tokenizer",
                 "tokenizer_name"}
_COND_PARAMS = {"n_classes", "embed_dim", "layer"}


def load_yaml_config(path: str | Path) -> DiffusionConfig:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        if "model" in data and isinstance(data["model"], dict) and "params" in data["model"]:
            return from_original(data, where=str(p))
        return DiffusionConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def _check_keys(params: dict[str, Any], known: set[str], ignored: set[str], where: str) -> None:
    unknown = sorted(set(params) - known - ignored)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; accepted: {sorted(known | ignored)}")


def _target(section: dict[str, Any], table: Any, where: str) -> str:
    target = section.get("target")
    if target not in table:
        raise ConfigError(f"unknown target {target!r} in {where}; known targets: {sorted(table)}")
    return target


def _unet(section: dict[str, Any], where: str) -> UNetConfig:
    _target(section, registry.UNET_TARGETS, where)
    params = dict(section.get("params") or {})
    if params.get("dims", 2) != 2:
        raise ConfigError(f"{where}: only 2-D UNets are supported, got dims={params['dims']}")
    if "disable_self_attentions" in params:  # one flag per level; the middle block: disable_middle_self_attn
        flags = params.pop("disable_self_attentions")
        params["disable_self_attn"] = tuple(bool(f) for f in flags) if flags else False
    known = {f for f in UNetConfig.__dataclass_fields__}
    _check_keys(params, known, _IGNORED_UNET, where)
    return from_dict(UNetConfig, {k: v for k, v in params.items() if k in known}, where=where)


def _first_stage(section: dict[str, Any], where: str) -> tuple[str, AutoencoderConfig]:
    kind = registry.FIRST_STAGE_TARGETS[_target(section, registry.FIRST_STAGE_TARGETS, where)]
    params = dict(section.get("params") or {})
    if kind == "none":
        return kind, AutoencoderConfig()
    _check_keys(params, {"ddconfig", "embed_dim", "n_embed"}, _IGNORED_FIRST, where)
    dd = dict(params.get("ddconfig") or {})
    cls = VQConfig if kind == "vq" else AutoencoderConfig
    known = set(cls.__dataclass_fields__)
    _check_keys(dd, known, _IGNORED_DD, where + ".ddconfig")
    values = {k: v for k, v in dd.items() if k in known}
    for k in ("embed_dim", "n_embed"):
        if k in params:
            values[k] = params[k]
    return kind, from_dict(cls, values, where=where)


def _cond_stage(section: Any, where: str) -> ConditionerConfig:
    if isinstance(section, str):  # "__is_unconditional__" written bare
        section = {"target": section}
    target = _target(section or {"target": "__is_unconditional__"}, registry.COND_STAGE_TARGETS, where)
    values = dict(registry.COND_STAGE_TARGETS[target])
    params = dict((section or {}).get("params") or {})
    _check_keys(params, _COND_PARAMS, _IGNORED_COND, where)
    values.update({k: v for k, v in params.items() if k in _COND_PARAMS})
    if values.get("layer") == "hidden":
        raise ConfigError(f"{where}: layer='hidden' with a layer_idx is not supported; use 'last' or 'penultimate'")
    return from_dict(ConditionerConfig, values, where=where)


def _low_scale(section: Any, where: str) -> LowScaleConfig | None:
    """``low_scale_config`` of a LatentUpscaleDiffusion: ImageConcatWithNoiseAugmentation's schedule and maximum."""
    if section is None:
        return None
    target = section.get("target") if isinstance(section, dict) else section
    if target not in registry.LOW_SCALE_TARGETS:
        raise ConfigError(f"unknown target {target!r} in {where}; known targets: {list(registry.LOW_SCALE_TARGETS)}")
    params = dict((section.get("params") if isinstance(section, dict) else None) or {})
    _check_keys(params, {"noise_schedule_config", "max_noise_level"}, {"to_cuda"}, where)
    schedule = dict(params.get("noise_schedule_config") or {})
    known = {"timesteps", "beta_schedule", "linear_start", "linear_end", "cosine_s"}
    _check_keys(schedule, known, set(), where + ".noise_schedule_config")
    values = schedule | {"max_noise_level": params.get("max_noise_level", 1000)}  # the class's default
    return from_dict(LowScaleConfig, values, where=where)


def from_original(data: dict[str, Any], where: str = "original config") -> DiffusionConfig:
    model = data["model"]
    _target(model, registry.MODEL_TARGETS, where + ": model")
    params = dict(model.get("params") or {})
    top_known = {"linear_start", "linear_end", "timesteps", "parameterization", "scale_factor", "conditioning_key",
                 "unet_config", "first_stage_config", "cond_stage_config", "beta_schedule", "cosine_s",
                 "low_scale_config"}
    _check_keys(params, top_known, _IGNORED_MODEL, where + ": model.params")
    for req in ("unet_config", "first_stage_config"):
        if req not in params:
            raise ConfigError(f"{where}: model.params.{req} is missing")
    if (model["target"] == "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion") != ("low_scale_config" in params):
        raise ConfigError(f"{where}: model.params.low_scale_config goes with (and only with) LatentUpscaleDiffusion")
    first, ae = _first_stage(params["first_stage_config"], where + ": first_stage_config")
    try:
        return _diffusion_config(params, first, ae, where)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _diffusion_config(params: dict[str, Any], first: str, ae: AutoencoderConfig, where: str) -> DiffusionConfig:
    return DiffusionConfig(
        timesteps=params.get("timesteps", 1000),
        beta_schedule=params.get("beta_schedule", "linear"),
        linear_start=params.get("linear_start", 1e-4),
        linear_end=params.get("linear_end", 2e-2),
        cosine_s=params.get("cosine_s", 8e-3),
        parameterization=params.get("parameterization", "eps"),
        scale_factor=params.get("scale_factor", 1.0),
        conditioning_key=params.get("conditioning_key"),
        first_stage=first,
        unet=_unet(params["unet_config"], where + ": unet_config"),
        autoencoder=ae,
        conditioner=_cond_stage(params.get("cond_stage_config"), where + ": cond_stage_config"),
        low_scale=_low_scale(params.get("low_scale_config"), where + ": low_scale_config"),
    )
