"""Train the judge (``ldm train judge``) on ShapesWorld ground truth only: per-pixel shape and colour labels.

Deterministic: the data are ShapesWorld items of ``data_seed`` (never the generators' seed 0 and never the
held-out evaluation seed), the init, batch order and augmentations come from one ``torch.Generator(seed)``, and
training runs on one thread. Augmentations (on the ground-truth images only): additive Gaussian noise and a light
blur, so that slightly soft or noisy pictures are still read correctly.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.shapes import EVAL_SEED, COLOUR_NAMES, ShapesWorld, ShapesWorldConfig  # noqa: F401 - EVAL_SEED re-exported
from ..errors import LDMError
from .judge import DEFAULT_JUDGE_PATH, JudgeConfig, JudgeNet, save_judge

JUDGE_DATA_SEED = 101  # the judge's own training scenes


@dataclass(frozen=True)
class JudgeTrainConfig:
    model: JudgeConfig = field(default_factory=JudgeConfig)
    size: int = 64
    num_train: int = 4000  # distinct scenes, drawn once and cached
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    foreground_weight: float = 3.0  # objects are ~10 % of the pixels; weigh their labels up
    noise_prob: float = 0.5  # P(add N(0, U(0, 0.08)) noise)
    blur_prob: float = 0.3  # P(3x3 box blur)
    seed: int = 0
    data_seed: int = JUDGE_DATA_SEED
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.data_seed == EVAL_SEED:
            raise LDMError(f"the judge must not train on the held-out evaluation seed {EVAL_SEED}")
        for name in ("num_train", "steps", "batch_size", "size"):
            if getattr(self, name) <= 0:
                raise LDMError(f"JudgeTrainConfig.{name} must be positive, got {getattr(self, name)}")


def label_maps(segmentation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ShapesWorld segmentation (..., H, W) → shape labels (0 bg, 1..5) and colour labels (0 bg, 1..8)."""
    fg = segmentation > 0
    cls = (segmentation - 1).clamp_min(0)
    n = len(COLOUR_NAMES)
    return torch.where(fg, cls // n + 1, 0), torch.where(fg, cls % n + 1, 0)


def build_data(cfg: JudgeTrainConfig, *, seed: int | None = None, n: int | None = None) -> dict[str, torch.Tensor]:
    """images (N, 3, H, W) in [-1, 1], shape (N, H, W), colour (N, H, W) labels."""
    world = ShapesWorld(ShapesWorldConfig(size=cfg.size, seed=cfg.data_seed if seed is None else seed,
                                          length=cfg.num_train if n is None else n))
    items = [world[i] for i in range(len(world))]
    shape, colour = label_maps(torch.stack([it["segmentation"] for it in items]))
    return {"images": torch.stack([it["image"] for it in items]), "shape": shape, "colour": colour}


def augment(x: torch.Tensor, cfg: JudgeTrainConfig, g: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) → same shape; per-image noise and blur drawn from ``g``."""
    b = x.shape[0]
    blur = torch.rand(b, generator=g) < cfg.blur_prob
    if blur.any():
        soft = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x = torch.where(blur[:, None, None, None], soft, x)
    sigma = torch.rand(b, generator=g) * 0.08 * (torch.rand(b, generator=g) < cfg.noise_prob)
    return (x + sigma[:, None, None, None] * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def train_judge(cfg: JudgeTrainConfig, *, out: str | Path | None = DEFAULT_JUDGE_PATH,
                log: Callable[[str], None] | None = print) -> tuple[JudgeNet, dict]:
    """Train; write ``out`` (None: don't write); return the net (eval mode) and a summary."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg, out, log)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: JudgeTrainConfig, out: str | Path | None, log: Callable[[str], None] | None) -> tuple[JudgeNet, dict]:
    t0 = time.perf_counter()
    data = build_data(cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # nn.Module init draws from the global generator; seeded for reproducibility
    net = JudgeNet(cfg.model)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    n = data["images"].shape[0]
    order, pos, loss_avg = torch.randperm(n, generator=g), 0, None
    net.train()
    for step in range(cfg.steps):
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        x = augment(data["images"][idx], cfg, g)
        ys, yc = data["shape"][idx], data["colour"][idx]
        s_logits, c_logits, _ = net(x)
        weight = 1.0 + (cfg.foreground_weight - 1.0) * (ys > 0).float()  # (B, H, W)
        loss = ((F.cross_entropy(s_logits, ys, reduction="none") + F.cross_entropy(c_logits, yc, reduction="none"))
                * weight).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        val = float(loss.detach())
        loss_avg = val if loss_avg is None else 0.95 * loss_avg + 0.05 * val
        if log is not None and (step % 50 == 0 or step == cfg.steps - 1):
            log(f"judge step {step + 1}/{cfg.steps} loss {loss_avg:.4f} ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    summary = {"steps": cfg.steps, "train_seconds": round(time.perf_counter() - t0, 1), "final_loss": loss_avg,
               "params": sum(p.numel() for p in net.parameters())}
    if out is not None:
        recipe = asdict(cfg)
        save_judge(net, out, extra={"recipe": recipe, "summary": summary})
        summary["path"] = str(out)
    return net, summary
