"""accel/linear.py: the oneDNN Linear of fp32 CPU inference gives F.linear's numbers (≤ 1e-5 on outputs of
magnitude ~3; measured 5e-6), is taken only where no gradient is wanted, and leaves training to F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latent_diffusion.accel import accelerate
from latent_diffusion.accel import linear as lin
from latent_diffusion.accel.gemm_conv import conv2d_as_gemm
from latent_diffusion.bench.unet import TINY_UNET
from latent_diffusion.models.unet import UNetModel

needs_onednn = pytest.mark.skipif(not lin.AVAILABLE, reason="this torch has no oneDNN")


@pytest.fixture(autouse=True)
def onednn_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check the oneDNN path itself: on as on an AVX-512 CPU, whatever this machine prefers."""
    monkeypatch.setattr(lin, "PREFERRED", lin.AVAILABLE)


def test_onednn_is_the_default_on_avx512_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lin.prefers_onednn("AVX512") and not lin.prefers_onednn("AVX2") and not lin.prefers_onednn("DEFAULT")
    x, w, b = _data()
    monkeypatch.setattr(lin, "PREFERRED", False)  # an AVX2-only CPU: MKL unless asked
    with torch.inference_mode():
        assert not lin._takes_onednn(x, w, b)
        with lin.onednn_linear(True):
            assert lin._takes_onednn(x, w, b) == lin.AVAILABLE
        assert not lin._takes_onednn(x, w, b)  # unset again: the machine's default


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 37, 48, generator=g)
    w = torch.randn(40, 48, generator=g) / 7
    b = torch.randn(40, generator=g)
    return x, w, b


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", [False, True])
def test_onednn_linear_matches_f_linear(bias, gelu):
    x, w, b = _data()
    b = b if bias else None
    ref = F.linear(x, w, b)
    ref = F.gelu(ref) if gelu else ref
    with torch.inference_mode():
        assert lin._takes_onednn(x, w, b)
        out = lin.linear(x, w, b, gelu=gelu)
        out2d = lin.linear(x.reshape(-1, 48), w, b, gelu=gelu)
    assert out.shape == ref.shape and out2d.shape == (74, 40)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out2d, ref.reshape(-1, 40), rtol=0, atol=1e-5)


@needs_onednn
def test_onednn_path_only_without_gradients_in_fp32_on_cpu():
    x, w, b = _data()
    w.requires_grad_(True)
    with torch.no_grad():
        assert lin._takes_onednn(x, w, b)  # sampling: parameters want grad, but grad mode is off
        with lin.onednn_linear(False):
            assert not lin._takes_onednn(x, w, b)
        assert lin._takes_onednn(x, w, b)  # restored
        assert not lin._takes_onednn(x.bfloat16(), w.bfloat16(), b.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not lin._takes_onednn(x, w, b)  # autocast casts and calls oneDNN itself
    assert not lin._takes_onednn(x, w, b)  # training: the op has no autograd formula


def test_linear_layer_trains_like_nn_linear():
    """With grad on, ``Linear`` is F.linear: same output and gradients as ``nn.Linear`` (exact)."""
    torch.manual_seed(0)
    ours, ref = lin.OneDNNLinear(6, 5), torch.nn.Linear(6, 5)
    ref.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 6)
    out_ours, out_ref = ours(x), ref(x)
    torch.testing.assert_close(out_ours, out_ref, rtol=0, atol=0)
    out_ours.square().sum().backward()
    out_ref.square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=0)


@needs_onednn
def test_geglu_and_gemm_lowered_conv_on_onednn_match_plain_path():
    torch.manual_seed(0)
    geglu = lin.OneDNNGEGLU(16, 24)
    x = torch.randn(2, 9, 16)
    img = torch.randn(2, 12, 8, 8).contiguous(memory_format=torch.channels_last)
    w = torch.randn(20, 12, 3, 3) / 10
    with torch.inference_mode():
        with lin.onednn_linear(False):
            ref, ref_conv = geglu(x), conv2d_as_gemm(img, w, None, 1, 1)
        out, out_conv = geglu(x), conv2d_as_gemm(img, w, None, 1, 1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_conv, ref_conv, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_conv, F.conv2d(img, w, padding=1), rtol=0, atol=1e-5)


@needs_onednn
def test_unet_output_same_with_and_without_onednn_linear(monkeypatch):
    """The whole tiny UNet, inference: oneDNN Linear on vs off (measured ≤ 2e-6 on outputs of magnitude ~1), and the
    oneDNN path really taken by every transformer Linear and lowered conv."""
    taken = []
    original = lin._takes_onednn
    monkeypatch.setattr(lin, "_takes_onednn", lambda *a: taken.append(original(*a)) or taken[-1])
    unet = accelerate(UNetModel(TINY_UNET).eval())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
        t = torch.tensor([10.0, 700.0])
        with lin.onednn_linear(False):
            ref = unet(x, t, context=ctx)
        out = unet(x, t, context=ctx)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert len(taken) > 20 and all(taken[len(taken) // 2:])  # off: all False; on: all True


def test_frozen_weights_with_an_input_that_wants_grad_stay_on_f_linear():
    """Weights frozen, input requiring grad (e.g. guidance by gradient): F.linear, gradients as ``nn.Linear``'s."""
    torch.manual_seed(0)
    ours, ref = lin.OneDNNLinear(6, 5).requires_grad_(False), torch.nn.Linear(6, 5).requires_grad_(False)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, requires_grad=True)
    assert not lin._takes_onednn(x, ours.weight, ours.bias)
    g_ours = torch.autograd.grad(ours(x).square().sum(), x)[0]
    g_ref = torch.autograd.grad(ref(x).square().sum(), x)[0]
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=0)


@needs_onednn
def test_flop_count_sees_onednn_linears():
    """``ldm bench`` counts a oneDNN linear like the mm it replaces: same FLOPs per UNet call either way."""
    from latent_diffusion.bench.common import count_flops

    unet = accelerate(UNetModel(TINY_UNET).eval())
    x, ctx, t = torch.randn(2, 4, 8, 8), torch.randn(2, 7, 32), torch.tensor([1.0, 2.0])
    with torch.inference_mode():
        fast = count_flops(lambda: unet(x, t, context=ctx))
        with lin.onednn_linear(False):
            plain = count_flops(lambda: unet(x, t, context=ctx))
    assert fast == plain > 0
