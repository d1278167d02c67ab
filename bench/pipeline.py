"""512×512 txt2img with SD 1.5-shaped random weights: our ``Pipeline`` against diffusers' ``StableDiffusionPipeline``.

    PYTHONPATH=src python bench/pipeline.py [--steps 4] [--repeats 2] [--dtypes fp32,bf16] [--out bench/results]
                                            [--src DIR] [--ckpt PATH]

One random-weight checkpoint (the shape of tests/fixtures/v1-inference.yaml: 860 M UNet, 84 M VAE, 123 M CLIP ViT-L/14
text encoder; fan-in scaled so activations stay O(1)) is written once; each side loads that same file itself — ours
with ``Pipeline.from_checkpoint``, diffusers with ``from_single_file`` + the original YAML, which copies the weights
through its own CompVis converters (the text encoder is a transformers ``CLIPTextModel`` holding the file's weights:
offline, diffusers cannot fetch its config). Then one txt2img call: DPM++ 2M (``dpmpp_2m`` /
``DPMSolverMultistepScheduler``), CFG 7.5, seed 0, one image, fp32 or under ``torch.autocast("cpu", torch.bfloat16)``.

Every run is a separate child process (peak RSS is per process), alternating which side goes first so drift and
other load hit both alike; medians over ``--repeats``. Per child: seconds per denoising step (median of steps 2..n,
from per-step callbacks; step 1 also pays one-off costs), the whole call, the decode (last step -> images), peak RSS
while loading (``ru_maxrss``) and while generating (``VmHWM`` after resetting it through /proc/self/clear_refs).
The fp32 children also save their final latents and the parent reports max |ours - diffusers| as a sanity check.
Writes ``--out/pipeline-<timestamp>.json`` (default bench-results/) and prints a Markdown table; ratios are
ours / diffusers (< 1: ours wins). CPU seconds per step (process time, all threads) move less than wall time when
other processes share the cores; read both.
``--src`` runs "ours" from another source tree (e.g. ``git archive HEAD src | tar -x -C /tmp/snap`` for a fixed
commit while the working tree changes); the default is this checkout's ``src``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "tests" / "data" / "v1-inference.yaml"
PROMPT, NEGATIVE = "a photograph of an astronaut riding a horse", "blurry, low quality"
SIDES = ("ours", "diffusers")


# -- machine -----------------------------------------------------------------------------------------------------
def machine_info(src: Path) -> dict:
    """CPU model name, the bf16-relevant ISA flags, threads, torch version, the git state measured."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    isa = {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")}
    git = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True,
                         text=True).stdout.split("\n") if src == ROOT / "src" else []
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    return {"cpu": fields.get("model name", platform.processor()), "isa": isa, "logical_cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "git_head": head, "src": str(src),
            "uncommitted_src": [line[3:] for line in git if line.strip()], "loadavg_start": os.getloadavg()}


# -- the shared random checkpoint --------------------------------------------------------------------------------
def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """SD 1.5-shaped weights: matrices/kernels N(0, 1/fan_in), norm gains 1 ± 0.02, biases N(0, 0.02²)."""
    from latent_diffusion.checkpoint import CONFIG_METADATA_KEY
    from latent_diffusion.models.ldm import LatentDiffusion
    from latent_diffusion.safe_load import save_safetensors_atomic
    from latent_diffusion.yaml_compat import load_yaml_config

    cfg = load_yaml_config(YAML)
    with torch.device("meta"):
        shapes = LatentDiffusion(cfg)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in shapes.state_dict().items():
        if not t.is_meta:  # schedule buffers: real values already
            sd[name] = t.clone()
        elif t.ndim >= 2:
            sd[name] = torch.randn(t.shape, generator=g).div_(t[0].numel() ** 0.5)
        elif name.endswith(".weight"):  # GroupNorm / LayerNorm gains
            sd[name] = 1 + 0.02 * torch.randn(t.shape, generator=g)
        else:
            sd[name] = 0.02 * torch.randn(t.shape, generator=g)
    meta = {CONFIG_METADATA_KEY: cfg.to_json(), "format": "latent-diffusion"}
    return save_safetensors_atomic(sd, path, metadata=meta, overwrite=True)


