"""``ldm eval mnist``: how well a class-conditional digit model draws the digit it is asked for.

The independent judge is the digit classifier of ``eval/digits.py``, trained only on the ``judge_train`` digits
(never on anything a generator saw); its accuracy on the ``judge_test`` digits is reported with every evaluation.
For each guidance scale: ``n`` samples per digit (seeds ``seed .. seed + n - 1``), the fraction the judge reads as
the asked digit (class accuracy, per digit and overall), and the Fréchet distance of the samples to the
``judge_test`` digits on the judge's features (``digit_fid``; comparable only at equal set sizes).
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import LDMError


def digit_labels(pipe: Any) -> list[int]:
    """The model's label for each digit 0-9, from its recorded class names (the class folders)."""
    names = list(pipe.cfg.class_names)
    want = [str(d) for d in range(10)]
    if sorted(names) != sorted(want):
        raise LDMError(f"this model's classes are {names}; the digit judge needs the ten classes '0' ... '9' (a model "
                       "trained on `ldm data mnist` folders)")
    return [names.index(d) for d in want]


def evaluate_digits(pipe: Any, *, scales: tuple[float, ...] = (1.0, 3.0, 5.0), n: int = 50, steps: int = 20,
                    sampler: str = "ddim", seed: int = 0, judge_path: str | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Judge accuracy and FID of ``n`` samples per digit at each guidance scale (see the module docstring)."""
    import numpy as np
    import torch

    from ..data.mnist import mnist_split
    from .digits import DEFAULT_DIGIT_JUDGE_PATH, digit_accuracy, digit_fid, digit_predictions, load_digit_judge

    judge = load_digit_judge(judge_path or DEFAULT_DIGIT_JUDGE_PATH)
    test_x, test_y = mnist_split("judge_test")
    labels = digit_labels(pipe)
    size = pipe.cfg.autoencoder.resolution
    out: dict[str, Any] = {"judge_test_accuracy": digit_accuracy(judge, test_x, test_y), "n_per_digit": n,
                           "steps": steps, "sampler": sampler, "seed": seed, "scales": []}
    for scale in scales:
        t0 = time.perf_counter()
        images, truth = [], []
        for digit, label in enumerate(labels):
            pil = pipe.sample(label, n=n, seed=seed, steps=steps, sampler=sampler, cfg_scale=scale, height=size,
                              width=size, progress=f"cfg {scale} digit {digit}" if progress else False)
            images += [np.asarray(im.convert("L")) for im in pil]
            truth += [digit] * n
        x = torch.from_numpy(np.stack(images)).float().div(127.5).sub(1)[:, None].expand(-1, 3, -1, -1)
        pred = digit_predictions(judge, x)
        y = torch.tensor(truth)
        per_digit = [float((pred[y == d] == d).double().mean()) for d in range(10)]
        out["scales"].append({"cfg": scale, "accuracy": float((pred == y).double().mean()), "per_digit": per_digit,
                              "fid": digit_fid(judge, test_x, x), "seconds": round(time.perf_counter() - t0, 1)})
    return out


def markdown(result: dict[str, Any]) -> str:
    import numpy as np

    rows = ["| CFG | class accuracy | worst digit | FID (judge features) |", "|---:|---:|---:|---:|"]
    for s in result["scales"]:
        worst = int(np.argmin(s["per_digit"]))
        rows.append(f"| {s['cfg']:g} | {100 * s['accuracy']:.1f} % | {worst}: {100 * s['per_digit'][worst]:.0f} % "
                    f"| {s['fid']:.2f} |")
    return "\n".join(rows) + "\n"


def add_eval_mnist_command(esub: Any) -> None:
    p = esub.add_parser("mnist", help="class accuracy (independent digit judge) and FID of a class-conditional "
                        "digit model per CFG scale")
    p.add_argument("--ckpt", default=None, help="model .safetensors (default: the embedded class-mnist model)")
    p.add_argument("--ema", action="store_true",
                   help="sample with the file's model_ema.* weights (a training run's model.safetensors)")
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0, 5.0], help="guidance scales (one row each)")
    p.add_argument("--n", type=int, default=50, help="samples per digit and scale (default 50)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge", default=None, help="digit judge weights (default: the committed assets/judge-mnist)")
    p.add_argument("--json", default=None, help="write the result as JSON here")
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    p.set_defaults(func=_cmd_eval_mnist)


def _cmd_eval_mnist(args: Any) -> int:
    import json
    import sys
    from pathlib import Path

    from ..default_model import task_model_path
    from ..pipelines.pipeline import Pipeline

    if args.json and Path(args.json).exists() and not args.force:
        raise LDMError(f"{args.json} already exists; pass --force to replace it")
    if args.n < 1:
        raise LDMError(f"--n must be >= 1, got {args.n}")
    pipe = Pipeline.from_checkpoint(args.ckpt or task_model_path("mnist"), use_ema=args.ema)
    result = evaluate_digits(pipe, scales=tuple(args.cfg), n=args.n, steps=args.steps, sampler=args.sampler,
                             seed=args.seed, judge_path=args.judge, progress=sys.stderr.isatty())
    result["ckpt"], result["ema"] = str(args.ckpt or task_model_path("mnist")), args.ema
    print(f"judge accuracy on the held-out judge_test digits: {100 * result['judge_test_accuracy']:.1f} %")
    print(markdown(result), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
