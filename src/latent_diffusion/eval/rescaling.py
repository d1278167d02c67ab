"""Latent rescaling at equal training steps (paper appendix G; docs/findings.md §3).

Each run is a class-conditional training folder written with ``run.keep_epoch_models: true`` (e.g.
``configs/findings/rescaling-{scaled,unscaled}.yaml``): its ``models/step-NNNNNN.safetensors`` are the EMA models
at every checkpoint. For each kept model whose step is a multiple of ``every``, the judge's class accuracy on
held-out labels at each guidance scale, and the run's training loss (the mean of the logged per-step losses in
the ``every`` steps before it, as logged: with ``min_snr_gamma`` the weighted loss; the weights depend on the
schedule only, so runs that differ in scale factor alone are weighed alike).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import LDMError


def kept_models(run_dir: Path, every: int) -> list[tuple[int, Path]]:
    """(step, file) of the run's kept models whose step is a multiple of ``every``, in step order."""
    from ..runs import kept_models as all_kept

    found = all_kept(run_dir)
    chosen = [(s, p) for s, p in found if s % every == 0]
    if not chosen:
        have = [s for s, _ in found] or "none"
        raise LDMError(f"{run_dir}: no kept model at a multiple of {every} steps (kept: {have}); train it with "
                       "run.keep_epoch_models: true, or pass an --every that is one of the kept steps or divides them")
    return chosen


def window_loss(log_path: Path, step: int, window: int) -> float | None:
    """Mean logged loss over the steps in (step - window, step]; None if the log has no such row."""
    if not log_path.is_file():
        return None
    rows = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    losses = [r["loss_mean"] for r in rows if "loss_mean" in r and step - window < r["step"] <= step]
    return sum(losses) / len(losses) if losses else None


def rescaling_sweep(runs: dict[str, str], *, every: int = 1000, n: int = 80,
                    cfg_scales: Sequence[float] = (1.0, 3.0), steps: int = 20, log: Any = print) -> list[dict]:
    from ..pipelines.pipeline import Pipeline
    from . import adapters as ad
    from .findings import judge_and_heldout
    from .tasks import evaluate_class

    if every < 1:
        raise LDMError(f"--every must be >= 1 (steps), got {every}")
    models = {name: kept_models(Path(run), every) for name, run in runs.items()}  # every run checked before work
    judge, data = judge_and_heldout(n)
    rows = []
    for name, run in runs.items():
        for step, path in models[name]:
            pipe = Pipeline.from_checkpoint(path, use_ema=True)
            row: dict[str, Any] = {"model": name, "step": step, "scale_factor": float(pipe.model.scale_factor),
                                   "loss": window_loss(Path(run) / "log.jsonl", step, every)}
            for c in cfg_scales:
                acc = evaluate_class(ad.class_generator(pipe, ad.SampleSettings(steps=steps), c), judge,
                                     data["labels"])
                row[f"class_accuracy_cfg{c:g}"] = acc["class_accuracy"]
            rows.append(row)
            log(f"  {name} @ {step}: {row}")
    return rows
