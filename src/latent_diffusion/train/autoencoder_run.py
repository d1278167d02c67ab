"""Run a stage-1 training: output folder layout, periodic artefacts (atomic), resume, export.

``out_dir/``: ``config.yaml``, ``log.jsonl`` (one JSON row per logged step / held-out evaluation),
``grids/step-NNNNNN.png`` (inputs over reconstructions), ``checkpoints/last.ckpt`` (Lightning, resumable),
``autoencoder.safetensors`` (CompVis keys, fp32, with config + scale factor), ``loss_curves.png``, ``summary.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..autoencoder_io import save_autoencoder
from ..errors import ConfigError
from ..fileio import sweep_stale_temps
from .autoencoder import AutoencoderModule
from .fit import fit, save_lightning_atomic
from .autoencoder_config import AutoencoderTrainConfig
from .plots import plot_loss_curves, read_log, save_reconstruction_grid

CKPT = "checkpoints/last.ckpt"
EXPORT = "autoencoder.safetensors"


class JsonlLog:
    def __init__(self, path: Path, echo: bool) -> None:
        self.path, self.echo = path, echo

    def truncate_after(self, step: int) -> None:
        """Drop what a run resumed after ``step`` batches logs again: training rows of steps >= ``step`` and
        held-out rows after ``step`` (the held-out row *at* ``step`` was written before that checkpoint)."""
        rows = [r for r in read_log(self.path)
                if r.get("step", -1) < step or ("val_psnr" in r and r.get("step", -1) == step)]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def __call__(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.echo:
            keys = ("step", "total", "rec", "lpips", "kl", "codebook", "d_weight", "disc_loss", "psnr", "val_psnr",
                    "perplexity", "val_perplexity")
            print(" ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}"
                           for k in keys if k in row), flush=True)


class EpochArtifacts(L.Callback):
    """After every ``epoch_steps`` batches: held-out metrics, PNG grid, atomic checkpoint and export."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def on_train_epoch_end(self, trainer: L.Trainer, module: AutoencoderModule) -> None:  # type: ignore[override]
        step = int(module.batches_seen)
        metrics, xs, rec = module.evaluate_heldout()
        n = module.cfg.run.grid_images
        save_reconstruction_grid(xs, rec, self.out_dir / "grids" / f"step-{step:06d}.png", n=n)
        if module.log_sink is not None:
            module.log_sink({"step": step} | metrics)
        save_lightning_atomic(trainer, self.out_dir / CKPT)
        save_autoencoder(module.model, self.out_dir / EXPORT, overwrite=True,
                         metadata={"train_step": str(step), "val_psnr": f"{metrics['val_psnr']:.3f}"})
        if step >= module.cfg.run.max_steps:
            trainer.should_stop = True


def peek_batches_seen(path: str | os.PathLike) -> int:
    """The training step stored in one of our Lightning checkpoints (read through the safe unpickler)."""
    from ..safe_load import read_pickle

    ckpt = read_pickle(path, weights_only=True)
    try:
        return int(ckpt["state_dict"]["batches_seen"])
    except (TypeError, KeyError, ValueError):
        raise ConfigError(f"--resume {path} is not a stage-1 (autoencoder) training checkpoint of this project "
                          "(no state_dict.batches_seen)") from None


def prepare_out_dir(out_dir: Path, resume: str | None, force: bool) -> None:
    if resume is None and (out_dir / "log.jsonl").exists() and not force:
        raise ConfigError(f"{out_dir} already holds a training run; pass --resume {out_dir / CKPT} to continue it "
                          "or --force to start over (its files are replaced)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in (out_dir, out_dir / "checkpoints", out_dir / "grids"):  # what a killed run left half-written
        sweep_stale_temps(folder)
    if resume is None and force:
        (out_dir / "log.jsonl").unlink(missing_ok=True)


def train_autoencoder(cfg: AutoencoderTrainConfig, *, resume: str | None = None, force: bool = False,
                      export: str | None = None, export_dtype: torch.dtype | None = None,
                      progress: bool | None = None, echo: bool = True) -> dict[str, Any]:
    """Train (or resume) and return the summary dict (also written to ``out_dir/summary.json``)."""
    out_dir = Path(cfg.run.out_dir)
    if export is not None and Path(export).exists() and not force:
        raise ConfigError(f"export target {export} already exists; pass --force to replace it")
    if resume is not None and not Path(resume).is_file():
        raise ConfigError(f"--resume {resume}: no such checkpoint file")
    start = peek_batches_seen(resume) if resume is not None else 0  # CRCs and allow-list checked before any work
    prepare_out_dir(out_dir, resume, force)
    cfg.to_yaml(out_dir / "config.yaml")
    if cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    module = AutoencoderModule(cfg)
    log = JsonlLog(out_dir / "log.jsonl", echo)
    module.log_sink = log
    r = cfg.run
    progress = sys.stdout.isatty() if progress is None else progress
    # stop on batches (EpochArtifacts sets should_stop), not on a count of epochs: a run that ended mid-window and is
    # resumed with a larger max_steps would otherwise stop one window short. Lightning's own max_steps counts the
    # optimiser calls of manual optimisation (two per batch once the discriminator is on), so it cannot be used.
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=r.precision, max_epochs=-1,
                        reload_dataloaders_every_n_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=str(out_dir), deterministic=False,
                        callbacks=[EpochArtifacts(out_dir)])
    t0 = time.perf_counter()
    if resume is not None:
        log.truncate_after(start)
    fit(trainer, module, resume)  # the resume file was read through our allow-list reader first
    seconds = time.perf_counter() - t0
    metrics, xs, rec = module.evaluate_heldout()
    scale = module.latent_scale_factor()
    final = save_autoencoder(module.model, out_dir / EXPORT, overwrite=True, scale_factor=scale,
                             metadata={"train_step": str(int(module.batches_seen))})
    if export is not None:
        save_autoencoder(module.model, export, overwrite=True, dtype=export_dtype, scale_factor=scale,
                         metadata={"train_step": str(int(module.batches_seen)), "val_psnr": f"{metrics['val_psnr']:.3f}"})
    plot_loss_curves(out_dir / "log.jsonl", out_dir / "loss_curves.png", title=f"{cfg.kind}-f{cfg.model.downsample_factor}")
    summary = {"kind": cfg.kind, "f": cfg.model.downsample_factor, "steps": int(module.batches_seen),
               "train_seconds": round(seconds, 1), "lr": cfg.lr, "scale_factor": scale,
               "params": sum(p.numel() for p in module.model.parameters()), "autoencoder": str(final),
               "export": export, "lpips_pretrained": bool(getattr(module.loss.perceptual_loss, "pretrained", False))}
    summary |= metrics
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
