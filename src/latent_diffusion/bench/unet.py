"""``ldm bench unet``: our UNet against diffusers' UNet2DConditionModel, timed in the same process run.

Both models hold the same random weights (diffusers' own CompVis converter copies ours across). One call is one
classifier-free-guidance step: batch 2, context (2, 77, 768) for the SD1.5 shape. Cases: fp32, bf16 autocast and
"bf16 stored weights" (CPU: ours as a bf16 pipeline holds it, diffusers with its casts cached, both as a sampling
loop calls them); on a CUDA device fp32, fp16 and bf16, with each call's peak GPU memory; 64×64 and 32×32 latents;
``extras`` adds channels_last and cached-cast modes, ``compile`` a torch.compile mode. Timings: medians of N
repeats after warm-up, interleaved ours, diffusers, diffusers, ours, ... so drift hits both alike; on the CPU,
rounds disturbed by other processes are rerun. FLOPs: ``torch.utils.flop_counter``; GEMM peak: the best n³ matmul
(2048³ on the CPU, 8192³ on a GPU), measured in the same run.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..accel import accelerate, compiled
from ..accel.gemm_conv import cache_weight_casts
from ..accel.gemm_storage import store_gemm_weights
from ..config import UNetConfig, to_dict
from ..errors import ConfigError
from ..models.unet import UNetModel
from .common import count_flops, interleaved_times, markdown, median, require_diffusers, synchronized

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
    """How a case runs: fp32, or autocast to ``amp`` ("bf16" / "fp16"); memory format of weights and activations;
    cached casts: one no_grad + autocast context around warm-up and repeats, as our sampling loop holds, so that
    autocast's cast cache (and ours for the lowered convs) turns each fp32 weight into bf16 once, not on every call
    (inference_mode turns that cache off); ``compiled``: both models through ``torch.compile`` (compiled during the
    warm-up call); ``stored_weights``: ours with its GEMM weights stored in ``amp``'s dtype, as a pipeline loaded
    for bf16 holds them (``accel/gemm_storage.py``; bit-identical to autocast over fp32 weights), on a copy."""

    name: str
    amp: str | None = None
    channels_last: bool = False
    cached_casts: bool = False
    compiled: bool = False
    stored_weights: bool = False

    @property
    def amp_dtype(self) -> torch.dtype:
        """The autocast dtype (and the stored weights' dtype) of ``amp``."""
        return torch.float16 if self.amp == "fp16" else torch.bfloat16

    @property
    def precision(self) -> str:
        """The GEMM peak this mode is measured against: "fp32", "bf16" or "fp16"."""
        return self.amp or "fp32"

    def _autocast(self, device_type: str, enabled: bool):  # noqa: ANN202 - a context manager
        return torch.autocast(device_type, dtype=self.amp_dtype, enabled=enabled)

    @contextlib.contextmanager
    def outer(self, device_type: str = "cpu"):
        """Around warm-up and repeats: no_grad; for the cached-casts mode also autocast and our lowered convs' cast
        cache (``conv.cache_weight_casts``, which our sampling loop enters too; diffusers has no such convs)."""
        casts = cache_weight_casts() if self.cached_casts else contextlib.nullcontext()
        with torch.no_grad(), self._autocast(device_type, self.cached_casts), casts:
            yield

    @contextlib.contextmanager
    def per_call(self, device_type: str = "cpu"):
        """Around each call: inference_mode, or with cached casts the outer no_grad (``inference_mode(False)`` would
        turn gradients back on); the inner autocast leaves the outer one's cache alone."""
        grad = contextlib.nullcontext() if self.cached_casts else torch.inference_mode()
        with grad, self._autocast(device_type, self.amp is not None):
            yield


# "bf16 stored weights": a UNet call as our bf16 sampling loop makes it (weights stored bf16, one autocast context);
# diffusers' side as its loop would under one autocast context (casts cached). Compare with "bf16 cached casts"
MODES = [Mode("fp32"), Mode("bf16", amp="bf16"),
         Mode("bf16 stored weights", "bf16", cached_casts=True, stored_weights=True)]
EXTRA_MODES = [Mode("fp32 channels_last", channels_last=True), Mode("bf16 channels_last", "bf16", channels_last=True),
               Mode("bf16 cached casts", "bf16", cached_casts=True)]
# On a CUDA device: SDPA picks flash / memory-efficient kernels itself; fp16 is the GPU's usual precision. fp32 runs
# as torch defaults: cuBLAS GEMMs in full fp32 (the fp32 peak is measured so), cuDNN convolutions in TF32
CUDA_MODES = [Mode("fp32"), Mode("fp16", amp="fp16"), Mode("bf16", amp="bf16")]
COMPILED_MODES = [Mode("bf16 compiled", amp="bf16", compiled=True)]


def seeded_unet(cfg: UNetConfig = SD15_UNET, seed: int = 0) -> UNetModel:
    """UNet with seeded default init, with the fast paths a pipeline applies (``accel.accelerate``); the
    zero-initialised output convs get re-initialised too (zeros would make whole branches vanish and hide both
    cost-free shortcuts and numerical differences)."""
    torch.manual_seed(seed)
    model = UNetModel(cfg).eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not m.weight.any():
            m.reset_parameters()
    return accelerate(model)


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
    """Zero-argument forward calls for both models, each inside ``mode``'s per-call contexts, returning only when
    the device is done."""
    device = x.device
    if mode.compiled:
        ours, ref = compiled(ours, ours), compiled(ref, ref)

    def wrap(fn):
        def call():
            with mode.per_call(device.type):
                return fn()
        return synchronized(call, device)

    return {"ours": wrap(lambda: ours(x, t, context=ctx)),
            "diffusers": wrap(lambda: ref(x, t, encoder_hidden_states=ctx).sample)}


def peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    """GiB a call allocates on a CUDA device at its peak, over what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    return (torch.cuda.max_memory_allocated(device) - before) / 2**30


def run_case(ours, ref, size: int, mode: Mode, repeats: int, peak: dict[str, float]) -> dict:
    device = next(ours.parameters()).device
    fmt = torch.channels_last if mode.channels_last else torch.contiguous_format
    for model in (ours, ref):
        model.to(memory_format=fmt)  # in place; changes only the conv weights' strides
    x, t, ctx = (v.to(device) for v in inputs(ours.cfg, size))
    fns = callers(ours, ref, x.contiguous(memory_format=fmt), t, ctx, mode)
    with mode.outer(device.type):
        out = {k: fn().float() for k, fn in fns.items()}  # on CUDA with `compiled`, this call compiles
        eager = fns
        if mode.compiled:  # the same math compiled or not: FLOPs are counted on the eager module
            eager = callers(ours, ref, x.contiguous(memory_format=fmt), t, ctx, replace(mode, compiled=False))
        flops = count_flops(eager["ours"])
        times, discarded = interleaved_times(fns, repeats)
        memory = {k: peak_memory(fn, device) for k, fn in fns.items()} if device.type == "cuda" else None
    med = {k: median(v) for k, v in times.items()}
    gflops = {k: flops / v / 1e9 for k, v in med.items()}
    result = {
        "case": f"{size}x{size} {mode.name}", "size": size, "mode": mode.name, "repeats": repeats,
        "device": str(device), "discarded_rounds": discarded,
        "ours_s": med["ours"], "diffusers_s": med["diffusers"], "ratio": med["ours"] / med["diffusers"],
        "min_s": {k: min(v) for k, v in times.items()}, "times": times, "gflop_per_call": flops / 1e9,
        "gflops": gflops, "peak_fraction": {k: v / peak[mode.precision] for k, v in gflops.items()},
        "max_abs_err": (out["ours"] - out["diffusers"]).abs().max().item(),
        "ref_max_abs": out["diffusers"].abs().max().item(),
    }
    if memory is not None:
        result["peak_memory_gib"] = memory
    return result


def table(results: list[dict]) -> str:
    with_memory = any("peak_memory_gib" in r for r in results)
    rows = []
    for r in results:
        g, p = r["gflops"], r["peak_fraction"]
        row = [r["case"], f"{r['ours_s']:.3f}", f"{r['diffusers_s']:.3f}", f"**{r['ratio']:.3f}**",
               f"{r['gflop_per_call']:.0f}", f"{g['ours']:.0f} ({p['ours']:.0%})",
               f"{g['diffusers']:.0f} ({p['diffusers']:.0%})", f"{r['max_abs_err']:.1e}"]
        if with_memory:
            m = r.get("peak_memory_gib")
            row.append(f"{m['ours']:.2f} / {m['diffusers']:.2f}" if m else "")
        rows.append(row)
    return markdown(["case", "ours s", "diffusers s", "ours/diffusers", "GFLOP/call", "ours GFLOP/s (% peak)",
                     "diffusers GFLOP/s (% peak)", "max abs err"] + (["peak GiB ours / diffusers"] if with_memory
                                                                      else []), rows)


def select_modes(device: str = "cpu", *, extras: bool = False, compile: bool = False,
                 only: list[str] | None = None, precisions: tuple[str, ...] = ("fp32", "bf16")) -> list[Mode]:
    """The modes a run on ``device`` takes: those of ``precisions`` (fp16 on CUDA always); ``only``: just these, by
    name, whatever their precision (ConfigError naming the ones that can run here if a name is not among them)."""
    on_cuda = torch.device(device).type == "cuda"
    modes = (CUDA_MODES if on_cuda else MODES) + (EXTRA_MODES if extras and not on_cuda else [])
    modes += COMPILED_MODES if compile else []
    if only is None:
        return [m for m in modes if m.precision != "bf16" or "bf16" in precisions]
    unknown = sorted(set(only) - {m.name for m in modes})
    if unknown:
        raise ConfigError(f"unknown unet mode(s) {', '.join(map(repr, unknown))}; "
                          f"these can run here: {', '.join(repr(m.name) for m in modes)}")
    return [m for m in modes if m.name in only]


def run(*, quick: bool, peak: dict[str, float], repeats: int | None = None, extras: bool = False,
        sizes: list[int] | None = None, log: Callable[[str], None] = print, device: str = "cpu",
        compile: bool = False, only: list[str] | None = None, precisions: tuple[str, ...] = ("fp32", "bf16"),
        **_) -> dict:
    """The ``unet`` case; returns its JSON section (``results``, ``table``, ``plot_data``). On a CUDA ``device`` the
    modes are fp32, fp16 and bf16 autocast (and bf16 compiled with ``compile``), with peak memory per call.
    ``only``: run just these of the chosen modes, by name (e.g. ["bf16", "bf16 cached casts"] with ``extras``);
    ``precisions``: the bf16 modes run only if "bf16" is among them (or named in ``only``)."""
    cfg = TINY_UNET if quick else SD15_UNET
    sizes = sizes or ([8] if quick else [64, 32])
    repeats = repeats or (1 if quick else 7)
    modes = select_modes(device, extras=extras, compile=compile, only=only, precisions=precisions)
    ours = seeded_unet(cfg)
    ref = diffusers_twin(ours)
    ours, ref = ours.to(device), ref.to(device)
    results, stored = [], {}  # stored: ours with bf16 GEMM weights, one copy for every size
    for size in sizes:
        for mode in modes:
            if mode.stored_weights and mode.amp not in stored:
                stored[mode.amp] = copy.deepcopy(ours)
                store_gemm_weights(stored[mode.amp], mode.amp_dtype)
            r = run_case(stored[mode.amp] if mode.stored_weights else ours, ref, size, mode, repeats, peak)
            results.append(r)
            gib = r.get("peak_memory_gib")
            gib_text = f"  peak GiB {gib['ours']:.2f} / {gib['diffusers']:.2f}" if gib else ""
            log(f"  unet {r['case']}: ours {r['ours_s']:.3f}s  diffusers {r['diffusers_s']:.3f}s  "
                f"ratio {r['ratio']:.3f}  err {r['max_abs_err']:.1e} (|ref| ≤ {r['ref_max_abs']:.1f}){gib_text}")
    return {"setup": {"unet": to_dict(cfg), "batch": 2, "context": [2, 77, cfg.context_dim], "repeats": repeats,
                      "device": str(device)},
            "results": results, "table": table(results)}


def plot(section: dict, out_dir) -> list:  # noqa: ANN001
    from .common import paired_bars

    res = section["results"]
    return [paired_bars(out_dir / "unet-seconds.png", "UNet forward (batch 2), seconds per call", res,
                        lambda r, side: r[f"{side}_s"], "s"),
            paired_bars(out_dir / "unet-peak-fraction.png", "UNet: fraction of the measured GEMM peak", res,
                        lambda r, side: r["peak_fraction"][side], "fraction of peak")]
