"""Infer a ``DiffusionConfig`` from a CompVis / Stable Diffusion state dict (no YAML at hand).

Weights fix every shape; they cannot tell the number of attention heads, the prediction type or the scale factor.
Those follow the released families: SD 1.x (context 768) → 8 heads; SD 2.x (context 1024 / linear projections) →
64-channel heads; other CompVis LDMs → 32-channel heads (most of their configs); ε-prediction unless told
``v``; scale factor 0.18215 for KL first stages, 1.0 for VQ, or the checkpoint's own ``scale_factor``. A text model
whose UNet also has a ``label_emb`` and extra input channels is the SD x4 upscaler (``hybrid-adm``): 8 heads,
v-prediction, scale factor 0.08333 and the noise augmentation of x4-upscaling.yaml (max level 350; its schedule from
``low_scale_model.betas`` when the file has them). Give the original YAML for anything else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .config import AutoencoderConfig, ConditionerConfig, DiffusionConfig, LowScaleConfig, UNetConfig, VQConfig
from .diffusion.schedules import make_beta_schedule
from .errors import CheckpointError

UNET = "model.diffusion_model."
FIRST = "first_stage_model."
COND = "cond_stage_model."


def _indices(keys: list[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def infer_unet(sd: Mapping[str, torch.Tensor]) -> UNetConfig:
    keys = [k[len(UNET):] for k in sd if k.startswith(UNET)]
    w_in = sd[UNET + "input_blocks.0.0.weight"]
    mc, in_ch = w_in.shape[0], w_in.shape[1]
    n_out = len(_indices(keys, r"output_blocks\.(\d+)\."))
    # output blocks that end a level carry an upsampler (a conv, or a ResBlock with up=True) after index 0
    ups = sorted({j for j in _indices(keys, r"output_blocks\.(\d+)\.")
                  if any(re.match(rf"output_blocks\.{j}\.[1-9]\.(conv|in_layers)\.", k) for k in keys)})
    updown = any(re.match(r"output_blocks\.\d+\.[1-9]\.in_layers\.", k) for k in keys)
    nrb = ups[0] if ups else n_out - 1
    levels = len(ups) + 1
    mult, attn = [], []
    for level in range(levels):
        start = 1 + level * (nrb + 1)
        mult.append(sd[UNET + f"input_blocks.{start}.0.in_layers.2.weight"].shape[0] // mc)
        if any(k.startswith(f"input_blocks.{start}.1.") for k in keys):
            attn.append(2**level)
    spatial = UNET + "middle_block.1.proj_in.weight" in sd
    cfg: dict = dict(in_channels=in_ch, out_channels=sd[UNET + "out.2.weight"].shape[0], model_channels=mc,
                     channel_mult=tuple(mult), num_res_blocks=nrb, attention_resolutions=tuple(attn),
                     resblock_updown=updown, legacy=False)
    emb_out = sd[UNET + "input_blocks.1.0.emb_layers.1.weight"].shape[0]
    cfg["use_scale_shift_norm"] = emb_out == 2 * sd[UNET + "input_blocks.1.0.in_layers.2.weight"].shape[0]
    if UNET + "label_emb.weight" in sd:
        cfg["num_classes"] = sd[UNET + "label_emb.weight"].shape[0]
    if spatial:
        block = "middle_block.1.transformer_blocks."
        cfg["use_spatial_transformer"] = True
        cfg["transformer_depth"] = len(_indices(keys, re.escape(block) + r"(\d+)\."))
        context_dim = sd[UNET + block + "0.attn2.to_k.weight"].shape[1]
        cfg["context_dim"] = context_dim
        cfg["use_linear_in_transformer"] = sd[UNET + "middle_block.1.proj_in.weight"].ndim == 2
        cfg["disable_self_attn"] = _self_attn_disabled(sd, "middle_block.1.")
        per_level = [_self_attn_disabled(sd, f"input_blocks.{1 + level * (nrb + 1)}.1.") for level in range(levels)]
        if any(f is not None and f != cfg["disable_self_attn"] for f in per_level):  # the x4 upscaler
            cfg["disable_middle_self_attn"] = cfg["disable_self_attn"]
            cfg["disable_self_attn"] = tuple(bool(f) for f in per_level)
        upscaler = UNET + "label_emb.weight" in sd and in_ch > cfg["out_channels"]
        if upscaler:
            cfg.update(num_heads=8, num_head_channels=-1)  # x4-upscaling.yaml
        elif context_dim == 1024 or cfg["use_linear_in_transformer"]:
            cfg.update(num_heads=-1, num_head_channels=min(64, mc))  # SD 2.x
        elif context_dim == 768:
            cfg.update(num_heads=8, num_head_channels=-1)  # SD 1.x
        else:
            cfg.update(num_heads=-1, num_head_channels=min(32, mc))
    else:
        cfg.update(num_heads=-1, num_head_channels=min(32, mc))
    return UNetConfig(**cfg)


def _self_attn_disabled(sd: Mapping[str, torch.Tensor], attention: str) -> bool | None:
    """Whether the SpatialTransformer at ``attention`` attends to the context in attn1 (None: no attention there)."""
    k = sd.get(UNET + attention + "transformer_blocks.0.attn1.to_k.weight")
    if k is None:
        return None
    return k.shape[1] != sd[UNET + attention + "transformer_blocks.0.attn1.to_q.weight"].shape[0]


def infer_autoencoder(sd: Mapping[str, torch.Tensor]) -> tuple[str, AutoencoderConfig]:
    if FIRST + "encoder.conv_in.weight" not in sd:
        return "none", AutoencoderConfig()
    keys = [k[len(FIRST):] for k in sd if k.startswith(FIRST)]
    conv_in = sd[FIRST + "encoder.conv_in.weight"]
    ch = conv_in.shape[0]
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    mult = tuple(sd[FIRST + f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
    resolution = 256
    attn = tuple(resolution // 2**i for i in levels if any(k.startswith(f"encoder.down.{i}.attn.") for k in keys))
    z = sd[FIRST + "decoder.conv_in.weight"].shape[1]
    values = dict(in_channels=conv_in.shape[1], out_ch=sd[FIRST + "decoder.conv_out.weight"].shape[0], ch=ch,
                  ch_mult=mult, num_res_blocks=len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\.")),
                  attn_resolutions=attn, resolution=resolution, z_channels=z,
                  double_z=sd[FIRST + "encoder.conv_out.weight"].shape[0] == 2 * z,
                  embed_dim=sd[FIRST + "post_quant_conv.weight"].shape[1])
    if FIRST + "quantize.embedding.weight" in sd:
        return "vq", VQConfig(**values, n_embed=sd[FIRST + "quantize.embedding.weight"].shape[0])
    return "kl", AutoencoderConfig(**values)


def infer_conditioner(sd: Mapping[str, torch.Tensor]) -> ConditionerConfig:
    keys = [k for k in sd if k.startswith(COND)]
    if not keys:
        return ConditionerConfig(kind="none")
    clip = COND + "transformer.text_model."
    if clip + "embeddings.token_embedding.weight" in sd:
        vocab, width = sd[clip + "embeddings.token_embedding.weight"].shape
        layers = len(_indices(keys, re.escape(clip) + r"encoder\.layers\.(\d+)\."))
        return ConditionerConfig(kind="clip", vocab_size=vocab, width=width, layers=layers, heads=max(1, width // 64),
                                 max_length=sd[clip + "embeddings.position_embedding.weight"].shape[0],
                                 act="quick_gelu", layer="last", pad_with_zero=False)
    oc = COND + "model."
    if oc + "token_embedding.weight" in sd:
        vocab, width = sd[oc + "token_embedding.weight"].shape
        layers = len(_indices(keys, re.escape(oc) + r"transformer\.resblocks\.(\d+)\."))
        return ConditionerConfig(kind="open_clip", vocab_size=vocab, width=width, layers=layers, heads=max(1, width // 64),
                                 max_length=sd[oc + "positional_embedding"].shape[0],
                                 output_dim=sd[oc + "text_projection"].shape[1], act="gelu", layer="penultimate",
                                 pad_with_zero=True)
    if COND + "embedding.weight" in sd:
        n, d = sd[COND + "embedding.weight"].shape
        return ConditionerConfig(kind="class", n_classes=n, embed_dim=d)
    raise CheckpointError(
        f"cannot infer the conditioner from keys like {keys[:3]}; known: CLIP (cond_stage_model.transformer."
        "text_model.*), OpenCLIP (cond_stage_model.model.*), ClassEmbedder (cond_stage_model.embedding.*). "
        "Pass the model's YAML config."
    )


# linear_start / linear_end / scale_factor of the released configs: tried first when a value is read back from a
# file's tensor (an fp16 / bf16 rounding can also fit a shorter decimal, e.g. bf16(0.18215) == bf16(0.182))
_RELEASED_VALUES = (0.00085, 0.012, 0.0001, 0.02, 0.0015, 0.0155, 0.0195, 0.18215, 0.13025, 0.08333, 1.0)


def stored_value(t: torch.Tensor) -> float:
    """The number a one-element tensor was stored from: a released config value, else the shortest decimal, that
    rounds to it in the tensor's dtype (fp16 / bf16 files keep the schedule and ``scale_factor`` rounded too)."""
    dtype = t.dtype if t.is_floating_point() else torch.float64
    target, value = t.reshape(()).to(dtype), float(t)

    def rounds_to_target(x: float) -> bool:  # directly, or through float32 as a model saved in fp32 then cast
        exact = torch.tensor(x, dtype=torch.float64)
        return bool(exact.to(dtype) == target) or bool(exact.float().to(dtype) == target)

    candidates = [*_RELEASED_VALUES, *(float(f"{value:.{d}g}") for d in range(1, 18))]
    return next((x for x in candidates if rounds_to_target(x)), value)


