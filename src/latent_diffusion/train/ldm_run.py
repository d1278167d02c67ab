"""Run a stage-2 training: output folder, checkpoints (atomic), resume checks, export, sample grids.

``out_dir/``: ``config.yaml``, ``log.jsonl`` (step, loss of that micro-batch, loss_mean since the previous row (the
first row after a resume averages only the micro-batches since the resume), lr),
``checkpoints/last.ckpt`` (Lightning, resumable: weights, EMA, optimiser, scheduler, step counter, the training
config), ``model.safetensors`` (CompVis keys with ``model_ema.*``, the config and ``scale_factor`` inside; written at
every checkpoint), ``samples/step-N.png``, ``summary.json``. Checkpoints are written every ``run.epoch_steps``
optimiser steps. With ``prior:`` (DreamBooth) the class images the class folder lacks are made first
(``make_class_images``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..checkpoint import save_checkpoint
from ..errors import ConfigError
from ..fileio import sweep_stale_temps, temp_path
from ..runs import KEPT, kept_model_path, kept_models  # noqa: F401 - kept_models re-exported
from ..models.ldm import SCHEDULE_BUFFERS, LatentDiffusion
from .fit import fit, save_lightning_atomic
from .ldm import LatentDiffusionModule
from .ldm_config import RESUMABLE_CHANGES, LDMTrainConfig, class_image_dir, config_value, diff_configs
from .ldm_data import build_items, count_images

CKPT = "checkpoints/last.ckpt"
EXPORT = "model.safetensors"
SAMPLE_PROMPTS = ("a red circle above a blue square", "a green triangle left of a yellow star",
                  "a purple cross below an orange circle", "a cyan square right of a pink triangle")


def inference_model(model: LatentDiffusion, *, use_ema: bool = True, keep_ema: bool = False) -> LatentDiffusion:
    """A copy for sampling / export: EMA weights in the UNet (if ``use_ema``), ``model_ema`` dropped unless kept."""
    m = copy.deepcopy(model).eval()
    m.cfg.scale_factor = float(m.scale_factor)  # the config written with the weights says the scale they use
    if use_ema and m.model_ema is not None:
        m.model_ema.copy_to(m.model)
    if not keep_ema:
        m.model_ema = None
    return m


def export_model(model: LatentDiffusion, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                 use_ema: bool = True, keep_ema: bool = True, overwrite: bool = False,
                 metadata: dict[str, str] | None = None, text_words: list[str] | None = None) -> Path:
    """CompVis-layout ``.safetensors`` of the trained model. ``dtype`` is the storage type of the weights (fp16 halves
    the file; ``load_checkpoint`` casts back); the schedule and ``scale_factor`` stay float32. ``text_words``: a
    frozen MiniLM keeps only the vocabulary these words use (``conditioner.pieces``; see ``restrict_vocabulary``)."""
    m = inference_model(model, use_ema=use_ema and not keep_ema, keep_ema=keep_ema)
    if text_words is not None:
        from ..models.minilm_text import FrozenMiniLMEmbedder, restrict_vocabulary

        if not isinstance(m.cond_stage_model, FrozenMiniLMEmbedder):
            raise ConfigError(f"--export-vocab data restricts a frozen MiniLM's vocabulary; this model's conditioner "
                              f"is {m.cfg.conditioner.kind!r}")
        m.cond_stage_model = restrict_vocabulary(m.cond_stage_model, text_words)
        m.cfg.conditioner = dataclasses.replace(m.cfg.conditioner, pieces=m.cond_stage_model.pieces,
                                                vocab_size=len(m.cond_stage_model.pieces))
    keep32 = set(SCHEDULE_BUFFERS) | {"scale_factor"}
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if t.is_floating_point() and name not in keep32 and not name.startswith("model_ema.decay"):
                t.data = t.data.to(dtype)
    return save_checkpoint(m, path, overwrite=overwrite, metadata=metadata)


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class JsonlLog:
    def __init__(self, path: Path, echo: bool) -> None:
        self.path, self.echo = path, echo

    def truncate_after(self, step: int) -> None:
        if self.path.exists():
            rows = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("step", -1) <= step))

    def __call__(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.echo:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def keep_model(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` atomically: a hard link (free; the next export replaces ``src`` by
    ``os.replace``, so the link keeps this one), or a copy where links are not possible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dst)
    try:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def drop_kept_models(out_dir: Path, after: int) -> None:
    """Remove the kept models of steps > ``after``: they belong to a run that is being started over (``after`` 0)
    or to the part of a run after the checkpoint it resumes from."""
    for step, p in kept_models(out_dir):
        if step > after:
            p.unlink()


class CheckpointEveryEpoch(L.Callback):
    """After every ``run.epoch_steps`` optimiser steps, and at the last step: Lightning checkpoint, exported model, a
    sample grid.

    Saved at the end of the epoch's last batch, not in ``on_train_epoch_end``: Lightning restores a checkpoint
    written there as an epoch that has yet to end, and a resumed run then ended its first window one step later
    (checkpoints at 5, 7, ... after resuming from 4 with ``epoch_steps`` 2). A checkpoint of the last batch resumes
    at the next window's start. A run stopped inside a window (``max_minutes``, a stop signal) is saved at that
    epoch's end, as before."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.saved_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, module: LatentDiffusionModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # type: ignore[override]
        step = module.optimizer_steps(int(module.batches_seen))
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or 0 <= trainer.max_steps <= step:
            self._save(trainer, module, step)

    def on_train_epoch_end(self, trainer: L.Trainer, module: LatentDiffusionModule) -> None:  # type: ignore[override]
        step = module.optimizer_steps(int(module.batches_seen))
        if step != self.saved_step:  # stopped inside the window
            self._save(trainer, module, step)

    def _save(self, trainer: L.Trainer, module: LatentDiffusionModule, step: int) -> None:
        self.saved_step = step
        save_lightning_atomic(trainer, self.out_dir / CKPT)
        module.last_good = (step, str(self.out_dir / CKPT))
        if trainer.is_global_zero:
            export_model(module.model, self.out_dir / EXPORT, overwrite=True, metadata={"train_step": str(step)})
            r = module.cfg.run
            if r.keep_epoch_models:
                keep_model(self.out_dir / EXPORT, kept_model_path(self.out_dir, step))
            if r.sample_every_epoch and module.cfg.task == "txt2img":
                try:  # a preview only: a failure here must never stop a training run
                    write_sample_grid(module.model, self.out_dir / "samples" / f"step-{step:06d}.png",
                                      steps=r.sample_steps, prompts=sample_prompts(module))
                except Exception as e:  # noqa: BLE001
                    warnings.warn(f"sample grid at step {step} failed ({type(e).__name__}: {e}); training goes on",
                                  stacklevel=1)
            if module.log_sink is not None:
                module.log_sink({"step": step, "checkpoint": str(self.out_dir / CKPT),
                                 "seconds": round(time.perf_counter() - module.t0, 1)})


