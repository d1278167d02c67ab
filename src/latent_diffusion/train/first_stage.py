"""Load a trained first stage (autoencoder) into a LatentDiffusion before stage-2 training, with clear errors.

Accepts our stand-alone autoencoder files (keys ``encoder.*`` / ``decoder.*``, config in the
``ldm_autoencoder_config`` metadata) and full LDM / SD checkpoints (their ``first_stage_model.*`` part).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..config import to_dict
from ..errors import CheckpointError, ConfigError
from ..models.ldm import LatentDiffusion
from ..safe_load import read_state_dict

PREFIX = "first_stage_model."


def first_stage_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict with autoencoder keys, the file's autoencoder config dict or None)."""
    if not Path(path).is_file():
        raise ConfigError(f"first_stage_path {os.fspath(path)} does not exist")
    sd, meta = read_state_dict(path)
    if any(k.startswith(PREFIX) for k in sd):
        sd = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    elif "encoder.conv_in.weight" not in sd:
        raise CheckpointError(f"{os.fspath(path)} holds no autoencoder (no encoder.* or first_stage_model.* keys)")
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    cfg = json.loads(meta["ldm_autoencoder_config"]) if "ldm_autoencoder_config" in meta else None
    if cfg is None and "ldm_config" in meta:
        cfg = json.loads(meta["ldm_config"]).get("autoencoder")
    return sd, cfg


def latent_channels_of(sd: dict[str, torch.Tensor]) -> int:
    if "quant_conv.weight" in sd:
        return int(sd["quant_conv.weight"].shape[0]) // (2 if "quantize.embedding.weight" not in sd else 1)
    return int(sd["encoder.conv_out.weight"].shape[0]) // 2


def load_first_stage_into(model: LatentDiffusion, path: str | os.PathLike) -> None:
    """Strictly load ``path``'s autoencoder into ``model.first_stage_model``; errors name what does not match."""
    if model.first_stage_model is None:
        raise ConfigError(f"first_stage_path={os.fspath(path)} given but model.first_stage is 'none' (pixel space)")
    sd, file_cfg = first_stage_state(path)
    want = model.cfg.unet.out_channels
    have = latent_channels_of(sd)
    if have != want:
        raise ConfigError(f"first stage {os.fspath(path)} has {have} latent channels but the config's UNet works on "
                          f"{want} (model.unet.out_channels / model.autoencoder.embed_dim); use a matching "
                          "autoencoder or change the config")
    if file_cfg is not None:
        ours = to_dict(model.cfg.autoencoder)
        diff = sorted(k for k in set(ours) & set(file_cfg) if ours[k] != file_cfg[k] and k != "resolution")
        if diff:
            detail = ", ".join(f"{k}: config {ours[k]!r} vs file {file_cfg[k]!r}" for k in diff)
            raise ConfigError(f"first stage {os.fspath(path)} was built with a different autoencoder config "
                              f"({detail}); copy the file's config into model.autoencoder")
    from ..checkpoint import check_keys

    check_keys(model.first_stage_model, sd, f"first stage {os.fspath(path)}")
    model.first_stage_model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
