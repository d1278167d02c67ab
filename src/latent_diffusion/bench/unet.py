"""``ldm bench unet``: our UNet against diffusers' UNet2DConditionModel, timed in the same process run.

Both models hold the same random weights (diffusers' own CompVis converter copies ours across). One call is one
classifier-free-guidance step: batch 2, context (2, 77, 768) for the SD1.5 shape. Cases: fp32 and bf16 autocast,
64×64 and 32×32 latents; ``extras`` adds channels_last and cached-cast modes. Timings: medians of N repeats after
warm-up, interleaved ours, diffusers, diffusers, ours, ... so drift hits both alike; rounds disturbed by other
processes are rerun. FLOPs: ``torch.utils.flop_counter``; GEMM peak: best 2048³ matmul, measured in the same run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import UNetConfig, to_dict
from ..models.unet import UNetModel
from .common import count_flops, interleaved_times, markdown, median, require_diffusers

# The SD1.5 UNet (v1-inference.yaml's unet_config); tests check it against the YAML.
SD15_UNET = UNetConfig(in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                       attention_resolutions=(4, 2, 1), num_heads=8, transformer_depth=1, context_dim=768,
                       use_spatial_transformer=True, legacy=False)
# --quick: the same layout, tiny widths
TINY_UNET = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(1, 2), num_heads=2, context_dim=32, use_spatial_transformer=True,
                       legacy=False)


@dataclass(frozen=True)
class Mode:
    """How a case runs: fp32 or bf16 autocast; memory format of weights and activations; and cached casts: one
    no_grad + autocast context around warm-up and repeats, as a sampling loop can hold, so that autocast's cast
    cache turns each fp32 weight into bf16 once, not on every call (inference_mode turns that cache off)."""

    name: str
    bf16: bool = False
    channels_last: bool = False
    cached_casts: bool = False

    @contextlib.contextmanager
    def outer(self):
        """Around warm-up and repeats: no_grad + autocast for the cached-casts mode, nothing otherwise."""
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cached_casts):
            yield

    @contextlib.contextmanager
    def per_call(self):
        """Around each call; with cached casts, the inner autocast leaves the outer one's cache alone."""
        with torch.inference_mode(not self.cached_casts), torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            yield


MODES = [Mode("fp32"), Mode("bf16", bf16=True)]
EXTRA_MODES = [Mode("fp32 channels_last", channels_last=True), Mode("bf16 channels_last", True, channels_last=True),
               Mode("bf16 cached casts", bf16=True, cached_casts=True)]


def seeded_unet(cfg: UNetConfig = SD15_UNET, seed: int = 0) -> UNetModel:
    """UNet with seeded default init; the zero-initialised output convs get re-initialised too (zeros would make
    whole branches vanish and hide both cost-free shortcuts and numerical differences)."""
    torch.manual_seed(seed)
    model = UNetModel(cfg).eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not m.weight.any():
            m.reset_parameters()
    return model


