"""Stage 2: the LatentDiffusion LightningModule (the paper's and SD's training loop on an existing engine).

Frozen first stage (KL / VQ autoencoder, or pixel space), ``scale_factor`` = 1/σ̂ of the first global batch's latents
unless given (a ``scale_factor`` buffer, so it is in every checkpoint); ε / x0 / v objectives and min-SNR weighting
through ``diffusion.loss``; optional offset noise; condition dropout to the null condition
(empty caption, the last class, an empty layout, zeros) for classifier-free guidance; an EMA of the UNet
(``model_ema.*``, CompVis ``LitEma``) updated after every optimiser step.

Every random draw is per sample: the sample at stream position ``p`` (``ldm_data``; the batch's ``position``) draws
its timestep, its noise (then its offset noise), its condition-dropout decision and its posterior sample (an inpainting
sample's masked image: a second one) each from a generator of its own, ``Generator().manual_seed(seed_of(seed, purpose,
p))`` with ``purpose`` one of ``DRAWS``. As the data window is a pure function of the seed and the stream position too,
what sample ``p`` trains on depends on neither the process layout (2 processes × batch B draw what 1 × 2B draws) nor a
resume: a run resumed from a checkpoint continues exactly like an uninterrupted one.

Prior preservation (``cfg.prior``, DreamBooth): the micro-batch also holds, under ``prior``, B class samples of the
class stream at the same positions (``ldm_data.PairedWindow``); their draws come from generators of their own,
``seed_of(seed, "prior", purpose, p)``, and loss = instance loss + ``prior.loss_weight`` · class loss, each the model's
own objective (``DenoisingLoss``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .first_stage import load_first_stage_into
from ..diffusion.loss import DenoisingLoss, snr_weight  # noqa: F401  (snr_weight: part of this module's API)
from ..diffusion.samplers_base import randn
from ..errors import ConfigError, LDMError
from ..models.conditioners import null_class
from ..models.ldm import LatentDiffusion
from ..models.unet import set_gradient_checkpointing
from ..safe_load import file_sha256
from .ldm_config import LDMTrainConfig, check_scale_factor, segment_classes
from ..data.seeds import seed_of
from .ldm_data import (TASK_FIELDS, PairedWindow, StepWindow, TaskSource, build_class_items, build_items,
                       latent_cache_file)


# the purposes of the per-sample draws: one generator each, so that no draw shifts another's stream
DRAWS = ("timestep", "noise", "dropout", "posterior", "masked_posterior")
# the sample streams a micro-batch holds: the instance data ("") and prior preservation's class images ("prior")
STREAMS = ("", "prior")


class NonFiniteLossError(LDMError, FloatingPointError):
    """The training loss became NaN / Inf."""


def build_training_model(cfg: LDMTrainConfig, *, load_init: bool = True, items=None) -> LatentDiffusion:  # noqa: ANN001
    """The LatentDiffusion to train: fresh UNet (seeded) or ``init_from``'s (unless ``load_init`` is False: a resume,
    whose checkpoint holds the weights), first stage loaded from ``first_stage_path`` and frozen. ``items`` (the data
    source) supplies what the model's config takes from the data: a jointly trained text encoder's word vocabulary
    (from the captions; ShapesWorld's own words for ShapesWorld) and the class / layout category names."""
    mcfg = copy.deepcopy(cfg.model)
    if mcfg.conditioner.kind == "bert" and not mcfg.conditioner.words:
        from ..data.shapes import vocabulary

        if cfg.data.source == "shapes" or items is None:
            words = tuple(vocabulary())
        else:
            from ..data.sources import caption_words

            words = caption_words(items.captions())
        mcfg.conditioner.words = words  # the vocabulary travels with the checkpoint's config
    if items is not None and cfg.task in ("class", "layout") and not mcfg.class_names:
        mcfg.class_names = tuple(items.class_names)  # so that `ldm sample --class-label NAME` works
    torch.manual_seed(cfg.run.seed)  # weight init only; everything later uses explicit generators
    model = LatentDiffusion(mcfg)
    if cfg.run.gradient_checkpointing:  # (model.unet.use_checkpoint has already built it on)
        set_gradient_checkpointing(model.model, True)
    if cfg.first_stage_path is not None:
        load_first_stage_into(model, cfg.first_stage_path)
    if model.first_stage_model is not None:
        model.first_stage_model.requires_grad_(False).eval()
    cond = model.cond_stage_model
    if cond is not None and hasattr(cond, "transformer") and hasattr(cond.transformer, "to_logits"):
        cond.transformer.to_logits.requires_grad_(False)  # kept for the key layout; not used for embeddings
    if mcfg.conditioner.kind == "minilm":
        cond.load_pretrained()
    model.use_scale_factor_buffer()
    if cfg.init_from is not None and load_init:  # before the EMA is made, so that it starts from these weights
        from .init_from import load_init_weights

        scale = load_init_weights(model, cfg.init_from, first_stage_named=cfg.first_stage_path is not None,
                                  skip=cfg.init_skip)
        model.scale_factor.fill_(scale)
    set_text_encoder_training(model, cfg)
    model.enable_ema(cfg.diffusion.ema_decay)
    if not cfg.diffusion.ema_warmup:
        model.model_ema.num_updates.fill_(-1)
    return model


TEXT_ENCODERS = ("bert", "clip", "open_clip")  # trainable; the MiniLM encoder runs frozen (no grad inside)


def set_text_encoder_training(model: LatentDiffusion, cfg: LDMTrainConfig) -> None:
    """``diffusion.train_text_encoder``: true / false trains / freezes the text encoder (None: the conditioner's own
    way). The first stage is always frozen."""
    want = cfg.diffusion.train_text_encoder
    if want is None:
        return
    kind = cfg.model.conditioner.kind
    if want and kind == "minilm":
        raise ConfigError("diffusion.train_text_encoder: true, but the MiniLM text encoder runs frozen (its encoder "
                          f"computes without gradients); trainable text encoders: {list(TEXT_ENCODERS)}")
    if want and (model.cond_stage_model is None or kind not in TEXT_ENCODERS):
        raise ConfigError(f"diffusion.train_text_encoder: true, but this model has no text encoder to train "
                          f"(model.conditioner.kind {kind!r}; text encoders: {list(TEXT_ENCODERS)}); the first stage "
                          "is always frozen")
    if model.cond_stage_model is not None:
        model.cond_stage_model.requires_grad_(bool(want))
        cond = model.cond_stage_model
        if hasattr(cond, "transformer") and hasattr(cond.transformer, "to_logits"):
            cond.transformer.to_logits.requires_grad_(False)  # kept for the key layout; not used for embeddings


def warn_long_captions(items, cfg: LDMTrainConfig) -> int:  # noqa: ANN001
    """One warning naming how many captions are longer than a CLIP / OpenCLIP encoder's token window (they are cut
    to it, as at sampling); returns that count."""
    c = cfg.model.conditioner
    if c.kind not in ("clip", "open_clip") or cfg.data.source == "shapes" or not hasattr(items, "captions"):
        return 0
    from ..tokenizer import clean_text, get_tokenizer

    captions = [t for t in items.captions() if t]
    if not captions:
        return 0
    lengths = [len(ids) for ids in get_tokenizer()([clean_text(t) for t in captions])["input_ids"]]
    long = [t for t, n in zip(captions, lengths) if n > c.max_length]
    if long:
        import warnings

        warnings.warn(f"{len(long)} of {len(captions)} captions are longer than the text encoder's {c.max_length} "
                      f"tokens (start and end tokens included), e.g. {long[0][:80]!r}; they are truncated to it, as "
                      "at sampling", stacklevel=2)
    return len(long)


class LatentDiffusionModule(L.LightningModule):
    def __init__(self, cfg: LDMTrainConfig, *, resuming: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.resuming = resuming
        self.items = build_items(cfg)  # the data, read and checked before anything trains
        self.class_items = build_class_items(cfg) if cfg.prior is not None else None  # (made by ldm_run first)
        self.model = build_training_model(cfg, load_init=not resuming, items=self.items)
        if "caption" in TASK_FIELDS[cfg.task]:
            warn_long_captions(self.items, cfg)
        _ = self.first_stage_sha256  # fingerprint the file the weights were just read from
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))  # micro-batches on this rank
        self.source: TaskSource | None = None
        self.class_source: TaskSource | None = None
        self.log_sink: Any = None
        self.last_good: tuple[int, str] | None = None  # (step, path) of the latest checkpoint written
        self._window: list[float] = []  # this rank's losses since the last log row
        self._stop_deferred = False  # a stop asked for inside a gradient accumulation (on_train_batch_end)

    # -- freezing -----------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "LatentDiffusionModule":
        super().train(mode)
        if self.model.first_stage_model is not None:
            self.model.first_stage_model.eval()
        return self

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = list(self.model.model.parameters())
        if self.model.cond_stage_model is not None:
            params += [p for p in self.model.cond_stage_model.parameters() if p.requires_grad]
        return params

    # -- data ----------------------------------------------------------------------------------------------
    @property
    def rank_info(self) -> tuple[int, int]:
        t = self._trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def setup(self, stage: str) -> None:
        if self.source is not None:
            return
        cfg = self.cfg
        self.source = TaskSource(self.items, cfg.task)
        if self.class_items is not None:
            self.class_source = TaskSource(self.class_items, cfg.task)
        if cfg.data.source == "latents":
            from ..data.latents import check_first_stage

            check_first_stage(self.items, self.first_stage_sha256, cfg.first_stage_path)
            if not self.resuming:  # (a resumed run's weights are restored later; its start was checked)
                self._check_stored_contexts()
        if cfg.diffusion.cache_latents:
            self.source.cache(lambda x: self._raw_latents(x, None),
                              path=latent_cache_file(cfg, self.first_stage_sha256))
        self._init_scale_factor()

    def _init_scale_factor(self) -> None:
        given = self.cfg.diffusion.scale_factor
        if given is None and self.cfg.init_from is not None:  # the init weights' scale (a resume restores its own)
            given = float(self.model.scale_factor)
        if given is None:  # 1/σ̂ of the first global batch: identical on every rank and process layout
            std = self._first_global_batch_std()
            if not math.isfinite(std) or std <= 0:
                raise ConfigError(f"cannot estimate scale_factor: the first batch's latents have std {std} "
                                  "(a broken first stage?); set diffusion.scale_factor")
            given = 1.0 / std
        check_scale_factor(given, "scale_factor")
        self.model.scale_factor.fill_(given)  # exports write it into their config too (ldm_run.inference_model)

    def _first_global_batch_std(self) -> float:
        """σ̂ of the unscaled latents of the first global batch, stream positions ``0 .. batch_size · world_size - 1``
        (every rank's micro-batch 0, read here from the data source by each rank alike). Each image is encoded alone,
        so that the value does not depend on how the batch is split over processes."""
        (_, world), b, seed = self.rank_info, self.cfg.run.batch_size, self.cfg.run.seed
        windows = [StepWindow(self.source, seed, 0, 1, b, r, world) for r in range(world)]
        zs = []
        for item in (w[k] for w in windows for k in range(b)):
            if "latent_mean" in item:
                z = item["latent_mean"]
            elif "latent" in item:
                z = item["latent"]
            else:
                z = self._raw_latents(item["image"][None], None)
            zs.append(z.float().flatten())
        return float(torch.cat(zs).std())

    def train_dataloader(self) -> DataLoader:
        r, acc = self.cfg.run, self.cfg.optim.accumulate
        done = int(self.batches_seen)
        count = max(0, min(r.epoch_steps * acc, r.max_steps * acc - done))
        rank, world = self.rank_info
        window: StepWindow | PairedWindow = StepWindow(self.source, r.seed, done, count, r.batch_size, rank, world)
        if self.class_source is not None:  # its own order, at the same stream positions
            window = PairedWindow(window, StepWindow(self.class_source, seed_of(r.seed, "prior"), done, count,
                                                     r.batch_size, rank, world))
        workers = self.cfg.data.num_workers
        return DataLoader(window, batch_size=r.batch_size, shuffle=False, drop_last=True, num_workers=workers,
                          persistent_workers=False)

    # -- latents and conditions ------------------------------------------------------------------------------
    def draws(self, positions, purpose: str, stream: str = "") -> list[torch.Generator]:  # noqa: ANN001
        """One CPU generator per sample, seeded with ``seed_of(seed, purpose, p)`` (``purpose`` in ``DRAWS``, ``p`` the
        sample's stream position, ``positions`` a list or a (B,) tensor); a class sample of prior preservation
        (``stream="prior"``) with ``seed_of(seed, "prior", purpose, p)``."""
        assert purpose in DRAWS and stream in STREAMS, (purpose, stream)
        seed, tag = self.cfg.run.seed, (stream,) if stream else ()
        return [torch.Generator().manual_seed(seed_of(seed, *tag, purpose, int(p))) for p in positions]

    @torch.no_grad()
    def _raw_latents(self, x: torch.Tensor, g: list[torch.Generator] | None) -> torch.Tensor:
        """Images (B, 3, H, W) → unscaled latents (posterior mean, or a sample when ``g``, one generator per image, is
        given)."""
        return self.model.first_stage_latents(x.to(self.device), sample=g is not None, generator=g)

    def latents(self, batch: dict, positions, purpose: str = "posterior",  # noqa: ANN001
                stream: str = "") -> torch.Tensor:
        """The batch's scaled latents (B, C, h, w); with ``diffusion.sample_posterior``, sample i of the posterior drawn
        from ``draws``' generator of ``positions[i]``."""
        sample = self.cfg.diffusion.sample_posterior
        if "latent_mean" in batch:  # pre-encoded posterior (ldm data encode)
            z = batch["latent_mean"]
            if sample and "latent_logvar" in batch:
                std = torch.exp(0.5 * batch["latent_logvar"].float().clamp(-30.0, 20.0))
                z = z + std * randn(z.shape, self.draws(positions, purpose, stream)).to(z)
        elif "latent" in batch:
            z = batch["latent"]
        else:
            z = self._raw_latents(batch["image"], self.draws(positions, purpose, stream) if sample else None)
        return z.float() * self.model.scale_factor  # (B, C, h, w)

    def condition(self, batch: dict, z: torch.Tensor, positions,  # noqa: ANN001
                  stream: str = "") -> dict[str, torch.Tensor] | None:
        """The UNet's c_concat / c_crossattn / c_adm for this batch, with condition dropout applied (sample i dropped
        by a draw from ``draws``' generator of ``positions[i]``)."""
        task, b = self.cfg.task, z.shape[0]
        drop = torch.stack([torch.rand((), generator=g) for g in self.draws(positions, "dropout", stream)])
        drop = drop < self.cfg.diffusion.cond_drop_prob  # (B,)
        keep = (~drop).to(z.device, z.dtype).view(b, 1, 1, 1)
        cond_model, key = self.model.cond_stage_model, self.model.cfg.conditioning_key
        if task == "unconditional":
            return None
        if task == "class":
            null = null_class(self.model.cfg)  # None only when cond_drop_prob is 0 (check_task)
            labels = batch["class_label"] if null is None else torch.where(
                drop, torch.full_like(batch["class_label"], null), batch["class_label"])
            labels = labels.to(z.device)
            return {"c_adm": labels} if key == "adm" else {"c_crossattn": cond_model(labels)}
        if task in ("txt2img", "inpaint"):
            out: dict[str, torch.Tensor] = {}
            if task == "inpaint":
                m = batch["mask"].to(z)  # (B, 1, H, W), 1 = hole
                masked = self.latents({"latent": batch["masked_latent"]} if "masked_latent" in batch
                                      else {"image": batch["image"] * (1 - batch["mask"])}, positions,
                                      "masked_posterior", stream)
                out["c_concat"] = torch.cat([F.interpolate(m, size=z.shape[-2:]), masked], dim=1)
            if cond_model is not None and "context" in batch:  # stored by ldm data encode (frozen encoder)
                null = self._null_context().to(z.device, batch["context"].dtype)
                ctx = batch["context"].to(z.device)
                out["c_crossattn"] = torch.where(drop.to(z.device).view(b, 1, 1), null.expand_as(ctx), ctx)
            elif cond_model is not None:
                captions = ["" if d else c for c, d in zip(batch["caption"], drop.tolist())]
                out["c_crossattn"] = cond_model.encode(captions).to(z.device)
            return out
        if task == "layout":
            lay = batch["layout"].clone()
            lay[drop] = torch.tensor([-1.0, 0, 0, 0, 0])
            return {"c_crossattn": cond_model.encode(lay.to(z.device))}
        if task == "semantic":
            onehot = F.one_hot(batch["segmentation"].long(), segment_classes(self.cfg)).permute(0, 3, 1, 2).to(z)
            return {"c_concat": F.interpolate(onehot, size=z.shape[-2:], mode="area") * keep}
        if task == "superres":
            lo = batch["lowres"].to(z)
            if lo.shape[-2:] != z.shape[-2:]:
                lo = F.interpolate(lo, size=z.shape[-2:], mode="bicubic", align_corners=False)
            return {"c_concat": lo * keep}
        raise ConfigError(f"unknown task {task!r}")

    def _null_context(self) -> torch.Tensor:
        """(1, L, D): the frozen text encoder's context of the empty caption (condition dropout)."""
        if not hasattr(self, "_null_ctx"):
            with torch.no_grad():
                self._null_ctx = self.model.cond_stage_model.encode([""]).float()
        return self._null_ctx

    def _check_stored_contexts(self) -> None:
        """Stored caption contexts must come from this model's frozen text encoder, weights and all."""
        from .ldm_run import weights_digest

        stored = self.items.meta.get("text_encoder")
        if not stored or "caption" not in self.items.fields:
            return
        cond = self.model.cond_stage_model
        if self.cfg.diffusion.train_text_encoder:
            raise ConfigError(f"diffusion.train_text_encoder: true, but the latents in {self.items.root} store the "
                              "captions' text-encoder contexts (computed once by `ldm data encode --text-config`): "
                              "train from the images (or latents encoded without --text-config), or keep the text "
                              "encoder frozen")
        if cond is None or any(p.requires_grad for p in cond.parameters()) or \
                stored.get("weights_sha256") != weights_digest(cond):
            raise ConfigError(f"the latents in {self.items.root} store caption contexts of another text encoder "
                              f"({stored.get('kind')!r}, other weights) than this run's model.conditioner "
                              f"({self.cfg.model.conditioner.kind!r}); encode again with --text-config of this recipe,"
                              " or without --text-config")

    # -- the step ------------------------------------------------------------------------------------------
    def denoising_loss(self, batch: dict, stream: str = "") -> torch.Tensor:
        """The model's objective (``DenoisingLoss``) on one stream's samples, with their per-sample draws."""
        positions = batch["position"].tolist()  # the samples' stream positions (ldm_data.StepWindow)
        z = self.latents(batch, positions, stream=stream)  # x0: (B, C, h, w)
        cond = self.condition(batch, z, positions, stream)
        T, d = self.model.num_timesteps, self.cfg.diffusion
        t = torch.stack([torch.randint(0, T, (), generator=g) for g in self.draws(positions, "timestep", stream)])
        noise = torch.stack([self._noise(z.shape[1:], g, d.offset_noise)
                             for g in self.draws(positions, "noise", stream)])
        t, noise = t.to(z.device), noise.to(z)
        loss_fn = DenoisingLoss(self.model.parameterization, d.min_snr_gamma)
        return loss_fn(self.model.apply_model, z, noise, t, cond, self.model.alphas_cumprod)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        step = int(self.batches_seen)
        rank, _ = self.rank_info
        loss = self.denoising_loss(batch)
        if self.cfg.prior is not None:  # DreamBooth: instance loss + weight · class loss
            prior_loss = self.denoising_loss(batch["prior"], "prior")
            loss = loss + self.cfg.prior.loss_weight * prior_loss
        if not torch.isfinite(loss):
            where = (f"the last good checkpoint is {self.last_good[1]} (step {self.last_good[0]})"
                     if self.last_good else "no checkpoint was written before it")
            raise NonFiniteLossError(f"training loss is {loss.detach().item()} at step {self.optimizer_steps(step)} "
                                     f"(micro-batch {step}); training stopped, {where}")
        self.batches_seen += 1
        self._window.append(float(loss.detach()))  # the isfinite check above has synchronised already
        if self.log_sink is not None and rank == 0 and (step + 1) % self.cfg.run.log_every == 0:
            # loss: this micro-batch's; loss_mean: over the micro-batches since the previous row (less noisy)
            row = {"step": self.optimizer_steps(step + 1), "loss": self._window[-1],
                   "loss_mean": sum(self._window) / len(self._window), "lr": self.optimizers().param_groups[0]["lr"]}
            if self.cfg.prior is not None:  # this micro-batch's class loss (unweighted)
                row["prior_loss"] = float(prior_loss.detach())
            self.log_sink(row)
        if (step + 1) % self.cfg.run.log_every == 0:
            self._window = []
        return loss

    @staticmethod
    def _noise(shape: torch.Size, g: torch.Generator, offset: float) -> torch.Tensor:
        """One sample's ε (C, h, w), plus ``offset`` · N(0, 1) per channel (offset noise) drawn after it."""
        noise = torch.randn(shape, generator=g)
        return noise + offset * torch.randn(shape[0], 1, 1, generator=g) if offset else noise

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """A stop asked for inside a gradient accumulation (``run.max_minutes``' timer, another callback) waits for
        the accumulation's last micro-batch: stopping between them dropped the gradients gathered so far and left a
        checkpoint whose step count (micro-batches // accumulate) disagreed with the optimiser's. Runs after every
        callback's hook; ``should_stop`` is the same on all ranks, and so is ``batches_seen``."""
        inside = int(self.batches_seen) % self.cfg.optim.accumulate != 0
        if self.trainer.should_stop and inside:
            self._stop_deferred, self.trainer.should_stop = True, False
        elif self._stop_deferred and not inside:
            self._stop_deferred, self.trainer.should_stop = False, True

    def optimizer_steps(self, micro_batches: int) -> int:
        return micro_batches // self.cfg.optim.accumulate

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        optimizer.step(closure=optimizer_closure)
        self.model.model_ema.update(self.model.model)

    def configure_optimizers(self) -> dict:
        o = self.cfg.optim
        opt = torch.optim.AdamW(self.trainable_parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        warm = max(1, o.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ldm_train_config"] = self.cfg.to_dict()
        checkpoint["ldm_data_derived"] = self.data_derived()
        checkpoint["ldm_first_stage_sha256"] = self.first_stage_sha256

    def data_derived(self) -> dict:
        """What the model's config took from the data: class / category names and a word encoder's vocabulary."""
        return {"class_names": list(self.model.cfg.class_names), "words": list(self.model.cfg.conditioner.words)}

    @property
    def first_stage_sha256(self) -> str | None:
        """Fingerprint of ``first_stage_path`` as read at start (a resumed run must see the same file)."""
        if not hasattr(self, "_fs_sha"):
            self._fs_sha = file_sha256(self.cfg.first_stage_path) if self.cfg.first_stage_path else None
        return self._fs_sha


