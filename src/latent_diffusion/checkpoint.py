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
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from .config import DiffusionConfig, check_types
from .diffusion.parameterization import PARAMETERIZATIONS
from .errors import CheckpointError, ConfigError, KeyMismatchError
from .yaml_compat import load_yaml_config
from .infer import UNET, infer_config, matches_stored
from .models.conditioners import FrozenCLIPEmbedder
from .models.ldm import SCHEDULE_BUFFERS, LatentDiffusion
from .models.low_scale import LOW_SCALE_BUFFERS
from .models.ema import shadow_name
from .models.unet import UNetModel
from .safe_load import SAFETENSORS_SUFFIXES, read_state_dict, save_safetensors_atomic

CONFIG_METADATA_KEY = "ldm_config"
_SHOW = 5  # how many offending keys an error lists
_PASS_CONFIG = "pass config=... (--config) with the model's YAML"
# Sizes a model built on the meta device still makes real CPU tensors for: its DDPM schedule(s) and CLIP's position
# ids. A file's own betas fix the schedule length; without them these bounds keep a bad config from allocating.
_MAX_TIMESTEPS = 100_000
_MAX_TOKENS = 1 << 16
# Errors a model constructor raises on a config it cannot build (sizes that overflow, bad head splits, ...)
_BUILD_ERRORS = (RuntimeError, ValueError, TypeError, OverflowError, ZeroDivisionError, AttributeError, KeyError,
                 IndexError, MemoryError)
_M = TypeVar("_M", bound=torch.nn.Module)


def config_origin(config: Any, metadata: dict[str, Any]) -> str:
    """Where ``resolve_config`` takes the config from: "given", "metadata" (our own files) or "inferred"."""
    if config is not None:
        return "given"
    return "metadata" if CONFIG_METADATA_KEY in metadata else "inferred"


def _describe(origin: str) -> str:
    return {"given": "the given config", "metadata": f"the config stored in its {CONFIG_METADATA_KEY} metadata",
            "inferred": "the config inferred from its weights"}.get(origin, f"the {origin} config")


def stored_config(text: Any, source: str) -> DiffusionConfig:
    """The config our own files carry in their ``ldm_config`` metadata (JSON), checked field by field."""
    try:
        cfg = DiffusionConfig.from_json(text)
        check_types(cfg)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:  # JSONDecodeError, ConfigError
        raise CheckpointError(f"the config stored in {source} ({CONFIG_METADATA_KEY} metadata) is not valid: "
                              f"{_one_line(exc)}; {_PASS_CONFIG}") from None
    return cfg


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def resolve_config(config: DiffusionConfig | dict | str | os.PathLike | None, sd: dict[str, torch.Tensor],
                   metadata: dict[str, Any], parameterization: str | None = None, *,
                   source: str = "the checkpoint") -> DiffusionConfig:
    """The config to build: the one given, else the one our own files carry, else inferred from the weights.
    ``source`` names the file in errors."""
    if isinstance(config, DiffusionConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = DiffusionConfig.from_dict(config)
    elif config is not None:
        cfg = load_yaml_config(config)
    elif CONFIG_METADATA_KEY in metadata:
        cfg = stored_config(metadata[CONFIG_METADATA_KEY], source)
    else:
        cfg = infer_config(sd)
    if parameterization is not None:
        if parameterization not in PARAMETERIZATIONS:
            raise ConfigError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, got "
                              f"{parameterization!r}")
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


