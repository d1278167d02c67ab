"""``pipe(...)``: the diffusers-style front door. It picks the task from the model and the inputs given, accepts
diffusers' parameter names where they mean the same as ours, and returns a ``PipelineOutput``.

=========================  ==========================  =============================================================
ours                       diffusers alias             meaning
=========================  ==========================  =============================================================
``steps``                  ``num_inference_steps``     sampler steps
``cfg_scale``              ``guidance_scale``          classifier-free guidance scale (1 = off)
``n``                      ``num_images_per_prompt``   images for the prompt / condition
``seed``                   ``generator``               image i draws its noise from a generator seeded ``seed + i``;
                                                       a freshly seeded ``torch.Generator`` (or a list of them with
                                                       consecutive seeds) gives its seed
``mask``                   ``mask_image``              inpainting mask (white = repaint)
``image``                  ``image``                   img2img / inpaint input, or the low-res image to upscale
=========================  ==========================  =============================================================

Which task runs: a text model does txt2img, img2img when ``image`` is given, inpaint when ``mask`` is too; an
upscaler upscales ``image``; a class-conditional model samples ``class_label``, an unconditional one samples; a
layout model draws ``layout``; a semantic-map model draws ``semantic_map``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from ..errors import LDMError
from .output import PipelineOutput, resolve_seed

if TYPE_CHECKING:
    from .pipeline import Pipeline

ALIASES = {"num_inference_steps": "steps", "guidance_scale": "cfg_scale", "num_images_per_prompt": "n",
           "mask_image": "mask"}
_INPUTS = ("image", "mask", "class_label", "layout", "semantic_map")


def call(pipe: Pipeline, prompt: str | None = None, negative_prompt: str = "", *, image: Any = None,
         mask: Any = None, class_label: int | None = None, layout: Any = None, semantic_map: Any = None,
         seed: int | None = None, generator: torch.Generator | list[torch.Generator] | None = None,
         return_latents: bool = False, **options: Any) -> PipelineOutput:
    """Run the task this model and these inputs call for (module docstring); ``options``: the task's own keyword
    arguments (``steps``, ``sampler``, ``cfg_scale``, ``n``, ``height``, ``width``, ``strength``, ...) or their
    diffusers names. ``seed`` None (and no ``generator``): a random seed, reported in ``.seeds`` and in each image's
    ``parameters``. ``return_latents``: also hand back the latents the images were decoded from."""
    options = _rename(options)
    if "mask" in options:
        if mask is not None:
            _both("mask", "mask_image")
        mask = options.pop("mask")
    if generator is not None:
        if seed is not None:
            _both("seed", "generator")
        seed = _seed_from(generator, options.get("n", 1))
    seed = resolve_seed(seed)
    given = {k: v for k, v in zip(_INPUTS, (image, mask, class_label, layout, semantic_map)) if v is not None}
    task, args, used = _task(pipe, prompt, negative_prompt, given)
    unused = sorted(set(given) - used)
    if unused:
        raise LDMError(f"{task} on this {pipe.family} model takes no {', '.join(unused)}")
    out = getattr(pipe, task)(*args, seed=seed, output="output", **options)
    return out if return_latents else dataclasses.replace(out, latents=None)


def _rename(options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    for alias, ours in ALIASES.items():
        if alias in out:
            if ours in out:
                _both(ours, alias)
            out[ours] = out.pop(alias)
    if "output" in out:
        raise LDMError("pipe(...) returns a PipelineOutput; call pipe.txt2img(..., output='latent') (or another "
                       "task method) for latents alone, or pass return_latents=True")
    return out


def _both(ours: str, alias: str) -> Any:
    raise LDMError(f"give {ours} or {alias}, not both (they mean the same)")


def _seed_from(generator: torch.Generator | list[torch.Generator], n: int) -> int:
    """The seed of a freshly seeded generator (or of the first of n consecutive ones): its noise is then exactly the
    noise ``seed`` gives. A generator that has already drawn numbers cannot be replayed from a seed: refused."""
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    if not gens or not all(isinstance(g, torch.Generator) for g in gens):
        raise LDMError(f"generator must be a torch.Generator or a list of them, got {generator!r}")
    if isinstance(generator, (list, tuple)) and len(gens) != n:
        raise LDMError(f"a list of generators needs one per image: {len(gens)} generators for {n} image(s)")
    first = gens[0].initial_seed()
    for i, g in enumerate(gens):
        fresh = torch.Generator(g.device).manual_seed(g.initial_seed())
        if not torch.equal(g.get_state(), fresh.get_state()):
            raise LDMError("generator has already drawn random numbers; image noise comes from per-image seeds here, "
                           "so pass a freshly seeded generator (torch.Generator().manual_seed(s)) or seed=s")
        if g.initial_seed() != first + i:
            raise LDMError(f"a list of generators must have consecutive seeds s, s+1, ... (image i gets seed s + i), "
                           f"got {[x.initial_seed() for x in gens]}; pass seed=s instead")
    return first


def _task(pipe: Pipeline, prompt: str | None, negative: str, given: dict[str, Any]) -> tuple[str, tuple, set[str]]:
    """(task method name, its positional arguments, the inputs it uses) for this model and these inputs."""
    kind = pipe.kind
    if kind in ("text", "inpaint"):
        text = ("" if prompt is None else prompt, negative)
        if "mask" in given:
            if "image" not in given:
                raise LDMError("inpainting needs the image to repaint: pass image= with mask=")
            return "inpaint", (given["image"], given["mask"], *text), {"image", "mask"}
        if "image" in given:
            if kind == "inpaint":
                raise LDMError("this inpainting model repaints where a mask says: pass mask_image= with image= (or "
                               "no image for txt2img)")
            return "img2img", (given["image"], *text), {"image"}
        return "txt2img", text, set()
    if prompt is not None and kind not in ("text_upscale",):
        raise LDMError(f"this {pipe.family} model takes no prompt")
    if kind in ("concat", "text_upscale"):
        if "image" not in given:
            raise LDMError("an upscaler needs the low-resolution image: pass image=")
        return "upscale", (given["image"], prompt or "", negative), {"image"}
    if kind in ("class", "uncond"):
        return "sample", (given.get("class_label"),), {"class_label"}
    if kind == "layout":
        if "layout" not in given:
            raise LDMError("a layout-to-image model needs layout=[(class, x0, y0, x1, y1), ...]")
        return "layout2img", (given["layout"],), {"layout"}
    if kind == "semantic":
        if "semantic_map" not in given:
            raise LDMError("a semantic-map model needs semantic_map= (an (H, W) label array or a label PNG)")
        return "semantic2img", (given["semantic_map"],), {"semantic_map"}
    raise LDMError(f"this {pipe.family} model serves no task pipe(...) knows (kind {kind!r})")


def to(pipe: Pipeline, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Pipeline:
    """Move the model to ``device`` and / or cast it to ``dtype``, then resolve the fast paths again for the new
    place (the precision asked for at load, e.g. "auto", may now mean something else). A UNet whose GEMM weights are
    stored in bf16 gets its fp32 weights back from the checkpoint file before a cast. Returns ``pipe``."""
    from .precision_state import stores_bf16

    if device is None and dtype is None:
        return pipe
    fast = {f: getattr(pipe.fast, f) for f in ("deepcache", "deepcache_branch", "attention_slice", "compile",
                                              "vae_tiling")}
    unet, requested = pipe.model.model.diffusion_model, pipe.requested_precision
    if dtype is not None and stores_bf16(unet):
        pipe.set_fast_paths("fp32", **fast)
    pipe.model.to(device=device, dtype=dtype)
    if pipe._load_args is not None:
        pipe._load_args = {**pipe._load_args, **({"device": device} if device is not None else {}),
                           **({"dtype": dtype} if dtype is not None else {})}
    pipe.set_fast_paths(requested, **fast)
    return pipe
