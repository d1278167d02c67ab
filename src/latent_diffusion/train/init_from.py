"""Start a stage-2 training from a trained model (``init_from``): a fine-tune, not a resume.

The UNet (``model.diffusion_model.*``) and the conditioner (``cond_stage_model.*``) are loaded strictly from any
checkpoint ``load_checkpoint`` reads: a model this project exported (``ldm train ldm --export`` or a run's
``model.safetensors``), a Stable Diffusion 1.x / 2.x or CompVis LDM file; ``model_ema.*`` weights are the ones taken
when present. The optimiser, the EMA and the step counter start fresh; the latent scale is the file's, because the
weights were trained on latents of that scale. The first stage stays the one ``first_stage_path`` names, and must be
the one the file was trained on. With ``model: from_init`` (or no ``model:``) the whole model config is the file's
(``file_config``: stored, or inferred from the weights) and so are the first stage and the text encoder.

``init_skip`` (glob patterns on full state-dict keys) keeps the matching weights at their fresh initialisation: a new
text encoder (``cond_stage_model.*``) with the cross-attention keys / values that read it
(``model.diffusion_model.*.attn2.to_[kv].*``) is a fine-tune of the rest of the UNet. The conditioner config and
``unet.context_dim`` may then differ from the file's.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from pathlib import Path

import torch

from ..config import DiffusionConfig, to_dict
from ..errors import ConfigError, KeyMismatchError
from ..models.ema import shadow_name
from ..models.ldm import LatentDiffusion
from ..safe_load import read_state_dict
from .ldm_config import config_value, diff_configs

UNET, COND, FIRST, EMA = "model.diffusion_model.", "cond_stage_model.", "first_stage_model.", "model_ema."
# config fields that must agree with the file's: what the UNet's inputs and the token ids mean. The parameterization may
# change (a warning): SD 2's 768-v model was fine-tuned from the ε 512-base, the weights re-learn their output.
MUST_MATCH = ("conditioning_key", "first_stage")
# the file's scale is taken; a local folder may differ; gradient checkpointing changes memory, not the weights' meaning
NOT_COMPARED = ("scale_factor", "conditioner.minilm_dir", "unet.use_checkpoint")


def _ema_unet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's UNet with each weight the EMA tracks replaced by its ``model_ema.*`` copy (CompVis LitEma names:
    ``model_ema.diffusion_modelinput_blocks00weight`` for ``model.diffusion_model.input_blocks.0.0.weight``)."""
    return {key: sd.get(EMA + shadow_name(key[len("model."):]), value) if key.startswith(UNET) else value
            for key, value in sd.items()}


