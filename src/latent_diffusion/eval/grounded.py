"""How far a layout-grounded text-to-image pipeline could go: the ceiling of "caption → layout → image".

The text-to-image models place objects from the seed, not from the relation word (findings §4). Grounded pipelines
(LMD, Lian et al. 2023; LayoutGPT, Feng et al. 2023) let a planner turn the caption into boxes and a layout-to-image
model draw them. This measures the second half with a perfect planner: the embedded layout model sampled on each
held-out scene's own layout, judged against the scene's *caption* with the text-to-image adherence rule
(eval/adherence.py) — next to the judge on the real scenes (the ceiling of any generator). With a trained planner
(``ldm train planner``) the same layout model draws the planner's layouts instead: the whole grounded pipeline
(pipelines/grounded.py), from the caption alone.
"""

from __future__ import annotations

from typing import Any, Sequence

from .adapters import SampleSettings, grounded_generator, layout_generator
from .tasks import adherence

KEYS = ("adherence", "objects", "count", "relation")


def _row(name: str, cfg: float | None, verdicts: dict[str, float], n: int) -> dict[str, Any]:
    return {"source": name, "cfg_scale": cfg, "n": n} | {k: verdicts["all" if k == "adherence" else k] for k in KEYS}


def grounded_ceiling(layout_ckpt: str | None = None, *, planner: str | None = None, n: int = 64,
                     cfg_scales: Sequence[float] = (1.0, 3.0), steps: int = 20, seed: int = 0) -> list[dict[str, Any]]:
    """Rows: the judge on the real scenes, then the layout model on the scenes' layouts at each CFG scale, then (with
    ``planner``) on the planner's layouts for the captions."""
    from ..default_model import task_model_path
    from ..pipelines.pipeline import Pipeline
    from .findings import judge_and_heldout

    judge, data = judge_and_heldout(n)
    rows = [_row("real scenes (judge)", None, adherence(judge, data["images"], data["captions"]), n)]
    pipe = Pipeline.from_checkpoint(layout_ckpt or task_model_path("layout"))
    s = SampleSettings(steps=steps, sampler="ddim", seed=seed)
    for c in cfg_scales:
        images = layout_generator(pipe, s, c)(data["layouts"])
        rows.append(_row("true boxes -> layout model", float(c), adherence(judge, images, data["captions"]), n))
    if planner is not None:
        from ..models.layout_planner import LayoutPlanner

        generate = grounded_generator(LayoutPlanner.load(planner), pipe, s)  # as `ldm eval txt2img --grounded`
        for c in cfg_scales:
            images = generate(list(data["captions"]), float(c))
            rows.append(_row("planner -> layout model", float(c), adherence(judge, images, data["captions"]), n))
    return rows
