"""The first-stage autoencoder of LDM (CompVis ``ldm.modules.diffusionmodules.model`` + ``AutoencoderKL``).

Encoder / Decoder keys: ``conv_in``, ``down.{i}.block.{j}`` / ``down.{i}.attn.{j}`` / ``down.{i}.downsample``,
``mid.block_1`` / ``mid.attn_1`` / ``mid.block_2``, ``up.{i}...``, ``norm_out``, ``conv_out``. Any f = 2^m:
``len(ch_mult) - 1`` down/upsamplings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AutoencoderConfig


def Normalize(channels: int) -> nn.GroupNorm:  # noqa: N802 - the CompVis name
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with 1×1 conv ``q``, ``k``, ``v``, ``proj_out``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = Normalize(channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        # (B, 1, HW, C) tokens: a free view of an NHWC map (the CPU inference layout), one copy of an NCHW one
        q, k, v = (t.permute(0, 2, 3, 1).reshape(b, 1, h * w, c) for t in (self.q(hn), self.k(hn), self.v(hn)))
        out = F.scaled_dot_product_attention(q, k, v).reshape(b, h, w, c).permute(0, 3, 1, 2)  # NHWC memory
        if not x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous()
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Asymmetric pad (right/bottom by one), then a stride-2 3×3 conv — as CompVis does."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (AttnBlocks), optional ``downsample``/``upsample``."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, ch: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, dropout)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResnetBlock(ch, ch, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """(B, in_channels, H, W) → (B, 2·z_channels or z_channels, H/f, W/f)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1, *cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            level, block_in, block_out = _Level(), cfg.ch * in_mult[i], cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(block_in, cfg.dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) → (B, out_ch, h·f, w·f)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, cfg.dropout)
        up: list[_Level] = []
        for i in reversed(range(n)):
            level, block_out = _Level(), cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """Posterior N(mean, diag(exp(logvar))) from the encoder's (B, 2C, h, w) moments; logvar clamped to [-30, 20]."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                            device=generator.device if generator is not None else self.mean.device)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over C, h, w: (B,)."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder: ``encode(x) -> DiagonalGaussian``, ``decode(z) -> x``; x in [-1, 1]."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        if not cfg.double_z:
            raise ValueError("AutoencoderKL needs double_z=True (the encoder outputs mean and log-variance)")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.slicing = False  # enable_slicing(): one image of a batch at a time

    @property
    def downsample_factor(self) -> int:
        return self.cfg.downsample_factor

    def enable_slicing(self, enabled: bool = True) -> None:
        """Run a batch through the encoder / decoder one image at a time (same result, less peak memory)."""
        self.slicing = enabled

    def _sliced(self, fn, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - tensor -> tensor
        if self.slicing and x.shape[0] > 1:
            return torch.cat([fn(x[i:i + 1]) for i in range(x.shape[0])])
        return fn(x)

    # _moments / _decode: one slice's maps, (B, 3, H, W) -> (B, 2·embed_dim, H/f, W/f) and back; accel's
    # TiledAutoencoderKL runs them tile by tile
    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self._sliced(self._moments, x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._sliced(self._decode, z)

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior
