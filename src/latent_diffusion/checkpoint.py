"""Load and save LatentDiffusion checkpoints with the original CompVis / Stable Diffusion key names.

``load_checkpoint`` reads ``.safetensors`` or (through an allow-list unpickler) ``.ckpt`` / ``.pt``, decides the
config (given, stored in our own files' metadata, or inferred from the weights), builds the model, matches the
optional parts real files may carry (schedule buffers, ``position_ids``, ``model_ema.*``, a ``scale_factor``
buffer, the x4 upscaler's ``low_scale_model.*`` schedule) and loads with ``strict=True`` semantics: missing,
unexpected and mis-shaped keys are a ``KeyMismatchError``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import DiffusionConfig
from .errors import CheckpointError, ConfigError, KeyMismatchError
from .infer import UNET, infer_config
from .models.conditioners import FrozenCLIPEmbedder
from .models.ldm import SCHEDULE_BUFFERS, LatentDiffusion
from .models.low_scale import LOW_SCALE_BUFFERS
from .models.ema import shadow_name
from .models.gemm_storage import gemm_parameters, store_gemm_weights, stored_dtype
from .models.unet import UNetModel
from .safe_load import SAFETENSORS_SUFFIXES, read_state_dict, save_safetensors_atomic

CONFIG_METADATA_KEY = "ldm_config"
_SHOW = 5  # how many offending keys an error lists


def resolve_config(config: DiffusionConfig | dict | str | os.PathLike | None, sd: dict[str, torch.Tensor],
                   metadata: dict[str, Any], parameterization: str | None = None) -> DiffusionConfig:
    """The config to build: the one given, else the one our own files carry, else inferred from the weights."""
    if isinstance(config, DiffusionConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = DiffusionConfig.from_dict(config)
    elif config is not None:
        cfg = DiffusionConfig.from_yaml(config)
    elif CONFIG_METADATA_KEY in metadata:
        cfg = DiffusionConfig.from_json(metadata[CONFIG_METADATA_KEY])
    else:
        cfg = infer_config(sd)
    if parameterization is not None:
        if parameterization not in ("eps", "x0", "v"):
            raise ConfigError(f"parameterization must be 'eps', 'x0' or 'v', got {parameterization!r}")
        cfg = dataclasses.replace(cfg, parameterization=parameterization)  # never mutate the caller's config
    return cfg


def match_optional_parts(model: LatentDiffusion, keys: set[str]) -> None:
    """Make ``model.state_dict()`` carry exactly the optional entries present in ``keys``."""
    model.set_schedule_persistent("betas" in keys)
    if getattr(model, "low_scale_model", None) is not None:
        model.low_scale_model.set_persistent("low_scale_model.betas" in keys)
    if "scale_factor" in keys:
        model.use_scale_factor_buffer()
    if isinstance(model.cond_stage_model, FrozenCLIPEmbedder):
        model.cond_stage_model.set_position_ids_persistent(
            "cond_stage_model.transformer.text_model.embeddings.position_ids" in keys)
    if any(k.startswith("model_ema.") for k in keys) and model.model_ema is None:
        model.enable_ema()


def check_keys(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Raise ``KeyMismatchError`` listing the first few missing / unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [(k, tuple(expected[k].shape), tuple(sd[k].shape)) for k in expected
              if k in sd and expected[k].shape != sd[k].shape]
    if not (missing or unexpected or shapes):
        return
    lines = [f"{source} does not match the model built from its config:"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s), e.g. {missing[:_SHOW]}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s), e.g. {unexpected[:_SHOW]}")
    for k, want, got in shapes[:_SHOW]:
        lines.append(f"  shape mismatch at {k}: model expects {want}, checkpoint has {got}")
    if len(shapes) > _SHOW:
        lines.append(f"  ... and {len(shapes) - _SHOW} more shape mismatch(es)")
    lines.append("  (is the config right for this file? pass config=... with the model's YAML)")
    raise KeyMismatchError("\n".join(lines))


def load_checkpoint(path: str | os.PathLike, config: DiffusionConfig | dict | str | os.PathLike | None = None, *,
                    use_ema: bool = False, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    parameterization: str | None = None, unet_gemm_dtype: torch.dtype | None = None,
                    keep_ema: bool = True) -> LatentDiffusion:
    """Build and strictly load a ``LatentDiffusion`` from a checkpoint file.

    ``use_ema=True`` swaps the ``model_ema.*`` weights into the UNet (an error if the file has none).
    ``dtype`` casts the UNet, first stage and conditioner (schedule buffers stay float32).
    ``unet_gemm_dtype`` (with ``dtype`` float32): the UNet's Linear / Conv weights and biases are stored in this
    dtype, for sampling under autocast to it (``models/gemm_storage.py``); from a .safetensors file each is
    converted as it is read, so the file's fp32 copies are never all held at once.
    ``keep_ema=False`` (for sampling): the file's ``model_ema.*`` weights, a second UNet, are not kept — not read
    at all without ``use_ema`` (from a .safetensors file), dropped once copied into the UNet with it.
    """
    if unet_gemm_dtype is not None and dtype != torch.float32:
        raise ConfigError(f"unet_gemm_dtype stores the GEMM weights of an fp32 UNet run under autocast; it needs "
                          f"dtype=torch.float32, got dtype={dtype}")
    cast = (_unet_gemm_cast(path, config, parameterization, unet_gemm_dtype, ema=use_ema and not keep_ema)
            if unet_gemm_dtype is not None else None)
    skip = ("model_ema.",) if not (keep_ema or use_ema) else ()
    sd, extras = read_state_dict(path, mmap=False, cast=cast, skip=skip)  # the model uses every tensor read
    cfg = resolve_config(config, sd, extras, parameterization)
    with torch.device("meta"):  # no random init of ~1 B parameters: the file's tensors are assigned in place
        model = LatentDiffusion(cfg)
        match_optional_parts(model, set(sd))
    check_keys(model, sd, f"checkpoint {os.fspath(path)}")
    model.load_state_dict(sd, strict=True, assign=True)
    del sd
    for name in SCHEDULE_BUFFERS:  # fp16 files store the schedule in fp16 too; sampling wants float32
        setattr(model, name, getattr(model, name).float())
    low = getattr(model, "low_scale_model", None)
    for name in LOW_SCALE_BUFFERS if low is not None else ():
        setattr(low, name, getattr(low, name).float())
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"internal: tensors not materialised after loading {os.fspath(path)}: {left[:_SHOW]}")
    if use_ema:
        if model.model_ema is None:
            raise CheckpointError(f"use_ema=True but {os.fspath(path)} has no model_ema.* weights")
        model.model_ema.copy_to(model.model)  # into the UNet's parameters, in their dtype
        if not keep_ema:
            model.model_ema = None
    for part in (model.model, model.first_stage_model, model.cond_stage_model):
        if part is None:
            continue
        if part is model.model and unet_gemm_dtype is not None:
            keep = {id(p) for p in gemm_parameters(part.diffusion_model).values()}
            with torch.no_grad():
                for t in [*part.parameters(), *part.buffers()]:
                    if t.is_floating_point() and t.dtype != dtype and id(t) not in keep:
                        t.data = t.data.to(dtype)
            store_gemm_weights(part.diffusion_model, unet_gemm_dtype)  # what the read did not (.ckpt files)
        else:
            part.to(dtype=dtype)
    return model.to(device).eval()


def _unet_gemm_cast(path: str | os.PathLike, config: DiffusionConfig | dict | str | os.PathLike | None,
                    parameterization: str | None, dtype: torch.dtype, *, ema: bool = False,
                    ) -> dict[str, torch.dtype] | None:
    """{file key: ``dtype``} for the UNet's GEMM weights and biases of a .safetensors file (and, with ``ema``, their
    ``model_ema.*`` averages, which are copied into them and dropped), from its header and config (memory-mapped,
    no tensor read); None for other files (converted after loading)."""
    if Path(path).suffix.lower() not in SAFETENSORS_SUFFIXES:
        return None
    lazy, extras = read_state_dict(path, mmap=True)
    cfg = resolve_config(config, lazy, extras, parameterization)
    del lazy
    with torch.device("meta"):
        unet = UNetModel(cfg.unet)
    names = list(gemm_parameters(unet))
    return {unet_file_key(name, e): dtype for name in names for e in ((False, True) if ema else (False,))}


def unet_file_key(name: str, ema: bool = False) -> str:
    """The checkpoint key of UNet parameter ``name`` (as ``UNetModel.named_parameters`` gives it), or of its EMA
    average (``model_ema.*``, LitEma's dotless names)."""
    return "model_ema." + shadow_name("diffusion_model." + name) if ema else UNET + name


def save_checkpoint(model: LatentDiffusion, path: str | os.PathLike, *, overwrite: bool = False,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` (CompVis keys) as ``.safetensors``, atomically, with the config in metadata.
    A UNet whose GEMM weights are stored in bf16 for autocast is written as it is, with a warning."""
    if Path(path).suffix != ".safetensors":
        raise CheckpointError(f"save_checkpoint writes .safetensors only, got {os.fspath(path)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stored = stored_dtype(model.model.diffusion_model)
    if stored is not None:
        warnings.warn(f"the UNet's Linear / Conv weights are stored in {stored} (a pipeline loaded for bf16 "
                      f"autocast), so {os.fspath(path)} gets them rounded to {stored}; load the checkpoint with "
                      "precision='fp32' to save fp32 weights", stacklevel=2)
    meta = {CONFIG_METADATA_KEY: model.cfg.to_json(), "format": "latent-diffusion"} | dict(metadata or {})
    return save_safetensors_atomic(model.state_dict(), path, metadata=meta, overwrite=overwrite)


def family(cfg: DiffusionConfig) -> str:
    """A human name for the model family (``ldm inspect``)."""
    cond, unet = cfg.conditioner.kind, cfg.unet
    inpaint = " inpainting" if unet.in_channels == unet.out_channels + 5 and cfg.conditioning_key == "hybrid" else ""
    if cond == "clip":
        return "Stable Diffusion 1.x" + inpaint
    if cond == "open_clip" and cfg.low_scale is not None:
        return "Stable Diffusion x4 upscaler"
    if cond == "open_clip":
        return "Stable Diffusion 2.x" + inpaint + (" (v-prediction)" if cfg.parameterization == "v" else "")
    f = cfg.autoencoder.downsample_factor if cfg.first_stage != "none" else 1
    stage = {"kl": "KL", "vq": "VQ", "none": "pixel"}[cfg.first_stage]
    kind = {"class": "class-conditional", "none": "unconditional" if cfg.conditioning_key is None else
            f"{cfg.conditioning_key}-conditioned"}.get(cond, cond)
    return f"CompVis LDM, {kind}, {stage}-f{f}"


def inspect_checkpoint(path: str | os.PathLike, config: Any = None) -> dict[str, Any]:
    """Family, parameter counts per part, dtypes and EMA presence of a checkpoint, without building the model."""
    sd, extras = read_state_dict(path)
    cfg = resolve_config(config, sd, extras)
    parts: dict[str, int] = {}
    for name, prefix in (("unet", "model.diffusion_model."), ("first_stage", "first_stage_model."),
                         ("cond_stage", "cond_stage_model."), ("ema", "model_ema.")):
        parts[name] = sum(v.numel() for k, v in sd.items() if k.startswith(prefix) and v.is_floating_point())
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    return {"path": os.fspath(path), "family": family(cfg), "parameterization": cfg.parameterization,
            "parameters": parts, "dtypes": dtypes, "ema": parts["ema"] > 0, "tensors": len(sd),
            "scale_factor": cfg.scale_factor, "class_names": list(cfg.class_names),
            "config_source": "given" if config is not None else
            ("metadata" if CONFIG_METADATA_KEY in extras else "inferred")}
