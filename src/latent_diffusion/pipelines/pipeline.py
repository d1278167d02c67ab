"""``Pipeline``: one loaded model, the generation tasks it can do (txt2img, img2img, inpaint, upscale, sample,
layout2img, semantic2img).

Seeds: image i of a call with ``seed`` s and ``n`` images draws its initial noise (and its ancestral noise) from
``torch.Generator("cpu").manual_seed(s + i)`` alone, so it equals the single-image run with seed s + i.

Batches: ``batch_size`` images are sampled together (default: all n; 1 gives one progress bar per image, which the
CLI does), and the prompt is encoded once per call whatever the split.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from PIL import Image

from ..accel import AccelOptions, Precision, Tiling, accelerate, sampling_context, warn_if_emulated
from ..accel.gemm_storage import base_dtype, gemm_dtypes, gemm_parameters, stored_dtype
from ..checkpoint import family as family_name
from ..checkpoint import load_checkpoint
from ..diffusion.samplers import SampleOptions, get_sampler, randn, sample, start_step_for_strength
from ..errors import LDMError, NonFiniteError
from ..models.conditioners import TEXT_KINDS, null_class, num_class_labels
from .blend import final_blend, masked_denoiser
from .images import check_size, load_image, load_mask, open_image, pil_to_tensor, tensor_to_pil
from .limits import Limits, check_seed
from .structured import LayoutLike, load_semantic_map, null_layout, pad_layout, parse_layout, semantic_concat
from .upscale import (DEFAULT_CFG_SCALE, DEFAULT_NOISE_LEVEL, check_noise_level, noised_low_res,
                      upscale_conditioning)

Callback = Callable[[int, torch.Tensor, torch.Tensor], None]
MAX_PROMPT_TOKENS = 75  # CLIP's 77 minus the start and end tokens


def generators(seed: int, n: int) -> list[torch.Generator]:
    """Generator i seeded ``seed + i`` (each a 64-bit seed: checked)."""
    check_seed(seed, n)
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]



def _check_strength(strength: Any, task: str, meaning: str = "") -> None:
    """A denoising strength in (0, 1] (the tasks that must run at least one step), else a clear error."""
    if not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise LDMError(f"{task} strength must be in (0, 1]{meaning}, got {strength!r}")

class Pipeline:
    def __init__(self, model: Any, *, checkpoint_path: str | os.PathLike | None = None,
                 precision: str | Precision = "auto", **fast: Any) -> None:
        self.model = model
        self.cfg = model.cfg
        self.checkpoint_path = checkpoint_path
        self._hash: str | None = None
        self._load_args: dict[str, Any] | None = None  # from_checkpoint's: the file can give the fp32 UNet back
        self.limits = Limits()  # the most pixels per image and images per call (checked before any work)
        self.fast: AccelOptions | None = None
        self.set_fast_paths(precision, **fast)

    @property
    def precision(self) -> Precision:
        return self.fast.precision

    def set_fast_paths(self, precision: str | Precision = "auto", *, deepcache: int | None = None,
                       deepcache_branch: int = 0, attention_slice: int | None = None, compile: bool = False,
                       vae_tiling: bool | Tiling | None = None) -> AccelOptions:
        """How the model runs (``accel``, docs/performance.md), applied with ``accel.accelerate``. ``precision``:
        "auto" (bf16 autocast for the UNet where the CPU / GPU has native bf16 and the weights are fp32, else fp32),
        "fp32", "bf16", or a ``Precision`` already resolved; ``deepcache``: reuse the UNet's deep features on
        ``deepcache - 1`` of every ``deepcache`` calls (None: off); ``attention_slice``: queries per attention call
        (None: all); ``compile``: ``torch.compile`` the UNet; ``vae_tiling``: True or a ``Tiling``: encode / decode
        large images in overlapping tiles (a KL first stage only). The GEMM-lowered convs, oneDNN Linears and
        channels_last are always on (each where it applies).

        ``from_checkpoint`` with a precision that resolves to bf16 stores the UNet's Linear / Conv weights in bf16
        (``accel/gemm_storage.py``): the same numbers as autocast, half the UNet's memory. Such a UNet runs bf16
        ("auto" keeps it so). "fp32" reads its fp32 weights back from the checkpoint file, after checking that the
        stored ones still match the file — weights changed in memory are never replaced: that, or a model not
        loaded by ``from_checkpoint``, is an error. Switching to bf16 later runs autocast over the fp32 weights."""
        device, dtype = self._device_dtype()
        stored = stored_dtype(self.model.model.diffusion_model) == torch.bfloat16
        if not isinstance(precision, Precision):
            precision = (Precision("bf16", stored_bf16=True) if stored and precision == "auto"
                         else Precision.resolve(precision, device, dtype))
        options = AccelOptions.with_model_paths(precision, deepcache=deepcache, deepcache_branch=deepcache_branch,
                                                attention_slice=attention_slice, compile=compile, vae_tiling=vae_tiling)
        if stored and not precision.autocast:
            self._restore_fp32_unet()
        bf16_gemms = precision.autocast or dtype == torch.bfloat16
        was = self.fast
        if bf16_gemms and not (was is not None and (was.precision.autocast or dtype == torch.bfloat16)):
            warn_if_emulated(device)  # once per switch to bf16, not on every call
        accelerate(self.model, options)
        self.fast = options
        return options

    def enable_vae_tiling(self, tile: int = 32, overlap: int = 8) -> None:
        """Encode / decode images larger than ``tile`` latent pixels in overlapping, blended tiles (``accel.Tiling``):
        peak memory follows the tile, not the image. A KL first stage only (else an error)."""
        options = dataclasses.replace(self.fast, vae_tiling=Tiling(tile, overlap))
        accelerate(self.model, options)
        self.fast = options

    def _restore_fp32_unet(self) -> None:
        """From bf16 storage back to fp32: the UNet's GEMM weights read from the checkpoint file (one tensor at a
        time, onto each parameter's device), into the same Parameters, if the stored ones still match the file."""
        from ..checkpoint import unet_file_key
        from ..safe_load import read_state_dict

        if self._load_args is None or self.checkpoint_path is None:
            raise LDMError("cannot switch to fp32: this model's UNet stores its Linear / Conv weights in bf16 "
                           "(load_checkpoint(unet_dtypes=...) or a bf16 pipeline's model), so it runs under bf16 "
                           "autocast only; use precision='bf16', or load the checkpoint again for fp32")
        path = os.fspath(self.checkpoint_path)
        stored = {n: p for n, p in gemm_parameters(self.model.model.diffusion_model).items()
                  if p.dtype == torch.bfloat16}
        key = {n: unet_file_key(n, self._load_args["use_ema"]) for n in stored}
        try:
            sd, _ = read_state_dict(path)  # .safetensors: memory-mapped, each tensor read when used
        except (LDMError, OSError) as exc:
            raise LDMError(f"cannot switch to fp32: reading the UNet's fp32 weights back from {path} failed: "
                           f"{exc}") from exc
        fresh = {n: sd[k] for n, k in key.items() if k in sd}
        changed = [n for n, p in stored.items()
                   if n not in fresh or not torch.equal(p, fresh[n].to(p.device, torch.float32).to(p.dtype))]
        if changed:
            raise LDMError(f"cannot switch to fp32: this pipeline stores its UNet's GEMM weights in bf16 (loaded "
                           f"for bf16), and {len(changed)} of them no longer match {path} (e.g. {changed[0]}), so "
                           "reading the file back would lose them; load the pipeline with "
                           "from_checkpoint(..., precision='fp32') for fp32 sampling")
        with torch.no_grad():
            for n, p in stored.items():
                p.data = fresh[n].to(p.device, torch.float32, copy=True)  # not a view of the mapped file

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, config: Any = None, *,
                        dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", use_ema: bool = False,
                        parameterization: str | None = None, precision: str = "auto", **fast: Any) -> Pipeline:
        """``path=None``: the embedded ShapesWorld text-to-image model (64×64; see ``default_model``).
        ``precision`` and ``fast``: as ``set_fast_paths``, resolved once here; bf16 with fp32 ``dtype`` loads the UNet's
        GEMM weights into bf16 storage as the file is read. A file's ``model_ema.*`` weights are not kept
        (``use_ema`` copies them into the UNet first)."""
        resolved = Precision.resolve(precision, device, dtype, store=True)
        AccelOptions.with_model_paths(resolved, **fast)  # bad options refused before the file is read
        if path is None:
            from ..default_model import default_model_path

            path = default_model_path()
        load_args = {"config": config, "use_ema": use_ema, "dtype": dtype, "device": device,
                     "parameterization": parameterization}
        unet_dtypes = functools.partial(gemm_dtypes, dtype=torch.bfloat16) if resolved.stored_bf16 else None
        model = load_checkpoint(path, **load_args, unet_dtypes=unet_dtypes,
                                keep_ema=False)  # sampling never needs the EMA copy once use_ema has applied it
        pipe = cls(model, checkpoint_path=path, precision=resolved, **fast)
        pipe._load_args = load_args
        return pipe

    # -- model facts -------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return family_name(self.cfg)

    @property
    def model_hash(self) -> str | None:
        """A1111-style short sha256 of the checkpoint file (None for an in-memory model)."""
        if self._hash is None and self.checkpoint_path is not None:
            from ..safe_load import file_fingerprint

            self._hash = file_fingerprint(self.checkpoint_path)
        return self._hash

    @property
    def latent_factor(self) -> int:
        return 1 if self.cfg.first_stage == "none" else self.cfg.autoencoder.downsample_factor

    @property
    def text_size(self) -> int:
        """txt2img's default height and width: the training size of an embedded ShapesWorld model (64), else 512
        (SD 1.x and 2-base; a file's nominal ``autoencoder.resolution`` does not say what it was trained at)."""
        from ..default_model import ASSETS, DEFAULT_SIZE

        embedded = self.checkpoint_path is not None and Path(self.checkpoint_path).resolve().parent == ASSETS.resolve()
        return DEFAULT_SIZE if embedded else 512

    @property
    def size_multiple(self) -> int:
        return self.latent_factor * 2 ** (len(self.cfg.unet.channel_mult) - 1)

    @property
    def latent_channels(self) -> int:
        return self.cfg.unet.out_channels

    @property
    def kind(self) -> str:
        """text | inpaint (9-channel hybrid) | text_upscale (SD x4) | class | uncond | layout | concat (image
        concatenated: super-resolution) | semantic (a one-hot label map concatenated) | other."""
        cfg, key = self.cfg, self.cfg.conditioning_key
        if cfg.conditioner.kind == "layout":
            return "layout"
        if cfg.conditioner.kind in TEXT_KINDS:
            if key == "hybrid-adm" and cfg.low_scale is not None:
                return "text_upscale"  # SD x4 upscaler
            if key == "hybrid" and cfg.unet.in_channels == cfg.unet.out_channels + 5:
                return "inpaint"
            return "text" if key == "crossattn" else "other"
        if cfg.conditioner.kind == "class" or cfg.unet.num_classes is not None:
            return "class"
        if key is None:
            return "uncond"
        if key == "concat":  # 3 extra channels: a low-res RGB image; more: a one-hot semantic map
            return "concat" if cfg.unet.in_channels - cfg.unet.out_channels == 3 else "semantic"
        return "other"

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """The UNet's device and the dtype it was loaded in (its norms': fp32 while its GEMM weights are stored in
        bf16 for autocast)."""
        return next(self.model.model.parameters()).device, base_dtype(self.model.model)

    def _require(self, task: str, *kinds: str) -> None:
        if self.kind not in kinds:
            hint = {"text": "txt2img / img2img / inpaint", "inpaint": "inpaint (or txt2img / img2img)",
                    "class": "sample --class-label", "uncond": "sample", "concat": "upscale",
                    "text_upscale": "upscale (with a prompt)",
                    "layout": "layout2img", "semantic": "semantic2img"}.get(self.kind, "none")
            raise LDMError(f"{task} needs a {' or '.join(kinds)} model, but this is a {self.family} model; "
                           f"tasks it can do: {hint}")

    # -- checks ------------------------------------------------------------------------------------
    def _check_common(self, steps: int, sampler: str, cfg_scale: float, n: int) -> None:
        if not isinstance(steps, int) or steps <= 0:
            raise LDMError(f"steps must be a positive integer, got {steps!r}")
        if cfg_scale < 0:
            raise LDMError(f"cfg_scale must be >= 0 (1 = no guidance), got {cfg_scale!r}")
        self.limits.check_images(n)
        get_sampler(sampler)

    def _check_size(self, height: int, width: int) -> None:
        check_size(height, width, self.size_multiple, self.limits)

    def open_input(self, image: Image.Image | str | os.PathLike, what: str = "image") -> Image.Image:
        """``image`` read into memory as it is (mode kept), its size checked against ``limits`` before decoding:
        for callers that reuse one input over several calls."""
        if isinstance(image, Image.Image):
            self.limits.check_pixels(*image.size, what)
            return image
        return open_image(image, what, self.limits)

    def check_prompt(self, prompt: str) -> int:
        """Warn when ``prompt`` exceeds CLIP's 75 tokens (or has words a word-level encoder never saw); returns the
        number of tokens dropped."""
        own = getattr(self.model.cond_stage_model, "check_prompt", None)
        if own is not None:  # our word-level text encoder: unknown words become [UNK]
            unknown = own(prompt)
            if unknown:
                warnings.warn(f"the text encoder does not know the word(s) {unknown}; they are ignored ([UNK])",
                              stacklevel=3)
            dropped = getattr(self.model.cond_stage_model, "dropped_words", lambda _: 0)(prompt)
            if dropped:
                limit = self.model.cond_stage_model.max_length - 2
                warnings.warn(f"the prompt has {limit + dropped} words; the text encoder takes {limit}, so the last "
                              f"{dropped} words were dropped", stacklevel=3)
            return dropped
        from ..tokenizer import clean_text, get_tokenizer

        count = len(get_tokenizer()(clean_text(prompt))["input_ids"]) - 2
        dropped = max(0, count - MAX_PROMPT_TOKENS)
        if dropped:
            warnings.warn(f"prompt is {count} tokens; the text encoder takes {MAX_PROMPT_TOKENS}, so the last "
                          f"{dropped} tokens were dropped", stacklevel=3)
        return dropped

    # -- conditioning ------------------------------------------------------------------------------
    def _text(self, prompt: str, negative_prompt: str, n: int, cfg_scale: float) -> tuple[Any, Any]:
        for p in (prompt, negative_prompt):
            if not isinstance(p, str):
                raise LDMError(f"prompts must be strings, got {type(p).__name__}")
            self.check_prompt(p)
        guided = cfg_scale != 1.0
        with torch.no_grad():  # one text-encoder batch for prompt and negative prompt, once per call
            emb = self.model.get_learned_conditioning([prompt, negative_prompt] if guided else [prompt])
        if not bool(torch.isfinite(emb).all()):
            raise NonFiniteError(f"the text encoder produced NaN/Inf for the prompt (dtype {emb.dtype}); nothing was "
                                 f"sampled. Its weights may be damaged: check the checkpoint (`ldm inspect`)"
                                 + (", or run it in fp32" if emb.dtype == torch.float16 else ""))
        c, u = emb[:1], (emb[1:] if guided else None)
        return c.expand(n, *c.shape[1:]), u  # uncond stays (1, ...): guidance broadcasts it

    def _noise(self, seed: int, n: int, height: int, width: int) -> tuple[torch.Tensor, list[torch.Generator]]:
        device, dtype = self._device_dtype()
        f = self.latent_factor
        gens = generators(seed, n)
        return randn((n, self.latent_channels, height // f, width // f), gens, device=device, dtype=dtype), gens

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        device, dtype = self._device_dtype()
        with torch.no_grad():
            return self.model.encode_first_stage(x.to(device, dtype))

    def _decode(self, z: torch.Tensor, output: str) -> list[Image.Image] | torch.Tensor:
        if output == "latent":
            return z
        if output != "pil":
            raise LDMError(f"output must be 'pil' or 'latent', got {output!r}")
        images = []
        for i in range(z.shape[0]):
            with torch.no_grad():
                x = self.model.decode_first_stage(z[i:i + 1])
            if not bool(torch.isfinite(x).all()):
                raise NonFiniteError(
                    f"the autoencoder's decoder produced NaN/Inf pixels for image {i + 1}/{z.shape[0]} from finite "
                    f"latents (dtype {x.dtype}); no image was written for it. Its weights may be damaged: check the "
                    "checkpoint (`ldm inspect`)" + (", or decode in fp32" if x.dtype == torch.float16 else ""))
            images.append(tensor_to_pil(x)[0])
        return images

    def _run(self, model: Any, noise: torch.Tensor, gens: list[torch.Generator], *, steps: int, sampler: str,
             cfg_scale: float, cond: Any, uncond: Any, guidance_rescale: float = 0.0, callback: Callback | None = None,
             progress: bool = False, start_step: int = 0, init_latents: torch.Tensor | None = None,
             batch_size: int | None = None) -> torch.Tensor:
        """Sample the n rows of ``noise`` in batches of ``batch_size`` (None: all at once), one progress bar per
        batch ("image i/n" when batches are single images). Per-sample generators make the split invisible."""
        n = noise.shape[0]
        size = n if batch_size is None else batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise LDMError(f"batch_size must be a positive integer or None (all images at once), got {batch_size!r}")
        out = []
        for start in range(0, n, size):
            rows = slice(start, min(start + size, n))
            with sampling_context(self.model, self.fast, noise.device):  # autocast, DeepCache, ... per run
                opts = SampleOptions(steps=steps, cfg_scale=cfg_scale, guidance_rescale=guidance_rescale,
                                     start_step=start_step, progress=_bar_label(progress, rows, n))
                z = sample(sampler, model, noise[rows], opts, cond=_take(cond, rows, n),
                           uncond=_take(uncond, rows, n), init_latents=_take(init_latents, rows, n),
                           generator=gens[rows], callback=callback)
            out.append(z.to(noise.dtype))  # bf16 autocast may hand back bf16 latents
        return out[0] if len(out) == 1 else torch.cat(out)

    def _generate(self, seed: int, n: int, height: int, width: int, output: str,
                  **run: Any) -> list[Image.Image] | torch.Tensor:
        """The tasks' common tail: noise (generator i for image i) → ``_run(**run)`` → images (or latents)."""
        noise, gens = self._noise(seed, n, height, width)
        return self._decode(self._run(self.model, noise, gens, **run), output)

    def _inpaint_concat(self, image: torch.Tensor, mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """CompVis / diffusers 9-channel inpainting: c_concat = [mask at latent size, masked-image latents]."""
        device, dtype = self._device_dtype()
        m = F.interpolate(mask, size=(h, w))  # nearest, as both reference implementations
        masked = self._encode(image * (mask < 0.5))
        return torch.cat([m.to(device, dtype), masked], dim=1)  # (1, 1 + C, h, w)

    # -- tasks -------------------------------------------------------------------------------------
    def txt2img(self, prompt: str, negative_prompt: str = "", *, steps: int = 20, sampler: str = "dpmpp_2m",
                cfg_scale: float = 7.5, seed: int = 0, n: int = 1, height: int | None = None,
                width: int | None = None, guidance_rescale: float = 0.0, callback: Callback | None = None,
                progress: bool = False, batch_size: int | None = None,
                output: str = "pil") -> list[Image.Image] | torch.Tensor:
        """``height`` / ``width`` default to ``text_size`` (512; 64 for the embedded ShapesWorld models)."""
        self._require("txt2img", "text", "inpaint")
        self._check_common(steps, sampler, cfg_scale, n)
        height = self.text_size if height is None else height
        width = self.text_size if width is None else width
        self._check_size(height, width)
        cond, uncond = self._text(prompt, negative_prompt, n, cfg_scale)
        if self.kind == "inpaint":  # whole image repainted: mask of ones, masked image all zero (gray)
            f = self.latent_factor
            cat = self._inpaint_concat(torch.zeros(1, 3, height, width), torch.ones(1, 1, height, width),
                                       height // f, width // f)
            cond, uncond = _with_concat(cond, uncond, cat, n)
        return self._generate(seed, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                              cond=cond, uncond=uncond, guidance_rescale=guidance_rescale, callback=callback,
                              progress=progress, batch_size=batch_size)

    def img2img(self, image: Image.Image | str | os.PathLike, prompt: str, negative_prompt: str = "", *,
                strength: float = 0.75, steps: int = 20, sampler: str = "dpmpp_2m", cfg_scale: float = 7.5,
                seed: int = 0, n: int = 1, guidance_rescale: float = 0.0, callback: Callback | None = None,
                progress: bool = False, batch_size: int | None = None,
                output: str = "pil") -> list[Image.Image] | torch.Tensor:
        """SDEdit: encode ``image``, noise it to the level ``strength`` of the way up, denoise."""
        self._require("img2img", "text")
        self._check_common(steps, sampler, cfg_scale, n)
        if not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise LDMError(f"strength must be in [0, 1] (0 = keep the image, 1 = ignore it), got {strength!r}")
        pil = load_image(image, self.limits)
        width, height = pil.size
        self._check_size(height, width)
        z0 = self._encode(pil_to_tensor(pil)).expand(n, -1, -1, -1)
        if int(steps * strength) == 0:  # nothing to run: the VAE round trip of the input
            return self._decode(z0.clone(), output)
        start = start_step_for_strength(steps, strength)
        cond, uncond = self._text(prompt, negative_prompt, n, cfg_scale)
        return self._generate(seed, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                              cond=cond, uncond=uncond, guidance_rescale=guidance_rescale, callback=callback,
                              progress=progress, batch_size=batch_size, start_step=start, init_latents=z0)

    def inpaint(self, image: Image.Image | str | os.PathLike, mask: Image.Image | str | os.PathLike, prompt: str,
                negative_prompt: str = "", *, strength: float = 1.0, steps: int = 20, sampler: str = "dpmpp_2m",
                cfg_scale: float = 7.5, seed: int = 0, n: int = 1, guidance_rescale: float = 0.0,
                callback: Callback | None = None, progress: bool = False,
                batch_size: int | None = None, output: str = "pil", paste_back: bool = False,
                blend_latents: bool | None = None) -> list[Image.Image] | torch.Tensor:
        """Repaint where ``mask`` is white. 9-channel inpainting models get [mask, masked-image latents] as
        c_concat; ordinary text models keep the unmasked latents by blending at every step (exact at the end).
        ``blend_latents=True`` adds that blending to a 9-channel model too (None: only where it is the only way,
        i.e. ordinary models). Either way the decoder redraws the whole image, so pixels outside the mask change by
        the autoencoder's round trip; ``paste_back=True`` composites the input's pixels back outside the mask
        (``output="pil"`` only)."""
        self._require("inpaint", "text", "inpaint")
        if paste_back and output != "pil":
            raise LDMError("paste_back composites decoded pixels, so it needs output='pil' (latents have no pixels)")
        self._check_common(steps, sampler, cfg_scale, n)
        _check_strength(strength, "inpaint")
        pil = load_image(image, self.limits)
        width, height = pil.size
        self._check_size(height, width)
        m = load_mask(mask, pil.size, self.limits)  # (1, 1, H, W), 1 = repaint
        x = pil_to_tensor(pil)
        f = self.latent_factor
        h, w = height // f, width // f
        cond, uncond = self._text(prompt, negative_prompt, n, cfg_scale)
        noise, gens = self._noise(seed, n, height, width)
        start, init = 0, None
        if blend_latents is None:
            blend_latents = self.kind != "inpaint"
        elif not blend_latents and self.kind != "inpaint":
            raise LDMError("an ordinary (non-inpainting) model keeps the unmasked image only by latent blending; "
                           "blend_latents=False is for 9-channel inpainting models")
        model, keep, z0 = self.model, None, None
        if self.kind == "inpaint":
            cond, uncond = _with_concat(cond, uncond, self._inpaint_concat(x, m, h, w), n)
        if blend_latents:
            z0 = self._encode(x).expand(n, -1, -1, -1)
            # a latent is repainted if any of its f×f pixels is
            keep = 1.0 - F.max_pool2d(m, f).to(z0.device, z0.dtype)
            model = masked_denoiser(self.model, z0[:1], keep)  # rows are equal
        if strength < 1.0:  # the blending path has the image's latents already
            init = z0 if z0 is not None else self._encode(x).expand(n, -1, -1, -1)
            start = start_step_for_strength(steps, strength)
        z = self._run(model, noise, gens, steps=steps, sampler=sampler, cfg_scale=cfg_scale, cond=cond,
                      uncond=uncond, guidance_rescale=guidance_rescale, callback=callback, progress=progress,
                      batch_size=batch_size, start_step=start, init_latents=init)
        if keep is not None:
            z = final_blend(z, z0, keep)
        if paste_back:
            return [tensor_to_pil(x * (1 - m) + pil_to_tensor(im) * m)[0] for im in self._decode(z, "pil")]
        return self._decode(z, output)

    def upscale(self, low_res_image: Image.Image | str | os.PathLike, prompt: str = "", negative_prompt: str = "", *,
                steps: int = 50, sampler: str = "ddim", cfg_scale: float | None = None, noise_level: int | None = None,
                strength: float = 1.0, seed: int = 0, n: int = 1, height: int | None = None,
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
        self._require("upscale", "concat", "text_upscale")
        text = self.kind == "text_upscale"
        cfg_scale = (DEFAULT_CFG_SCALE if text else 1.0) if cfg_scale is None else cfg_scale
        self._check_common(steps, sampler, cfg_scale, n)
        if text:
            noise_level = check_noise_level(DEFAULT_NOISE_LEVEL if noise_level is None else noise_level,
                                            self.cfg.low_scale.max_noise_level)
        elif noise_level is not None:
            raise LDMError(f"this {self.family} model concatenates the image as it is; it takes no noise_level "
                           f"(got {noise_level!r})")
        elif cfg_scale != 1.0:
            raise LDMError(f"this {self.family} model has no unconditional input; use cfg_scale=1, got {cfg_scale}")
        elif prompt or negative_prompt:
            warnings.warn("this upscaler takes no prompt; ignoring it", stacklevel=2)
        _check_strength(strength, "upscale", " (1 = start from pure noise)")
        if text and strength != 1.0:
            raise LDMError(f"strength < 1 is for concat upscalers; the SD x4 upscaler starts from noise and takes "
                           f"noise_level instead (got strength={strength})")
        extra = self.cfg.unet.in_channels - self.cfg.unet.out_channels
        if extra != 3:
            raise LDMError(f"upscale expects a concat model with 3 extra (RGB) input channels, this one has {extra}")
        pil = load_image(low_res_image, self.limits)
        f = self.latent_factor
        height = height or pil.size[1] * f
        width = width or pil.size[0] * f
        self._check_size(height, width)
        device, dtype = self._device_dtype()
        lo = pil_to_tensor(pil)
        if lo.shape[-2:] != (height // f, width // f):
            lo = F.interpolate(lo, size=(height // f, width // f), mode="bicubic", align_corners=False).clamp(-1, 1)
        if not text:
            cond = lo.to(device, dtype).expand(n, -1, -1, -1)
            start, init = 0, None
            if strength < 1.0:
                start = start_step_for_strength(steps, strength)
                up = F.interpolate(lo, size=(height, width), mode="bicubic", align_corners=False).clamp(-1, 1)
                init = self._encode(up).expand(n, -1, -1, -1)
            return self._generate(seed, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=1.0,
                                  cond=cond, uncond=None, callback=callback, progress=progress, batch_size=batch_size,
                                  start_step=start, init_latents=init)
        text_cond, text_uncond = self._text(prompt, negative_prompt, n, cfg_scale)
        gens = generators(seed, n)  # per image: low-res noise first, then the initial latents (upscale.py)
        c_concat, c_adm = noised_low_res(self.model, lo.to(device, dtype), noise_level, gens)
        noise = randn((n, self.latent_channels, height // f, width // f), gens, device=device, dtype=dtype)
        cond, uncond = upscale_conditioning(c_concat, c_adm, text_cond, text_uncond)
        z = self._run(self.model, noise, gens, steps=steps, sampler=sampler, cfg_scale=cfg_scale, cond=cond,
                      uncond=uncond, callback=callback, progress=progress, batch_size=batch_size)
        return self._decode(z, output)

    def sample(self, class_label: int | None = None, *, n: int = 1, seed: int = 0, steps: int = 50,
               sampler: str = "ddim", cfg_scale: float = 1.0, height: int | None = None, width: int | None = None,
               callback: Callback | None = None, progress: bool = False, batch_size: int | None = None,
               output: str = "pil") -> list[Image.Image] | torch.Tensor:
        """Class-conditional (``class_label``) or unconditional sampling. Guidance (cfg_scale != 1) on a class model
        needs a "no class" label: ``conditioner.null_class`` (our ShapesWorld model: 40), or CompVis's convention of
        1001 classes with class 1000 = "no class" (cin256-v2)."""
        self._require("sample", "class", "uncond")
        self._check_common(steps, sampler, cfg_scale, n)
        height, width = height or self._native_size(), width or self._native_size()
        self._check_size(height, width)
        cond = uncond = None
        if self.kind == "class":
            n_classes, null = num_class_labels(self.cfg), null_class(self.cfg)
            real = n_classes if null is None else null  # labels from the null label on are not classes
            if class_label is None or isinstance(class_label, bool) or not 0 <= int(class_label) < real:
                raise LDMError(f"{self.family} needs class_label in [0, {real - 1}], got {class_label!r}")
            if cfg_scale != 1.0 and null is None:
                raise LDMError(f"{self.family} has {n_classes} classes and no 'no class' label to guide against "
                               f"(conditioner.null_class unset; CompVis convention: 1001 classes, the last one "
                               f"empty); use cfg_scale=1, got {cfg_scale}")
            cond = self._labels(int(class_label), n)
            uncond = self._labels(null, n) if cfg_scale != 1.0 else None
        else:
            if class_label is not None:
                raise LDMError(f"this is an unconditional model ({self.family}); it takes no class label")
            if cfg_scale != 1.0:
                raise LDMError(f"an unconditional model has nothing to guide; use cfg_scale=1, got {cfg_scale}")
        return self._generate(seed, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                              cond=cond, uncond=uncond, callback=callback, progress=progress, batch_size=batch_size)

    def layout2img(self, layout: LayoutLike, *, n: int = 1, seed: int = 0, steps: int = 50, sampler: str = "ddim",
                   cfg_scale: float = 1.0, height: int | None = None, width: int | None = None,
                   callback: Callback | None = None, progress: bool = False, batch_size: int | None = None,
                   output: str = "pil") -> list[Image.Image] | torch.Tensor:
        """Layout-to-image (paper sec. 4.3.1): objects ``(class or "red circle", x0, y0, x1, y1)``, boxes in image
        fractions, encoded as (class, quantised box) tokens — or one Fourier-coded token per object
        (``conditioner.layout_boxes="fourier"``) — for cross-attention. Guidance against the empty layout (what
        condition dropout trained) when ``cfg_scale != 1``."""
        self._require("layout2img", "layout")
        self._check_common(steps, sampler, cfg_scale, n)
        c = self.cfg.conditioner
        # objects the sequence holds: [CLS] + 5 tokens per object, or the Fourier encoder's own count
        slots = getattr(self.model.cond_stage_model, "slots", (c.max_length - 1) // 5)
        rows = pad_layout(parse_layout(layout, c.layout_classes, max_objects=slots), slots)  # as in training
        height, width = height or self._native_size(), width or self._native_size()
        self._check_size(height, width)
        device, _ = self._device_dtype()
        with torch.no_grad():  # layout and empty layout in one encoder batch
            emb = self.model.cond_stage_model.encode(torch.stack([rows, null_layout(rows.shape[0])]).to(device))
        cond, uncond = emb[:1].expand(n, -1, -1), (emb[1:] if cfg_scale != 1.0 else None)
        return self._generate(seed, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                              cond=cond, uncond=uncond, callback=callback, progress=progress, batch_size=batch_size)

    def semantic2img(self, semantic_map: Any, *, n: int = 1, seed: int = 0, steps: int = 50, sampler: str = "ddim",
                     callback: Callback | None = None, progress: bool = False, batch_size: int | None = None,
                     output: str = "pil") -> list[Image.Image] | torch.Tensor:
        """Semantic-map-to-image (paper sec. 4.3.2): the one-hot label map (0 = background, 1 + class = object),
        area-resized to the latent size, concatenated to the latents. The image has the map's size."""
        self._require("semantic2img", "semantic")
        self._check_common(steps, sampler, 1.0, n)
        n_labels = self.cfg.unet.in_channels - self.cfg.unet.out_channels
        labels = load_semantic_map(semantic_map, n_labels, self.limits)
        height, width = labels.shape
        self._check_size(height, width)
        device, dtype = self._device_dtype()
        f = self.latent_factor
        cond = semantic_concat(labels, n_labels, (height // f, width // f)).to(device, dtype).expand(n, -1, -1, -1)
        return self._generate(seed, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=1.0,
                              cond=cond, uncond=None, callback=callback, progress=progress, batch_size=batch_size)

    def _native_size(self) -> int:
        """The resolution the model was trained at (its autoencoder's), 64 for pixel-space models."""
        return self.cfg.autoencoder.resolution if self.cfg.first_stage != "none" else 64

    def _labels(self, label: int, n: int) -> torch.Tensor:
        device, _ = self._device_dtype()
        labels = torch.full((n,), label, dtype=torch.long, device=device)
        if self.cfg.conditioner.kind == "class":
            with torch.no_grad():
                return self.model.get_learned_conditioning(labels)
        return labels  # UNet num_classes: routed to c_adm


def _take(c: Any, rows: slice, n: int) -> Any:
    """Rows ``rows`` of per-image conditioning (tensors with n rows, dicts of them); shared (1-row) parts as given."""
    if isinstance(c, dict):
        return {k: _take(v, rows, n) for k, v in c.items()}
    if isinstance(c, torch.Tensor) and c.shape[0] == n:
        return c[rows]
    return c


def _bar_label(progress: bool | str, rows: slice, n: int) -> bool | str:
    """The progress bar's description for the batch ``rows`` of n images (False: no bar)."""
    if not progress:
        return False
    if isinstance(progress, str):
        return progress
    return f"image {rows.start + 1}/{n}" if rows.stop - rows.start == 1 else f"images {rows.start + 1}-{rows.stop}/{n}"


def _with_concat(cond: torch.Tensor, uncond: torch.Tensor | None, cat: torch.Tensor, n: int) -> tuple[Any, Any]:
    cat = cat.expand(n, -1, -1, -1)
    c = {"c_concat": cat, "c_crossattn": cond}
    u = None if uncond is None else {"c_concat": cat[:1], "c_crossattn": uncond}
    return c, u