def training_words(module: LatentDiffusionModule) -> list[str]:
    """The words of the training captions (ShapesWorld's vocabulary for ShapesWorld)."""
    if module.cfg.data.source == "shapes":
        from ..data.shapes import vocabulary

        return vocabulary()
    from ..data.sources import caption_words

    return list(caption_words(module.items.captions()))


def sample_prompts(module: LatentDiffusionModule) -> tuple[str, ...]:
    """The grid's prompts: ShapesWorld's four, or the first four distinct captions of the user's data (read once)."""
    if module.cfg.data.source == "shapes":
        return SAMPLE_PROMPTS
    if getattr(module, "_sample_prompts", None) is None:
        items, seen = module.items, {}
        stored = None if hasattr(items, "keep") else items.captions()  # pre-encoded latents: captions in memory
        for k in range(len(items)):  # stops at the fourth distinct caption (shards: reads only the first shards)
            c = items.get(k, None, pixels=False)["caption"] if stored is None else stored[k]
            if c:
                seen.setdefault(c)
            if len(seen) == 4:
                break
        module._sample_prompts = tuple(seen) or ("",)
    return module._sample_prompts


def write_sample_grid(model: LatentDiffusion, path: Path, *, prompts: tuple[str, ...] = SAMPLE_PROMPTS,
                      n: int = 4, steps: int = 20, cfg_scale: float = 3.0, seed: int = 0) -> Path:
    """Rows = prompts, columns = seeds, sampled with the EMA weights (DDIM)."""
    from ..pipelines.pipeline import Pipeline
    from ..pipelines.grid import image_grid

    pipe = Pipeline(inference_model(model))
    size = pipe.cfg.autoencoder.resolution if pipe.cfg.first_stage != "none" else 64
    rows = [pipe.txt2img(p, steps=steps, sampler="ddim", cfg_scale=cfg_scale, seed=seed, n=n, height=size,
                         width=size) for p in prompts]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, labels=list(prompts), scale=2, label_width=150).save(path)
    return path


