"""``ldm bench samplers``: error of each sampler at NFE 5 / 10 / 20 against a 1000-step reference solution,
ours and diffusers' matching scheduler, on the same tiny seeded model, noise and conditioning.

The model is a tiny random SD-shaped LDM scaled by 0.1 plus σ_t·x (the exact ε of N(0, I) data), so the
probability-flow ODE has a smooth O(1) solution; the reference is our Heun at 500 steps (999 evaluations) and it is
checked against a 1000-step DDIM. Error: RMS(x − x_ref) / RMS(x_ref) of the final latents. Steps per NFE: one model
evaluation per step, Heun two (so NFE n runs ⌈n/2⌉ steps: 2·steps − 1 evaluations). Stochastic samplers (ddpm,
euler_a, dpmpp_sde) converge in distribution, not path by path: their error to the ODE solution does not go to 0 and
the two sides draw different noise; they are listed for completeness and left out of the "≤ diffusers" check.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..diffusion.samplers import SAMPLERS, SampleOptions, randn, sample
from ..tiny import tiny_model
from .common import line_plot, markdown, require_diffusers

STOCHASTIC = {"ddpm", "euler_a", "dpmpp_sde"}
SD_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                   set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False)


def _oracles() -> dict[str, tuple]:
    require_diffusers()
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, HeunDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler)

    return {"ddim": (DDIMScheduler, {}), "plms": (PNDMScheduler, {}), "euler": (EulerDiscreteScheduler, {}),
            "heun": (HeunDiscreteScheduler, {}), "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
            "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
            "unipc": (UniPCMultistepScheduler, {}), "euler_a": (EulerAncestralDiscreteScheduler, {}),
            "ddpm": (DDPMScheduler, {}), "dpmpp_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"})}


class SmoothModel:
    """0.1 × a tiny random SD1 LDM + σ_t·x: what both sides call (``apply_model``), counting evaluations."""

    def __init__(self, seed: int = 0) -> None:
        self.ldm = tiny_model("sd1", seed=seed)
        self.alphas_cumprod = self.ldm.alphas_cumprod
        self.parameterization = "eps"
        self.calls = 0

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        lo = t.floor().long().clamp(0, 998)
        ac = torch.lerp(self.alphas_cumprod[lo], self.alphas_cumprod[lo + 1], (t - lo).clamp(0, 1))
        return 0.1 * self.ldm.apply_model(x, t, cond) + (1 - ac).sqrt().view(-1, 1, 1, 1) * x


def steps_for(name: str, nfe: int) -> int:
    return (nfe + 1) // 2 if name == "heun" else nfe


def run_diffusers(name: str, model: SmoothModel, cond: torch.Tensor, noise: torch.Tensor, steps: int,
                  seed: int) -> torch.Tensor:
    """diffusers' denoising loop as its SD pipelines run it, around ``model.apply_model``."""
    cls, extra = _oracles()[name]
    sched = cls.from_config({**SD_SCHEDULE, **extra, "prediction_type": "epsilon"})
    sched.set_timesteps(steps)
    kwargs = {}
    if SAMPLERS[name].noisy:  # its diffusers scheduler's step takes a generator
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    x = noise * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            out = model.apply_model(sched.scale_model_input(x, t), t.expand(x.shape[0]).float(), cond)
            x = sched.step(out, t, x, **kwargs).prev_sample
    return x


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def run(*, quick: bool, log: Callable[[str], None] = print, **_) -> dict:
    names = ["ddim", "dpmpp_2m"] if quick else list(SAMPLERS)
    nfes = [5] if quick else [5, 10, 20]
    ref_steps = 10 if quick else 500
    model = SmoothModel()
    with torch.no_grad():
        cond = model.ldm.get_learned_conditioning(["a red square", "two blue circles"])
    noise = randn((2, 4, 8, 8), [torch.Generator().manual_seed(s) for s in (0, 1)])
    ref = sample("heun", model, noise, SampleOptions(steps=ref_steps), cond=cond)
    # every one of the 1000 timesteps: offset 0 (SD's offset 1 would ask for t = 1000 at 1000 steps)
    check = sample("ddim", model, noise, SampleOptions(steps=2 * ref_steps, steps_offset=0), cond=cond)
    ref_check = rel_err(check, ref)
    log(f"  samplers: reference heun×{ref_steps}; 1000-step ddim differs by {ref_check:.1e} (relative RMS)")
    results = []
    for name in names:
        for nfe in nfes:
            steps = steps_for(name, nfe)
            gens = [torch.Generator().manual_seed(100 + i) for i in range(2)]
            model.calls = 0
            ours = sample(name, model, noise, SampleOptions(steps=steps), cond=cond, generator=gens)
            ours_nfe = model.calls
            model.calls = 0
            theirs = run_diffusers(name, model, cond, noise, steps, seed=100)
            results.append({"sampler": name, "nfe": nfe, "steps": steps, "ours_nfe": ours_nfe,
                            "diffusers_nfe": model.calls, "stochastic": name in STOCHASTIC,
                            "ours_err": rel_err(ours, ref), "diffusers_err": rel_err(theirs, ref),
                            "ours_vs_diffusers": rel_err(ours, theirs)})
            r = results[-1]
            log(f"  samplers {name:16} NFE {nfe:2}: ours {r['ours_err']:.2e}  diffusers {r['diffusers_err']:.2e}")
    return {"setup": {"model": "tiny sd1 ×0.1 + σ_t·x", "latents": [2, 4, 8, 8], "reference": f"heun {ref_steps}",
                      "reference_vs_ddim_1000": ref_check, "nfe": nfes}, "results": results,
            "table": table(results, nfes)}


def table(results: list[dict], nfes: list[int]) -> str:
    by = {(r["sampler"], r["nfe"]): r for r in results}
    names = list(dict.fromkeys(r["sampler"] for r in results))
    rows = []
    for name in names:
        cells = []
        for nfe in nfes:
            r = by[(name, nfe)]
            mark = "" if r["stochastic"] or r["ours_err"] <= r["diffusers_err"] * (1 + 1e-3) else " ✗"
            cells.append(f"{r['ours_err']:.2e} / {r['diffusers_err']:.2e}{mark}")
        rows.append([name + (" (stochastic)" if name in STOCHASTIC else ""), *cells])
    return markdown(["sampler", *[f"NFE {n}: ours / diffusers" for n in nfes]], rows)


def plot(section: dict, out_dir) -> list:  # noqa: ANN001
    res = section["results"]
    nfes = section["setup"]["nfe"]
    series = {}
    for name in dict.fromkeys(r["sampler"] for r in res):
        if name in STOCHASTIC:
            continue
        mine = sorted((r for r in res if r["sampler"] == name), key=lambda r: r["nfe"])
        series[f"{name}"] = [max(r["ours_err"], 1e-12) for r in mine]
        series[f"{name} (diffusers)"] = [max(r["diffusers_err"], 1e-12) for r in mine]
    return [line_plot(out_dir / "samplers-error.png", "Error vs 1000-step reference (relative RMS)", nfes, series,
                      "NFE", "relative error")]


__all__ = ["run", "plot", "table", "SmoothModel", "math"]
