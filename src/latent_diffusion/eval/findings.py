"""The paper's findings in miniature (docs/findings.md), measured with the judge on held-out ShapesWorld scenes.

``python -m latent_diffusion.eval.findings samplers --class-ckpt C --uncond-ckpt U --out DIR``
    sampler steps vs quality: class accuracy (class model, CFG 3) and FID (unconditional model) for DDIM, PLMS and
    DPM++ 2M at 5 / 10 / 20 / 50 steps.
``python -m latent_diffusion.eval.findings first-stage --run NAME=RUN_DIR ... --out DIR``
    LDM-f at equal training compute: for each training run (its ``model.safetensors`` and ``summary.json``), the
    steps it reached, class accuracy at CFG 1 and 3, and sampling throughput (images / s, 20 DDIM steps, batch 16).
``python -m latent_diffusion.eval.findings rescaling --run NAME=RUN_DIR ... [--every K] --out DIR``
    latent rescaling at equal steps: class accuracy at CFG 1 and 3 and the training loss of each run's kept models
    (``run.keep_epoch_models``) every K steps (eval/rescaling.py).
``python -m latent_diffusion.eval.findings relations --model NAME=FILE ... --out DIR``
    text-to-image: does the model follow the relation word (same seed, relation flipped), and does the noise at the
    first sampler step still carry the layout (eval/relations.py)?
``python -m latent_diffusion.eval.findings grounded [--planner FILE] [--layout-ckpt FILE] --out DIR``
    the ceiling of caption → layout → image: the layout model on each held-out scene's own layout, judged against
    its caption, and with ``--planner`` on the planner's layouts (eval/grounded.py).

Each writes ``<name>.json`` and ``<name>.png`` into ``--out`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import LDMError

SAMPLERS = ("ddim", "plms", "dpmpp_2m")
STEPS = (5, 10, 20, 50)


def judge_and_heldout(n: int) -> tuple[Any, dict]:
    """The committed judge and the first ``n`` held-out ShapesWorld scenes (``tasks.heldout``)."""
    from .judge import Judge
    from .tasks import heldout

    return Judge.load(None), heldout(n)


def sampler_sweep(class_ckpt: str, uncond_ckpt: str, *, n_class: int = 80, n_uncond: int = 256,
                  samplers: Sequence[str] = SAMPLERS, steps: Sequence[int] = STEPS, cfg_scale: float = 3.0,
                  log: Any = print) -> list[dict[str, Any]]:
    from ..pipelines.pipeline import Pipeline
    from . import adapters as ad
    from .distribution import DistributionMetrics
    from .tasks import evaluate_class, evaluate_uncond, heldout

    judge, data = judge_and_heldout(n_class)
    metrics = DistributionMetrics(judge, heldout(max(n_uncond, 256), offset=100_000)["images"], seed=0)
    cls, unc = Pipeline.from_checkpoint(class_ckpt), Pipeline.from_checkpoint(uncond_ckpt)
    rows = []
    for sampler in samplers:
        for k in steps:
            s = ad.SampleSettings(steps=k, sampler=sampler)
            acc = evaluate_class(ad.class_generator(cls, s, cfg_scale), judge, data["labels"])
            dist = evaluate_uncond(ad.uncond_generator(unc, s), metrics, n_uncond)
            rows.append({"sampler": sampler, "steps": k, "class_accuracy": acc["class_accuracy"],
                         "fid": dist["fid"], "kid_mean": dist["kid_mean"]})
            log(f"  {sampler} {k} steps: class accuracy {acc['class_accuracy']:.3f}, FID {dist['fid']:.3f}")
    return rows


def throughput(pipe: Any, *, steps: int = 20, batch: int = 16, repeats: int = 2) -> float:
    """Images per second of ``pipe.sample`` (DDIM, decode included), the best of ``repeats`` timed calls."""
    kw = dict(n=batch, steps=steps, sampler="ddim", batch_size=batch)
    label = 0 if pipe.kind == "class" else None
    pipe.sample(label, **kw | {"n": 2, "batch_size": 2, "steps": 2})  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe.sample(label, **kw)
        best = min(best, time.perf_counter() - t0)
    return batch / best


def first_stage_sweep(runs: dict[str, str], *, n: int = 80, cfg_scales: Sequence[float] = (1.0, 3.0),
                      log: Any = print) -> list[dict[str, Any]]:
    from ..pipelines.pipeline import Pipeline
    from . import adapters as ad
    from .tasks import evaluate_class

    judge, data = judge_and_heldout(n)
    rows = []
    for name, run in runs.items():
        run_dir = Path(run)
        summary = json.loads((run_dir / "summary.json").read_text())
        pipe = Pipeline.from_checkpoint(run_dir / "model.safetensors", use_ema=True)
        row: dict[str, Any] = {"model": name, "f": pipe.latent_factor, "train_steps": summary["steps"],
                               "train_seconds": summary["train_seconds"],
                               "latent": list(pipe.model.cfg.unet.channel_mult), "scale_factor": summary["scale_factor"]}
        for c in cfg_scales:
            acc = evaluate_class(ad.class_generator(pipe, ad.SampleSettings(), c), judge, data["labels"])
            row[f"class_accuracy_cfg{c:g}"] = acc["class_accuracy"]
        row["images_per_s"] = throughput(pipe)
        rows.append(row)
        log(f"  {name}: {row}")
    return rows


def _plot_samplers(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        rs = [r for r in rows if r["sampler"] == sampler]
        axes[0].plot([r["steps"] for r in rs], [100 * r["class_accuracy"] for r in rs], "o-", label=sampler)
        axes[1].plot([r["steps"] for r in rs], [r["fid"] for r in rs], "o-", label=sampler)
    for ax, title in zip(axes, ("class accuracy (%), CFG 3", "FID (judge features), unconditional")):
        ax.set_xscale("log")
        ax.set_xticks([5, 10, 20, 50], ["5", "10", "20", "50"])
        ax.set_xlabel("sampling steps")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_first_stage(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["model"] for r in rows]
    axes[0].bar(names, [100 * r["class_accuracy_cfg3"] for r in rows])
    axes[0].set_title("class accuracy (%), CFG 3, equal training time")
    axes[1].bar(names, [r["images_per_s"] for r in rows])
    axes[1].set_title("sampling throughput (images / s, 20 steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_rescaling(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == name]
        style = "--" if rs[0].get("scale_factor") == 1.0 else "-"  # dashed: latents not rescaled
        for ax, key in zip(axes, ("class_accuracy_cfg1", "class_accuracy_cfg3")):
            ax.plot([r["step"] for r in rs], [100 * r[key] for r in rs], style, marker="o", label=name)
        axes[2].plot([r["step"] for r in rs if r["loss"] is not None], [r["loss"] for r in rs if r["loss"] is not None],
                     style, marker="o", label=name)
    titles = ("class accuracy (%), CFG 1", "class accuracy (%), CFG 3", "training loss (as logged: weighted ε MSE)")
    for ax, title in zip(axes, titles):
        ax.set_xlabel("training steps")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_relations(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    names, width = [r["model"] for r in rows], 0.27
    for k, (key, label) in enumerate((("relation_right", "caption"), ("relation_right_flipped", "flipped caption"),
                                      ("relation_right_both", "both, same seed"))):
        axes[0].bar([i + (k - 1) * width for i in range(len(rows))], [100 * r[key] for r in rows], width, label=label)
    axes[0].set_xticks(range(len(rows)), names, fontsize=8, rotation=25, ha="right")
    axes[0].set_title(f"relation right (%), CFG {rows[0]['cfg_scale']:g}")
    axes[0].legend(fontsize=8)
    for k, (key, label) in enumerate((("leak_distance_own", "from its own scene's x_t"),
                                      ("leak_distance_other", "from another scene's x_t"))):
        axes[1].bar([i + (k - 0.5) * width for i in range(len(rows))], [r[key] for r in rows], width, label=label)
    axes[1].set_xticks(range(len(rows)), names, fontsize=8, rotation=25, ha="right")
    axes[1].set_title("object 0: distance from its place in the scene")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_grounded(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .grounded import KEYS

    fig, ax = plt.subplots(figsize=(9, 4.4))
    names = [r["source"].replace(" -> ", " →\n") + ("" if r["cfg_scale"] is None else f"\nCFG {r['cfg_scale']:g}")
             for r in rows]
    width = 0.8 / len(KEYS)
    for k, key in enumerate(KEYS):
        ax.bar([i + (k - (len(KEYS) - 1) / 2) * width for i in range(len(rows))], [100 * r[key] for r in rows],
               width, label=key)
    ax.set_xticks(range(len(rows)), names, fontsize=7)
    ax.set_ylabel("% of held-out captions")
    ax.set_title("grounded text-to-image: caption → boxes → layout model, judged against the caption")
    ax.set_ylim(0, 118)
    ax.legend(fontsize=8, ncol=len(KEYS), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(lines) + "\n"


def _named(values: list[str], flag: str, form: str) -> dict[str, str]:
    named = dict(v.split("=", 1) for v in values if "=" in v)
    if len(named) != len(values):
        raise LDMError(f"{flag} takes {form}, got {values}")
    return named


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latent_diffusion.eval.findings", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("samplers")
    s.add_argument("--class-ckpt", required=True)
    s.add_argument("--uncond-ckpt", required=True)
    s.add_argument("--n-class", type=int, default=80)
    s.add_argument("--n-uncond", type=int, default=256)
    f = sub.add_parser("first-stage")
    f.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR")
    f.add_argument("--n", type=int, default=80)
    e = sub.add_parser("rescaling")
    e.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR")
    e.add_argument("--every", type=int, default=1000, help="evaluate the kept models at multiples of this step")
    e.add_argument("--n", type=int, default=80)
    e.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    r = sub.add_parser("relations")
    r.add_argument("--model", action="append", required=True, metavar="NAME=FILE",
                   help="a text-to-image .safetensors (a training run's model.safetensors is sampled with its EMA)")
    r.add_argument("--n", type=int, default=64, help="held-out captions with a relation (default 64)")
    r.add_argument("--cfg", type=float, default=5.0)
    r.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    g = sub.add_parser("grounded")
    g.add_argument("--layout-ckpt", default=None, help="layout-to-image .safetensors (default: the embedded one)")
    g.add_argument("--planner", default=None, help="a caption -> layout planner (`ldm train planner`): adds the rows "
                   "of the whole grounded pipeline")
    g.add_argument("--n", type=int, default=64)
    g.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0])
    g.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    for q in (s, f, e, r, g):
        q.add_argument("--out", required=True, help="folder for the JSON and PNG")
        q.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.what == "samplers":
        rows = sampler_sweep(args.class_ckpt, args.uncond_ckpt, n_class=args.n_class, n_uncond=args.n_uncond)
        name, plot = "sampler-steps", _plot_samplers
    elif args.what == "first-stage":
        rows = first_stage_sweep(_named(args.run, "--run", "NAME=RUN_DIR"), n=args.n)
        name, plot = "first-stage", _plot_first_stage
    elif args.what == "rescaling":
        from .rescaling import rescaling_sweep

        rows = rescaling_sweep(_named(args.run, "--run", "NAME=RUN_DIR"), every=args.every, n=args.n,
                               steps=args.steps)
        name, plot = "rescaling", _plot_rescaling
    elif args.what == "grounded":
        from .grounded import grounded_ceiling

        rows = grounded_ceiling(args.layout_ckpt, planner=args.planner, n=args.n, cfg_scales=args.cfg,
                                steps=args.steps)
        name, plot = "grounded", _plot_grounded
    else:
        from .relations import relation_sweep

        rows = relation_sweep(_named(args.model, "--model", "NAME=FILE"), n=args.n, cfg_scale=args.cfg,
                              steps=args.steps)
        name, plot = "relations", _plot_relations
    meta = {"command": "python -m latent_diffusion.eval.findings " + " ".join(argv or []),
            "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads()}
    (out / f"{name}.json").write_text(json.dumps(meta | {"rows": rows}, indent=2) + "\n")
    plot(rows, out / f"{name}.png")
    print(_markdown(rows), end="")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
