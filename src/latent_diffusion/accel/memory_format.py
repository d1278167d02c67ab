"""NHWC (channels_last) for CPU inference of the UNet and the autoencoder's encoder and decoder.

On CPU oneDNN convolves NHWC without reordering activations to and from its blocked layout, the SpatialTransformers'
(B, HW, C) token view of an NHWC map is free, and the GEMM-lowered convs (gemm_conv.py) need NHWC input. Training
stays NCHW, where the NHWC convolution backward is the slower one; CUDA stays as it comes (its GroupNorm wants NCHW).
The wrappers below swap only ``forward``: parameters, buffers and state-dict keys are the wrapped model's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.autoencoder import Decoder, Encoder
from ..models.unet import UNetModel


def cpu_inference_format(module: nn.Module, x: torch.Tensor, probe: torch.Tensor) -> torch.memory_format:
    """The memory format ``module`` should run ``x`` in, with its conv weights switched to it: channels_last on CPU
    for inference, NCHW in training (``module.training`` with grad enabled), as it comes elsewhere. ``probe`` is one
    conv weight of ``module``: if it is not in the chosen format, every ``nn.Conv2d`` weight is switched in place
    (the same Parameters, so optimisers and state-dict keys are untouched; saving makes them contiguous), which also
    catches a layout change after loading."""
    if x.device.type != "cpu" or x.ndim != 4:
        return torch.contiguous_format
    fmt = torch.contiguous_format if module.training and torch.is_grad_enabled() else torch.channels_last
    if not probe.is_contiguous(memory_format=fmt):
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: training may follow sampling
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.data = m.weight.data.contiguous(memory_format=fmt)
    return fmt


def input_format(module: nn.Module, x: torch.Tensor) -> torch.memory_format:
    """The format ``module`` runs ``x`` in: ``cpu_inference_format`` for a wrapped module, else as it comes."""
    if isinstance(module, _ChannelsLast):
        return cpu_inference_format(module, x, module._probe())
    return torch.contiguous_format


class _ChannelsLast:
    """Mixin: ``forward(x, ...)`` runs the wrapped class's forward on ``x`` in ``cpu_inference_format`` and hands
    back an ordinary contiguous tensor."""

    def _probe(self) -> torch.Tensor:
        return self.conv_in.weight

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        fmt = cpu_inference_format(self, x, self._probe())
        return super().forward(x.contiguous(memory_format=fmt), *args, **kwargs).contiguous()


class ChannelsLastUNet(_ChannelsLast, UNetModel):
    def _probe(self) -> torch.Tensor:
        return self.input_blocks[0][0].weight


class ChannelsLastEncoder(_ChannelsLast, Encoder):
    pass


class ChannelsLastDecoder(_ChannelsLast, Decoder):
    pass


WRAPPERS = {UNetModel: ChannelsLastUNet, Encoder: ChannelsLastEncoder, Decoder: ChannelsLastDecoder}
