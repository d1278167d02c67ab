"""The UNet's precision state: which ``Precision`` a request means for a model whose GEMM weights may be stored in
bf16, reading the fp32 weights back from the checkpoint file when it leaves bf16, and the one warning when it
switches to emulated bf16."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..accel import AccelOptions, Precision, warn_if_emulated
from ..accel.gemm_storage import gemm_parameters, stored_dtype
from ..errors import LDMError


def stores_bf16(unet: torch.nn.Module) -> bool:
    """Whether ``unet`` stores its Linear / Conv weights in bf16 (``accel/gemm_storage.py``)."""
    return stored_dtype(unet) == torch.bfloat16


def resolve_precision(precision: str | Precision, unet: torch.nn.Module, device: torch.device,
                      dtype: torch.dtype) -> Precision:
    """``precision`` as given when already resolved; "auto" or "bf16" on a bf16-stored UNet stays bf16 (stored); else
    ``Precision.resolve`` for the device and load dtype."""
    if isinstance(precision, Precision):
        return precision
    if stores_bf16(unet) and precision in ("auto", "bf16"):
        return Precision("bf16", stored_bf16=True)
    return Precision.resolve(precision, device, dtype)


def switch_unet(unet: torch.nn.Module, precision: Precision, was: AccelOptions | None, device: torch.device,
                dtype: torch.dtype, checkpoint_path: str | os.PathLike | None,
                load_args: dict[str, Any] | None) -> None:
    """Ready ``unet`` to run at ``precision`` (the options before: ``was``): a bf16-stored UNet leaving bf16 gets
    its fp32 weights back from the file (``restore_fp32_unet``); a switch to bf16 GEMMs warns, once, where bf16
    is emulated."""
    if stores_bf16(unet) and not precision.autocast:
        restore_fp32_unet(unet, checkpoint_path, load_args)
    bf16_gemms = precision.autocast or dtype == torch.bfloat16
    if bf16_gemms and not (was is not None and (was.precision.autocast or dtype == torch.bfloat16)):
        warn_if_emulated(device)  # once per switch to bf16, not on every call


def restore_fp32_unet(unet: torch.nn.Module, checkpoint_path: str | os.PathLike | None,
                      load_args: dict[str, Any] | None) -> None:
    """From bf16 storage back to fp32: the UNet's GEMM weights read from the checkpoint file (one tensor at a
    time, onto each parameter's device), into the same Parameters, if the stored ones still match the file."""
    from ..checkpoint import unet_file_key
    from ..safe_load import read_state_dict

    if load_args is None or checkpoint_path is None:
        raise LDMError("cannot switch to fp32: this model's UNet stores its Linear / Conv weights in bf16 "
                       "(load_checkpoint(unet_dtypes=...) or a bf16 pipeline's model), so it runs under bf16 "
                       "autocast only; use precision='bf16', or load the checkpoint again for fp32")
    path = os.fspath(checkpoint_path)
    stored = {n: p for n, p in gemm_parameters(unet).items() if p.dtype == torch.bfloat16}
    key = {n: unet_file_key(n, load_args["use_ema"]) for n in stored}
    try:
        sd, _ = read_state_dict(path)  # .safetensors: memory-mapped, each tensor read when used
    except (LDMError, OSError) as exc:
        raise LDMError(f"cannot switch to fp32: reading the UNet's fp32 weights back from {path} failed: "
                       f"{exc}") from exc
    fresh = {n: sd[k] for n, k in key.items() if k in sd}
    changed = [n for n, p in stored.items()
               if n not in fresh or not torch.equal(p, fresh[n].to(p.device, torch.float32).to(p.dtype))]
    if changed:
        raise LDMError(f"cannot switch to fp32: this pipeline stores its UNet's GEMM weights in bf16 (loaded "
                       f"for bf16), and {len(changed)} of them no longer match {path} (e.g. {changed[0]}), so "
                       "reading the file back would lose them; load the pipeline with "
                       "from_checkpoint(..., precision='fp32') for fp32 sampling")
    with torch.no_grad():
        for n, p in stored.items():
            p.data = fresh[n].to(p.device, torch.float32, copy=True)  # not a view of the mapped file