def _read_stage2(src: str, mmap: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    if not Path(src).is_file():
        raise ConfigError(f"init_from {src} does not exist")
    sd, meta = read_state_dict(src, mmap=mmap)
    if not any(k.startswith(UNET) for k in sd):
        raise ConfigError(f"init_from {src} is not a stage-2 model (no {UNET}* weights): it takes a Stable Diffusion "
                          "1.x / 2.x or CompVis LDM checkpoint, or a model exported by `ldm train ldm --export` (a "
                          "run's model.safetensors)")
    return sd, meta


def file_config(path: str | os.PathLike) -> DiffusionConfig:
    """The model config of ``path`` as ``load_checkpoint`` decides it: stored in our files' metadata, else inferred
    from the weights (SD 1.x / 2.x, CompVis LDMs; ε unless the file says otherwise)."""
    from ..checkpoint import resolve_config

    src = os.fspath(path)
    sd, meta = _read_stage2(src)
    return resolve_config(None, sd, meta, source=src)


def _restricted_minilm(cfg: DiffusionConfig) -> bool:
    return cfg.conditioner.kind == "minilm" and bool(cfg.conditioner.pieces)


def _skipped(key: str, skip: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in skip)


def _compare_configs(model: LatentDiffusion, file_cfg: DiffusionConfig, src: str, new_conditioner: bool) -> None:
    """Refuse what would make the loaded weights mean something else; warn about the other differences (a
    fine-tune may change the schedule, the parameterization or switch on ``unet.spatial_pos_embed`` on purpose).
    ``new_conditioner``: the conditioner is not loaded (init_skip), so its config may differ."""
    ours, theirs = to_dict(model.cfg), to_dict(file_cfg)
    diff = [k for k in diff_configs(theirs, ours) if k not in NOT_COMPARED]
    fatal = [k for k in diff if k in MUST_MATCH or (k.startswith("conditioner.") and not new_conditioner)]
    if fatal:
        from ..checkpoint import family

        detail = "; ".join(f"{k}: file {config_value(theirs, k)!r}, config {config_value(ours, k)!r}"
                           for k in fatal[:6])
        raise ConfigError(f"init_from {src} was trained with a different model ({detail}; the file is "
                          f"{family(file_cfg)}, the config's model {family(model.cfg)}); its weights would mean "
                          "something else: copy these fields from the file's config, or leave model: out (model: "
                          "from_init) to take the file's")
    if new_conditioner and any(k.startswith("conditioner.") for k in diff):  # one line for the new encoder
        diff = [k for k in diff if not k.startswith("conditioner.")] + ["conditioner"]
    if diff:
        diff.sort(key=lambda k: k != "parameterization")  # the change that matters most is always named
        detail = "; ".join("conditioner: a new one (init_skip), not loaded from the file" if k == "conditioner" else
                           f"{k}: file {config_value(theirs, k)!r} -> config {config_value(ours, k)!r}"
                           for k in diff[:8])
        warnings.warn(f"init_from {src}: fine-tuning with a changed model config ({detail})", stacklevel=3)


def _check_first_stage(model: LatentDiffusion, sd: dict[str, torch.Tensor], src: str, named: bool) -> None:
    if model.first_stage_model is None:
        return
    if not any(k.startswith(FIRST) for k in sd):
        warnings.warn(f"init_from {src} carries no first_stage_model.* weights: cannot check that first_stage_path "
                      "is the autoencoder it was trained on", stacklevel=3)
        return
    changed = [k for k, v in model.first_stage_model.state_dict().items()
               if FIRST + k in sd and not torch.equal(v.to(sd[FIRST + k].dtype), sd[FIRST + k])]
    if changed:
        ours = "first_stage_path" if named else "the random first stage drawn from run.seed (set first_stage_path)"
        raise ConfigError(f"init_from {src} was trained on a different first stage than {ours} ({len(changed)} "
                          f"tensors differ, e.g. {changed[:3]}); its latents would not match")


def load_init_weights(model: LatentDiffusion, path: str | os.PathLike, *, first_stage_named: bool = True,
                      skip: tuple[str, ...] = ()) -> float:
    """Load ``path``'s UNet (EMA when stored) and conditioner into ``model``, except the keys ``skip`` matches (they
    keep their fresh initialisation); return the file's ``scale_factor``."""
    from ..checkpoint import check_keys, resolve_config

    src = os.fspath(path)
    sd, meta = _read_stage2(src)
    # our files' stored config, or the one the loader infers from a Stable Diffusion / CompVis file's weights
    file_cfg = resolve_config(None, sd, meta, source=src)
    if _restricted_minilm(file_cfg) and not _restricted_minilm(model.cfg):
        # an --export-vocab data file: its frozen MiniLM is the package's with fewer embedding rows, so the
        # package's full encoder (already in the model) stands in for it
        skip = (*skip, COND + "*")
    cond_keys = [COND + k for k in (model.cond_stage_model.state_dict() if model.cond_stage_model is not None else {})]
    new_conditioner = bool(cond_keys) and all(_skipped(k, skip) for k in cond_keys)
    _compare_configs(model, file_cfg, src, new_conditioner)
    loadable = (*cond_keys, *(UNET + k for k in model.model.diffusion_model.state_dict()), *(
        k for k in sd if k.startswith((UNET, COND))))
    unused = [p for p in skip if not any(_skipped(k, (p,)) for k in loadable)]
    if unused:
        raise ConfigError(f"init_skip pattern(s) {unused} match no UNet or conditioner weight of the model or of "
                          f"{src} (patterns are globs on full keys under {UNET}* or {COND}*, e.g. "
                          "'cond_stage_model.*', 'model.diffusion_model.*.attn2.to_[kv].*')")
    _check_first_stage(model, sd, src, first_stage_named)
    sd = _ema_unet(sd)
    for prefix, part in ((UNET, model.model.diffusion_model), (COND, model.cond_stage_model)):
        if part is None:
            continue
        fresh = {k: v for k, v in part.state_dict().items() if _skipped(prefix + k, skip)}
        mine = {k[len(prefix):]: v.float() if v.is_floating_point() else v
                for k, v in sd.items() if k.startswith(prefix) and not _skipped(k, skip)}
        try:
            check_keys(part, {**mine, **fresh}, f"init_from {src} ({prefix}*)")
        except KeyMismatchError as e:
            from ..checkpoint import family

            raise ConfigError(f"{e}\n  (for init_from: the file is {family(file_cfg)}, the config's model "
                              f"{family(model.cfg)}: make model.unet / model.conditioner the file's, leave model: out "
                              "(model: from_init) to take the file's, or list the parts to train afresh in init_skip; "
                              "flags without weights, such as unet.spatial_pos_embed, may differ)") from e
        part.load_state_dict({**mine, **fresh}, strict=True)
    return float(sd["scale_factor"]) if "scale_factor" in sd else float(file_cfg.scale_factor)
