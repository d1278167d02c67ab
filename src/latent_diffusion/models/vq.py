"""Vector-quantised first stage (CompVis ``VQModel`` / ``VectorQuantizer2``).

LDM trains diffusion on the *pre-quantisation* latents ``encode(x)`` and lets the decoder quantise
(``decode(h)`` snaps to the codebook first), so quantisation is absorbed into the decoder (paper, Sec. 3.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VQConfig
from .autoencoder import Decoder, Encoder


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation with β-commitment loss and a straight-through gradient.

    Key: ``embedding.weight`` (n_embed, embed_dim). Loss (the CompVis "legacy" form):
    ``‖sg[z_q] − z‖² + β‖z_q − sg[z]‖²``.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) → (B, h, w) codebook indices (distances in fp32)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        codebook = self.embedding.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2.0 * flat @ codebook.t()
        return dist.argmin(dim=1).view(b, h, w)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices → (B, D, h, w) codebook vectors."""
        return self.embedding(idx).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: (B, D, h, w) → (z_q with straight-through gradient, loss scalar, indices (B, h, w))."""
        if z.shape[1] != self.embed_dim:
            raise ValueError(f"VectorQuantizer expects {self.embed_dim} channels, got {z.shape[1]}")
        idx = self.indices(z)
        z_q = self.lookup(idx).to(z.dtype)
        loss = F.mse_loss(z_q.detach(), z) + self.beta * F.mse_loss(z_q, z.detach())
        z_q = z + (z_q - z).detach()
        return z_q, loss, idx


class VQModel(nn.Module):
    """``encode(x)`` → pre-quantisation latents (B, embed_dim, h, w); ``decode(h)`` quantises then decodes."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return self.cfg.downsample_factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))

    def decode_indices(self, idx: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize.lookup(idx)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x → (reconstruction, codebook loss, indices)."""
        quant, loss, idx = self.quantize(self.encode(x))
        return self.decoder(self.post_quant_conv(quant)), loss, idx
