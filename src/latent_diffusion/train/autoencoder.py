"""Stage 1: train a KL or VQ autoencoder with L1 + LPIPS + KL/codebook + a patch-GAN, on Lightning.

Manual optimisation with two Adam optimisers (β = (0.5, 0.9)): the autoencoder (+ the KL loss' log-variance) and
the discriminator (only stepped once ``step >= loss.disc_start``). Gradients are clipped by global norm per
optimiser. ``run.epoch_steps`` batches form an "epoch": after each one the held-out images are reconstructed
(PSNR, codebook use), a PNG grid is written and the resumable Lightning checkpoint and the exported
``.safetensors`` are replaced atomically. The data stream and the posterior noise are functions of the step, so a
resumed run continues bit-for-bit like an uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import time
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..autoencoder_io import build_autoencoder
from ..data.autoencoder_data import FixedDataset, StreamDataset, build_sources
from ..data.seeds import seed_of
from ..eval.image_metrics import codebook_stats, psnr
from ..losses.autoencoder_loss import build_autoencoder_loss
from ..models.vq import VQModel
from .autoencoder_config import AutoencoderTrainConfig


class AutoencoderModule(L.LightningModule):
    """``model`` (AutoencoderKL / VQModel, CompVis keys) + ``loss`` (LPIPS, discriminator, logvar)."""

    def __init__(self, cfg: AutoencoderTrainConfig) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.cfg = cfg
        torch.manual_seed(cfg.run.seed)  # weight init only; everything later uses explicit generators
        self.model = build_autoencoder(cfg.kind, cfg.model)
        self.loss = build_autoencoder_loss(cfg.kind, cfg.loss, cfg.model.in_channels)
        self.loss.discriminator.reset_parameters(torch.Generator().manual_seed(seed_of(cfg.run.seed, 11)))
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.train_source: Any = None
        self.val_set: FixedDataset | None = None
        self.log_sink: Any = None  # callable(dict) receiving each logged row
        self._t0 = time.perf_counter()

    # -- data --------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.train_source is None:
            train, held = build_sources(self.cfg.data)
            self.train_source = train
            self.val_set = FixedDataset(held, self.cfg.data.num_val, self.cfg.data.seed)

    def train_dataloader(self) -> DataLoader:
        r = self.cfg.run
        done = int(self.batches_seen)
        n = max(0, min(r.epoch_steps, r.max_steps - done))
        ds = StreamDataset(self.train_source, self.cfg.data.seed, start=done * r.batch_size, length=n * r.batch_size)
        return DataLoader(ds, batch_size=r.batch_size, shuffle=False, drop_last=True,
                          num_workers=self.cfg.data.num_workers)

    # -- optimisation ------------------------------------------------------------------------------------
    def autoencoder_parameters(self) -> list[torch.nn.Parameter]:
        params = list(self.model.parameters())
        if self.cfg.kind == "kl" and self.cfg.optim.learn_logvar:
            params.append(self.loss.logvar)
        return params

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        o = self.cfg.optim
        opt_ae = torch.optim.Adam(self.autoencoder_parameters(), lr=self.cfg.lr, betas=tuple(o.betas))
        opt_d = torch.optim.Adam(self.loss.discriminator.parameters(), lr=self.cfg.lr, betas=tuple(o.betas))
        return [opt_ae, opt_d]

    def last_layer(self) -> torch.Tensor:
        return self.model.decoder.conv_out.weight

    def reconstruct(self, x: torch.Tensor, step: int, sample: bool = True) -> tuple[torch.Tensor, Any, Any]:
        """x (B, 3, H, W) → (x̂ float32, posterior or codebook loss, VQ indices or None)."""
        if isinstance(self.model, VQModel):
            x_rec, q_loss, idx = self.model(x)
            return x_rec.float(), q_loss.float(), idx
        g = torch.Generator(device=x.device).manual_seed(seed_of(self.cfg.run.seed, 2, step))
        x_rec, posterior = self.model(x, sample_posterior=sample, generator=g)
        return x_rec.float(), posterior, None

    def _step_optimizer(self, opt: Any, step: int) -> None:
        if (step + 1) % self.cfg.optim.accumulate:
            return
        if self.cfg.optim.grad_clip is not None:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.optim.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        step = int(self.batches_seen)
        acc = self.cfg.optim.accumulate
        opt_ae, opt_d = self.optimizers()
        x = batch  # (B, 3, H, W) in [-1, 1]
        self.toggle_optimizer(opt_ae)
        x_rec, reg, idx = self.reconstruct(x, step)
        loss_ae, log = self.loss.generator_loss(x.float(), x_rec, reg, step, last_layer=self.last_layer())
        self.manual_backward(loss_ae / acc)
        self._step_optimizer(opt_ae, step)
        self.untoggle_optimizer(opt_ae)
        d_loss, d_log = self.loss.discriminator_loss(x.float(), x_rec.detach(), step)
        if d_loss is not None:
            self.toggle_optimizer(opt_d)
            self.manual_backward(d_loss / acc)
            self._step_optimizer(opt_d, step)
            self.untoggle_optimizer(opt_d)
        self.batches_seen += 1
        if step % self.cfg.run.log_every == 0 or step + 1 == self.cfg.run.max_steps:
            self._log_row(step, x, x_rec, idx, log | d_log)

    def _log_row(self, step: int, x: torch.Tensor, x_rec: torch.Tensor, idx: Any, terms: dict) -> None:
        row: dict[str, Any] = {"step": step, "lr": self.cfg.lr, "time_s": round(time.perf_counter() - self._t0, 2)}
        row |= {k: float(v) for k, v in terms.items()}
        row["psnr"] = float(psnr(x.detach(), x_rec.detach()).mean())
        if idx is not None:
            row |= codebook_stats(idx, self.cfg.model.n_embed)  # type: ignore[attr-defined]
        self.log_dict({k: row[k] for k in ("total", "rec", "psnr") if k in row}, prog_bar=True, on_step=True)
        if self.log_sink is not None:
            self.log_sink(row)

    # -- evaluation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_heldout(self) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """Deterministic reconstructions (posterior mode) of the held-out set → (metrics, inputs, outputs)."""
        assert self.val_set is not None
        was_training = self.model.training
        self.model.eval()
        xs = torch.stack([self.val_set[i] for i in range(len(self.val_set))]).to(self.device)
        outs, idxs = [], []
        for chunk in xs.split(self.cfg.run.batch_size):
            x_rec, _, idx = self.reconstruct(chunk, 0, sample=False)
            outs.append(x_rec.clamp(-1, 1))
            if idx is not None:
                idxs.append(idx)
        self.model.train(was_training)
        rec = torch.cat(outs)
        metrics = {"val_psnr": float(psnr(xs, rec).mean()), "val_l1": float((xs - rec).abs().mean())}
        if idxs:
            stats = codebook_stats(torch.cat(idxs), self.cfg.model.n_embed)  # type: ignore[attr-defined]
            metrics |= {f"val_{k}": v for k, v in stats.items()}
        return metrics, xs, rec

    # -- checkpoints -------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["autoencoder_train_config"] = json.loads(json.dumps(self.cfg.to_dict()))

    @torch.no_grad()
    def latent_scale_factor(self) -> float:
        """1 / std of the held-out latents (paper appendix G; posterior samples for KL, pre-quant for VQ)."""
        assert self.val_set is not None
        xs = torch.stack([self.val_set[i] for i in range(len(self.val_set))]).to(self.device)
        self.model.eval()
        if isinstance(self.model, VQModel):
            z = self.model.encode(xs)
        else:
            z = self.model.encode(xs).sample(torch.Generator().manual_seed(0))
        self.model.train()
        return float(1.0 / z.float().flatten().std())

