"""A tiny stage-2 training config (32 px ShapesWorld, random KL-f2 first stage, ~100 k-parameter UNet)."""

from __future__ import annotations

import copy

TINY: dict = {
    "task": "txt2img",
    "model": {
        "first_stage": "kl", "scale_factor": 1.0, "conditioning_key": "crossattn",
        "unet": {"in_channels": 3, "out_channels": 3, "model_channels": 32, "channel_mult": [1], "num_res_blocks": 1,
                 "attention_resolutions": [1], "num_heads": -1, "num_head_channels": 16,
                 "use_spatial_transformer": True, "context_dim": 16, "legacy": False},
        "autoencoder": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "resolution": 32,
                        "z_channels": 3, "double_z": True, "embed_dim": 3},
        "conditioner": {"kind": "bert", "width": 16, "layers": 1, "heads": 2, "max_length": 16},
    },
    "data": {"size": 32, "length": 64},
    "diffusion": {"ema_decay": 0.9},
    "optim": {"lr": 1e-3},
    "run": {"max_steps": 4, "batch_size": 2, "epoch_steps": 2, "log_every": 1, "num_threads": 1,
            "sample_every_epoch": False},
}


def tiny(**sections) -> dict:
    """A deep copy of TINY with ``section={...}`` merged in (``task=...`` replaces the task)."""
    d = copy.deepcopy(TINY)
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = _merge(d[k], v)
        else:
            d[k] = v
    return d


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out
