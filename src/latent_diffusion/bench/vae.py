"""``ldm bench vae``: decode latents to an image with our AutoencoderKL and diffusers', same weights, same run.

SD's first stage (f = 8, 83 M parameters, seeded random weights): 64² latents → 512² image, time and peak RSS
growth, untiled and tiled (32-latent-pixel tiles, 8 overlapping — diffusers' ``enable_tiling`` with the same tile
and overlap), fp32 and bf16 autocast; then a 1024² decode (128² latents) of ours untiled and tiled, for the
"1024² within 8 GB" target. The tiled-vs-untiled difference is reported as max / mean absolute error.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from typing import Callable

import torch

from ..accel import Tiling, accelerate, set_vae_tiling
from ..config import AutoencoderConfig, to_dict
from ..models.autoencoder import AutoencoderKL
from .common import interleaved_times, markdown, median, peak_rss_growth, require_diffusers

SD_VAE = AutoencoderConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, embed_dim=4, resolution=256)
TINY_VAE = AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=32)


def seeded_vae(cfg: AutoencoderConfig, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return accelerate(AutoencoderKL(cfg).eval())  # as a pipeline runs it


def diffusers_twin(ours: AutoencoderKL) -> torch.nn.Module:
    require_diffusers()
    from diffusers import AutoencoderKL as RefKL
    from diffusers.loaders import single_file_utils as sfu

    orig = {"model": {"params": {"first_stage_config": {"params": {"embed_dim": ours.cfg.embed_dim,
                                                                   "ddconfig": to_dict(ours.cfg)}}}}}
    dcfg = sfu.create_vae_diffusers_config_from_ldm(orig, {})
    ref = RefKL(**dcfg, norm_num_groups=32)
    sd = {"first_stage_model." + k: v for k, v in ours.state_dict().items()}
    ref.load_state_dict(sfu.convert_ldm_vae_checkpoint(sd, dcfg), strict=True)
    return ref.eval()


def _trim() -> None:
    """Hand freed heap back to the OS so the next peak-RSS probe starts from what is really in use."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def set_tiling(ours: AutoencoderKL, ref, tile: int | None, overlap: int) -> None:
    if tile is None:
        set_vae_tiling(ours, None)
        ref.disable_tiling()
        return
    set_vae_tiling(ours, Tiling(tile, overlap))
    ref.enable_tiling()
    ref.tile_latent_min_size = tile
    ref.tile_sample_min_size = tile * ours.downsample_factor
    ref.tile_overlap_factor = overlap / tile


def _measure(fns: dict[str, Callable[[], torch.Tensor]], repeats: int) -> tuple[dict, dict, dict]:
    outs, peaks = {}, {}
    for name, fn in fns.items():
        _trim()
        with peak_rss_growth() as probe:
            outs[name] = fn().float()
        peaks[name] = probe["peak_bytes"]
    times, _ = interleaved_times(fns, repeats, warmup=0)
    return outs, peaks, {k: median(v) for k, v in times.items()}