def diffusers_twin(ours: UNetModel) -> torch.nn.Module:
    """The same weights in diffusers' UNet2DConditionModel, through diffusers' own CompVis converter."""
    require_diffusers()
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    params = to_dict(ours.cfg)
    if ours.cfg.num_classes is None:
        params.pop("num_classes")
    params.pop("num_head_channels" if ours.cfg.num_head_channels == -1 else "num_heads")
    original = {"model": {"params": {"unet_config": {"params": params},
                                     "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
    cfg = sfu.create_unet_diffusers_config_from_ldm(original, {})
    sd = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    ref = UNet2DConditionModel(**cfg, norm_num_groups=32)
    ref.load_state_dict(sfu.convert_ldm_unet_checkpoint(sd, cfg), strict=True)
    return ref.eval()


def inputs(cfg: UNetConfig, size: int, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Latents (B, 4, size, size), timesteps (B,), context (B, 77, context_dim) — one CFG step."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, cfg.in_channels, size, size, generator=g), torch.tensor([500.0] * batch),
            torch.randn(batch, 77, cfg.context_dim, generator=g))


def callers(ours, ref, x, t, ctx, mode: Mode) -> dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument forward calls for both models, each inside ``mode``'s per-call contexts."""
    def wrap(fn):
        def call():
            with mode.per_call():
                return fn()
        return call

    return {"ours": wrap(lambda: ours(x, t, context=ctx)),
            "diffusers": wrap(lambda: ref(x, t, encoder_hidden_states=ctx).sample)}


def run_case(ours, ref, size: int, mode: Mode, repeats: int, peak: dict[str, float]) -> dict:
    fmt = torch.channels_last if mode.channels_last else torch.contiguous_format
    for model in (ours, ref):
        model.to(memory_format=fmt)  # in place; changes only the conv weights' strides
    x, t, ctx = inputs(ours.cfg, size)
    fns = callers(ours, ref, x.contiguous(memory_format=fmt), t, ctx, mode)
    with mode.outer():
        out = {k: fn().float() for k, fn in fns.items()}
        flops = count_flops(fns["ours"])
        times, discarded = interleaved_times(fns, repeats)
    med = {k: median(v) for k, v in times.items()}
    gflops = {k: flops / v / 1e9 for k, v in med.items()}
    return {
        "case": f"{size}x{size} {mode.name}", "size": size, "mode": mode.name, "repeats": repeats,
        "discarded_rounds": discarded,
        "ours_s": med["ours"], "diffusers_s": med["diffusers"], "ratio": med["ours"] / med["diffusers"],
        "min_s": {k: min(v) for k, v in times.items()}, "times": times, "gflop_per_call": flops / 1e9,
        "gflops": gflops, "peak_fraction": {k: v / peak["bf16" if mode.bf16 else "fp32"] for k, v in gflops.items()},
        "max_abs_err": (out["ours"] - out["diffusers"]).abs().max().item(),
        "ref_max_abs": out["diffusers"].abs().max().item(),
    }


def table(results: list[dict]) -> str:
    rows = []
    for r in results:
        g, p = r["gflops"], r["peak_fraction"]
        rows.append([r["case"], f"{r['ours_s']:.3f}", f"{r['diffusers_s']:.3f}", f"**{r['ratio']:.3f}**",
                     f"{r['gflop_per_call']:.0f}", f"{g['ours']:.0f} ({p['ours']:.0%})",
                     f"{g['diffusers']:.0f} ({p['diffusers']:.0%})", f"{r['max_abs_err']:.1e}"])
    return markdown(["case", "ours s", "diffusers s", "ours/diffusers", "GFLOP/call", "ours GFLOP/s (% peak)",
                     "diffusers GFLOP/s (% peak)", "max abs err"], rows)


def run(*, quick: bool, peak: dict[str, float], repeats: int | None = None, extras: bool = False,
        sizes: list[int] | None = None, log: Callable[[str], None] = print, **_) -> dict:
    """The ``unet`` case; returns its JSON section (``results``, ``table``, ``plot_data``)."""
    cfg = TINY_UNET if quick else SD15_UNET
    sizes = sizes or ([8] if quick else [64, 32])
    repeats = repeats or (1 if quick else 7)
    ours = seeded_unet(cfg)
    ref = diffusers_twin(ours)
    results = []
    for size in sizes:
        for mode in MODES + (EXTRA_MODES if extras else []):
            r = run_case(ours, ref, size, mode, repeats, peak)
            results.append(r)
            log(f"  unet {r['case']}: ours {r['ours_s']:.3f}s  diffusers {r['diffusers_s']:.3f}s  "
                f"ratio {r['ratio']:.3f}  err {r['max_abs_err']:.1e} (|ref| ≤ {r['ref_max_abs']:.1f})")
    return {"setup": {"unet": to_dict(cfg), "batch": 2, "context": [2, 77, cfg.context_dim], "repeats": repeats},
            "results": results, "table": table(results)}


def plot(section: dict, out_dir) -> list:  # noqa: ANN001
    from .common import paired_bars

    res = section["results"]
    return [paired_bars(out_dir / "unet-seconds.png", "UNet forward (batch 2), seconds per call", res,
                        lambda r, side: r[f"{side}_s"], "s"),
            paired_bars(out_dir / "unet-peak-fraction.png", "UNet: fraction of the measured GEMM peak", res,
                        lambda r, side: r["peak_fraction"][side], "fraction of peak")]
