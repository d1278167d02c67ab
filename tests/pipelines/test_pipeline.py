"""Pipelines on tiny random models: shapes, seeds, batch invariance, img2img / inpaint semantics, input checks."""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion.errors import LDMError, NonFiniteError
from latent_diffusion.models.ldm import LatentDiffusion
from latent_diffusion.pipelines import Pipeline
from latent_diffusion.pipelines.images import pil_to_tensor
from latent_diffusion.tiny import tiny_config, tiny_model

KW = dict(steps=3, height=32, width=32)


@pytest.fixture(scope="module")
def sd1() -> Pipeline:
    return Pipeline(tiny_model("sd1"), precision="fp32")


@pytest.fixture(scope="module")
def image(sd1: Pipeline) -> Image.Image:
    return sd1.txt2img("a cat", seed=5, sampler="ddim", cfg_scale=1.0, **KW)[0]


def _mask() -> Image.Image:
    m = Image.new("L", (32, 32), 0)
    m.paste(255, (0, 0, 16, 16))  # repaint the top-left quarter
    return m


def test_txt2img_gives_n_images_of_the_size_and_is_deterministic(sd1: Pipeline) -> None:
    a = sd1.txt2img("a cat", "blurry", sampler="euler_a", cfg_scale=5.0, seed=3, n=2, **KW)
    b = sd1.txt2img("a cat", "blurry", sampler="euler_a", cfg_scale=5.0, seed=3, n=2, **KW)
    assert len(a) == 2 and all(im.size == (32, 32) and im.mode == "RGB" for im in a)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m"])  # ancestral: per-sample noise at every step too
def test_batch_invariance(sd1: Pipeline, sampler: str) -> None:
    """Image i of a batch of 4 with seed s = the single run with seed s + i, to 1e-5 of the latents' scale (a random
    ε-model leaves |z| ≈ 50; batched and single GEMMs round differently in float32, ~3e-6 relative)."""
    kw = dict(sampler=sampler, cfg_scale=4.0, output="latent", **KW)
    batch = sd1.txt2img("a cat", seed=10, n=4, **kw)
    one_by_one = sd1.txt2img("a cat", seed=10, n=4, batch_size=1, **kw)
    for i in range(4):
        single = sd1.txt2img("a cat", seed=10 + i, n=1, **kw)
        assert (batch[i:i + 1] - single).abs().max() <= 1e-5 * max(1.0, single.abs().max().item())
        assert torch.equal(one_by_one[i:i + 1], single)  # batch_size=1 runs exactly the single-image computation


def test_batch_size_splits_a_call_without_changing_it(sd1: Pipeline) -> None:
    kw = dict(sampler="ddim", cfg_scale=3.0, seed=4, n=3, output="latent", **KW)
    whole, split = sd1.txt2img("a cat", **kw), sd1.txt2img("a cat", batch_size=2, **kw)
    assert split.shape == whole.shape == (3, 4, 16, 16)
    assert (split - whole).abs().max() <= 1e-5 * max(1.0, whole.abs().max().item())
    with pytest.raises(LDMError, match="batch_size must be a positive integer or None"):
        sd1.txt2img("a cat", batch_size=0, **kw)


def test_inpaint_blending_in_batches_of_one(sd1: Pipeline, image: Image.Image) -> None:
    kw = dict(sampler="euler", steps=3, seed=2, n=2, cfg_scale=3.0, output="latent")
    whole = sd1.inpaint(image, _mask(), "a dog", **kw)
    split = sd1.inpaint(image, _mask(), "a dog", batch_size=1, **kw)
    assert (split - whole).abs().max() <= 1e-5 * max(1.0, whole.abs().max().item())


def test_img2img_strength_zero_is_the_vae_round_trip(sd1: Pipeline, image: Image.Image) -> None:
    out = sd1.img2img(image, "a dog", strength=0.0, steps=4)[0]
    with torch.no_grad():
        z = sd1.model.encode_first_stage(pil_to_tensor(image))
        ref = sd1._decode(z, "pil")[0]
    assert np.array_equal(np.asarray(out), np.asarray(ref))