def matches_stored(exact: torch.Tensor, stored: torch.Tensor) -> bool:
    """Whether ``stored`` (a file's tensor) holds ``exact`` up to the rounding of its dtype: rtol 1e-4, or 2 units
    in the last place of fp16 / bf16 (and an absolute 2 units of their subnormal spacing near 0)."""
    if exact.shape != stored.shape or not stored.is_floating_point():
        return False
    info = torch.finfo(stored.dtype)
    rounded = exact.to(stored.dtype).double()
    return torch.allclose(stored.double(), rounded, rtol=max(1e-4, 2 * info.eps),
                          atol=max(1e-7, 2 * info.tiny * info.eps))


def _infer_schedule(sd: Mapping[str, torch.Tensor]) -> dict:
    if "betas" not in sd:
        return {}
    betas = sd["betas"]
    if betas.ndim != 1 or betas.shape[0] < 2 or not betas.is_floating_point():
        raise CheckpointError(f"the checkpoint's betas are a {betas.dtype} tensor of shape {tuple(betas.shape)}; "
                              "expected a 1-D float tensor with one beta per timestep; pass a config")
    # compared in the file's precision: fp16 / bf16 files store the schedule rounded like every other tensor
    start, end, n = stored_value(betas[0]), stored_value(betas[-1]), betas.shape[0]
    for name in ("linear", "linear_beta", "cosine"):
        if matches_stored(make_beta_schedule(name, n, start, end), betas):
            return dict(timesteps=n, beta_schedule=name, linear_start=start, linear_end=end)
    raise CheckpointError("the checkpoint's betas match no known schedule (linear, linear_beta, cosine); pass a config")


