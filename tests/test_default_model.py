"""The embedded default model: ldm demo, ldm txt2img without --ckpt, Pipeline.from_checkpoint() with no path."""

import pytest

from latent_diffusion.default_model import DEFAULT_MODEL

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="embedded default model not built yet")


def test_pipeline_uses_embedded_model_by_default():
    from latent_diffusion.pipelines.pipeline import Pipeline

    pipe = Pipeline.from_checkpoint()
    assert pipe.kind == "text"
    a = pipe.txt2img("a red circle above a blue square", steps=3, sampler="ddim", cfg_scale=3.0, height=64, width=64,
                     output="latent")
    b = pipe.txt2img("a red circle above a blue square", steps=3, sampler="ddim", cfg_scale=3.0, output="latent")
    assert a.shape == (1, pipe.latent_channels, 16, 16) and (a == b).all()  # default size: the trained 64
    assert pipe.text_size == 64 and Pipeline(pipe.model).text_size == 512  # an in-memory model: SD's 512


def test_demo_writes_grid_and_does_not_overwrite(tmp_path, capsys):
    from latent_diffusion.cli import main

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n", "2", "--steps", "3", "--prompt", "a red circle", "--quiet"]
    assert main(args) == 0
    assert (out / "grid.png").is_file() and len(list(out.glob("00-*.png"))) == 2
    assert str(out / "grid.png") in capsys.readouterr().out
    assert main(args) == 0  # a second demo goes next to the first
    assert (tmp_path / "demo-2" / "grid.png").is_file()


def test_txt2img_cli_without_ckpt(tmp_path):
    from PIL import Image

    from latent_diffusion.cli import main

    assert main(["txt2img", "--prompt", "a green star", "--steps", "2", "--seed", "1", "--out", str(tmp_path),
                 "--quiet"]) == 0
    (png,) = tmp_path.glob("*.png")
    assert Image.open(png).size == (64, 64)
