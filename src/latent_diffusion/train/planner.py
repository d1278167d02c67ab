"""Train the caption → layout planner (models/layout_planner.py) on ShapesWorld ground truth: (caption, layout)
pairs of items ``0 .. scenes-1`` of ``ShapesWorld(seed)`` (evaluation uses seed 777), teacher-forced cross-entropy,
AdamW with a linear warm-up. ``ldm train planner --out F``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..models.layout_planner import LayoutPlanner, PlannerConfig


@dataclass
class PlannerTrainConfig:
    model: PlannerConfig = field(default_factory=PlannerConfig)
    scenes: int = 20_000
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100


def planner_data(scenes: int, seed: int, size: int = 64) -> tuple[list[str], torch.Tensor]:
    """Captions and (scenes, 3, 5) layouts of ShapesWorld(seed) items 0 .. scenes-1 (no images rendered)."""
    from ..data.shapes import ShapesWorld, ShapesWorldConfig

    world = ShapesWorld(ShapesWorldConfig(size=size, seed=seed, length=scenes))
    pairs = [world.caption_and_layout(i) for i in range(scenes)]
    return [c for c, _ in pairs], torch.stack([lay for _, lay in pairs])


def train_planner(cfg: PlannerTrainConfig, *, log: Callable[[str], None] | None = print
                  ) -> tuple[LayoutPlanner, dict]:
    """The trained planner (eval mode) and a summary (steps, final loss, seconds, parameters)."""
    t0 = time.perf_counter()
    captions, layouts = planner_data(cfg.scenes, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = LayoutPlanner(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    g = torch.Generator().manual_seed(cfg.seed)
    running = None
    for step in range(cfg.steps):
        idx = torch.randint(0, len(captions), (cfg.batch_size,), generator=g)
        loss = model.loss([captions[i] for i in idx.tolist()], layouts[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        if log is not None and (step + 1) % 250 == 0:
            log(f"step {step + 1}/{cfg.steps} loss {running:.4f}")
    summary = {"steps": cfg.steps, "loss": running, "train_seconds": round(time.perf_counter() - t0, 1),
               "params": sum(p.numel() for p in model.parameters())}
    return model.eval(), summary
