"""What this machine's CPU offers the fast paths: its /proc/cpuinfo flags, native bf16 GEMMs, and whether oneDNN's
fp32 matmul is the better default (docs/performance.md, "Fast paths", has the measurements behind each rule)."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

# oneDNN's fused linear op (what Inductor emits for CPU linears), on x86-64 only
ONEDNN_LINEAR_AVAILABLE = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                           and platform.machine().lower() in ("x86_64", "amd64"))


def cpu_flags() -> tuple[str, set[str]]:
    """(CPU model name, its /proc/cpuinfo flags); ("", empty) where unreadable."""
    cpu: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for key, _, value in (line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines()):
            cpu.setdefault(key.strip(), value.strip())
    return cpu.get("model name", platform.processor()), set(cpu.get("flags", "").split())


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """bf16 GEMMs in hardware: AVX-512 BF16 or AMX-BF16 on a CPU (from /proc/cpuinfo), bf16 support on CUDA.
    Without them torch emulates bf16 GEMMs, several times slower than fp32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()[1])


def prefers_onednn(capability: str | None = None) -> bool:
    """Whether oneDNN's fp32 matmul is the default over MKL's: on AVX-512 CPUs (torch's CPU capability "AVX512"),
    where it won on the UNet's shapes; not on AVX2-only ones, where MKL won (nor on other architectures, where
    oneDNN without ACL can lose to the BLAS torch uses)."""
    cap = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    return cap.upper().startswith("AVX512")
