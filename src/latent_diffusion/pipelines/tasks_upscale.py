"""The ``upscale`` task: a concat-conditioned super-resolution LDM or the SD x4 upscaler (its conditioning in
``upscale.py``), a function of a ``Pipeline`` bound as ``Pipeline.upscale``; its defaults come from ``defaults.py``."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image

from ..diffusion.samplers import randn, start_step_for_strength
from ..errors import LDMError
from .defaults import UPSCALE, upscale_cfg_scale, upscale_noise_level
from .images import load_image, pil_to_tensor
from .output import resolve_seed
from .task_common import Callback, check_strength, generators
from .upscale import check_noise_level, noised_low_res, upscale_conditioning

if TYPE_CHECKING:
    from .pipeline import Pipeline


def upscale(pipe: Pipeline, low_res_image: Image.Image | str | os.PathLike, prompt: str = "",
            negative_prompt: str = "", *, steps: int = UPSCALE.steps, sampler: str = UPSCALE.sampler,
            cfg_scale: float | None = UPSCALE.cfg_scale, noise_level: int | None = None,
            strength: float = UPSCALE.strength, seed: int | None = None, n: int = 1, height: int | None = None,
            width: int | None = None, callback: Callback | None = None, progress: bool = False,
            batch_size: int | None = None, output: str = "pil") -> list[Image.Image] | torch.Tensor:
    """Super-resolution: c_concat = the low-res image at latent resolution. The output is ``f`` times the input
    unless height / width are given.

    CompVis LDM (concat): no prompt, no guidance (``cfg_scale`` None or 1), no ``noise_level``. ``strength`` < 1
    starts the sampler from the bicubic upsample's latents noised ``strength`` of the way up (SDEdit, as
    img2img) instead of from pure noise: the sample stays closer to the input (less invented detail, higher
    PSNR); 1 is the paper's sampler.
    SD x4 upscaler (hybrid-adm, see upscale.py): the image is first noised to ``noise_level`` (default 20, in
    [0, max_noise_level]) with generator i for image i; ``prompt`` / ``negative_prompt`` with ``cfg_scale``
    (default 9, as diffusers) guide it."""
    pipe._require("upscale", "concat", "text_upscale")
    text = pipe.kind == "text_upscale"
    cfg_scale = upscale_cfg_scale(pipe.kind, cfg_scale)
    pipe._check_common(steps, sampler, cfg_scale, n)
    if text:
        noise_level = check_noise_level(upscale_noise_level(noise_level), pipe.cfg.low_scale.max_noise_level)
    elif noise_level is not None:
        raise LDMError(f"this {pipe.family} model concatenates the image as it is; it takes no noise_level "
                       f"(got {noise_level!r})")
    elif cfg_scale != 1.0:
        raise LDMError(f"this {pipe.family} model has no unconditional input; use cfg_scale=1, got {cfg_scale}")
    elif prompt or negative_prompt:
        warnings.warn("this upscaler takes no prompt; ignoring it", stacklevel=2)
    check_strength(strength, "upscale", " (1 = start from pure noise)")
    if text and strength != 1.0:
        raise LDMError(f"strength < 1 is for concat upscalers; the SD x4 upscaler starts from noise and takes "
                       f"noise_level instead (got strength={strength})")
    extra = pipe.cfg.unet.in_channels - pipe.cfg.unet.out_channels
    if extra != 3:
        raise LDMError(f"upscale expects a concat model with 3 extra (RGB) input channels, this one has {extra}")
    pil = load_image(low_res_image, pipe.limits)
    f = pipe.latent_factor
    height = height or pil.size[1] * f  # the "input_x_factor" size rule
    width = width or pil.size[0] * f
    pipe._check_size(height, width)
    device, dtype = pipe._device_dtype()
    lo = pil_to_tensor(pil)
    if lo.shape[-2:] != (height // f, width // f):
        lo = F.interpolate(lo, size=(height // f, width // f), mode="bicubic", align_corners=False).clamp(-1, 1)
    record = pipe._record(resolve_seed(seed), batch_size, steps, sampler, cfg_scale, prompt if text else "",
                          negative_prompt if text else "", {"Noise level": noise_level if text else None,
                                                            "Denoising strength": strength if strength != 1.0 else None})
    if not text:
        cond = lo.to(device, dtype).expand(n, -1, -1, -1)
        start, init = 0, None
        if strength < 1.0:
            start = start_step_for_strength(steps, strength)
            up = F.interpolate(lo, size=(height, width), mode="bicubic", align_corners=False).clamp(-1, 1)
            init = pipe._encode(up).expand(n, -1, -1, -1)
        return pipe._generate(record, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=1.0,
                              cond=cond, uncond=None, callback=callback, progress=progress, start_step=start,
                              init_latents=init)
    text_cond, text_uncond = pipe._text(prompt, negative_prompt, n, cfg_scale)
    gens = generators(record.seed, n)  # per image: low-res noise first, then the initial latents (upscale.py)
    c_concat, c_adm = noised_low_res(pipe.model, lo.to(device, dtype), noise_level, gens)
    noise = randn((n, pipe.latent_channels, height // f, width // f), gens, device=device, dtype=dtype)
    cond, uncond = upscale_conditioning(c_concat, c_adm, text_cond, text_uncond)
    z = pipe._run(pipe.model, noise, gens, steps=steps, sampler=sampler, cfg_scale=cfg_scale, cond=cond,
                  uncond=uncond, callback=callback, progress=progress, batch_size=batch_size)
    return pipe._decode(z, output, record)