def test_img2img_runs_and_differs_from_the_input(sd1: Pipeline, image: Image.Image) -> None:
    """Strength 0 keeps the input's latents exactly; more strength moves them further (a random tiny model: every
    seed's distance at 0.2 < 0.5 < 0.9, measured 0.30 / 1.0 / 4.5 mean abs against |z0| ≈ 0.04); seeds differ."""
    out = sd1.img2img(image, "a dog", strength=0.6, steps=4, seed=1, n=2)
    assert len(out) == 2 and out[0].size == image.size
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))
    z0 = sd1.model.encode_first_stage(pil_to_tensor(image))
    kw = dict(steps=10, seed=1, n=3, output="latent", sampler="ddim", cfg_scale=1.0)
    moved = [(sd1.img2img(image, "a dog", strength=s, **kw) - z0).abs().mean(dim=(1, 2, 3))
             for s in (0, 0.2, 0.5, 0.9)]
    assert torch.equal(moved[0], torch.zeros(3))
    assert (moved[1] > 0.1).all() and all(bool((b > 2 * a).all()) for a, b in zip(moved[1:], moved[2:]))


@pytest.mark.parametrize("sampler", ["ddim", "euler_a", "dpmpp_2m"])
def test_inpaint_keeps_unmasked_latents_exactly(sd1: Pipeline, image: Image.Image, sampler: str) -> None:
    z = sd1.inpaint(image, _mask(), "a dog", sampler=sampler, steps=3, seed=2, n=2, cfg_scale=3.0, output="latent")
    z0 = sd1.model.encode_first_stage(pil_to_tensor(image))
    keep = torch.ones_like(z0, dtype=torch.bool)
    keep[..., :8, :8] = False  # f = 2: the 16×16 pixel square is 8×8 latents
    assert torch.equal(z[:, keep[0]], z0.expand(2, -1, -1, -1)[:, keep[0]])
    assert not torch.allclose(z[:, ~keep[0]], z0.expand(2, -1, -1, -1)[:, ~keep[0]])


def test_inpaint_with_a_9_channel_model_runs() -> None:
    pipe = Pipeline(tiny_model("sd1-inpaint"), precision="fp32")
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    out = pipe.inpaint(src, _mask(), "a dog", steps=3, n=2, cfg_scale=2.0)
    assert len(out) == 2 and out[0].size == (32, 32)
    assert len(pipe.txt2img("a dog", **KW)) == 1  # whole-image mask


def test_inpaint_blend_latents_on_a_9_channel_model_keeps_unmasked_latents(sd1: Pipeline) -> None:
    """A 9-channel model alone redraws the unmasked part; with blend_latents=True it keeps it exactly (in latents).
    Ordinary models cannot turn blending off: it is all that keeps their unmasked part."""
    pipe = Pipeline(tiny_model("sd1-inpaint"), precision="fp32")
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    z0 = pipe.model.encode_first_stage(pil_to_tensor(src))
    keep = torch.ones_like(z0[0], dtype=torch.bool)
    keep[..., :8, :8] = False  # f = 2: the 16×16 pixel square is 8×8 latents
    kw = {"steps": 3, "seed": 1, "cfg_scale": 2.0, "output": "latent"}
    plain = pipe.inpaint(src, _mask(), "a dog", **kw)
    blended = pipe.inpaint(src, _mask(), "a dog", blend_latents=True, **kw)
    assert torch.equal(blended[:, keep], z0[:, keep])
    assert not torch.allclose(plain[:, keep], z0[:, keep], atol=1e-3)
    assert torch.equal(pipe.inpaint(src, _mask(), "a dog", blend_latents=False, **kw), plain)
    with pytest.raises(LDMError, match="blend_latents=False is for 9-channel"):
        sd1.inpaint(src, _mask(), "a dog", steps=2, blend_latents=False)


def test_class_and_unconditional_sampling() -> None:
    c = Pipeline(tiny_model("class"), precision="fp32")
    assert [im.size for im in c.sample(3, n=2, steps=3, height=32, width=32)] == [(32, 32)] * 2
    with pytest.raises(LDMError, match="no 'no class' label"):  # 10 classes: nothing to guide against
        c.sample(3, n=1, steps=3, cfg_scale=2.0, height=32, width=32)
    u = Pipeline(tiny_model("uncond-vq"), precision="fp32")
    assert len(u.sample(n=2, steps=3, height=32, width=32)) == 2


