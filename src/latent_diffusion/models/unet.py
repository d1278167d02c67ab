"""The LDM / Stable Diffusion UNet (CompVis ``openaimodel.UNetModel`` layout and keys).

``input_blocks`` / ``middle_block`` / ``output_blocks`` / ``out``, ``time_embed`` and optional ``label_emb``;
called as CompVis calls it: ``unet(x, timesteps, context=None, y=None)``. Gradient checkpointing for training
(CompVis ``use_checkpoint``): ``cfg.use_checkpoint`` at build time, ``set_gradient_checkpointing`` at run time.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import UNetConfig
from .attention import AttentionBlock, BasicTransformerBlock, SpatialTransformer
from .resnet import Downsample, ResBlock, Upsample, normalization, timestep_embedding

# the blocks CompVis checkpoints (``use_checkpoint``): each recomputes its activations in backward when asked
CHECKPOINTED_BLOCKS = (ResBlock, BasicTransformerBlock, AttentionBlock)


def set_gradient_checkpointing(model: nn.Module, on: bool) -> int:
    """Switch gradient checkpointing of every ResBlock / BasicTransformerBlock / AttentionBlock in ``model`` (a
    UNet, or any module holding one) on or off at run time; returns how many blocks were set. Only training-mode
    calls with grad enabled checkpoint; the state dict and the results do not change. ``cfg.use_checkpoint`` is
    the build-time default and is left as it is."""
    blocks = [m for m in model.modules() if isinstance(m, CHECKPOINTED_BLOCKS)]
    for m in blocks:
        m.use_checkpoint = bool(on)
    return len(blocks)


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the timestep embedding to ResBlocks and the context to attention layers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, (SpatialTransformer, AttentionBlock)):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes is not None:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        def res(ch_in: int, ch_out: int, **kw) -> ResBlock:
            return ResBlock(ch_in, emb_dim, cfg.dropout, ch_out, use_scale_shift_norm=cfg.use_scale_shift_norm,
                            use_checkpoint=cfg.use_checkpoint, **kw)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skip_chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(self._attention(ch, upsample=False, level=level))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), self._attention(ch, upsample=False, level=None),
                                                   res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(self._attention(ch, upsample=True, level=level))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def _attention(self, ch: int, upsample: bool, level: int | None) -> nn.Module:
        """Heads / head width exactly as openaimodel derives them (including its ``legacy`` rule); ``level``: the
        channel_mult index (None: the middle block), for per-level ``disable_self_attn``."""
        cfg = self.cfg
        if cfg.num_head_channels == -1:
            num_heads, dim_head = cfg.num_heads, ch // cfg.num_heads
        else:
            num_heads, dim_head = ch // cfg.num_head_channels, cfg.num_head_channels
        if num_heads < 1 or ch % num_heads:
            raise ValueError(f"{ch} channels cannot be split into heads (num_heads={cfg.num_heads}, "
                             f"num_head_channels={cfg.num_head_channels})")
        if cfg.legacy:
            dim_head = ch // num_heads if cfg.use_spatial_transformer else cfg.num_head_channels
        if cfg.use_spatial_transformer:
            return SpatialTransformer(ch, num_heads, dim_head, cfg.transformer_depth, cfg.dropout, cfg.context_dim,
                                      cfg.self_attn_disabled(level), cfg.use_linear_in_transformer,
                                      cfg.spatial_pos_embed, cfg.use_checkpoint)
        heads = cfg.num_heads_upsample if upsample and cfg.num_heads_upsample != -1 else cfg.num_heads
        return AttentionBlock(ch, heads, dim_head, cfg.use_new_attention_order, cfg.use_checkpoint)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, in_channels, H, W); timesteps: (B,) or scalar; context: (B, M, context_dim); y: (B,) labels."""
        if (y is not None) != (self.cfg.num_classes is not None):
            raise ValueError("y (class labels) must be given if and only if the UNet was built with num_classes")
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(self.time_embed[0].weight.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)