def refuse_oversized(cfg: DiffusionConfig, sd: dict[str, torch.Tensor], source: str, origin: str) -> None:
    """Refuse, before anything is built, the config sizes a meta-device build would still allocate for real."""
    schedules = [("timesteps", cfg.timesteps, "betas")]
    if cfg.low_scale is not None:
        schedules.append(("low_scale.timesteps", cfg.low_scale.timesteps, "low_scale_model.betas"))
    for name, n, key in schedules:
        if not isinstance(n, int):
            continue  # the build fails on it, with the file named
        stored = sd[key].shape[0] if key in sd and sd[key].ndim == 1 else None
        if stored is not None and n != stored:
            raise KeyMismatchError(f"{source}: {_describe(origin)} has {name}={n} but the file's {key} has "
                                   f"{stored} values; {_PASS_CONFIG}")
        if not 1 <= n <= _MAX_TIMESTEPS:
            raise CheckpointError(f"{source}: {_describe(origin)} has {name}={n}; accepted: 1 to {_MAX_TIMESTEPS}; "
                                  f"{_PASS_CONFIG}")
    tokens = cfg.conditioner.max_length
    if isinstance(tokens, int) and not 1 <= tokens <= _MAX_TOKENS:
        raise CheckpointError(f"{source}: {_describe(origin)} has conditioner.max_length={tokens}; accepted: 1 to "
                              f"{_MAX_TOKENS}; {_PASS_CONFIG}")


@contextmanager
def _tensor_budget(limit: int, what: str) -> Iterator[None]:
    """Stop a build (on this thread) once it has registered more than ``limit`` parameters or ``20 * limit``
    modules: a strict load needs a file tensor for each parameter, so a bigger model cannot match the file."""
    owner, counts = threading.get_ident(), {"parameters": 0, "modules": 0}

    def count(kind: str, cap: int) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if threading.get_ident() == owner:
                counts[kind] += 1
                if counts[kind] > cap:
                    raise OverflowError(f"the model has more than {cap} {kind}, {what}")
        return hook

    hooks = [torch.nn.modules.module.register_module_parameter_registration_hook(count("parameters", limit)),
             torch.nn.modules.module.register_module_module_registration_hook(count("modules", 20 * limit))]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def build_on_meta(factory: Callable[[], _M], n_tensors: int, source: str, origin: str) -> _M:
    """``factory()`` on the meta device (no weight memory), stopped once it outgrows a file of ``n_tensors`` tensors;
    any error building it becomes one ``CheckpointError`` naming the file and where its config came from."""
    limit = 2 * n_tensors + 64  # slack for parameters registered twice while a module is set up
    try:
        with torch.device("meta"), _tensor_budget(limit, f"while {source} holds {n_tensors} tensors"):
            return factory()
    except CheckpointError:
        raise
    except _BUILD_ERRORS as exc:
        raise CheckpointError(f"cannot build the model of {source} from {_describe(origin)}: "
                              f"{type(exc).__name__}: {_one_line(exc)}; {_PASS_CONFIG}") from exc


def _schedule_parts(model: LatentDiffusion) -> list[tuple[torch.nn.Module, tuple[str, ...]]]:
    low = getattr(model, "low_scale_model", None)
    return [(model, SCHEDULE_BUFFERS)] + ([(low, LOW_SCALE_BUFFERS)] if low is not None else [])


def settle_schedule(part: torch.nn.Module, names: tuple[str, ...], computed: dict[str, torch.Tensor]) -> None:
    """Make the schedule buffers float32. An fp16 / bf16 file stores them rounded: when they are the config's
    schedule up to that rounding, the config's exact values (``computed``) are kept, as an fp32 copy of the file
    would give; otherwise (and from fp32 files) the file's own values."""
    loaded = {n: getattr(part, n) for n in names}
    half = all(loaded[n].dtype in (torch.float16, torch.bfloat16) for n in names)
    use_computed = half and all(matches_stored(computed[n], loaded[n]) for n in names)
    for n in names:
        setattr(part, n, computed[n] if use_computed else loaded[n].float())


def _settle_scale_factor(model: LatentDiffusion) -> None:
    """A ``scale_factor`` buffer rounded to fp16 / bf16 becomes the config's value in float32 when it rounds to it."""
    stored = model.scale_factor
    if not isinstance(stored, torch.Tensor) or stored.dtype not in (torch.float16, torch.bfloat16):
        return
    exact = torch.tensor(float(model.cfg.scale_factor), dtype=torch.float32)
    model.scale_factor = exact if matches_stored(exact, stored) else stored.float()


