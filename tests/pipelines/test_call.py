"""``pipe(...)`` (pipelines/call.py): the task picked from the model and inputs, diffusers' parameter names, random
seeds reported back, parameters on every image, ``.to``; on tiny random models (exact comparisons: same process,
same seeds, same batch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion.checkpoint import save_checkpoint
from latent_diffusion.cli import main
from latent_diffusion.errors import LDMError
from latent_diffusion.pipelines import Pipeline
from latent_diffusion.pipelines.metadata import parse_parameters, read_png_parameters
from latent_diffusion.pipelines.output import PipelineOutput
from latent_diffusion.tiny import tiny_model

KW = dict(steps=2, height=32, width=32, sampler="ddim")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tiny_model("sd1"), tmp_path_factory.mktemp("call") / "sd1.safetensors")


@pytest.fixture(scope="module")
def sd1(ckpt: Path) -> Pipeline:
    return Pipeline.from_checkpoint(ckpt, precision="fp32")


def _same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_call_is_txt2img_with_parameters_and_reports_a_random_seed(sd1: Pipeline) -> None:
    out = sd1("a cat", "blurry", cfg_scale=3.0, n=2, **KW)
    assert isinstance(out, PipelineOutput) and len(out.images) == 2 and out.latents is None
    s0 = out.seeds[0]
    assert out.seeds == [s0, s0 + 1] and 0 <= s0 < 2**31
    prompt, negative, s = parse_parameters(out.images[1].info["parameters"])
    assert (prompt, negative, s["Seed"], s["Steps"], s["Sampler"]) == ("a cat", "blurry", str(s0 + 1), "2", "ddim")
    assert s["Model hash"] == sd1.model_hash and s["Batch size"] == "2" and s["Batch pos"] == "1"
    again = sd1.txt2img("a cat", "blurry", cfg_scale=3.0, n=2, seed=s0, **KW)  # the reported seed re-creates it
    assert all(_same(a, b) for a, b in zip(out.images, again))
    assert sd1("a cat", **KW).seeds != sd1("a cat", **KW).seeds  # random each call (2**31 values)


def test_diffusers_names_mean_the_same(sd1: Pipeline) -> None:
    ours = sd1("a cat", steps=2, cfg_scale=4.0, n=2, seed=7, height=32, width=32, sampler="ddim")
    theirs = sd1("a cat", num_inference_steps=2, guidance_scale=4.0, num_images_per_prompt=2,
                 generator=torch.Generator().manual_seed(7), height=32, width=32, sampler="ddim")
    assert theirs.seeds == [7, 8] and all(_same(a, b) for a, b in zip(ours.images, theirs.images))
    listed = sd1("a cat", generator=[torch.Generator().manual_seed(s) for s in (7, 8)], cfg_scale=4.0, n=2, **KW)
    assert all(_same(a, b) for a, b in zip(ours.images, listed.images))
    with pytest.raises(LDMError, match="give steps or num_inference_steps, not both"):
        sd1("a cat", steps=2, num_inference_steps=2)
    used = torch.Generator().manual_seed(7)
    torch.randn(1, generator=used)  # its state is no longer the one seed 7 starts from
    with pytest.raises(LDMError, match="already drawn random numbers"):
        sd1("a cat", generator=used, **KW)
    with pytest.raises(LDMError, match="consecutive seeds"):
        sd1("a cat", generator=[torch.Generator().manual_seed(s) for s in (7, 9)], n=2, **KW)


def test_the_inputs_pick_the_task(sd1: Pipeline) -> None:
    init = sd1.txt2img("a cat", seed=1, **KW)[0]
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 16))
    i2i = sd1("a dog", image=init, strength=0.5, seed=2, steps=4, sampler="ddim")
    assert _same(i2i.images[0], sd1.img2img(init, "a dog", strength=0.5, seed=2, steps=4, sampler="ddim")[0])
    assert "Denoising strength: 0.5" in i2i.images[0].info["parameters"]
    inp = sd1("a dog", image=init, mask_image=mask, seed=2, steps=2, sampler="ddim")
    assert _same(inp.images[0], sd1.inpaint(init, mask, "a dog", seed=2, steps=2, sampler="ddim")[0])
    with pytest.raises(LDMError, match="inpainting needs the image"):
        sd1("a dog", mask_image=mask)
    with pytest.raises(LDMError, match="takes no class_label"):
        sd1("a dog", class_label=3, **KW)
    classes = Pipeline(tiny_model("class"), precision="fp32")
    out = classes(class_label=3, seed=4, steps=2, height=32, width=32)
    assert _same(out.images[0], classes.sample(3, seed=4, steps=2, height=32, width=32)[0])
    assert "Class label: 3" in out.images[0].info["parameters"]
    with pytest.raises(LDMError, match="takes no prompt"):
        classes("a cat", class_label=3)


def test_latents_on_request_decode_to_the_images(sd1: Pipeline) -> None:
    out = sd1("a cat", seed=3, return_latents=True, **KW)
    f = sd1.latent_factor
    assert out.latents.shape == (1, sd1.latent_channels, 32 // f, 32 // f)
    assert _same(out.images[0], sd1._decode(out.latents, "pil")[0])


def test_the_cli_and_the_api_make_the_same_image_and_parameters(sd1: Pipeline, ckpt: Path, tmp_path: Path) -> None:
    assert main(["txt2img", "--ckpt", str(ckpt), "--prompt", "a cat", "--seed", "9", "--steps", "2", "--sampler",
                 "ddim", "--height", "32", "--width", "32", "--cfg", "2", "--out", str(tmp_path), "--quiet",
                 "--precision", "fp32"]) == 0
    [png] = tmp_path.glob("*.png")
    api = sd1("a cat", seed=9, cfg_scale=2.0, **KW).images[0]
    with Image.open(png) as im:
        assert _same(api, im.convert("RGB"))
    assert read_png_parameters(png) == api.info["parameters"]


def test_to_moves_and_casts_and_gives_bf16_storage_its_fp32_weights_back(ckpt: Path) -> None:
    stored = Pipeline.from_checkpoint(ckpt, precision="bf16")  # UNet GEMM weights held in bf16
    autocast = Pipeline.from_checkpoint(ckpt, precision="fp32")
    autocast.set_fast_paths("bf16")  # autocast over fp32 weights: the same numbers as the stored bf16
    kw = dict(seed=5, output="latent", **KW)
    assert torch.equal(stored.txt2img("a cat", **kw), autocast.txt2img("a cat", **kw))
    assert stored.to("cpu") is stored and stored.precision.stored_bf16
    stored.to(dtype=torch.float32)  # the fp32 weights back from the file, then bf16 autocast as asked
    unet = stored.model.model.diffusion_model
    assert all(p.dtype == torch.float32 for p in unet.parameters()) and not stored.precision.stored_bf16
    assert stored.precision.name == "bf16" and torch.equal(stored.txt2img("a cat", **kw),
                                                           autocast.txt2img("a cat", **kw))
    fp64 = Pipeline.from_checkpoint(ckpt, precision="fp32").to(dtype=torch.float64)
    assert next(fp64.model.parameters()).dtype == torch.float64
    assert fp64.txt2img("a cat", **kw).dtype == torch.float64


def test_inputs_that_do_not_fit_are_clear_errors(sd1: Pipeline) -> None:
    init = sd1.txt2img("a cat", seed=1, **KW)[0]
    with pytest.raises(LDMError, match="give mask or mask_image, not both"):
        sd1("a dog", image=init, mask=init, mask_image=init, **KW)
    with pytest.raises(LDMError, match="one per image: 3 generators for 2"):
        sd1("a dog", generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)], n=2, **KW)
    inpainting = Pipeline(tiny_model("sd1-inpaint"), precision="fp32")
    with pytest.raises(LDMError, match="pass mask_image= with image="):
        inpainting("a dog", image=init, **KW)
    with pytest.raises(LDMError, match="seed must be"):
        sd1.img2img(init, "a dog", strength=0.0, seed=-2, steps=2)
    with pytest.raises(LDMError, match="batch_size must be a positive integer"):
        sd1.img2img(init, "a dog", strength=0.0, seed=2, steps=2, batch_size=0)
