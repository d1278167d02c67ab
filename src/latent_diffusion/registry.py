"""Plain name → thing tables. No import strings: an original YAML's ``target:`` is looked up here, never imported."""

from __future__ import annotations

# CompVis / Stability ``target:`` names of the top-level model → our ``DiffusionConfig`` defaults they imply.
MODEL_TARGETS: dict[str, dict] = {
    "ldm.models.diffusion.ddpm.LatentDiffusion": {},
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion": {},
    "ldm.models.diffusion.ddpm.LatentDepth2ImageDiffusion": {},
    "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion": {},  # needs low_scale_config (yaml_compat)
}

# low_scale_config.target of a LatentUpscaleDiffusion (→ LowScaleConfig)
LOW_SCALE_TARGETS = ("ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation",)

UNET_TARGETS = ("ldm.modules.diffusionmodules.openaimodel.UNetModel",)

# first_stage_config.target → our first_stage kind
FIRST_STAGE_TARGETS: dict[str, str] = {
    "ldm.models.autoencoder.AutoencoderKL": "kl",
    "ldm.models.autoencoder.VQModel": "vq",
    "ldm.models.autoencoder.VQModelInterface": "vq",
    "ldm.models.autoencoder.IdentityFirstStage": "none",
}

# cond_stage_config.target → our ConditionerConfig fields (sizes of the released text towers)
COND_STAGE_TARGETS: dict[str, dict] = {
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder": dict(
        kind="clip", width=768, layers=12, heads=12, act="quick_gelu", layer="last", pad_with_zero=False),
    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder": dict(
        kind="open_clip", width=1024, layers=24, heads=16, act="gelu", output_dim=1024, layer="penultimate",
        pad_with_zero=True),
    "ldm.modules.encoders.modules.ClassEmbedder": dict(kind="class"),
    "__is_unconditional__": dict(kind="none"),
    "__is_first_stage__": dict(kind="none"),
    "torch.nn.Identity": dict(kind="none"),
}
