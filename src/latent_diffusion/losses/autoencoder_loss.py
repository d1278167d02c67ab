"""Stage-1 training losses (paper Sec. 3.1 / appendix G; numerics follow CompVis' ``contperceptual.py`` and
taming-transformers' ``vqperceptual.py``).

KL (``LPIPSWithDiscriminator``), per image then averaged over the batch::

    rec   = l1_weight·|x − x̂| + l2_weight·(x − x̂)² + perceptual_weight·LPIPS(x, x̂)     (per pixel; LPIPS broadcast)
    nll   = Σ_pixels rec / exp(logvar) + logvar                                         (learnable scalar logvar)
    L_G   = nll + kl_weight·KL(q(z|x) ‖ N(0, I)) + λ·disc_factor·(−E[D(x̂)])

VQ (``VQLPIPSWithDiscriminator``): ``nll = mean(rec)`` and ``codebook_weight·L_codebook`` (the quantiser's
``‖sg[z_q] − z‖² + β‖z_q − sg[z]‖²``, β = 0.25) replaces the KL term.

Adaptive GAN weight (Esser et al., taming): ``λ = ‖∇_w nll‖ / (‖∇_w L_GAN‖ + 1e-4)``, clamped to [0, 1e4] and
detached, times ``disc_weight``, where ``w`` is the decoder's last layer (``decoder.conv_out.weight``).
``disc_factor`` is 0 for steps < ``disc_start``: before that the discriminator is neither run nor trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..models.autoencoder import DiagonalGaussian
from .discriminator import D_LOSSES, NLayerDiscriminator, generator_loss
from .lpips import LPIPS

ADAPTIVE_EPS = 1e-4
ADAPTIVE_MAX = 1e4


@dataclass
class AutoencoderLossConfig:
    """Weights of the stage-1 loss. Defaults: the CompVis ``kl-f*`` / ``vq-f*`` configs."""

    disc_start: int = 50001  # steps before the GAN term switches on
    kl_weight: float = 1e-6  # KL only
    codebook_weight: float = 1.0  # VQ only
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual_weight: float = 1.0
    disc_factor: float = 1.0
    disc_weight: float = 1.0  # multiplies the adaptive λ (CompVis: 0.5 for kl-f8, 0.75 for vq-f4)
    disc_loss: str = "hinge"  # hinge | vanilla
    disc_num_layers: int = 3
    disc_ndf: int = 64
    disc_norm: str = "batch"  # batch | actnorm
    logvar_init: float = 0.0
    lpips_vgg_path: str | None = None  # torchvision VGG16 state dict (else $LDM_VGG16_WEIGHTS, else fallback)
    lpips_lin_path: str | None = None  # lpips vgg.pth heads (else $LDM_LPIPS_WEIGHTS, else fallback)

    def __post_init__(self) -> None:
        if self.disc_loss not in D_LOSSES:
            raise ValueError(f"disc_loss must be one of {sorted(D_LOSSES)}, got {self.disc_loss!r}")
        if self.disc_norm not in ("batch", "actnorm"):
            raise ValueError(f"disc_norm must be 'batch' or 'actnorm', got {self.disc_norm!r}")
        for name in ("kl_weight", "codebook_weight", "l1_weight", "l2_weight", "perceptual_weight", "disc_factor",
                     "disc_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.disc_start < 0:
            raise ValueError(f"disc_start must be >= 0, got {self.disc_start}")


def adopt_weight(weight: float, step: int, threshold: int) -> float:
    """``weight`` once ``step >= threshold``, else 0."""
    return weight if step >= threshold else 0.0


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """λ = ‖∇nll‖ / (‖∇g_loss‖ + 1e-4) at ``last_layer``, clamped to [0, 1e4], detached (a 0-dim tensor)."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    lam = g_nll.float().norm() / (g_gan.float().norm() + ADAPTIVE_EPS)
    return lam.clamp(0.0, ADAPTIVE_MAX).detach()


