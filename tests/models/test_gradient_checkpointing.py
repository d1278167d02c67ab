"""Gradient checkpointing of the UNet (CompVis ``use_checkpoint``): exact, training-only, no key changes.

Non-reentrant ``torch.utils.checkpoint`` keeps the plain call's autograd graph and only recomputes the saved
activations (same inputs, RNG state and autocast state), so on CPU in fp32 the loss and every gradient are
bit-identical (tolerance 0), under bf16 autocast too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.utils.checkpoint
from torch import nn

from latent_diffusion.models.unet import UNetModel, set_gradient_checkpointing
from latent_diffusion.tiny import tiny_model
from latent_diffusion.yaml_compat import load_yaml_config

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _unet(family: str, dropout: float = 0.0) -> UNetModel:
    unet = tiny_model(family).model.diffusion_model  # zero-initialised layers randomised: every weight gets a gradient
    for m in unet.modules():
        if isinstance(m, nn.Dropout):
            m.p = dropout
    return unet.train()


def _inputs(unet: UNetModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(1)
    cfg = unet.cfg
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    t = torch.tensor([10, 700])
    ctx = torch.randn(2, 5, cfg.context_dim, generator=g) if cfg.context_dim else None
    return x, t, ctx


def _loss_and_grads(unet: UNetModel, on: bool, amp: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    set_gradient_checkpointing(unet, on)
    unet.zero_grad(set_to_none=True)
    x, t, ctx = _inputs(unet)
    torch.manual_seed(123)  # dropout draws
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = unet(x, t, context=ctx).float().square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in unet.named_parameters()}


@pytest.mark.parametrize("family,dropout", [("sd1", 0.0), ("uncond-vq", 0.0), ("sd1", 0.3)])
def test_checkpointed_backward_is_bit_identical_fp32(family: str, dropout: float) -> None:
    """SpatialTransformer UNet, AttentionBlock + up/down ResBlocks + FiLM UNet, and with dropout (the recompute
    replays the same dropout masks)."""
    unet = _unet(family, dropout)
    loss_plain, grads_plain = _loss_and_grads(unet, False)
    loss_ckpt, grads_ckpt = _loss_and_grads(unet, True)
    assert torch.equal(loss_plain, loss_ckpt)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name, g in grads_plain.items():
        assert g.abs().sum() > 0, name  # the comparison means something for every parameter
        assert torch.equal(g, grads_ckpt[name]), name


def test_checkpointed_backward_matches_under_bf16_autocast() -> None:
    unet = _unet("sd1")
    loss_plain, grads_plain = _loss_and_grads(unet, False, amp=True)
    loss_ckpt, grads_ckpt = _loss_and_grads(unet, True, amp=True)
    assert torch.equal(loss_plain, loss_ckpt)
    for name, g in grads_plain.items():
        assert torch.equal(g, grads_ckpt[name]), name


def test_checkpoint_runs_only_in_training_with_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eval and no-grad calls (all of inference) never go through checkpoint and give the same output."""
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    unet = _unet("sd1").eval()
    x, t, ctx = _inputs(unet)
    with torch.no_grad():
        plain = unet(x, t, context=ctx)
    assert set_gradient_checkpointing(unet, True) == 8 + 7  # ResBlocks + BasicTransformerBlocks
    with torch.no_grad():
        assert torch.equal(unet(x, t, context=ctx), plain)
        assert torch.equal(unet.train()(x, t, context=ctx), plain)  # training mode, but no grad
    assert torch.equal(unet.eval()(x, t, context=ctx).detach(), plain)  # grad on, eval mode
    assert calls == []
    unet.train()(x, t, context=ctx)
    assert calls and set(calls) == {False}  # non-reentrant


def test_state_dict_keys_unchanged_by_the_flag() -> None:
    cfg = tiny_model("sd1").cfg.unet
    plain = UNetModel(cfg)
    on = UNetModel(type(cfg)(**{**cfg.__dict__, "use_checkpoint": True}))
    assert all(m.use_checkpoint for m in on.modules() if hasattr(m, "use_checkpoint"))
    assert list(plain.state_dict()) == list(on.state_dict())
    set_gradient_checkpointing(plain, True)
    assert list(plain.state_dict()) == list(on.state_dict())


def test_sd_yaml_use_checkpoint_is_read() -> None:
    cfg = load_yaml_config(FIXTURES / "v1-inference.yaml").unet
    assert cfg.use_checkpoint is True
    with torch.device("meta"):
        unet = UNetModel(cfg)
    assert unet.input_blocks[1][0].use_checkpoint and unet.input_blocks[1][1].transformer_blocks[0].use_checkpoint


@pytest.mark.parametrize("section", [{"run": {"gradient_checkpointing": True}},
                                     {"model": {"unet": {"use_checkpoint": True}}}])
def test_training_config_turns_it_on(section: dict) -> None:
    from ldm_tiny_config import tiny

    from latent_diffusion.train.ldm import build_training_model
    from latent_diffusion.train.ldm_config import LDMTrainConfig

    unet = build_training_model(LDMTrainConfig.from_dict(tiny(**section))).model.diffusion_model
    flags = [m.use_checkpoint for m in unet.modules() if hasattr(m, "use_checkpoint")]
    assert flags and all(flags)
    plain = build_training_model(LDMTrainConfig.from_dict(tiny())).model.diffusion_model
    assert not any(m.use_checkpoint for m in plain.modules() if hasattr(m, "use_checkpoint"))
