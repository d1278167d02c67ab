"""Start a stage-2 training from a trained model (``init_from``): a fine-tune, not a resume.

The UNet (``model.diffusion_model.*``) and the conditioner (``cond_stage_model.*``) are loaded strictly from a model
``.safetensors`` this project exported (``ldm train ldm --export`` or a run's ``model.safetensors``, whose
``model_ema.*`` weights are the ones taken when present). The optimiser, the EMA and the step counter start fresh; the
latent scale is the file's, because the weights were trained on latents of that scale. The first stage stays the one
``first_stage_path`` names, and must be the one the file was trained on.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import DiffusionConfig, to_dict
from ..errors import ConfigError
from ..models.ldm import LatentDiffusion
from ..safe_load import read_state_dict

UNET, COND, FIRST, EMA = "model.diffusion_model.", "cond_stage_model.", "first_stage_model.", "model_ema."


def _ema_unet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's UNet with each weight the EMA tracks replaced by its ``model_ema.*`` copy (CompVis LitEma names:
    ``model_ema.diffusion_modelinput_blocks00weight`` for ``model.diffusion_model.input_blocks.0.0.weight``)."""
    out = {}
    for key, value in sd.items():
        if key.startswith(UNET):
            value = sd.get(EMA + key[len("model."):].replace(".", ""), value)
        out[key] = value
    return out


def load_init_weights(model: LatentDiffusion, path: str | os.PathLike) -> float:
    """Load ``path``'s UNet (EMA when stored) and conditioner into ``model``; return the file's ``scale_factor``."""
    from ..checkpoint import CONFIG_METADATA_KEY, check_keys

    src = os.fspath(path)
    if not Path(src).is_file():
        raise ConfigError(f"init_from {src} does not exist")
    sd, meta = read_state_dict(src)
    if "scale_factor" not in sd or not any(k.startswith(UNET) for k in sd):
        raise ConfigError(f"init_from {src} is not a stage-2 model exported by this project (it needs "
                          "model.diffusion_model.* weights and a scale_factor); export one with `ldm train ldm "
                          "--export`, or use a run's model.safetensors")
    if CONFIG_METADATA_KEY in meta:  # the token ids must mean the same words (defaults filled in on both sides)
        theirs = to_dict(DiffusionConfig.from_json(meta[CONFIG_METADATA_KEY]).conditioner)
        ours = to_dict(model.cfg.conditioner)
        diff = sorted(k for k in ours if theirs.get(k) != ours[k])
        if diff:
            raise ConfigError(f"init_from {src} was trained with a different conditioner (fields {diff} differ); "
                              "copy the file's model.conditioner into the config")
    if model.first_stage_model is not None and any(k.startswith(FIRST) for k in sd):
        ours_fs = model.first_stage_model.state_dict()
        changed = [k for k, v in ours_fs.items()
                   if FIRST + k in sd and not torch.equal(v.to(sd[FIRST + k].dtype), sd[FIRST + k])]
        if changed:
            raise ConfigError(f"init_from {src} was trained on a different first stage than first_stage_path "
                              f"({len(changed)} tensors differ, e.g. {changed[:3]}); its latents would not match")
    sd = _ema_unet(sd)
    for prefix, part in ((UNET, model.model.diffusion_model), (COND, model.cond_stage_model)):
        if part is None:
            continue
        mine = {k[len(prefix):]: v.float() for k, v in sd.items() if k.startswith(prefix)}
        check_keys(part, mine, f"init_from {src} ({prefix}*)")
        part.load_state_dict(mine, strict=True)
    return float(sd["scale_factor"])
