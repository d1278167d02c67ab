"""Save and load stand-alone first-stage autoencoders (KL or VQ) as ``.safetensors``.

Keys are the CompVis ``AutoencoderKL`` / ``VQModel`` ones (``encoder.*``, ``decoder.*``, ``quant_conv.*``,
``post_quant_conv.*``, ``quantize.embedding.weight``) — exactly what goes under ``first_stage_model.*`` in a
LatentDiffusion checkpoint. ``load_autoencoder`` also accepts a full LDM / SD checkpoint and takes its
``first_stage_model.*`` part. Our files carry the config (``ldm_autoencoder_config``, JSON), the kind
(``first_stage``: kl | vq) and the latent ``scale_factor`` estimated on the training data (1/σ̂, appendix G).

To use one as the first stage of a new LDM::

    ae = load_autoencoder("src/latent_diffusion/assets/kl-f4-shapes.safetensors")
    cfg = DiffusionConfig(first_stage="kl", autoencoder=ae.cfg, scale_factor=autoencoder_scale_factor(path), ...)
    ldm = LatentDiffusion(cfg); ldm.first_stage_model.load_state_dict(ae.state_dict())
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import AutoencoderConfig, VQConfig, check_types, from_dict, to_dict
from .errors import CheckpointError, KeyMismatchError
from .infer import FIRST, infer_autoencoder
from .models.autoencoder import AutoencoderKL
from .models.vq import VQModel
from .safe_load import read_state_dict

AE_CONFIG_KEY = "ldm_autoencoder_config"
KIND_KEY = "first_stage"
SCALE_KEY = "scale_factor"
FORMAT = "latent-diffusion-autoencoder"


def build_autoencoder(kind: str, cfg: AutoencoderConfig) -> AutoencoderKL | VQModel:
    if kind == "kl":
        return AutoencoderKL(cfg)
    if kind == "vq":
        if not isinstance(cfg, VQConfig):
            raise CheckpointError("a VQ autoencoder needs a VQConfig (n_embed, embed_dim, beta)")
        return VQModel(cfg)
    raise CheckpointError(f"first-stage kind must be 'kl' or 'vq', got {kind!r}")


def autoencoder_kind(model: torch.nn.Module) -> str:
    return "vq" if isinstance(model, VQModel) else "kl"


def save_autoencoder(model: AutoencoderKL | VQModel, path: str | os.PathLike, *, overwrite: bool = False,
                     dtype: torch.dtype | None = None, scale_factor: float | None = None,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write the autoencoder's weights (cast to ``dtype`` if given, e.g. fp16 for storage) atomically."""
    from .checkpoint import write_safetensors

    if Path(path).suffix != ".safetensors":
        raise CheckpointError(f"save_autoencoder writes .safetensors only, got {os.fspath(path)}")
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    meta = {AE_CONFIG_KEY: json.dumps(to_dict(model.cfg)), KIND_KEY: autoencoder_kind(model), "format": FORMAT}
    if scale_factor is not None:
        meta[SCALE_KEY] = repr(float(scale_factor))
    return write_safetensors(sd, path, metadata=meta | dict(metadata or {}), overwrite=overwrite)


def _first_stage_part(sd: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    if any(k.startswith(FIRST) for k in sd):
        return {k[len(FIRST):]: v for k, v in sd.items() if k.startswith(FIRST)}
    if "encoder.conv_in.weight" in sd:
        return {k: v for k, v in sd.items() if not k.startswith("loss.")}  # CompVis stage-1 files carry loss.*
    raise CheckpointError(f"{path} holds no autoencoder: expected keys encoder.*/decoder.* or first_stage_model.*; "
                          f"first keys are {list(sd)[:5]}")


def _stored_config(meta: dict[str, str], path: str) -> tuple[str, AutoencoderConfig]:
    """The kind and config our own files carry (``ldm_autoencoder_config``, JSON), checked field by field."""
    kind = meta.get(KIND_KEY, "kl")
    try:
        cfg = from_dict(VQConfig if kind == "vq" else AutoencoderConfig, json.loads(meta[AE_CONFIG_KEY]),
                        where=f"{path} metadata")
        check_types(cfg)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:  # JSONDecodeError, ConfigError
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"the config stored in {path} ({AE_CONFIG_KEY} metadata) is not valid: {reason}; "
                              "pass config=... (an AutoencoderConfig or VQConfig)") from None
    return kind, cfg


def autoencoder_config(sd: dict[str, torch.Tensor], meta: dict[str, str], path: str | os.PathLike,
                       config: AutoencoderConfig | None = None) -> tuple[str, AutoencoderConfig, str]:
    """(kind "kl" | "vq", config, origin "given" | "metadata" | "inferred") of the autoencoder whose weights
    (``encoder.*``, ``decoder.*``, ... keys) and metadata were read from ``path``: ``config`` if given, else the one
    our files carry, else inferred from the weights."""
    if config is not None:
        return ("vq" if isinstance(config, VQConfig) else "kl"), config, "given"
    if AE_CONFIG_KEY in meta:
        return (*_stored_config(meta, os.fspath(path)), "metadata")
    try:
        return (*infer_autoencoder({FIRST + k: v for k, v in sd.items()}), "inferred")
    except (KeyError, IndexError, ZeroDivisionError) as e:
        raise KeyMismatchError(f"cannot infer the autoencoder config of {os.fspath(path)}: key {e} is missing "
                               "or malformed (is the file truncated?)") from None


def load_autoencoder(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu", config: AutoencoderConfig | None = None,
                     ) -> AutoencoderKL | VQModel:
    """Build and strictly load the autoencoder stored in ``path`` (eval mode, cast to ``dtype``). ``config`` (a
    ``VQConfig`` for a VQ model) replaces the one the file carries or that its weights imply."""
    from .checkpoint import build_on_meta, check_keys

    sd, meta = read_state_dict(path)
    sd = _first_stage_part(sd, os.fspath(path))
    kind, cfg, origin = autoencoder_config(sd, meta, path, config)
    model = build_on_meta(lambda: build_autoencoder(kind, cfg), len(sd), os.fspath(path), origin)
    check_keys(model, sd, f"autoencoder file {os.fspath(path)}")  # on meta: a wrong config allocates nothing
    model = model.to_empty(device="cpu")  # as big as the file's tensors, now that their shapes match
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def autoencoder_scale_factor(path: str | os.PathLike) -> float | None:
    """The ``scale_factor`` stored in one of our autoencoder files (None if absent)."""
    _, meta = read_state_dict(path)
    if SCALE_KEY not in meta:
        return None
    try:
        return float(meta[SCALE_KEY])
    except (TypeError, ValueError):
        raise CheckpointError(f"{os.fspath(path)}: its {SCALE_KEY} metadata is {meta[SCALE_KEY]!r:.60}, not a "
                              "number") from None