# -- one child run -----------------------------------------------------------------------------------------------
def _rss_now_and_peak() -> tuple[int, int]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _load_diffusers(ckpt: Path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    from latent_diffusion.tokenizer import get_tokenizer

    prefix = "cond_stage_model.transformer.text_model."
    # built for real, not on "meta": its non-persistent buffers (position ids) are not in any state dict
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    with safe_open(os.fspath(ckpt), "pt") as f:
        text_sd = {k.removeprefix(prefix): f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    text.load_state_dict(text_sd, strict=True)
    del text_sd
    pipe = StableDiffusionPipeline.from_single_file(
        os.fspath(ckpt), original_config=os.fspath(YAML), text_encoder=text.eval(), tokenizer=get_tokenizer(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False, local_files_only=True)
    base = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_") and k != "timestep_spacing"}
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(base)  # = our dpmpp_2m (docs/sampling.md)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def child(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_load = time.perf_counter()
    if args.side == "ours":
        from latent_diffusion.pipelines import Pipeline

        import inspect

        if "precision" in inspect.signature(Pipeline.from_checkpoint).parameters:  # load as measured (bf16: UNet
            pipe = Pipeline.from_checkpoint(args.ckpt, precision=args.dtype)   # GEMM weights stored in bf16)
        else:
            pipe = Pipeline.from_checkpoint(args.ckpt)
            if hasattr(pipe, "set_fast_paths"):  # newer trees pick a precision themselves: ask for the one measured
                pipe.set_fast_paths(args.dtype)
    else:
        pipe = _load_diffusers(Path(args.ckpt))
    load_s = time.perf_counter() - t_load
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss_before, _ = _rss_now_and_peak()
    reset = _reset_peak_rss()
    marks: list[float] = []
    cpu_marks: list[float] = []
    load_at_start = os.getloadavg()[0]
    last: dict[str, torch.Tensor] = {}
    bf16 = args.dtype == "bf16"
    size, steps = args.size, args.steps
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if args.side == "ours":
            def on_step(i, x, x0):
                marks.append(time.perf_counter())
                cpu_marks.append(time.process_time())
                last["z"] = x

            images = pipe.txt2img(PROMPT, NEGATIVE, steps=steps, sampler="dpmpp_2m", cfg_scale=7.5, seed=0,
                                  height=size, width=size, callback=on_step)
        else:
            def on_step(p, i, t, kwargs):
                marks.append(time.perf_counter())
                cpu_marks.append(time.process_time())
                last["z"] = kwargs["latents"]
                return kwargs

            images = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5,
                          height=size, width=size, generator=torch.Generator("cpu").manual_seed(0),
                          callback_on_step_end=on_step).images
    t_end = time.perf_counter()
    rss_after, gen_peak = _rss_now_and_peak()
    if args.save_latents:
        torch.save(last["z"].float(), args.save_latents)
    steps_s = [b - a for a, b in zip([t0] + marks[:-1], marks)]
    cpu_steps_s = [b - a for a, b in zip([c0] + cpu_marks[:-1], cpu_marks)]
    return {"side": args.side, "dtype": args.dtype, "load_s": load_s, "first_step_s": steps_s[0],
            "s_per_step": statistics.median(steps_s[1:]) if len(steps_s) > 1 else steps_s[0], "steps_s": steps_s,
            "cpu_s_per_step": statistics.median(cpu_steps_s[1:]) if len(steps_s) > 1 else cpu_steps_s[0],
            "call_s": t_end - t0, "decode_s": t_end - marks[-1], "load_peak_rss": load_peak,
            # clear_refs also resets ru_maxrss: the whole-process peak is the larger of the two phases' peaks
            "peak_rss": max(load_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
            "rss_before_call": rss_before, "gen_peak_rss": gen_peak if reset else None, "rss_after_call": rss_after,
            "image_size": list(images[0].size),
            "loadavg_1min_at_start": load_at_start}


# -- the parent --------------------------------------------------------------------------------------------------
def run_child(args: argparse.Namespace, side: str, dtype: str, ckpt: Path, latents: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--dtype", dtype, "--ckpt", os.fspath(ckpt),
           "--steps", str(args.steps), "--size", str(args.size), "--threads", str(args.threads)]
    if latents is not None:
        cmd += ["--save-latents", os.fspath(latents)]
    env = dict(os.environ, PYTHONPATH=os.fspath(Path(args.src).resolve()))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {dtype} child failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summarise(runs: list[dict], dtypes: list[str]) -> dict:
    keys = ("s_per_step", "cpu_s_per_step", "first_step_s", "call_s", "decode_s", "load_s", "peak_rss",
            "gen_peak_rss")
    out: dict = {}
    for dtype in dtypes:
        row: dict = {}
        for side in SIDES:
            mine = [r for r in runs if r["side"] == side and r["dtype"] == dtype]
            row[side] = {k: statistics.median(r[k] for r in mine) if all(r[k] is not None for r in mine) else None
                         for k in keys}
        row["ratio"] = {k: (row["ours"][k] / row["diffusers"][k] if row["ours"][k] and row["diffusers"][k] else None)
                        for k in keys}
        out[dtype] = row
    return out


def markdown(summary: dict, repeats: int) -> str:
    gib = 1024**3
    lines = ["| dtype | metric | ours | diffusers | ours / diffusers |", "|---|---|---|---|---|"]
    rows = [("s_per_step", "s / step (median of steps 2..n)", 1, "{:.2f}"),
            ("cpu_s_per_step", "CPU s / step (process time, all threads)", 1, "{:.2f}"),
            ("call_s", "whole call, s", 1, "{:.1f}"),
            ("decode_s", "VAE decode + to PIL, s", 1, "{:.2f}"),
            ("gen_peak_rss", "peak RSS generating, GiB", gib, "{:.2f}"),
            ("peak_rss", "peak RSS, whole process (load + call), GiB", gib, "{:.2f}"),
            ("first_step_s", "first step, s", 1, "{:.1f}"),
            ("load_s", "load, s", 1, "{:.1f}")]
    for dtype, row in summary.items():
        for key, label, div, fmt in rows:
            o, d, r = row["ours"][key], row["diffusers"][key], row["ratio"][key]
            if o is None or d is None:
                continue
            lines.append(f"| {dtype} | {label} | {fmt.format(o / div)} | {fmt.format(d / div)} | {r:.3f} |")
    return "\n".join(lines) + f"\n\n(medians of {repeats} runs per cell, each in its own process)"


def parent(args: argparse.Namespace) -> None:
    info = machine_info(Path(args.src).resolve())
    print(f"CPU: {info['cpu']}  ({info['logical_cpus']} logical CPUs, torch threads {args.threads or 'default'})")
    print("ISA: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in info["isa"].items()))
    print(f"torch {info['torch']}, git HEAD {info['git_head']}, ours from {info['src']}"
          + (f", uncommitted there: {info['uncommitted_src']}" if info["uncommitted_src"] else ""))
    from latent_diffusion.bench.common import bench_precisions

    dtypes = args.dtypes.split(",") if args.dtypes else list(bench_precisions(None))
    bad = sorted(set(dtypes) - {"fp32", "bf16"})
    if bad:
        raise SystemExit(f"--dtypes takes fp32 and/or bf16, got {', '.join(bad)}")
    work = Path(tempfile.mkdtemp(prefix="ldm-bench-"))
    ckpt = Path(args.ckpt) if args.ckpt else work / "sd15-random.safetensors"
    if not ckpt.exists():
        t = time.perf_counter()
        random_checkpoint(ckpt)
        print(f"wrote random SD 1.5-shaped weights to {ckpt} in {time.perf_counter() - t:.0f} s")
    runs, parity = [], {}
    try:
        for rep in range(args.repeats):
            for dtype in dtypes:
                order = SIDES if (rep + dtypes.index(dtype)) % 2 == 0 else SIDES[::-1]
                for side in order:
                    lat = work / f"{side}.pt" if (dtype == "fp32" and rep == 0) else None
                    r = run_child(args, side, dtype, ckpt, lat)
                    runs.append(r | {"repeat": rep})
                    print(f"  run {rep + 1}/{args.repeats} {dtype:4} {side:9} {r['s_per_step']:6.2f} s/step "
                          f"({r['cpu_s_per_step']:6.2f} CPU s)  first {r['first_step_s']:6.1f} s  decode "
                          f"{r['decode_s']:5.1f} s  call {r['call_s']:6.1f} s  peak RSS generating "
                          f"{(r['gen_peak_rss'] or 0) / 1024**3:5.2f} GiB, whole {r['peak_rss'] / 1024**3:5.2f} GiB  "
                          f"(load avg {r['loadavg_1min_at_start']:.1f})", flush=True)
            if rep == 0 and "fp32" in dtypes:
                z = {s: torch.load(work / f"{s}.pt") for s in SIDES}
                parity = {"fp32_final_latents_max_abs_diff": (z["ours"] - z["diffusers"]).abs().max().item(),
                          "fp32_final_latents_max_abs": z["diffusers"].abs().max().item()}
                print(f"  sanity: fp32 final latents max |ours - diffusers| = "
                      f"{parity['fp32_final_latents_max_abs_diff']:.2e} "
                      f"(max |z| {parity['fp32_final_latents_max_abs']:.2f})")
    finally:
        for p in work.iterdir():  # the temp folder: latents, and the checkpoint unless --ckpt placed it elsewhere
            p.unlink()
        work.rmdir()
    summary = summarise(runs, dtypes)
    table = markdown(summary, args.repeats)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.json"
    info["loadavg_end"] = os.getloadavg()
    setup = {"size": args.size, "steps": args.steps, "cfg": 7.5, "sampler": "dpmpp_2m / DPMSolverMultistepScheduler",
             "repeats": args.repeats, "threads": args.threads or torch.get_num_threads()}
    path.write_text(json.dumps({"machine": info, "setup": setup, "sanity": parity, "summary": summary,
                                "runs": runs, "table": table}, indent=2))
    print(f"\nwrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtypes", default=None,
                   help="comma-separated, of fp32,bf16 (default: both where the CPU has native bf16, else fp32)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per child (0: torch's default)")
    p.add_argument("--src", default=str(ROOT / "src"), help="source tree 'ours' is imported from in the children")
    p.add_argument("--ckpt", default=None, help="reuse (or keep) the random checkpoint at this path")
    p.add_argument("--out", default=str(ROOT / "bench-results"), help="folder for pipeline-<time>.json")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--save-latents", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.side = args.child
        print("RESULT " + json.dumps(child(args)), flush=True)
    else:
        parent(args)


if __name__ == "__main__":
    main()