def class_image_seed(cfg: LDMTrainConfig, k: int) -> int:
    """Class image ``k``'s sampling seed: consecutive from a base derived from the run seed (so that a batch of them
    is one call with per-sample seeds)."""
    from ..data.seeds import seed_of

    return seed_of(cfg.run.seed, "class_images") % 2**30 + k


def make_class_images(cfg: LDMTrainConfig, *, progress: bool = False) -> list[Path]:
    """Fill ``prior``'s class folder up to ``num_class_images`` with images of ``class_prompt`` sampled by the init
    model itself (DDIM, ``sample_steps``, ``sample_cfg``, ``data.size`` px), image ``k`` named ``class-KKKKK.png``
    with seed ``class_image_seed(cfg, k)`` and its parameters in the PNG, written atomically. The images already
    there are counted and kept; the free numbers from 0 up get the rest (a deleted one is made again, the same).
    One process only: under a multi-process launch (torchrun / SLURM) a folder that still lacks images is an error.
    Returns the paths written."""
    p = cfg.prior
    if p is None:
        return []
    folder = class_image_dir(cfg)
    missing = p.num_class_images - count_images(folder)
    if missing <= 0:
        return []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        raise ConfigError(f"prior: {folder} lacks {missing} of {p.num_class_images} class images; they are made by a "
                          "single process: start the run once with one process (run.devices: 1, run.num_nodes: 1, no "
                          "torchrun / srun; it makes them before training), or put the images there")
    from ..pipelines.pipeline import Pipeline
    from .ldm import build_training_model

    ks = [k for k in range(p.num_class_images + count_images(folder) + 1)
          if not (folder / f"class-{k:05d}.png").exists()][:missing]
    r = cfg.run
    gpu = r.accelerator in ("gpu", "cuda") or (r.accelerator == "auto" and torch.cuda.is_available())
    items = build_items(cfg) if cfg.model.conditioner.kind == "bert" else None  # (its word vocabulary)
    model = inference_model(build_training_model(cfg, items=items)).to("cuda" if gpu else "cpu")
    pipe = Pipeline(model, precision="auto" if gpu else "fp32")
    runs: list[list[int]] = []  # consecutive numbers, at most sample_batch: one sampling call each
    for k in ks:
        if runs and runs[-1][-1] == k - 1 and len(runs[-1]) < p.sample_batch:
            runs[-1].append(k)
        else:
            runs.append([k])
    from ..pipelines.metadata import save_png

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    bar = _progress(len(ks), progress, "class images")
    for run in runs:
        images = pipe.txt2img(p.class_prompt, steps=p.sample_steps, sampler="ddim", cfg_scale=p.sample_cfg,
                              seed=class_image_seed(cfg, run[0]), n=len(run), height=cfg.data.size,
                              width=cfg.data.size)
        for k, image in zip(run, images):
            written.append(save_png(image, folder / f"class-{k:05d}.png", image.info["parameters"]))
        bar.update(len(run))
    bar.close()
    del pipe, model
    return written


def _progress(total: int, on: bool, what: str):  # noqa: ANN202 - a tqdm bar
    from tqdm import tqdm

    return tqdm(total=total, desc=what, disable=not on)


def read_resume(resume: str) -> dict[str, Any]:
    """The resume checkpoint, read once through the allow-list reader (zip CRCs checked) before Lightning loads it."""
    from ..safe_load import read_pickle

    if not Path(resume).is_file():
        raise ConfigError(f"--resume {resume}: no such checkpoint file")
    ckpt = read_pickle(resume, weights_only=True)
    if not isinstance(ckpt, dict):
        raise ConfigError(f"--resume {resume} is not a stage-2 (ldm) training checkpoint of this project")
    return ckpt


def check_resume(cfg: LDMTrainConfig, resume: str, ckpt: dict[str, Any] | None = None) -> int:
    """The step stored in ``resume`` (``ckpt``: its content, if already read); a ConfigError naming the fields where
    its config differs from ``cfg``."""
    ckpt = read_resume(resume) if ckpt is None else ckpt
    saved = ckpt.get("ldm_train_config")
    if saved is None:
        raise ConfigError(f"--resume {resume} is not a stage-2 (ldm) training checkpoint of this project")
    try:  # a field added to the config since the checkpoint was written reads as its default
        saved = LDMTrainConfig.from_dict(saved, where=f"--resume {resume}'s config").to_dict()
    except ConfigError:
        pass  # compared as stored: the difference is named below
    ours = cfg.to_dict()
    diff = regrouped(saved, ours, [k for k in diff_configs(saved, ours) if k not in RESUMABLE_CHANGES])
    if diff:
        detail = "; ".join(f"{k}: checkpoint {config_value(saved, k)!r}, config {config_value(ours, k)!r}"
                           for k in diff[:8])
        raise ConfigError(f"--resume {resume} was trained with a different config ({len(diff)} field(s) differ: "
                          f"{detail}); resume with the run's own config ({Path(resume).parents[1] / 'config.yaml'})")
    saved_sha = ckpt.get("ldm_first_stage_sha256")
    if saved_sha and cfg.first_stage_path:
        from ..safe_load import file_sha256

        if Path(cfg.first_stage_path).is_file() and file_sha256(cfg.first_stage_path) != saved_sha:
            raise ConfigError(f"first_stage_path {cfg.first_stage_path} is not the file this run started from (its "
                              f"sha256 changed since {resume} was written); put the original back or start a new run")
    return int(ckpt["state_dict"]["batches_seen"]) // cfg.optim.accumulate


