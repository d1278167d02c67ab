"""Fast paths applied to a built model: GEMM-lowered small convs, oneDNN Linears, channels_last, bf16 weight
storage, DeepCache and VAE tiling (``accelerate`` with ``AccelOptions``), the precision rule (``Precision``), and the
context a sampling run is wrapped in (``sampling_context``). models/ stays plain torch layers with the CompVis keys.
"""

from .cpu import native_bf16
from .options import AccelOptions, accelerate
from .precision import Precision, resolve_precision, warn_if_emulated
from .sampling import compiled, sampling_context
from .tiling import Tiling, set_vae_tiling

__all__ = ["AccelOptions", "Precision", "Tiling", "accelerate", "compiled", "native_bf16", "resolve_precision",
           "sampling_context", "set_vae_tiling", "warn_if_emulated"]