def run(*, quick: bool, repeats: int | None = None, log: Callable[[str], None] = print,
        vae_latent: int | None = None, precisions: tuple[str, ...] = ("fp32", "bf16"), **_) -> dict:
    cfg = TINY_VAE if quick else SD_VAE
    size = vae_latent or (16 if quick else 64)  # latent side; the large decode is twice that
    tile, overlap = (8, 2) if quick else (32, 8)
    repeats = repeats or (1 if quick else 3)
    ours = seeded_vae(cfg)
    ref = diffusers_twin(ours)
    z = torch.randn(1, cfg.z_channels, size, size, generator=torch.Generator().manual_seed(1))
    results, untiled = [], {}
    for precision in precisions:
        for tiled in (False, True):
            set_tiling(ours, ref, tile if tiled else None, overlap)

            def call(fn):
                def run_one():
                    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                        return fn(z)
                return run_one

            fns = {"ours": call(ours.decode), "diffusers": call(lambda t: ref.decode(t).sample)}
            outs, peaks, med = _measure(fns, repeats)
            if not tiled:
                untiled[precision] = outs["ours"]
            r = {"case": f"{size * ours.downsample_factor}² {precision} {'tiled' if tiled else 'untiled'}",
                 "precision": precision, "tiled": tiled, "ours_s": med["ours"], "diffusers_s": med["diffusers"],
                 "ratio": med["ours"] / med["diffusers"], "ours_peak_bytes": peaks["ours"],
                 "diffusers_peak_bytes": peaks["diffusers"],
                 "peak_ratio": (peaks["ours"] / peaks["diffusers"]) if peaks["ours"] and peaks["diffusers"] else None,
                 "max_abs_vs_diffusers": (outs["ours"] - outs["diffusers"]).abs().max().item(),
                 "max_abs_vs_untiled": (outs["ours"] - untiled[precision]).abs().max().item(),
                 "mean_abs_vs_untiled": (outs["ours"] - untiled[precision]).abs().mean().item(),
                 "max_abs_vs_fp32": (outs["ours"] - untiled["fp32"]).abs().max().item() if not tiled else None}
            results.append(r)
            log(f"  vae {r['case']}: ours {r['ours_s']:.2f}s  diffusers {r['diffusers_s']:.2f}s  ratio {r['ratio']:.3f}"
                f"  peak {_gib(peaks['ours'])} / {_gib(peaks['diffusers'])} GiB")
    large = _large_decode(ours, 2 * size, tile, overlap, log)
    return {"setup": {"vae": to_dict(cfg), "latent": [1, cfg.z_channels, size, size], "tile": tile,
                      "overlap": overlap, "repeats": repeats}, "results": results, "large": large,
            "table": table(results, large)}


def _large_decode(ours: AutoencoderKL, size: int, tile: int, overlap: int, log: Callable[[str], None]) -> list[dict]:
    """Ours only, one call each: 2× the side (1024² for SD), untiled and tiled, fp32 — peak RSS growth."""
    z = torch.randn(1, ours.cfg.z_channels, size, size, generator=torch.Generator().manual_seed(2))
    rows = []
    for tiled in (False, True):
        set_vae_tiling(ours, Tiling(tile, overlap) if tiled else None)
        _trim()
        import time

        with peak_rss_growth() as probe, torch.inference_mode():
            t0 = time.perf_counter()
            ours.decode(z)
            seconds = time.perf_counter() - t0
        rows.append({"case": f"{size * ours.downsample_factor}² fp32 {'tiled' if tiled else 'untiled'} (ours)",
                     "tiled": tiled, "seconds": seconds, "peak_bytes": probe["peak_bytes"]})
        log(f"  vae {rows[-1]['case']}: {seconds:.1f}s peak {_gib(probe['peak_bytes'])} GiB")
    set_vae_tiling(ours, None)
    return rows


def _gib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f}"


def table(results: list[dict], large: list[dict]) -> str:
    rows = [[r["case"], f"{r['ours_s']:.2f}", f"{r['diffusers_s']:.2f}", f"**{r['ratio']:.3f}**",
             _gib(r["ours_peak_bytes"]), _gib(r["diffusers_peak_bytes"]),
             "n/a" if r["peak_ratio"] is None else f"{r['peak_ratio']:.2f}",
             f"{r['max_abs_vs_diffusers']:.1e}", f"{r['max_abs_vs_untiled']:.2f} / {r['mean_abs_vs_untiled']:.3f}"]
            for r in results]
    rows += [[r["case"], f"{r['seconds']:.2f}", "", "", _gib(r["peak_bytes"]), "", "", "", ""] for r in large]
    return markdown(["decode", "ours s", "diffusers s", "ours/diffusers", "ours peak GiB", "diffusers peak GiB",
                     "peak ratio", "max abs vs diffusers", "vs untiled max / mean"], rows)


def plot(section: dict, out_dir) -> list:  # noqa: ANN001
    from .common import paired_bars

    res = section["results"]
    return [paired_bars(out_dir / "vae-seconds.png", "VAE decode, seconds", res, lambda r, side: r[f"{side}_s"], "s"),
            paired_bars(out_dir / "vae-peak-rss.png", "VAE decode, peak RSS growth (GiB)", res,
                        lambda r, side: (r[f"{side}_peak_bytes"] or 0) / 2**30, "GiB")]
