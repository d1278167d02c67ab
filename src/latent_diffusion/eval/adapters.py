"""Pipeline → the ``generate`` callables of ``eval.tasks``, after checking the model does the task.

Seeds: every generator draws sample i's noise from seed ``seed + i`` (the Pipeline's per-sample generators), and
text-to-image uses the same noise at every CFG scale, so scales are compared on paired samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from PIL import Image

from ..errors import LDMError
from ..pipelines.images import tensor_to_pil

# task -> Pipeline.kind values that can do it
TASK_KINDS: dict[str, tuple[str, ...]] = {
    "txt2img": ("text",), "class": ("class",), "uncond": ("uncond",), "superres": ("concat",),
    "inpaint": ("inpaint", "text"), "layout": ("layout",), "semantic": ("semantic", "concat"),
}
# the `ldm eval` command that fits a Pipeline.kind (for the error message)
_KIND_TO_TASK = {"text": "txt2img (or inpaint)", "class": "class", "uncond": "uncond", "concat": "superres",
                 "inpaint": "inpaint", "layout": "layout", "semantic": "semantic"}
# tasks a Pipeline does through a dedicated method, which its kind alone does not prove
_METHODS = {"layout": "layout2img", "semantic": "semantic2img"}


@dataclass(frozen=True)
class SampleSettings:
    steps: int = 20
    sampler: str = "ddim"
    seed: int = 0
    batch_size: int | None = 16  # images per sampling batch (None: all at once)
    progress: bool = False


def check_task(pipe: Any, task: str) -> None:
    """Raise a clear error when ``pipe``'s model cannot do ``task``."""
    if task not in TASK_KINDS:
        raise LDMError(f"unknown evaluation task {task!r}; accepted: {sorted(TASK_KINDS)}")
    kind = pipe.kind
    method = _METHODS.get(task)
    ok = kind in TASK_KINDS[task] and (method is None or hasattr(pipe, method))
    if task == "superres" and ok:
        extra = pipe.cfg.unet.in_channels - pipe.cfg.unet.out_channels
        ok = extra == 3
    if not ok:
        fits = _KIND_TO_TASK.get(kind, "none of the ShapesWorld tasks")
        raise LDMError(f"cannot evaluate {task} on this model: it is a {pipe.family} model (kind {kind!r}); "
                       f"the evaluation that fits it: `ldm eval {fits.split()[0]}`")