class _AutoencoderLoss(nn.Module):
    """Shared parts: pixel + perceptual reconstruction terms, the discriminator and its update."""

    def __init__(self, cfg: AutoencoderLossConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.cfg = cfg
        self.perceptual_loss = (LPIPS(cfg.lpips_vgg_path, cfg.lpips_lin_path) if cfg.perceptual_weight > 0
                                else None)
        self.discriminator = NLayerDiscriminator(in_channels, cfg.disc_ndf, cfg.disc_num_layers, cfg.disc_norm)
        self.disc_loss_fn = D_LOSSES[cfg.disc_loss]

    def gan_active(self, step: int) -> bool:
        return adopt_weight(self.cfg.disc_factor, step, self.cfg.disc_start) > 0

    def rec_map(self, x: torch.Tensor, x_rec: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pixel reconstruction loss (B, C, H, W) and its parts' means for logging."""
        diff = x.contiguous() - x_rec.contiguous()
        rec = self.cfg.l1_weight * diff.abs()
        log = {"l1": diff.abs().mean().detach()}
        if self.cfg.l2_weight > 0:
            rec = rec + self.cfg.l2_weight * diff.pow(2)
            log["l2"] = diff.pow(2).mean().detach()
        if self.perceptual_loss is not None:
            p = self.perceptual_loss(x.contiguous().float(), x_rec.contiguous().float())  # (B, 1, 1, 1)
            rec = rec + self.cfg.perceptual_weight * p
            log["lpips"] = p.mean().detach()
        return rec, log

    def gan_term(self, nll: torch.Tensor, x_rec: torch.Tensor, step: int, last_layer: torch.Tensor | None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """λ·disc_factor·(−E[D(x̂)]) — zero (and no discriminator run) before ``disc_start``."""
        factor = adopt_weight(self.cfg.disc_factor, step, self.cfg.disc_start)
        zero = nll.new_zeros(())
        if factor == 0:
            return zero, {"g_loss": zero.detach(), "d_weight": zero.detach(), "disc_factor": zero.detach()}
        g = generator_loss(self.discriminator(x_rec.contiguous()))
        if last_layer is not None and torch.is_grad_enabled():
            lam = adaptive_weight(nll, g, last_layer) * self.cfg.disc_weight
        else:  # evaluation: no gradients to balance
            lam = zero
        return lam * factor * g, {"g_loss": g.detach(), "d_weight": lam.detach(),
                                  "disc_factor": torch.tensor(factor)}

    def discriminator_loss(self, x: torch.Tensor, x_rec: torch.Tensor, step: int
                           ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """disc_factor·L_D(D(x), D(sg[x̂])); ``None`` before ``disc_start`` (nothing to train yet)."""
        factor = adopt_weight(self.cfg.disc_factor, step, self.cfg.disc_start)
        if factor == 0:
            return None, {}
        logits_real = self.discriminator(x.contiguous().detach())
        logits_fake = self.discriminator(x_rec.contiguous().detach())
        d = factor * self.disc_loss_fn(logits_real, logits_fake)
        return d, {"disc_loss": d.detach(), "logits_real": logits_real.detach().mean(),
                   "logits_fake": logits_fake.detach().mean()}


class LPIPSWithDiscriminator(_AutoencoderLoss):
    """The KL autoencoder's loss (CompVis ``ldm.modules.losses.LPIPSWithDiscriminator``)."""

    def __init__(self, cfg: AutoencoderLossConfig, in_channels: int = 3) -> None:
        super().__init__(cfg, in_channels)
        self.logvar = nn.Parameter(torch.tensor(float(cfg.logvar_init)))

    def generator_loss(self, x: torch.Tensor, x_rec: torch.Tensor, posterior: DiagonalGaussian, step: int,
                       last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Autoencoder objective for the current batch; x, x_rec: (B, C, H, W) in [-1, 1]."""
        rec, log = self.rec_map(x, x_rec)
        b = x.shape[0]
        nll = (rec / torch.exp(self.logvar) + self.logvar).sum() / b
        kl = posterior.kl().sum() / b
        gan, gan_log = self.gan_term(nll, x_rec, step, last_layer)
        total = nll + self.cfg.kl_weight * kl + gan
        return total, log | gan_log | {"total": total.detach(), "nll": nll.detach(), "kl": kl.detach(),
                                       "rec": rec.detach().mean(), "logvar": self.logvar.detach()}


class VQLPIPSWithDiscriminator(_AutoencoderLoss):
    """The VQ autoencoder's loss (taming ``VQLPIPSWithDiscriminator``)."""

    def generator_loss(self, x: torch.Tensor, x_rec: torch.Tensor, codebook_loss: torch.Tensor, step: int,
                       last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec, log = self.rec_map(x, x_rec)
        nll = rec.mean()
        gan, gan_log = self.gan_term(nll, x_rec, step, last_layer)
        q = codebook_loss.mean()
        total = nll + gan + self.cfg.codebook_weight * q
        return total, log | gan_log | {"total": total.detach(), "nll": nll.detach(), "codebook": q.detach(),
                                       "rec": nll.detach()}


def build_autoencoder_loss(kind: str, cfg: AutoencoderLossConfig, in_channels: int = 3) -> _AutoencoderLoss:
    if kind == "kl":
        return LPIPSWithDiscriminator(cfg, in_channels)
    if kind == "vq":
        return VQLPIPSWithDiscriminator(cfg, in_channels)
    raise ValueError(f"autoencoder kind must be 'kl' or 'vq', got {kind!r}")


def lpips_paths_from_env() -> dict[str, str | None]:
    """Where LPIPS would look for weights right now (for reports)."""
    from .lpips import LIN_ENV, VGG_ENV

    return {"vgg": os.environ.get(VGG_ENV), "lin": os.environ.get(LIN_ENV)}
