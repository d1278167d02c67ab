"""``ldm bench pipeline``: 512² txt2img, ours vs diffusers' StableDiffusionPipeline — seconds per step and peak RSS.

The measurement itself lives in the repository's ``bench/pipeline.py`` (each side in its own child process, since
peak RSS is per process); this case runs it and folds its summary into ``bench-results.json``. ``--quick`` has no
diffusers side (an SD-sized pipeline is minutes): it times our tiny pipeline in fp32 and bf16 only, which keeps
the JSON schema exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import LDMError
from .common import markdown

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "pipeline.py"


def run(*, quick: bool, repeats: int | None = None, log: Callable[[str], None] = print,
        precisions: tuple[str, ...] = ("fp32", "bf16"), **_) -> dict:
    return _quick(log, precisions) if quick else _full(repeats or 2, log, precisions)


def _quick(log: Callable[[str], None], precisions: tuple[str, ...]) -> dict:
    from ..pipelines import Pipeline
    from ..tiny import tiny_model

    pipe = Pipeline(tiny_model("sd1"))
    results = []
    for precision in precisions:
        marks: list[float] = []
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            pipe.txt2img("a red square", steps=3, height=32, width=32, output="latent",
                         callback=lambda i, x, x0: marks.append(time.perf_counter()))
        steps = [b - a for a, b in zip([t0] + marks[:-1], marks)]
        results.append({"case": f"tiny 32² {precision}", "precision": precision, "ours_s_per_step": min(steps),
                        "diffusers_s_per_step": None, "ratio": None})
        log(f"  pipeline {results[-1]['case']}: {min(steps):.4f} s/step (ours only in --quick)")
    rows = [[r["case"], f"{r['ours_s_per_step']:.4f}", "n/a", "n/a"] for r in results]
    return {"setup": {"quick": True}, "results": results,
            "table": markdown(["txt2img", "ours s/step", "diffusers s/step", "ratio"], rows)}


def _full(repeats: int, log: Callable[[str], None], precisions: tuple[str, ...]) -> dict:
    if not SCRIPT.exists():
        raise LDMError(f"the pipeline case runs {SCRIPT}, which this installation lacks (it is in the source "
                       "repository, not the wheel)")
    with tempfile.TemporaryDirectory(prefix="ldm-bench-pipeline-") as tmp:
        cmd = [sys.executable, os.fspath(SCRIPT), "--repeats", str(repeats), "--out", tmp,
               "--dtypes", ",".join(precisions)]
        log(f"  pipeline: {' '.join(cmd[1:])}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LDMError(f"bench/pipeline.py failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        report = json.loads(next(Path(tmp).glob("pipeline-*.json")).read_text())
    results = []
    for dtype, row in report["summary"].items():
        results.append({"case": f"512² txt2img {dtype}", "precision": dtype,
                        "ours_s_per_step": row["ours"]["s_per_step"],
                        "diffusers_s_per_step": row["diffusers"]["s_per_step"], "ratio": row["ratio"]["s_per_step"],
                        "ours_peak_rss": row["ours"]["gen_peak_rss"], "diffusers_peak_rss": row["diffusers"]["gen_peak_rss"],
                        "peak_rss_ratio": row["ratio"]["gen_peak_rss"]})
    return {"setup": report.get("setup", {}), "sanity": report.get("sanity", {}), "results": results,
            "table": report.get("table", ""), "raw": report}


def plot(section: dict, out_dir) -> list:  # noqa: ANN001
    from .common import bar_plot, paired_bars

    res = [r for r in section["results"] if r.get("diffusers_s_per_step")]
    if not res:
        res = section["results"]
        return [bar_plot(out_dir / "pipeline-s-per-step.png", "txt2img seconds per step (ours)",
                         [r["case"] for r in res], {"ours": [r["ours_s_per_step"] for r in res]}, "s / step")]
    return [paired_bars(out_dir / "pipeline-s-per-step.png", "txt2img seconds per step", res,
                        lambda r, side: r[f"{side}_s_per_step"], "s / step")]