def decode(pipe: Any, z: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Latents (N, C, h, w) → images (N, 3, H, W) in [-1, 1]."""
    with torch.no_grad():
        return torch.cat([pipe.model.decode_first_stage(z[i:i + chunk]).float().clamp(-1, 1)
                          for i in range(0, z.shape[0], chunk)])


def text_generator(pipe: Any, s: SampleSettings, size: int) -> Callable[[list[str], float], torch.Tensor]:
    """Different prompts in one sampling batch (the Pipeline's txt2img takes one prompt per call)."""
    check_task(pipe, "txt2img")

    def generate(prompts: list[str], cfg_scale: float) -> torch.Tensor:
        n = len(prompts)
        for p in prompts:
            pipe.check_prompt(p)
        with torch.no_grad():
            cond = pipe.model.get_learned_conditioning(list(prompts))  # (n, L, D)
            uncond = pipe.model.get_learned_conditioning([""]) if cfg_scale != 1.0 else None  # (1, L, D)
        noise, gens = pipe._noise(s.seed, n, size, size)
        z = pipe._run(pipe.model, noise, gens, steps=s.steps, sampler=s.sampler, cfg_scale=cfg_scale, cond=cond,
                      uncond=uncond, progress=_label(s, f"cfg {cfg_scale:g}"), batch_size=s.batch_size)
        return decode(pipe, z)

    return generate


def grounded_generator(planner: Any, pipe: Any, s: SampleSettings) -> Callable[[list[str], float], torch.Tensor]:
    """Grounded text-to-image (pipelines/grounded.py): the planner draws one layout per prompt (generator seeded by
    ``s.seed``: the same layouts at every CFG scale), the layout model ``pipe`` draws the image."""
    from ..pipelines.grounded import plan_layouts

    check_task(pipe, "layout")

    def generate(prompts: list[str], cfg_scale: float) -> torch.Tensor:
        return layout_generator(pipe, s, cfg_scale)(plan_layouts(planner, list(prompts), seed=s.seed))

    return generate


def class_generator(pipe: Any, s: SampleSettings, cfg_scale: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    check_task(pipe, "class")

    def generate(labels: torch.Tensor) -> torch.Tensor:
        out: list[torch.Tensor | None] = [None] * labels.shape[0]
        for c in labels.unique().tolist():  # one call per class; seeds seed + 1000·class + j
            idx = (labels == c).nonzero().flatten().tolist()
            z = pipe.sample(int(c), n=len(idx), seed=s.seed + 1000 * int(c), steps=s.steps, sampler=s.sampler,
                            cfg_scale=cfg_scale, batch_size=s.batch_size, progress=_label(s, f"class {c}"),
                            output="latent")
            for j, img in zip(idx, decode(pipe, z)):
                out[j] = img
        return torch.stack(out)

    return generate


def uncond_generator(pipe: Any, s: SampleSettings) -> Callable[[int], torch.Tensor]:
    check_task(pipe, "uncond")

    def generate(n: int) -> torch.Tensor:
        z = pipe.sample(None, n=n, seed=s.seed, steps=s.steps, sampler=s.sampler, batch_size=s.batch_size,
                        progress=_label(s, "uncond"), output="latent")
        return decode(pipe, z)

    return generate


def superres_generator(pipe: Any, s: SampleSettings, strength: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``strength`` < 1: start from the bicubic upsample noised that far up (Pipeline.upscale)."""
    check_task(pipe, "superres")

    def generate(lowres: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, pil in enumerate(tensor_to_pil(lowres)):
            z = pipe.upscale(pil, steps=s.steps, sampler=s.sampler, seed=s.seed + i, strength=strength,
                             output="latent")
            outs.append(decode(pipe, z))
        return torch.cat(outs)

    return generate


def inpaint_generator(pipe: Any, s: SampleSettings, cfg_scale: float = 1.0,  # noqa: ANN201
                      blend_latents: bool | None = None):
    """``blend_latents``: as ``Pipeline.inpaint`` (None: the model's default)."""
    check_task(pipe, "inpaint")

    def generate(images: torch.Tensor, masks: torch.Tensor, captions: list[str]) -> torch.Tensor:
        outs = []
        for i, (pil, m, cap) in enumerate(zip(tensor_to_pil(images), masks, captions)):
            mask = Image.fromarray((m[0].numpy() > 0.5).astype("uint8") * 255, mode="L")
            z = pipe.inpaint(pil, mask, cap, steps=s.steps, sampler=s.sampler, cfg_scale=cfg_scale,
                             seed=s.seed + i, output="latent", blend_latents=blend_latents)
            outs.append(decode(pipe, z))
        return torch.cat(outs)

    return generate


def layout_generator(pipe: Any, s: SampleSettings, cfg_scale: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    check_task(pipe, "layout")

    def generate(layouts: torch.Tensor) -> torch.Tensor:
        return torch.cat([decode(pipe, pipe.layout2img(lay, steps=s.steps, sampler=s.sampler, seed=s.seed + i,
                                                       cfg_scale=cfg_scale, output="latent"))
                          for i, lay in enumerate(layouts)])

    return generate


def semantic_generator(pipe: Any, s: SampleSettings) -> Callable[[torch.Tensor], torch.Tensor]:
    check_task(pipe, "semantic")

    def generate(maps: torch.Tensor) -> torch.Tensor:
        return torch.cat([decode(pipe, pipe.semantic2img(m, steps=s.steps, sampler=s.sampler, seed=s.seed + i,
                                                         output="latent")) for i, m in enumerate(maps)])

    return generate


def _label(s: SampleSettings, what: str) -> bool | str:
    return what if s.progress else False
