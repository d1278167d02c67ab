"""Training steps/s of the text-to-image recipe: our UNet vs diffusers' UNet2DConditionModel of the same shape.

    PYTHONPATH=src python bench/train_ldm.py [--config configs/ldm/txt2img-shapes.yaml] [--rounds 5] [--steps 5]
                                             [--precision bf16|fp32] [--threads 1] [--out bench/results]

Both loops are the same: a caption batch through the jointly trained text encoder, ε-prediction at random timesteps
on latents of the recipe's shape, MSE, backward, AdamW step. The diffusers UNet starts from our weights (diffusers'
own CompVis converter). Rounds interleave ours and diffusers (A B B A ...) so that load from other processes hits
both alike; the report is the median steps/s of each and the ratio ours / diffusers. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from latent_diffusion.data.shapes import ShapesWorld
from latent_diffusion.models.ldm import LatentDiffusion
from latent_diffusion.train.ldm_config import LDMTrainConfig


def diffusers_unet(ours: torch.nn.Module):  # noqa: ANN201
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    from latent_diffusion.config import to_dict

    params = to_dict(ours.cfg)
    params.pop("num_classes") if ours.cfg.num_classes is None else None
    params.pop("num_heads") if ours.cfg.num_head_channels != -1 else params.pop("num_head_channels")
    orig = {"model": {"params": {"unet_config": {"params": params},
                                 "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
    cfg = sfu.create_unet_diffusers_config_from_ldm(orig, {})
    if cfg.get("attention_head_dim") is None:  # converter reads num_head_channels only with linear projections
        u = ours.cfg  # diffusers' "attention_head_dim" holds the number of heads per level for SD-style UNets
        cfg["attention_head_dim"] = [u.model_channels * m // u.num_head_channels for m in u.channel_mult]
    sd = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    ref = UNet2DConditionModel(**cfg, norm_num_groups=32)
    ref.load_state_dict(sfu.convert_ldm_unet_checkpoint(sd, cfg), strict=True)
    return ref


def make_loop(unet: torch.nn.Module, text: torch.nn.Module, call, batches: list, precision: str):  # noqa: ANN001
    opt = torch.optim.AdamW(list(unet.parameters()) + list(text.parameters()), lr=1e-4)
    ac = torch.linspace(0.9991, 0.0047, 1000)  # ᾱ of the recipe's schedule, roughly; only the shapes matter here
    state = {"i": 0}

    def step() -> None:
        z, caps, t, noise = batches[state["i"] % len(batches)]
        state["i"] += 1
        a = ac[t].view(-1, 1, 1, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            c = text.encode(caps)
            out = call(unet, a.sqrt() * z + (1 - a).sqrt() * noise, t, c)
        loss = (out.float() - noise).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/ldm/txt2img-shapes.yaml")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="training steps per timed round")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's run.batch_size")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = LDMTrainConfig.from_yaml(args.config)
    cfg.model.first_stage = "none"  # the first stage is frozen and outside the loop (cached latents)
    torch.manual_seed(0)
    model = LatentDiffusion(cfg.model)
    ours, text_a = model.model.diffusion_model.train(), model.cond_stage_model
    theirs, text_b = diffusers_unet(ours).train(), copy.deepcopy(text_a)
    b = args.batch_size or cfg.run.batch_size
    f = cfg.model.autoencoder.downsample_factor
    shape = (b, cfg.model.unet.out_channels, cfg.data.size // f, cfg.data.size // f)
    world, g = ShapesWorld(size=cfg.data.size, length=10_000), torch.Generator().manual_seed(0)
    batches = [(torch.randn(shape, generator=g), [world[i * b + j]["caption"] for j in range(b)],
                torch.randint(0, 1000, (b,), generator=g), torch.randn(shape, generator=g)) for i in range(4)]
    loops = {"ours": make_loop(ours, text_a, lambda u, x, t, c: u(x, t, context=c), batches, args.precision),
             "diffusers": make_loop(theirs, text_b, lambda u, x, t, c: u(x, t, encoder_hidden_states=c).sample,
                                    batches, args.precision)}
    for loop in loops.values():  # warm-up
        loop()
        loop()
    rates: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(args.rounds):
        order = ["ours", "diffusers"] if r % 2 == 0 else ["diffusers", "ours"]
        for name in order:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loops[name]()
            rates[name].append(args.steps / (time.perf_counter() - t0))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} steps/s" for k, v in rates.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"config": args.config, "batch_size": b, "latent_shape": list(shape), "precision": args.precision,
              "threads": args.threads, "rounds": args.rounds, "steps_per_round": args.steps,
              "unet_params": sum(p.numel() for p in ours.parameters()),
              "steps_per_s": med, "all_rounds": rates, "ratio_ours_over_diffusers": med["ours"] / med["diffusers"],
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_ldm.json").write_text(json.dumps(result, indent=2))
    print(f"ours {med['ours']:.3f} steps/s, diffusers {med['diffusers']:.3f} steps/s, "
          f"ratio {result['ratio_ours_over_diffusers']:.3f} -> {out / 'train_ldm.json'}")


if __name__ == "__main__":
    main()