def load_checkpoint(path: str | os.PathLike, config: DiffusionConfig | dict | str | os.PathLike | None = None, *,
                    use_ema: bool = False, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    parameterization: str | None = None,
                    unet_dtypes: Callable[[torch.nn.Module], dict[str, torch.dtype]] | None = None,
                    keep_ema: bool = True) -> LatentDiffusion:
    """Build and strictly load a ``LatentDiffusion`` from a checkpoint file.

    ``use_ema=True`` swaps the ``model_ema.*`` weights into the UNet (an error if the file has none).
    ``dtype`` casts the UNet, first stage and conditioner (schedule buffers stay float32; an fp16 / bf16 file's
    rounded schedule and ``scale_factor``, when they are the config's, become the config's exact float32 values).
    ``unet_dtypes`` (with ``dtype`` float32): given the UNet (built on the meta device), {parameter name: dtype}
    for the parameters to keep in another dtype — e.g. the Linear / Conv weights in bf16 for sampling under bf16
    autocast (``accel.gemm_storage.gemm_dtypes``); from a .safetensors file each is converted as it is read, so the
    file's fp32 copies are never all held at once.
    ``keep_ema=False`` (for sampling): the file's ``model_ema.*`` weights, a second UNet, are not kept — not read
    at all without ``use_ema`` (from a .safetensors file), dropped once copied into the UNet with it.
    """
    if unet_dtypes is not None and dtype != torch.float32:
        raise ConfigError(f"unet_dtypes stores some weights of an fp32 UNet in another dtype; it needs "
                          f"dtype=torch.float32, got dtype={dtype}")
    cast = (_unet_cast(path, config, parameterization, unet_dtypes, ema=use_ema and not keep_ema)
            if unet_dtypes is not None else None)
    skip = ("model_ema.",) if not (keep_ema or use_ema) else ()
    sd, extras = read_state_dict(path, mmap=False, cast=cast, skip=skip)  # the model uses every tensor read
    source, origin = os.fspath(path), config_origin(config, extras)
    cfg = resolve_config(config, sd, extras, parameterization, source=source)
    refuse_oversized(cfg, sd, source, origin)

    keys = set(sd)

    def build() -> LatentDiffusion:  # no random init of ~1 B parameters: the file's tensors are assigned in place
        model = LatentDiffusion(cfg)
        match_optional_parts(model, keys)
        return model

    model = build_on_meta(build, len(sd), source, origin)
    check_keys(model, sd, f"checkpoint {source}")  # shapes compared on meta: nothing allocated for a wrong config
    computed = [{n: getattr(part, n) for n in names} for part, names in _schedule_parts(model)]  # the config's
    model.load_state_dict(sd, strict=True, assign=True)
    del sd
    for (part, names), exact in zip(_schedule_parts(model), computed):  # sampling wants the schedule in float32
        settle_schedule(part, names, exact)
    _settle_scale_factor(model)
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
        if part is model.model and unet_dtypes is not None:
            kept = unet_dtypes(part.diffusion_model)
            keep = {id(p) for n, p in part.diffusion_model.named_parameters() if n in kept}
            with torch.no_grad():
                for t in [*part.parameters(), *part.buffers()]:
                    if t.is_floating_point() and t.dtype != dtype and id(t) not in keep:
                        t.data = t.data.to(dtype)
            _keep_dtypes(part.diffusion_model, kept)  # what the read did not (.ckpt files)
        else:
            part.to(dtype=dtype)
    return model.to(device).eval()


def _keep_dtypes(unet: torch.nn.Module, dtypes: dict[str, torch.dtype]) -> list[str]:
    """``unet``'s parameters named in ``dtypes`` converted to their dtype in place (the same Parameters); returns
    the names converted."""
    done = []
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name in dtypes and p.dtype != dtypes[name]:
                p.data = p.data.to(dtypes[name])
                done.append(name)
    return done


