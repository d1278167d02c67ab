"""Exponential moving average of a module's parameters, stored under CompVis ``LitEma`` key names.

``model_ema.decay``, ``model_ema.num_updates`` and one buffer per parameter named with its dots removed
(``diffusion_model.input_blocks.0.0.weight`` → ``model_ema.diffusion_modelinput_blocks00weight``).
"""

from __future__ import annotations

import torch
from torch import nn


def shadow_name(name: str) -> str:
    """The buffer name LitEma keeps a parameter's average under: its dotted name with the dots removed."""
    return name.replace(".", "")


class LitEma(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_updates else -1, dtype=torch.int))
        self.names: dict[str, str] = {}  # parameter name -> buffer name
        for name, p in model.named_parameters():
            if p.requires_grad:
                flat = shadow_name(name)
                self.names[name] = flat
                self.register_buffer(flat, p.detach().clone())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow ← shadow − (1 − d)(shadow − θ), with d = min(decay, (1 + n) / (10 + n)) while counting updates."""
        decay = float(self.decay)
        if int(self.num_updates) >= 0:
            self.num_updates += 1
            n = int(self.num_updates)
            decay = min(decay, (1 + n) / (10 + n))
        buffers = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if name in self.names:
                shadow = buffers[self.names[name]]
                shadow.sub_((1.0 - decay) * (shadow - p.detach().to(shadow.dtype)))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model``'s parameters."""
        buffers = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if name in self.names:
                p.copy_(buffers[self.names[name]].to(p.dtype))
