"""The text-guided tasks: txt2img, img2img (SDEdit) and inpaint, each a function of a ``Pipeline`` bound as its
method of the same name (``pipeline.py``); their defaults come from ``defaults.py``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image

from ..diffusion.samplers import start_step_for_strength
from ..errors import LDMError
from .blend import final_blend, masked_denoiser
from .defaults import IMG2IMG, INPAINT, TXT2IMG, text_hw
from .images import load_image, load_mask, pil_to_tensor, tensor_to_pil
from .output import resolve_seed
from .task_common import Callback, check_strength, with_concat

if TYPE_CHECKING:
    from .pipeline import Pipeline


def txt2img(pipe: Pipeline, prompt: str, negative_prompt: str = "", *, steps: int = TXT2IMG.steps,
            sampler: str = TXT2IMG.sampler, cfg_scale: float = TXT2IMG.cfg_scale, seed: int | None = None, n: int = 1,
            height: int | None = None, width: int | None = None, guidance_rescale: float = 0.0,
            callback: Callback | None = None, progress: bool = False, batch_size: int | None = None,
            output: str = "pil") -> list[Image.Image] | torch.Tensor:
    """``height`` / ``width`` default to ``text_size`` (512; 64 for the embedded ShapesWorld models); ``seed`` None:
    a random one, recorded with the images."""
    pipe._require("txt2img", "text", "inpaint")
    pipe._check_common(steps, sampler, cfg_scale, n)
    height, width = text_hw(pipe, height, width)
    pipe._check_size(height, width)
    cond, uncond = pipe._text(prompt, negative_prompt, n, cfg_scale)
    if pipe.kind == "inpaint":  # whole image repainted: mask of ones, masked image all zero (gray)
        f = pipe.latent_factor
        cat = pipe._inpaint_concat(torch.zeros(1, 3, height, width), torch.ones(1, 1, height, width),
                                   height // f, width // f)
        cond, uncond = with_concat(cond, uncond, cat, n)
    record = pipe._record(resolve_seed(seed), batch_size, steps, sampler, cfg_scale, prompt, negative_prompt,
                          {"Guidance rescale": guidance_rescale or None})
    return pipe._generate(record, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                          cond=cond, uncond=uncond, guidance_rescale=guidance_rescale, callback=callback,
                          progress=progress)


def img2img(pipe: Pipeline, image: Image.Image | str | os.PathLike, prompt: str, negative_prompt: str = "", *,
            strength: float = IMG2IMG.strength, steps: int = IMG2IMG.steps, sampler: str = IMG2IMG.sampler,
            cfg_scale: float = IMG2IMG.cfg_scale, seed: int | None = None, n: int = 1, guidance_rescale: float = 0.0,
            callback: Callback | None = None, progress: bool = False, batch_size: int | None = None,
            output: str = "pil") -> list[Image.Image] | torch.Tensor:
    """SDEdit: encode ``image``, noise it to the level ``strength`` of the way up, denoise."""
    pipe._require("img2img", "text")
    pipe._check_common(steps, sampler, cfg_scale, n)
    if not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise LDMError(f"strength must be in [0, 1] (0 = keep the image, 1 = ignore it), got {strength!r}")
    pil = load_image(image, pipe.limits)
    width, height = pil.size
    pipe._check_size(height, width)
    z0 = pipe._encode(pil_to_tensor(pil)).expand(n, -1, -1, -1)
    record = pipe._record(resolve_seed(seed), batch_size, steps, sampler, cfg_scale, prompt, negative_prompt,
                          {"Guidance rescale": guidance_rescale or None, "Denoising strength": strength})
    if int(steps * strength) == 0:  # nothing to run: the VAE round trip of the input
        return pipe._decode(z0.clone(), output, record)
    start = start_step_for_strength(steps, strength)
    cond, uncond = pipe._text(prompt, negative_prompt, n, cfg_scale)
    return pipe._generate(record, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                          cond=cond, uncond=uncond, guidance_rescale=guidance_rescale, callback=callback,
                          progress=progress, start_step=start, init_latents=z0)


def inpaint(pipe: Pipeline, image: Image.Image | str | os.PathLike, mask: Image.Image | str | os.PathLike,
            prompt: str, negative_prompt: str = "", *, strength: float = INPAINT.strength,
            steps: int = INPAINT.steps, sampler: str = INPAINT.sampler, cfg_scale: float = INPAINT.cfg_scale,
            seed: int | None = None, n: int = 1, guidance_rescale: float = 0.0, callback: Callback | None = None,
            progress: bool = False, batch_size: int | None = None, output: str = "pil", paste_back: bool = False,
            blend_latents: bool | None = None) -> list[Image.Image] | torch.Tensor:
    """Repaint where ``mask`` is white. 9-channel inpainting models get [mask, masked-image latents] as
    c_concat; ordinary text models keep the unmasked latents by blending at every step (exact at the end).
    ``blend_latents=True`` adds that blending to a 9-channel model too (None: only where it is the only way,
    i.e. ordinary models). Either way the decoder redraws the whole image, so pixels outside the mask change by
    the autoencoder's round trip; ``paste_back=True`` composites the input's pixels back outside the mask
    (``output`` "pil" or "output")."""
    pipe._require("inpaint", "text", "inpaint")
    if paste_back and output == "latent":
        raise LDMError("paste_back composites decoded pixels, so it needs images (latents have no pixels)")
    pipe._check_common(steps, sampler, cfg_scale, n)
    check_strength(strength, "inpaint")
    pil = load_image(image, pipe.limits)
    width, height = pil.size
    pipe._check_size(height, width)
    m = load_mask(mask, pil.size, pipe.limits)  # (1, 1, H, W), 1 = repaint
    x = pil_to_tensor(pil)
    f = pipe.latent_factor
    h, w = height // f, width // f
    cond, uncond = pipe._text(prompt, negative_prompt, n, cfg_scale)
    if blend_latents is None:
        blend_latents = pipe.kind != "inpaint"
    elif not blend_latents and pipe.kind != "inpaint":
        raise LDMError("an ordinary (non-inpainting) model keeps the unmasked image only by latent blending; "
                       "blend_latents=False is for 9-channel inpainting models")
    record = pipe._record(resolve_seed(seed), batch_size, steps, sampler, cfg_scale, prompt, negative_prompt,
                          {"Guidance rescale": guidance_rescale or None, "Denoising strength": strength,
                           "Paste back": paste_back or None,
                           "Blend latents": True if blend_latents and pipe.kind == "inpaint" else None})
    noise, gens = pipe._noise(record.seed, n, height, width)
    start, init = 0, None
    model, keep, z0 = pipe.model, None, None
    if pipe.kind == "inpaint":
        cond, uncond = with_concat(cond, uncond, pipe._inpaint_concat(x, m, h, w), n)
    if blend_latents:
        z0 = pipe._encode(x).expand(n, -1, -1, -1)
        # a latent is repainted if any of its f×f pixels is
        keep = 1.0 - F.max_pool2d(m, f).to(z0.device, z0.dtype)
        model = masked_denoiser(pipe.model, z0[:1], keep)  # rows are equal
    if strength < 1.0:  # the blending path has the image's latents already
        init = z0 if z0 is not None else pipe._encode(x).expand(n, -1, -1, -1)
        start = start_step_for_strength(steps, strength)
    z = pipe._run(model, noise, gens, steps=steps, sampler=sampler, cfg_scale=cfg_scale, cond=cond, uncond=uncond,
                  guidance_rescale=guidance_rescale, callback=callback, progress=progress,
                  batch_size=record.batch_size, start_step=start, init_latents=init)
    if keep is not None:
        z = final_blend(z, z0, keep)
    if not paste_back:
        return pipe._decode(z, output, record)
    images = [tensor_to_pil(x * (1 - m) + pil_to_tensor(im) * m)[0] for im in pipe._decode(z, "pil")]
    return record.stamp(images) if output == "pil" else record.output(images, z)


def inpaint_concat(pipe: Pipeline, image: torch.Tensor, mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """CompVis / diffusers 9-channel inpainting: c_concat = [mask at latent size, masked-image latents]."""
    device, dtype = pipe._device_dtype()
    m = F.interpolate(mask, size=(h, w))  # nearest, as both reference implementations
    masked = pipe._encode(image * (mask < 0.5))
    return torch.cat([m.to(device, dtype), masked], dim=1)  # (1, 1 + C, h, w)