def test_upscale_concat_model_runs() -> None:
    base = tiny_config("uncond-vq")
    cfg = dataclasses.replace(base, conditioning_key="concat",
                              unet=dataclasses.replace(base.unet, in_channels=base.unet.out_channels + 3))
    torch.manual_seed(0)
    pipe = Pipeline(LatentDiffusion(cfg).eval(), precision="fp32")
    low = Image.new("RGB", (16, 16), (200, 30, 30))
    out = pipe.upscale(low, steps=2)
    assert out[0].size == (32, 32)


def test_upscale_strength_starts_from_the_bicubic_upsample() -> None:
    """strength < 1 (SDEdit from the bicubic upsample): the fewer steps run, the closer the result stays to the
    upsample's latents; strength 1 is the default pure-noise start; out-of-range strengths are clear errors."""
    base = tiny_config("uncond-vq")
    cfg = dataclasses.replace(base, conditioning_key="concat",
                              unet=dataclasses.replace(base.unet, in_channels=base.unet.out_channels + 3))
    torch.manual_seed(0)
    pipe = Pipeline(LatentDiffusion(cfg).eval(), precision="fp32")
    low = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    up = torch.nn.functional.interpolate(pil_to_tensor(low), size=(32, 32), mode="bicubic",
                                         align_corners=False).clamp(-1, 1)
    with torch.no_grad():
        z_up = pipe.model.encode_first_stage(up)
    dist = {s: (pipe.upscale(low, steps=10, strength=s, seed=0, output="latent") - z_up).norm().item()
            for s in (0.2, 0.6, 1.0)}
    assert dist[0.2] < dist[0.6] < dist[1.0]
    default = pipe.upscale(low, steps=3, seed=0, output="latent")
    assert torch.equal(default, pipe.upscale(low, steps=3, seed=0, strength=1.0, output="latent"))
    for bad in (0.0, 1.5, "half"):
        with pytest.raises(LDMError, match="strength must be in"):
            pipe.upscale(low, steps=3, strength=bad)


# -- bad input -------------------------------------------------------------------------------------
def test_size_not_a_multiple_is_an_error(sd1: Pipeline) -> None:
    with pytest.raises(LDMError, match="multiples of 4"):
        sd1.txt2img("x", steps=2, height=30, width=32)


def test_nonpositive_steps_is_an_error(sd1: Pipeline) -> None:
    with pytest.raises(LDMError, match="steps"):
        sd1.txt2img("x", steps=0, height=32, width=32)


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_out_of_range_is_an_error(sd1: Pipeline, image: Image.Image, strength: float) -> None:
    with pytest.raises(LDMError, match="strength"):
        sd1.img2img(image, "x", strength=strength, steps=2)


def test_negative_cfg_is_an_error(sd1: Pipeline) -> None:
    with pytest.raises(LDMError, match="cfg_scale"):
        sd1.txt2img("x", cfg_scale=-1.0, **KW)


def test_nonpositive_n_is_an_error(sd1: Pipeline) -> None:
    with pytest.raises(LDMError, match="n \\(number"):
        sd1.txt2img("x", n=0, **KW)


def test_wrong_task_names_the_family() -> None:
    with pytest.raises(LDMError, match="class-conditional"):
        Pipeline(tiny_model("class"), precision="fp32").txt2img("x", **KW)
    with pytest.raises(LDMError, match="Stable Diffusion 1.x"):
        Pipeline(tiny_model("sd1"), precision="fp32").sample(1, steps=2)