def infer_config(sd: Mapping[str, torch.Tensor], *, parameterization: str | None = None) -> DiffusionConfig:
    """A ``DiffusionConfig`` reproducing every tensor shape of ``sd`` (see the module doc for the guessed fields)."""
    if UNET + "input_blocks.0.0.weight" not in sd:
        sample = list(sd)[:5]
        raise CheckpointError(
            f"no UNet found (expected keys starting with {UNET!r}; first keys are {sample}); "
            "this does not look like a LatentDiffusion / Stable Diffusion checkpoint"
        )
    unet = infer_unet(sd)
    first, ae = infer_autoencoder(sd)
    cond = infer_conditioner(sd)
    low_scale = None
    if cond.kind in ("clip", "open_clip") and unet.num_classes is not None and unet.in_channels > unet.out_channels:
        key, low_scale = "hybrid-adm", _infer_low_scale(sd)  # the x4 upscaler
        parameterization = parameterization or "v"
    elif cond.kind in ("clip", "open_clip", "class"):
        key = "hybrid" if unet.in_channels > unet.out_channels else "crossattn"
    elif unet.num_classes is not None:
        key = "adm"
    else:
        key = "concat" if unet.in_channels > unet.out_channels else None
    if "scale_factor" in sd:
        scale = stored_value(sd["scale_factor"])
    elif low_scale is not None:
        scale = 0.08333  # x4-upscaling.yaml
    else:
        scale = 1.0 if first in ("vq", "none") else 0.18215
    return DiffusionConfig(parameterization=parameterization or "eps", scale_factor=scale, conditioning_key=key,
                           first_stage=first, unet=unet, autoencoder=ae, conditioner=cond, low_scale=low_scale,
                           **_infer_schedule(sd))


def _infer_low_scale(sd: Mapping[str, torch.Tensor]) -> LowScaleConfig:
    """x4-upscaling.yaml's noise augmentation; the schedule from ``low_scale_model.betas`` when present."""
    schedule = _infer_schedule({k.removeprefix("low_scale_model."): v for k, v in sd.items()
                                if k.startswith("low_scale_model.")})
    return LowScaleConfig(**schedule, max_noise_level=350)
