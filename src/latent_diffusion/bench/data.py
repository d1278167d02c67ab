"""``ldm bench data``: images per second the data layer delivers, next to what the default recipe's training step
consumes.

Loader side: a folder of ShapesWorld images exported as PNGs with ``metadata.jsonl`` captions (``data/shapes_io``),
and the same images as webdataset shards (``ldm data shard``); the training stream (``train/ldm_data.StepWindow``:
decode, resize + random crop + flip, caption) batched by a ``DataLoader`` with 0 (in the training process), 1 and 2
worker processes. Consumer side: one optimiser step of the default text-to-image recipe
(``configs/ldm/txt2img-shapes.yaml``'s model: UNet, jointly trained text encoder, frozen KL-f4 encoder — the
encoder runs every step when latents are not cached) on a batch of the recipe's size. The ratio loader/consumer above
1 means the loader is not the bottleneck.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from .common import markdown

RECIPE = Path(__file__).resolve().parents[3] / "configs" / "ldm" / "txt2img-shapes.yaml"


def _loader_rate(cfg, workers: int, batches: int) -> float:  # noqa: ANN001
    """Images per second through the training stream for ``batches`` batches (after one warm-up batch)."""
    from ..train.ldm_data import StepWindow, TaskSource, build_items

    source = TaskSource(build_items(cfg), cfg.task)
    window = StepWindow(source, 0, 0, batches + 1, cfg.run.batch_size)
    loader = DataLoader(window, batch_size=cfg.run.batch_size, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = sum(len(b["image"]) for b in it)
    return n / (time.perf_counter() - t0)


def _consumer_rate(cfg, steps: int) -> float:  # noqa: ANN001
    """Images per second one optimiser step of ``cfg``'s model consumes (encoder included), median of ``steps``."""
    from ..train.ldm import LatentDiffusionModule
    from ..train.ldm_data import StepWindow

    module = LatentDiffusionModule(cfg)
    module.setup("fit")
    window = StepWindow(module.source, 0, 0, 1, cfg.run.batch_size)
    batch = torch.utils.data.default_collate([window[k] for k in range(len(window))])
    opt = torch.optim.AdamW(module.trainable_parameters(), lr=1e-4)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=cfg.run.precision == "bf16-mixed"):
            loss = module.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return cfg.run.batch_size / times[len(times) // 2]


def _uncached(source: str, root: Path, quick: bool, precision: str):  # noqa: ANN202 - LDMTrainConfig
    """The default recipe on ``root``, as a run without a latent cache reads it: random crops, the encoder every step."""
    import dataclasses

    from ..train.ldm_config import LDMTrainConfig

    cfg = LDMTrainConfig.from_yaml(RECIPE, data={"source": source, "root": str(root), "crop": "center", "flip": False})
    cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, cache_latents=False,
                                                                 latent_cache_dir=None),
                              data=dataclasses.replace(cfg.data, crop="random"))
    return cfg.replace_run(batch_size=8 if quick else cfg.run.batch_size, precision=precision)


def run(*, quick: bool, repeats: int | None = None, log: Callable[[str], None] = print,
        precisions: tuple[str, ...] = ("fp32",), **_) -> dict:
    from ..data.folder import scan_folder
    from ..data.shapes import ShapesWorld
    from ..data.shapes_io import write_shapes_folder
    from ..data.shards import write_shards

    count = 64 if quick else 512
    batches = 2 if quick else 8
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_shapes_folder(ShapesWorld(size=64, seed=0, length=count), Path(tmp) / "folder", count)
        write_shards(scan_folder(folder), Path(tmp) / "shards", shard_size=128)
        precision = "bf16-mixed" if "bf16" in precisions else "32"
        rows = []
        for source, root in (("folder", folder), ("shards", Path(tmp) / "shards")):
            cfg = _uncached(source, root, quick, precision)
            for workers in (0, 1, 2):
                rate = _loader_rate(cfg, workers, batches)
                rows.append({"source": source, "workers": workers, "images_per_s": rate})
                log(f"  data {source} workers={workers}: {rate:.0f} images/s")
        base = _uncached("folder", folder, quick, precision)
        consume = _consumer_rate(base, 1 if quick else (repeats or 3))
    log(f"  training step ({precision}, batch {base.run.batch_size}, encoder every step): {consume:.1f} images/s")
    for r in rows:
        r["ratio_to_training"] = r["images_per_s"] / consume
    return {"setup": {"images": count, "size": 64, "batch": base.run.batch_size, "precision": precision,
                      "recipe": str(RECIPE.name)},
            "training_images_per_s": consume, "results": rows, "table": table(rows, consume)}


def table(rows: list[dict], consume: float) -> str:
    body = [[r["source"], str(r["workers"]), f"{r['images_per_s']:.0f}", f"**{r['ratio_to_training']:.1f}**"]
            for r in rows]
    body.append(["training step consumes", "", f"{consume:.1f}", "1"])
    return markdown(["source", "loader workers", "images/s", "loader / training"], body)


def plot(section: dict, out_dir) -> list:  # noqa: ANN001
    return []
