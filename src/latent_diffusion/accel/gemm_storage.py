"""The weights of a module's GEMM layers (Linear, Conv1d, Conv2d), stored in another dtype.

Under ``torch.autocast(device, torch.bfloat16)`` linear and convolution ops cast their fp32 weight and bias to bf16
(round to nearest even) and compute in bf16; nothing else reads them. Stored in bf16 beforehand, the same ops get
the same operands — the outputs are bit-identical — while the weights take half the memory and no cast copy is
made or cached. Norms and embeddings, which autocast runs in fp32, are left alone. A module stored this way runs
under autocast only (outside it, its ops would see mixed dtypes).
"""

from __future__ import annotations

import torch
from torch import nn

GEMM_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d)  # and their fast-path subclasses (linear.py, gemm_conv.py)


def gemm_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The weights and biases of ``module``'s Linear / Conv1d / Conv2d layers, by ``named_parameters`` name."""
    out = {}
    for prefix, m in module.named_modules():
        if isinstance(m, GEMM_MODULES):
            for name, p in m.named_parameters(recurse=False):
                out[f"{prefix}.{name}" if prefix else name] = p
    return out


def gemm_dtypes(module: nn.Module, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """{name: ``dtype``} for ``module``'s GEMM weights and biases: what ``load_checkpoint(unet_dtypes=...)`` keeps
    in ``dtype`` as it reads the UNet (``functools.partial(gemm_dtypes, dtype=torch.bfloat16)``)."""
    return dict.fromkeys(gemm_parameters(module), dtype)


def store_gemm_weights(module: nn.Module, dtype: torch.dtype) -> list[str]:
    """Cast ``module``'s GEMM weights and biases (``gemm_parameters``) to ``dtype`` in place — the same Parameter
    objects, new data, memory format kept — and return the names of those converted. Under autocast to ``dtype``
    the module computes exactly what it did before (fp16 weights: as fp32, which holds them exactly); outside
    autocast it cannot run (mixed dtypes)."""
    done = []
    with torch.no_grad():
        for name, p in gemm_parameters(module).items():
            if p.dtype != dtype:
                p.data = p.data.to(dtype)
                done.append(name)
    return done


def base_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter outside its GEMM layers (norms, embeddings): the
    dtype it was loaded in, whether or not its GEMM weights are stored in another."""
    gemm = {id(p) for p in gemm_parameters(module).values()}
    rest = [p for p in module.parameters() if p.is_floating_point() and id(p) not in gemm]
    return (rest or list(module.parameters()))[0].dtype


def stored_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype ``module``'s GEMM weights are stored in when it is not ``base_dtype`` (``store_gemm_weights``),
    else None."""
    stored = {p.dtype for p in gemm_parameters(module).values()}
    if len(stored) == 1 and (dtype := stored.pop()) != base_dtype(module):
        return dtype
    return None