LAYOUT = ("run.devices", "run.num_nodes", "run.batch_size")


def global_batch(run_cfg: dict[str, Any]) -> int:
    """Samples per micro-batch over all processes: ``batch_size · devices · num_nodes``."""
    return int(run_cfg.get("batch_size") or 0) * int(run_cfg.get("devices") or 1) * int(run_cfg.get("num_nodes") or 1)


def regrouped(saved: dict[str, Any], ours: dict[str, Any], diff: list[str]) -> list[str]:
    """``diff`` without the process layout (devices, num_nodes, per-process batch_size) when the global batch is the
    same: the data stream's positions and the step counter are global (``ldm_data``), so a run resumes on another
    number of processes where it stopped, and each sample's draws follow its stream position, not its rank (equal to
    a run that kept its layout up to the order of the gradient sums). Not with data.buckets: a bucket's micro-batches
    are cut at the per-process batch size."""
    same = global_batch(saved.get("run") or {}) == global_batch(ours["run"]) and not ours["data"].get("buckets")
    if any(k in LAYOUT for k in diff) and same:
        return [k for k in diff if k not in LAYOUT]
    return diff


def check_trainer_settings(r: Any) -> None:
    """``run``'s Lightning settings, checked before any data is read: one line naming the bad value."""
    from lightning.pytorch.strategies import StrategyRegistry

    names = ["auto", *StrategyRegistry.available_strategies()]
    if r.strategy not in names:
        raise ConfigError(f"run.strategy {r.strategy!r} is not a Lightning strategy; use auto, ddp, ddp_spawn or "
                          f"fsdp (all: {names})")
    on_cpu = r.accelerator == "cpu" or (r.accelerator == "auto" and not torch.cuda.is_available())
    if r.strategy.startswith("fsdp"):
        if not torch.distributed.is_available():
            raise ConfigError(f"run.strategy {r.strategy!r} needs torch.distributed, which this torch build lacks")
        if on_cpu:
            raise ConfigError(f"run.strategy {r.strategy!r} runs on GPUs only (Lightning refuses FSDP on CPU); use "
                              "ddp on CPU")
    if on_cpu and r.precision.startswith("16-"):
        raise ConfigError(f"run.precision {r.precision!r} is not supported on CPU; use bf16-mixed (or 32)")
    if r.devices * r.num_nodes > 1 and not torch.distributed.is_available():
        raise ConfigError(f"run.devices {r.devices} x run.num_nodes {r.num_nodes} processes need torch.distributed, "
                          "which this torch build lacks")


def check_data_derived(module: LatentDiffusionModule, resume: str, ckpt: dict[str, Any]) -> None:
    """The classes and vocabulary read from the data now must be the ones the checkpoint (``ckpt``, read from
    ``resume``) was trained with (a class folder added since would renumber the labels)."""
    saved = ckpt.get("ldm_data_derived")
    now = module.data_derived()
    if saved is None or saved == now:
        return
    what = [k for k in now if saved.get(k) != now[k]]
    detail = "; ".join(f"{k}: checkpoint {saved.get(k)[:8]!r}..., data now {now[k][:8]!r}..." for k in what)
    raise ConfigError(f"--resume {resume}: the data's {' and '.join(what)} changed since the run started ({detail}); "
                      "resume with the data it was trained on, or start a new run")


