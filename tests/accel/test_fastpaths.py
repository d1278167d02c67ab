"""Fast paths agree with the plain path: VAE tiling / slicing, attention slicing, bf16 autocast, DeepCache; the
precision rule; the text encoder runs once per call and cond / uncond share one UNet batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latent_diffusion.accel import accelerate
from latent_diffusion.accel import precision
from latent_diffusion.accel.deepcache import DeepCacheUNet
from latent_diffusion.accel.tiling import Tiling, TiledAutoencoderKL, set_vae_tiling, tile_spans, tiled_apply
from latent_diffusion.config import AutoencoderConfig
from latent_diffusion.errors import ConfigError, LDMError
from latent_diffusion.models.attention import set_attention_slice
from latent_diffusion.models.autoencoder import AutoencoderKL
from latent_diffusion.pipelines import Pipeline
from latent_diffusion.tiny import tiny_model

KW = dict(steps=4, height=32, width=32, output="latent", seed=3)


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    cfg = AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=64)
    return accelerate(AutoencoderKL(cfg).eval())  # as a pipeline runs it


def smooth_latents(size: int, seed: int = 3) -> torch.Tensor:
    """Latents with image-like spatial correlation (random white noise is no decoder's input)."""
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)


# -- VAE tiling / slicing --------------------------------------------------------------------------------------
def test_tile_grid_covers_the_map_with_the_overlap() -> None:
    assert tile_spans(64, 32, 8) == [(0, 32), (24, 56), (48, 64)]  # SD 512²: the edge tile cut short, as diffusers
    assert tile_spans(32, 16, 6) == [(0, 16), (10, 26), (20, 32)] and tile_spans(16, 16, 4) == [(0, 16)]
    assert tile_spans(33, 32, 0) == [(0, 32), (17, 33)]  # no 1-latent sliver at the edge
    for size, tile, overlap in [(64, 32, 8), (70, 32, 8), (33, 8, 2), (128, 32, 8), (58, 32, 8), (100, 10, 9),
                                (33, 32, 0), (97, 16, 1)]:
        spans = tile_spans(size, tile, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(tile // 2 <= e - s <= tile for s, e in spans)
        assert all(a_end - b_start >= overlap for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
        assert all(b_start > a_start for (a_start, _), (b_start, _) in zip(spans, spans[1:]))


def test_blend_weights_are_a_partition_of_unity() -> None:
    """A pointwise map (nearest ×4 upsampling) tiled equals it untiled: the blend adds no error of its own."""
    x = torch.randn(2, 3, 20, 28)
    up = lambda t: F.interpolate(t, scale_factor=4.0, mode="nearest")  # noqa: E731
    torch.testing.assert_close(tiled_apply(up, x, Tiling(8, 3), step=1, scale=4), up(x), rtol=0, atol=1e-6)


def test_tiled_decode_agrees_away_from_seams(vae: AutoencoderKL) -> None:
    """Tolerance: tiles see their own GroupNorm statistics, so the output moves everywhere, most at the seams. On
    this random-weight decoder with tiles [0, 16), [10, 26), [20, 32) (measured: away from seams mean |Δ| =
    0.38·std(out), in the seams 0.55·std; 0.27 / 0.50 when the edge tile was moved back to full size) we require
    away from seams mean |Δ| < 0.45·std(out) and < 0.8× the seams' error; a single tile covering the map changes
    nothing. (Exact GroupNorm statistics across tiles are not implemented: docs/performance.md.)"""
    z = smooth_latents(32)
    with torch.no_grad():
        full = vae.decode(z)
        set_vae_tiling(vae, Tiling(32, 8))  # a single tile: untouched path
        assert torch.equal(vae.decode(z), full)
        set_vae_tiling(vae, Tiling(16, 6))
        tiled = vae.decode(z)
        set_vae_tiling(vae, None)
    diff = (tiled - full).abs()[0].mean(0)  # (128, 128)
    cover = torch.zeros(128, 128)
    for y0, y1 in tile_spans(32, 16, 6):
        for x0, x1 in tile_spans(32, 16, 6):
            cover[y0 * 4:y1 * 4, x0 * 4:x1 * 4] += 1
    alone, seams = diff[cover == 1].mean(), diff[cover > 1].mean()
    assert alone < 0.45 * full.std() and alone < 0.8 * seams


def test_tiled_encode_matches_in_shape_and_roughly_in_value(vae: AutoencoderKL) -> None:
    x = torch.tanh(smooth_latents(128)[:, :3])
    with torch.no_grad():
        plain = vae.encode(x).mean
        set_vae_tiling(vae, Tiling(16, 6))  # 64-pixel image tiles, 24 shared
        tiled = vae.encode(x).mean
        set_vae_tiling(vae, None)
    assert tiled.shape == plain.shape == (1, 4, 32, 32)
    assert (tiled - plain).abs().mean() < 0.4 * plain.std()  # GroupNorm statistics per tile, as for decode


def test_slicing_is_exact(vae: AutoencoderKL) -> None:
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = vae.decode(z)
        vae.enable_slicing()
        sliced = vae.decode(z)
        vae.enable_slicing(False)
    torch.testing.assert_close(sliced, plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tile,overlap", [(1, 0), (8, 8), (8, -1), (8.0, 2)])
def test_bad_tiling_is_a_clear_error(tile, overlap) -> None:
    with pytest.raises(ConfigError, match="tile|overlap"):
        Tiling(tile, overlap)


def test_pipeline_vae_tiling_swaps_the_first_stage_and_refuses_a_vq_one() -> None:
    pipe = Pipeline(tiny_model("sd1"), precision="fp32")
    pipe.enable_vae_tiling(16, 4)
    first_stage = pipe.model.first_stage_model
    assert isinstance(first_stage, TiledAutoencoderKL) and first_stage.tiling == Tiling(16, 4)
    assert pipe.fast.vae_tiling == Tiling(16, 4)
    pipe.set_fast_paths("fp32")  # the options say all: no tiling
    assert type(first_stage) is AutoencoderKL and not hasattr(first_stage, "tiling")
    with pytest.raises(LDMError, match="KL-autoencoder first stage; this model has VQModel"):
        Pipeline(tiny_model("uncond-vq"), precision="fp32", vae_tiling=True)


# -- attention slicing ----------------------------------------------------------------------------------------
def test_attention_slicing_agrees() -> None:
    model = tiny_model("sd1")
    unet = model.model.diffusion_model
    x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([300.0, 700.0]), torch.randn(2, 77, 32)
    with torch.no_grad():
        plain = unet(x, t, context=ctx)
        assert set_attention_slice(unet, 7) > 0
        sliced = unet(x, t, context=ctx)
        set_attention_slice(unet, None)
    torch.testing.assert_close(sliced, plain, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="positive integer"):
        set_attention_slice(unet, 0)


# -- precision --------------------------------------------------------------------------------------------------
def test_precision_rule(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_precision("auto", "cpu", torch.float32) == "bf16"
    assert precision.resolve_precision("fp32", "cpu", torch.float32) == "fp32"
    assert precision.resolve_precision("auto", "cpu", torch.bfloat16) == "fp32"  # weights already reduced
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve_precision("auto", "cpu", torch.float32) == "fp32"  # never fp16 on a CPU
    assert precision.resolve_precision("bf16", "cpu", torch.float32) == "bf16"
    with pytest.raises(ConfigError, match="fp16"):
        precision.resolve_precision("fp16", "cpu", torch.float32)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline(tiny_model("sd1"), precision="fp32")


def test_bf16_agrees_with_fp32(pipe: Pipeline) -> None:
    """bf16 autocast (8-bit mantissa) over 4 DPM++ steps: final latents within 5% relative RMS of fp32's."""
    plain = pipe.txt2img("a red square", **KW)
    pipe.set_fast_paths("bf16")
    try:
        low = pipe.txt2img("a red square", **KW)
    finally:
        pipe.set_fast_paths("fp32")
    assert low.dtype == torch.float32 and not torch.equal(low, plain)
    assert (low - plain).pow(2).mean().sqrt() < 0.05 * plain.pow(2).mean().sqrt()


# -- DeepCache -------------------------------------------------------------------------------------------------
def test_deepcache_reuse_is_exact_for_the_same_input_and_off_at_interval_one() -> None:
    unet = tiny_model("sd1").model.diffusion_model
    x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 32)
    with torch.no_grad():
        plain = unet(x, t, context=ctx)
        for branch in (0, 1, 2):
            dc = DeepCacheUNet(unet, interval=3, branch=branch)
            outs = [dc(x, t, context=ctx) for _ in range(3)]
            assert dc.full_calls == 1
            for out in outs:
                torch.testing.assert_close(out, plain, rtol=0, atol=1e-5)
        off = DeepCacheUNet(unet, interval=1)
        [off(x, t, context=ctx) for _ in range(3)]
        assert off.full_calls == 3
    with pytest.raises(ConfigError, match="interval"):
        DeepCacheUNet(unet, interval=0)
    with pytest.raises(ConfigError, match="branch"):
        DeepCacheUNet(unet, branch=99)


def test_deepcache_in_the_pipeline_is_close_and_restores_the_unet(pipe: Pipeline) -> None:
    unet = pipe.model.model.diffusion_model
    plain = pipe.txt2img("a red square", **KW)
    pipe.set_fast_paths("fp32", deepcache=2)
    try:
        cached = pipe.txt2img("a red square", **KW)
    finally:
        pipe.set_fast_paths("fp32")
    assert pipe.model.model.diffusion_model is unet
    rel = ((cached - plain).pow(2).mean().sqrt() / plain.pow(2).mean().sqrt()).item()
    assert 0 < rel < 0.25
    with pytest.raises(LDMError, match="deepcache"):
        pipe.set_fast_paths("fp32", deepcache=0)


# -- conditioning cost --------------------------------------------------------------------------------------------
def test_text_encoder_once_per_call_and_cond_uncond_in_one_batch(pipe: Pipeline, monkeypatch) -> None:
    encodes, batches = [], []
    cond_stage = pipe.model.cond_stage_model
    original_encode = cond_stage.encode
    monkeypatch.setattr(cond_stage, "encode", lambda texts: encodes.append(list(texts)) or original_encode(texts))
    unet = pipe.model.model.diffusion_model
    hook = unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        pipe.txt2img("a red square", "blurry", n=2, batch_size=1, cfg_scale=5.0, **KW)
    finally:
        hook.remove()
    assert encodes == [["a red square", "blurry"]]  # one encoder batch for prompt + negative, for both images
    assert batches == [2] * (2 * KW["steps"])  # each step: one UNet call on [uncond; cond]


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Once per switch to bf16 (autocast or bf16 weights), attributed to the caller's line, not the library's."""
    import warnings

    from latent_diffusion.checkpoint import save_checkpoint

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16.*emulated.*precision='fp32'"):
        Pipeline(tiny_model("sd1"), precision="bf16")
    path = save_checkpoint(tiny_model("sd1"), tmp_path / "sd1.safetensors")
    for kw in ({"precision": "bf16"}, {"dtype": torch.bfloat16}):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = Pipeline.from_checkpoint(path, **kw)
            pipe.set_fast_paths("bf16" if "precision" in kw else "auto", deepcache=2)  # no switch: no warning
        emulated = [w for w in caught if "no native bf16" in str(w.message)]
        assert len(emulated) == 1 and emulated[0].filename == __file__, (kw, emulated)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pipeline(tiny_model("sd1"), precision="bf16")
        Pipeline(tiny_model("sd1"), precision="fp32")


def test_a_load_resolves_and_applies_the_fast_paths_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """from_checkpoint resolves the precision once and applies every fast path (vae tiling included) in one
    ``set_fast_paths``, as the CLI loads."""
    from latent_diffusion.accel import Precision
    from latent_diffusion.checkpoint import save_checkpoint

    path = save_checkpoint(tiny_model("sd1"), tmp_path / "sd1.safetensors")
    calls = {"resolve": 0, "set_fast_paths": 0}
    resolve, set_fast_paths = Precision.resolve.__func__, Pipeline.set_fast_paths

    def counted_resolve(cls, *a, **k):  # noqa: ANN001, ANN202
        calls["resolve"] += 1
        return resolve(cls, *a, **k)

    def counted_set(self, *a, **k):  # noqa: ANN001, ANN202
        calls["set_fast_paths"] += 1
        return set_fast_paths(self, *a, **k)

    monkeypatch.setattr(Precision, "resolve", classmethod(counted_resolve))
    monkeypatch.setattr(Pipeline, "set_fast_paths", counted_set)
    pipe = Pipeline.from_checkpoint(path, precision="auto", deepcache=2, attention_slice=8, vae_tiling=True)
    assert calls == {"resolve": 1, "set_fast_paths": 1}
    assert pipe.fast.deepcache == 2 and pipe.fast.attention_slice == 8 and pipe.fast.vae_tiling == Tiling()
    assert isinstance(pipe.model.first_stage_model, TiledAutoencoderKL)
    with pytest.raises(LDMError, match="deepcache"):
        Pipeline.from_checkpoint(path, deepcache=0)  # refused before the file is read