def _unet_cast(path: str | os.PathLike, config: DiffusionConfig | dict | str | os.PathLike | None,
               parameterization: str | None, unet_dtypes: Callable[[torch.nn.Module], dict[str, torch.dtype]], *,
               ema: bool = False) -> dict[str, torch.dtype] | None:
    """{file key: dtype} of ``unet_dtypes`` for a .safetensors file (and, with ``ema``, for the ``model_ema.*``
    averages, which are copied into them and dropped), from its header and config (memory-mapped, no tensor read);
    None for other files (converted after loading)."""
    if Path(path).suffix.lower() not in SAFETENSORS_SUFFIXES:
        return None
    lazy, extras = read_state_dict(path, mmap=True)
    source, origin = os.fspath(path), config_origin(config, extras)
    cfg = resolve_config(config, lazy, extras, parameterization, source=source)
    n_tensors = len(lazy)
    del lazy
    unet = build_on_meta(lambda: UNetModel(cfg.unet), n_tensors, source, origin)
    return {unet_file_key(name, e): dtype for name, dtype in unet_dtypes(unet).items()
            for e in ((False, True) if ema else (False,))}


def unet_file_key(name: str, ema: bool = False) -> str:
    """The checkpoint key of UNet parameter ``name`` (as ``UNetModel.named_parameters`` gives it), or of its EMA
    average (``model_ema.*``, LitEma's dotless names)."""
    return "model_ema." + shadow_name("diffusion_model." + name) if ema else UNET + name


def save_checkpoint(model: LatentDiffusion, path: str | os.PathLike, *, overwrite: bool = False,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` (CompVis keys) as ``.safetensors``, atomically, with the config in metadata.
    A UNet whose GEMM weights are stored in bf16 for autocast (weights of mixed dtypes) is written as it is, with a
    warning."""
    if Path(path).suffix != ".safetensors":
        raise CheckpointError(f"save_checkpoint writes .safetensors only, got {os.fspath(path)}")
    dtypes = {p.dtype for p in model.model.diffusion_model.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        stored = min(dtypes, key=lambda d: torch.finfo(d).bits)
        warnings.warn(f"the UNet's Linear / Conv weights are stored in {stored} (a pipeline loaded for bf16 "
                      f"autocast), so {os.fspath(path)} gets them rounded to {stored}; load the checkpoint with "
                      "precision='fp32' to save fp32 weights", stacklevel=2)
    meta = {CONFIG_METADATA_KEY: model.cfg.to_json(), "format": "latent-diffusion"} | dict(metadata or {})
    return write_safetensors(model.state_dict(), path, metadata=meta, overwrite=overwrite)


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, *, metadata: dict[str, str],
                      overwrite: bool) -> Path:
    """``save_safetensors_atomic`` into ``path``'s folder, created if needed; write errors are one CheckpointError."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from None
    return save_safetensors_atomic(tensors, path, metadata=metadata, overwrite=overwrite)


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
    return describe_checkpoint(sd, extras, path, config)


def describe_checkpoint(sd: dict[str, torch.Tensor], extras: dict[str, Any], path: str | os.PathLike,
                        config: Any = None) -> dict[str, Any]:
    """``inspect_checkpoint`` of a state dict and its extras already read (``read_state_dict``) from ``path``."""
    cfg = resolve_config(config, sd, extras, source=os.fspath(path))
    parts: dict[str, int] = {}
    for name, prefix in (("unet", "model.diffusion_model."), ("first_stage", "first_stage_model."),
                         ("cond_stage", "cond_stage_model."), ("ema", "model_ema.")):
        parts[name] = sum(v.numel() for k, v in sd.items() if k.startswith(prefix) and v.is_floating_point())
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    return {"path": os.fspath(path), "family": family(cfg), "parameterization": cfg.parameterization,
            "parameters": parts, "dtypes": dtypes, "ema": parts["ema"] > 0, "tensors": len(sd),
            "scale_factor": cfg.scale_factor, "class_names": list(cfg.class_names),
            "config_source": config_origin(config, extras)}