def build_trainer(cfg: LDMTrainConfig, out_dir: Path, progress: bool, callbacks: list) -> L.Trainer:
    r = cfg.run
    strategy: Any = r.strategy
    if r.devices * r.num_nodes > 1 and r.strategy in ("auto", "ddp"):
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo" if r.accelerator == "cpu" else None)
    # devices / num_nodes / strategy / precision as given: under torchrun or SLURM, Lightning's cluster environment
    # (TorchElastic / SLURM) supplies the ranks and checks devices · num_nodes against the job's world size
    return L.Trainer(accelerator=r.accelerator, devices=r.devices, num_nodes=r.num_nodes, strategy=strategy,
                     precision=r.precision,
                     # stop on optimiser steps, not epochs: a run that ended mid-epoch (max_steps not a multiple of
                     # epoch_steps) and is resumed with a larger max_steps would otherwise stop one window short
                     max_epochs=-1, max_steps=r.max_steps, reload_dataloaders_every_n_epochs=1,
                     max_time=None if r.max_minutes is None else timedelta(minutes=r.max_minutes),
                     accumulate_grad_batches=cfg.optim.accumulate, gradient_clip_val=cfg.optim.grad_clip,
                     use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                     enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=0, default_root_dir=str(out_dir),
                     callbacks=[CheckpointEveryEpoch(out_dir), *callbacks])


def train_ldm(cfg: LDMTrainConfig, *, resume: str | None = None, force: bool = False, export: str | None = None,
              export_dtype: torch.dtype = torch.float32, export_vocab: str = "full", progress: bool | None = None,
              echo: bool = True, callbacks: list | None = None) -> dict[str, Any]:
    """Train (or resume) and return the summary (also written to ``out_dir/summary.json``). ``export_vocab="data"``:
    the ``export`` copy's frozen MiniLM keeps only the vocabulary of the training captions."""
    if export_vocab not in ("full", "data"):
        raise ConfigError(f"export_vocab must be 'full' or 'data', got {export_vocab!r}")
    if export_vocab == "data" and export is None:
        raise ConfigError("--export-vocab data restricts the --export copy; pass --export PATH too")
    if export_vocab == "data" and cfg.model.conditioner.kind != "minilm":
        raise ConfigError(f"--export-vocab data restricts a frozen MiniLM's vocabulary; this config's conditioner is "
                          f"{cfg.model.conditioner.kind!r}")
    check_trainer_settings(cfg.run)
    out_dir = Path(cfg.run.out_dir)
    if export is not None and Path(export).exists() and not force:
        raise ConfigError(f"export target {export} already exists; pass --force to replace it")
    ckpt = read_resume(resume) if resume is not None else None
    start = check_resume(cfg, resume, ckpt) if resume is not None else 0
    if resume is None and (out_dir / "log.jsonl").exists() and not force:
        raise ConfigError(f"{out_dir} already holds a training run; pass --resume {out_dir / CKPT} to continue it "
                          "or --force to start over")
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in (out_dir, out_dir / "checkpoints", out_dir / KEPT):  # what a killed run left half-written
        sweep_stale_temps(folder)
    log = JsonlLog(out_dir / "log.jsonl", echo)
    if resume is None:
        (out_dir / "log.jsonl").unlink(missing_ok=True)
    else:
        log.truncate_after(start)
    drop_kept_models(out_dir, start)
    cfg.to_yaml(out_dir / "config.yaml")
    if cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    progress = sys.stdout.isatty() if progress is None else progress
    make_class_images(cfg, progress=progress)  # (prior preservation) before the module reads the class folder
    module = LatentDiffusionModule(cfg, resuming=resume is not None)
    if resume is not None:
        check_data_derived(module, resume, ckpt)
        ckpt = None  # its memory back: Lightning reads the file itself
    module.log_sink, module.t0 = log, time.perf_counter()
    if resume is not None:
        module.last_good = (start, resume)
    trainer = build_trainer(cfg, out_dir, progress, list(callbacks or []))
    t0 = time.perf_counter()
    fit(trainer, module, resume)  # the resume file was read through our allow-list reader first
    seconds = time.perf_counter() - t0
    steps = module.optimizer_steps(int(module.batches_seen))
    summary = {"task": cfg.task, "steps": steps, "train_seconds": round(seconds, 1),
               "scale_factor": float(module.model.scale_factor), "world_size": trainer.world_size,
               "unet_params": sum(p.numel() for p in module.model.model.parameters()),
               "digest": weights_digest(module.model)}
    rank = trainer.global_rank
    if trainer.world_size > 1:
        (out_dir / f"digest-rank{rank}.txt").write_text(summary["digest"])
    if trainer.is_global_zero:
        export_model(module.model, out_dir / EXPORT, overwrite=True, metadata={"train_step": str(steps)})
        if export is not None:
            export_model(module.model, export, dtype=export_dtype, keep_ema=False, overwrite=True,
                         metadata={"train_step": str(steps)},
                         text_words=training_words(module) if export_vocab == "data" else None)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
