"""``conditioner.layout_boxes = "fourier"``: one grounding token per object (class embedding + Fourier box code).

Checked: the sequence layout ([CLS] objects [SEP] [PAD]..), absent objects are [PAD] with no box term (so the
dropout layout is the all-[PAD] sequence), nearby boxes get nearer codes than far ones, gradients reach
``box_proj``, the layout pipeline runs on it and save / load keeps it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from latent_diffusion.checkpoint import load_checkpoint, save_checkpoint
from latent_diffusion.config import ConditionerConfig
from latent_diffusion.errors import ConfigError
from latent_diffusion.models.conditioners import build_conditioner
from latent_diffusion.models.ldm import LatentDiffusion
from latent_diffusion.models.text_encoder import CLS, PAD, SEP, FourierLayoutEmbedder, box_fourier_features
from latent_diffusion.pipelines import Pipeline
from latent_diffusion.tiny import tiny_config

CFG = ConditionerConfig(kind="layout", width=16, layers=1, heads=2, max_length=6, layout_classes=40,
                        layout_boxes="fourier")


def layout(*objects: tuple[float, ...], n: int = 3) -> torch.Tensor:
    rows = torch.zeros(1, n, 5)
    rows[..., 0] = -1
    for i, o in enumerate(objects):
        rows[0, i] = torch.tensor(o)
    return rows


def test_fourier_features_values() -> None:
    f = box_fourier_features(torch.tensor([[0.25, 0.5, 0.75, 1.0]]), n_freq=2)  # (1, 16)
    assert f.shape == (1, 16)
    # coordinate 0: [sin(π·0.25), sin(2π·0.25), cos(π·0.25), cos(2π·0.25)]
    want = torch.tensor([math.sin(math.pi / 4), 1.0, math.cos(math.pi / 4), 0.0])
    torch.testing.assert_close(f[0, :4], want, rtol=0, atol=1e-6)


def test_sequence_padding_dropout_and_locality() -> None:
    torch.manual_seed(0)
    enc = build_conditioner(CFG)
    assert isinstance(enc, FourierLayoutEmbedder)
    seen = {}
    real = enc.transformer.forward

    def spy(tokens, extra=None):
        seen["tokens"], seen["extra"] = tokens, extra
        return real(tokens, extra)

    enc.transformer.forward = spy
    with torch.no_grad():
        a = enc.encode(layout((11, 0.1, 0.1, 0.4, 0.4), (4, 0.5, 0.5, 0.9, 0.9)))
        assert a.shape == (1, 6, 16)
        assert seen["tokens"].tolist() == [[CLS, 11 + 4, 4 + 4, PAD, PAD, SEP]]
        assert seen["extra"][0, 3:].abs().max() == 0 and seen["extra"][0, 1:3].abs().min() > 0
        empty = enc.encode(layout())
        assert seen["tokens"].tolist() == [[CLS, PAD, PAD, PAD, PAD, SEP]] and seen["extra"].abs().max() == 0
        base = enc.encode(layout((11, 0.1, 0.1, 0.4, 0.4)))
        near = enc.encode(layout((11, 0.12, 0.1, 0.42, 0.4)))
        far = enc.encode(layout((11, 0.6, 0.6, 0.9, 0.9)))
    assert (base - near).norm() < 0.5 * (base - far).norm()
    assert (base - empty).norm() > 0
    with torch.no_grad():  # padding rows, wherever they are and whatever they hold, change nothing
        torch.testing.assert_close(enc.encode(layout((11, 0.1, 0.1, 0.4, 0.4), n=9)), base)
        shuffled = layout((-1, float("nan"), 0, 0, 0), (11, 0.1, 0.1, 0.4, 0.4), n=6)
        torch.testing.assert_close(enc.encode(shuffled), base)
    with pytest.raises(ConfigError, match="layout of 5 objects needs max_length >= 7"):
        enc.encode(layout(*[(1, 0.1, 0.1, 0.2, 0.2)] * 5, n=5))


def test_reduced_precision_weights() -> None:
    """bf16 weights (load_checkpoint(dtype=...)): the Fourier phases stay float32, the projection runs in bf16."""
    torch.manual_seed(0)
    enc = build_conditioner(CFG)
    lay = layout((11, 0.1, 0.1, 0.4, 0.4), (4, 0.5, 0.5, 0.9, 0.9))
    with torch.no_grad():
        ref = enc.encode(lay)
        low = enc.to(torch.bfloat16).encode(lay)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0, atol=0.1)  # bf16 through 1 layer + LayerNorm


def test_gradients_reach_the_box_projection() -> None:
    torch.manual_seed(0)
    enc = build_conditioner(CFG)
    enc.encode(layout((3, 0.2, 0.3, 0.5, 0.6))).square().sum().backward()
    assert enc.box_proj.weight.grad is not None and enc.box_proj.weight.grad.abs().sum() > 0


def test_layout_pipeline_and_save_load(tmp_path) -> None:
    cfg = tiny_config("layout")
    cfg = dataclasses.replace(cfg, conditioner=dataclasses.replace(cfg.conditioner, layout_boxes="fourier",
                                                                   max_length=5))
    torch.manual_seed(0)
    model = LatentDiffusion(cfg).eval()
    path = save_checkpoint(model, tmp_path / "layout.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.cfg.conditioner.layout_boxes == "fourier"
    assert "cond_stage_model.box_proj.weight" in loaded.state_dict()
    pipe = Pipeline(loaded, precision="fp32")
    out = pipe.layout2img([("red circle", 0.1, 0.1, 0.5, 0.5)], n=1, steps=2, cfg_scale=2.0, height=32, width=32)
    assert out[0].size == (32, 32)
    with pytest.raises(ValueError, match="layout_boxes must be"):
        ConditionerConfig(kind="layout", layout_boxes="grid")
