"""The digit judge: an independent MNIST classifier that reads generated digits (accuracy per class, FID on its
features). Plain torch, no torchvision.

It trains ONLY on the ``"judge_train"`` MNIST split and is scored on ``"judge_test"`` (``data.mnist``); the
generators train only on ``"generator"``, so judge and generators never share a digit. Inputs are what the
generators produce: (B, 3, 32, 32) in [-1, 1] (gray is the channel mean; (B, 1, 32, 32) is accepted too), the
same transform ``data.mnist.digits_tensor`` and a class-folder loader with ``resize=32`` apply to real digits.

Training augments lightly — small affine jitter (±2 px shifts, ±10°, ±10 % scale), a light blur, intensity jitter
and Gaussian noise — so that slightly soft or noisy generated digits are still read. Deterministic for a seed:
the init, batch order and augmentations all come from one ``torch.Generator(seed)`` and training runs on
``num_threads`` threads (results are bitwise reproducible for the same seed, thread count and machine).

Weights: ``assets/judge-mnist.safetensors`` (fp32, config + recipe + summary in the metadata), re-created by
``python -m latent_diffusion.eval.digits --out PATH``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.mnist import NUM_CLASSES, digits_tensor, mnist_split
from ..errors import CheckpointError, LDMError
from ..safe_load import read_state_dict, save_safetensors_atomic

DEFAULT_DIGIT_JUDGE_PATH = Path(__file__).resolve().parent.parent / "assets" / "judge-mnist.safetensors"
DIGIT_JUDGE_KIND = "mnist-digit-judge"


@dataclass(frozen=True)
class DigitJudgeConfig:
    channels: tuple[int, ...] = (32, 64, 128)  # widths at 32², 16², 8²; features = channels[-1]
    groups: int = 8  # GroupNorm groups: no batch statistics, so a digit's features never depend on its batch
    size: int = 32  # input height = width

    def __post_init__(self) -> None:
        if not self.channels or any(int(c) <= 0 or int(c) % self.groups for c in self.channels):
            raise LDMError(f"DigitJudgeConfig.channels must be positive multiples of groups={self.groups}, "
                           f"got {self.channels}")
        if self.size % 2 ** (len(self.channels) - 1):
            raise LDMError(f"DigitJudgeConfig.size={self.size} must be a multiple of {2 ** (len(self.channels) - 1)}")


def _block(cin: int, cout: int, groups: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU()]
    return nn.Sequential(*layers)


class DigitJudge(nn.Module):
    """(B, 3 or 1, 32, 32) in [-1, 1] → ``features`` (B, channels[-1]) → ``forward`` logits (B, 10).

    One conv at full resolution (a gray input needs no more; it is the costliest resolution), then two convs per
    level after each 2x max-pool, GroupNorm + SiLU after every conv, global average pool, linear head."""

    def __init__(self, config: DigitJudgeConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DigitJudgeConfig()
        widths = (1, *config.channels)
        self.blocks = nn.ModuleList(_block(a, b, config.groups, 1 if i == 0 else 2)
                                    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])))
        self.head = nn.Linear(config.channels[-1], NUM_CLASSES)

    @property
    def num_features(self) -> int:
        return self.config.channels[-1]

    def check(self, x: torch.Tensor) -> torch.Tensor:
        """Validate (B, 3 or 1, size, size) → gray (B, 1, size, size) float32."""
        s = self.config.size
        if x.ndim != 4 or x.shape[1] not in (1, 3) or tuple(x.shape[-2:]) != (s, s):
            raise LDMError(f"the digit judge takes (B, 3, {s}, {s}) images in [-1, 1], got shape {tuple(x.shape)}")
        return x.float().mean(dim=1, keepdim=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, D) penultimate features (global average of the last block)."""
        h = self.check(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i < len(self.blocks) - 1:
                h = F.max_pool2d(h, 2)
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def init_digit_judge(model: DigitJudge, generator: torch.Generator) -> DigitJudge:
    """torch's default Conv2d / Linear init, drawn from ``generator`` instead of the global RNG."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return model


# -- training -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DigitJudgeTrainConfig:
    model: DigitJudgeConfig = field(default_factory=DigitJudgeConfig)
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    shift_px: float = 2.0  # affine jitter: translation (pixels at 32²), rotation (degrees), scale (fraction)
    rotate_deg: float = 10.0
    scale: float = 0.1
    blur_prob: float = 0.3  # P([1 2 1]² / 16 blur)
    levels_prob: float = 0.3  # P(x -> a x + b, a ~ U(0.8, 1), b ~ U(-0.1, 0.1)): soft contrast, gray background
    noise_prob: float = 0.5  # P(add N(0, U(0, noise_max)²) noise)
    noise_max: float = 0.1
    seed: int = 0
    num_threads: int = 2

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "num_threads"):
            if getattr(self, name) <= 0:
                raise LDMError(f"DigitJudgeTrainConfig.{name} must be positive, got {getattr(self, name)}")


def augment(x: torch.Tensor, cfg: DigitJudgeTrainConfig, g: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) in [-1, 1] → same shape; every random draw from ``g``."""
    b, _, h, w = x.shape

    def u() -> torch.Tensor:  # (B,) U(-1, 1)
        return torch.rand(b, generator=g) * 2 - 1

    angle, scale = u() * math.radians(cfg.rotate_deg), 1 + u() * cfg.scale
    tx, ty = u() * cfg.shift_px * 2 / w, u() * cfg.shift_px * 2 / h  # normalised coords: 1 px = 2 / size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1  # bg stays -1
    blur = torch.rand(b, generator=g) < cfg.blur_prob
    k = torch.tensor([1.0, 2.0, 1.0])
    soft = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3))
    x = torch.where(blur[:, None, None, None], soft, x)
    levels = torch.rand(b, generator=g) < cfg.levels_prob
    a = torch.where(levels, 0.9 + 0.1 * u(), torch.ones(b))
    off = torch.where(levels, 0.1 * u(), torch.zeros(b))
    x = a[:, None, None, None] * x + off[:, None, None, None]
    sigma = torch.rand(b, generator=g) * cfg.noise_max * (torch.rand(b, generator=g) < cfg.noise_prob)
    return (x + sigma[:, None, None, None] * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def train_digit_judge(steps: int | None = None, seed: int | None = None, log: Callable[[str], None] | None = None,
                      config: DigitJudgeTrainConfig | None = None) -> tuple[DigitJudge, dict]:
    """Train on the ``"judge_train"`` split only; return the model (eval mode, frozen) and a summary with the
    held-out ``judge_test`` accuracy. ``steps`` / ``seed`` (when given) override ``config``'s (default:
    ``DigitJudgeTrainConfig()``: 600 steps, seed 0)."""
    cfg = config or DigitJudgeTrainConfig()
    cfg = replace(cfg, steps=cfg.steps if steps is None else steps, seed=cfg.seed if seed is None else seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg, log)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: DigitJudgeTrainConfig, log: Callable[[str], None] | None) -> tuple[DigitJudge, dict]:
    t0 = time.perf_counter()
    images, labels = mnist_split("judge_train")
    x_all = digits_tensor(images, cfg.model.size)[:, :1]  # (N, 1, 32, 32): gray, the judge's own input
    y_all = torch.from_numpy(labels)
    g = torch.Generator().manual_seed(cfg.seed)
    model = init_digit_judge(DigitJudge(cfg.model), g)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    n = x_all.shape[0]
    order, pos, loss_avg = torch.randperm(n, generator=g), 0, None
    model.train()
    for step in range(cfg.steps):
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        loss = F.cross_entropy(model(augment(x_all[idx], cfg, g)), y_all[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        val = float(loss.detach())
        loss_avg = val if loss_avg is None else 0.95 * loss_avg + 0.05 * val
        if log is not None and (step % 100 == 0 or step == cfg.steps - 1):
            log(f"digit judge step {step + 1}/{cfg.steps} loss {loss_avg:.4f} ({time.perf_counter() - t0:.0f} s)")
    model.eval().requires_grad_(False)
    train_seconds = time.perf_counter() - t0
    test_images, test_labels = mnist_split("judge_test")
    acc = digit_accuracy(model, test_images, test_labels)
    summary = {"steps": cfg.steps, "seed": cfg.seed, "train_seconds": round(train_seconds, 1),
               "final_loss": round(loss_avg, 4), "judge_test_accuracy": round(acc, 4), "n_train": n,
               "n_test": int(test_labels.shape[0]), "params": sum(p.numel() for p in model.parameters()),
               "num_threads": cfg.num_threads}
    if log is not None:
        log(f"digit judge: {acc:.2%} on judge_test ({summary['n_test']} held-out digits), {train_seconds:.0f} s")
    return model, summary


# -- files ----------------------------------------------------------------------------------------------------
def save_digit_judge(model: DigitJudge, path: str | os.PathLike, overwrite: bool = False, *,
                     extra: dict | None = None) -> Path:
    """Atomic fp32 safetensors write; the config (and ``extra``: recipe, summary) as JSON metadata."""
    meta = {"kind": DIGIT_JUDGE_KIND, "config": json.dumps(asdict(model.config))}
    meta |= {k: json.dumps(v) for k, v in (extra or {}).items()}
    tensors = {k: v.detach().float() for k, v in model.state_dict().items()}
    return save_safetensors_atomic(tensors, path, metadata=meta, overwrite=overwrite)


def load_digit_judge(path: str | os.PathLike = DEFAULT_DIGIT_JUDGE_PATH,
                     device: str | torch.device = "cpu") -> DigitJudge:
    """The judge at ``path`` (default: the committed asset), fp32, eval mode, frozen."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"digit judge weights not found at {path}; re-create them with "
                              f"`python -m latent_diffusion.eval.digits --out {path}`")
    sd, meta = read_state_dict(path, mmap=False)
    if meta.get("kind") != DIGIT_JUDGE_KIND:
        raise CheckpointError(f"{path} is not a digit judge (metadata kind={meta.get('kind')!r}, "
                              f"expected {DIGIT_JUDGE_KIND!r})")
    raw = json.loads(meta["config"])
    known = {f.name for f in fields(DigitJudgeConfig)}
    if set(raw) - known:
        raise CheckpointError(f"{path}: unknown digit judge config keys {sorted(set(raw) - known)}; "
                              f"accepted: {sorted(known)}")
    model = DigitJudge(DigitJudgeConfig(**{**raw, "channels": tuple(raw.get("channels", DigitJudgeConfig.channels))}))
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match its own digit judge config: {exc}") from exc
    return model.to(device).eval().requires_grad_(False)


# -- metrics ----------------------------------------------------------------------------------------------------
def _as_images(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, H, W) digits → ``digits_tensor``; float (N, C, H, W) in [-1, 1] passes through."""
    if isinstance(images, np.ndarray) or (isinstance(images, torch.Tensor) and images.dtype == torch.uint8):
        return digits_tensor(images, size)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise LDMError(f"expected float (N, 3, H, W) images in [-1, 1] or uint8 (N, H, W) digits, "
                       f"got {type(images).__name__}")
    return images


@torch.no_grad()
def judge_features(judge: DigitJudge, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, D) float64 features of ``images`` (float (N, 3, 32, 32) in [-1, 1], or uint8 (N, 28, 28) digits)."""
    x = _as_images(images, judge.config.size)
    device = next(judge.parameters()).device
    return torch.cat([judge.features(b.to(device)).double().cpu() for b in x.split(batch_size)])


@torch.no_grad()
def digit_predictions(judge: DigitJudge, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N,) int64 predicted digits."""
    x = _as_images(images, judge.config.size)
    device = next(judge.parameters()).device
    return torch.cat([judge(b.to(device)).argmax(1).cpu() for b in x.split(batch_size)])


def digit_accuracy(judge: DigitJudge, images: np.ndarray | torch.Tensor,
                   labels: np.ndarray | torch.Tensor | Sequence[int]) -> float:
    """Fraction of ``images`` the judge reads as ``labels``."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    if labels.shape[0] != len(images) or labels.shape[0] == 0:
        raise LDMError(f"digit_accuracy needs one label per image and at least one image, got {len(images)} "
                       f"images and {labels.shape[0]} labels")
    return float((digit_predictions(judge, images) == labels).double().mean())


class _JudgeFeatures(nn.Module):
    """torchmetrics feature extractor: (B, 3, H, W) in [0, 1] (``normalize=True``) → (B, D) float64."""

    def __init__(self, judge: DigitJudge) -> None:
        super().__init__()
        self.judge = judge
        self.num_features = judge.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return judge_features(self.judge, x.float() * 2.0 - 1.0)


def digit_fid(judge: DigitJudge, real_images: np.ndarray | torch.Tensor,
              fake_images: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between the judge's features of two image sets (torchmetrics' FID with the judge as
    its feature extractor, as ``eval.distribution`` does for the shapes judge). Not comparable to Inception FIDs;
    biased upward for small sets, so compare only at equal set sizes (>= 2 x the feature dimension is advisable)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _as_images(real_images, judge.config.size), _as_images(fake_images, judge.config.size)
    n = min(real.shape[0], fake.shape[0])
    if n < 2:
        raise LDMError(f"digit_fid needs at least 2 real and 2 generated images, got {real.shape[0]} real, "
                       f"{fake.shape[0]} generated")
    if n < 2 * judge.num_features:
        warnings.warn(f"digit_fid: {n} images per set is fewer than {2 * judge.num_features} (2 x the "
                      f"{judge.num_features} feature dimensions); the value is biased upward", stacklevel=2)
    fid = FrechetInceptionDistance(feature=_JudgeFeatures(judge), normalize=True)
    fid.update(((real.float() + 1) / 2).clamp(0, 1), real=True)
    fid.update(((fake.float() + 1) / 2).clamp(0, 1), real=False)
    return max(0.0, float(fid.compute()))


# -- script ----------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m latent_diffusion.eval.digits --out PATH [--steps N] [--seed S] [--force]``."""
    p = argparse.ArgumentParser(prog="python -m latent_diffusion.eval.digits",
                                description="Train the MNIST digit judge on the judge_train split and write it.")
    p.add_argument("--out", required=True, help=f"output .safetensors (the shipped one: {DEFAULT_DIGIT_JUDGE_PATH})")
    p.add_argument("--steps", type=int, default=DigitJudgeTrainConfig.steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        if out.suffix != ".safetensors":
            raise LDMError(f"--out must end in .safetensors, got {out}")
        if out.exists() and not args.force:  # checked before training, not after minutes of work
            raise LDMError(f"{out} already exists; refusing to overwrite it (pass --force to replace it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        cfg = DigitJudgeTrainConfig(steps=args.steps, seed=args.seed)
        model, summary = train_digit_judge(steps=args.steps, seed=args.seed, config=cfg,
                                           log=None if args.quiet else print)
        save_digit_judge(model, out, overwrite=args.force, extra={"recipe": asdict(cfg), "summary": summary})
    except LDMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({**summary, "path": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