def test_long_prompt_warns_with_the_dropped_count(sd1: Pipeline) -> None:
    with pytest.warns(UserWarning, match="80 tokens.*last 5 tokens were dropped"):
        sd1.txt2img(" ".join(["cat"] * 80), steps=1, height=32, width=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sd1.check_prompt("a short prompt") == 0


def test_inpaint_blending_with_a_v_model_keeps_unmasked_latents() -> None:
    pipe = Pipeline(tiny_model("sd2"), precision="fp32")
    src = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    z = pipe.inpaint(src, _mask(), "x", sampler="euler", steps=3, cfg_scale=1.0, output="latent")
    z0 = pipe.model.encode_first_stage(pil_to_tensor(src))
    assert torch.equal(z[..., 8:, :], z0[..., 8:, :]) and torch.equal(z[..., :8, 8:], z0[..., :8, 8:])


def test_callback_sees_every_step(sd1: Pipeline) -> None:
    seen: list[int] = []
    sd1.txt2img("x", sampler="ddim", callback=lambda i, x, x0: seen.append(i), **KW)
    assert seen == [0, 1, 2]


def test_mask_of_another_size_is_an_error(sd1: Pipeline, image: Image.Image) -> None:
    with pytest.raises(LDMError, match="mask size"):
        sd1.inpaint(image, Image.new("L", (16, 16)), "x", steps=2)


def test_9_channel_concat_is_mask_then_masked_image_latents() -> None:
    """CompVis hybrid: UNet input = cat([x, c_concat]); diffusers: cat([latents, mask, masked_image_latents])."""
    pipe = Pipeline(tiny_model("sd1-inpaint"), precision="fp32")
    src = pil_to_tensor(Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16, :16] = 1.0
    cat = pipe._inpaint_concat(src, mask, 16, 16)
    assert cat.shape == (1, 5, 16, 16)
    assert torch.equal(cat[:, :1], mask[..., ::2, ::2])
    torch.testing.assert_close(cat[:, 1:], pipe.model.encode_first_stage(src * (mask < 0.5)))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "I;16", "P"])
def test_init_images_of_other_modes_are_converted(sd1: Pipeline, image: Image.Image, mode: str) -> None:
    rgb = np.asarray(image)
    if mode == "I;16":  # 16-bit grayscale: scaled from 0..65535 to 0..255
        src = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    else:
        src = image.convert(mode)
    with pytest.warns(UserWarning, match=f"converted a {re.escape(mode)} image to RGB"):
        out = sd1.img2img(src, "a dog", strength=0.5, steps=2, seed=1)
    assert out[0].size == image.size and out[0].mode == "RGB"


def test_conversions_of_init_images() -> None:
    from latent_diffusion.pipelines.images import load_image

    transparent = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    with pytest.warns(UserWarning):
        assert load_image(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited on white
        assert load_image(half).getpixel((0, 0)) == (127, 127, 127)
        assert load_image(deep).getpixel((0, 0)) == (255, 255, 255)
        assert load_image(Image.new("L", (8, 8), 77)).getpixel((0, 0)) == (77, 77, 77)


def test_unknown_sampler_at_the_pipeline_lists_the_valid_ones(sd1: Pipeline) -> None:
    with pytest.raises(LDMError, match="unknown sampler 'k_nope'; accepted: ddpm, ddim, plms, euler, euler_a"):
        sd1.txt2img("x", sampler="k_nope", **KW)
    with pytest.raises(LDMError, match="A1111's sampler 'LMS' is not one of ours.*accepted: ddpm"):
        sd1.txt2img("x", sampler="k_lms", **KW)


def test_more_steps_than_the_model_has_timesteps_is_an_error(sd1: Pipeline) -> None:
    with pytest.raises(LDMError, match=r"steps must be an integer in \[1, 1000\].*got 1001"):
        sd1.txt2img("x", steps=1001, height=32, width=32)


def test_nan_latents_stop_sampling_and_name_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = Pipeline(tiny_model("sd1"), precision="fp32")
    calls = []

    def poisoned(x, t, cond=None):
        calls.append(1)
        out = LatentDiffusion.apply_model(pipe.model, x, t, cond)
        return out * float("nan") if len(calls) == 2 else out

    monkeypatch.setattr(pipe.model, "apply_model", poisoned)
    with pytest.raises(NonFiniteError,
                       match=r"dpmpp_2m: NaN/Inf in the latents after step 2/3 .*float32.*the UNet.s output was not"):
        pipe.txt2img("x", sampler="dpmpp_2m", **KW)


def test_inpaint_paste_back_keeps_every_pixel_outside_the_mask(sd1: Pipeline, image: Image.Image) -> None:
    mask = _mask()
    out = sd1.inpaint(image, mask, "a cat", steps=2, cfg_scale=1.0, paste_back=True)[0]
    a, b = np.asarray(out), np.asarray(image)
    outside = np.asarray(mask.convert("L")) < 128
    assert (a[outside] == b[outside]).all() and (a[~outside] != b[~outside]).any()
    with pytest.raises(LDMError, match="paste_back"):
        sd1.inpaint(image, mask, "a cat", steps=2, paste_back=True, output="latent")
