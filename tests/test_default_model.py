"""The embedded default model: ldm demo, ldm txt2img without --ckpt, Pipeline.from_checkpoint() with no path."""

import pytest

from latent_diffusion.default_model import DEFAULT_MODEL

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="embedded default model not built yet")


def test_pipeline_uses_embedded_model_by_default():
    from latent_diffusion.pipelines.pipeline import Pipeline

    pipe = Pipeline.from_checkpoint()
    assert pipe.kind == "text"
    a = pipe.txt2img("a red circle above a blue square", steps=3, sampler="ddim", cfg_scale=3.0, height=64, width=64,
                     seed=0, output="latent")
    b = pipe.txt2img("a red circle above a blue square", steps=3, sampler="ddim", cfg_scale=3.0, seed=0,
                     output="latent")
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


def test_demo_sample_is_recreated_by_txt2img_from_png(tmp_path, capsys):
    """A demo PNG's parameters are true: `ldm txt2img --from-png` makes the identical image (sample 2 of a row: drawn
    in one batch with sample 1, which its Batch size / Batch pos say), and `ldm info` prints every demo PNG's."""
    import numpy as np
    from PIL import Image

    from latent_diffusion.cli import main
    from latent_diffusion.pipelines.metadata import read_png_parameters
    from latent_diffusion.safe_load import file_fingerprint

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "2", "--steps", "2", "--prompt", "a green star", "--quiet"]) == 0
    for png in sorted(out.glob("*.png")):
        capsys.readouterr()
        assert main(["info", str(png)]) == 0
        assert capsys.readouterr().out == read_png_parameters(png) + "\n"
    sample = out / "00-1-a_green_star.png"
    import torch

    from latent_diffusion.accel import Precision

    precision = Precision.resolve("auto", "cpu", torch.float32).name  # what "auto" means on this CPU
    assert read_png_parameters(sample) == (
        f"a green star\nSteps: 2, Sampler: ddim, CFG scale: 5.0, Precision: {precision}, Seed: 1, Size: 64x64, "
        f"Model hash: {file_fingerprint(DEFAULT_MODEL)}, Batch size: 2, Batch pos: 1")
    assert main(["txt2img", "--from-png", str(sample), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    (again,) = (tmp_path / "again").glob("*.png")
    assert (np.asarray(Image.open(again)) == np.asarray(Image.open(sample))).all()
    assert read_png_parameters(again) == read_png_parameters(sample)


def test_txt2img_cli_without_ckpt(tmp_path):
    from PIL import Image

    from latent_diffusion.cli import main

    assert main(["txt2img", "--prompt", "a green star", "--steps", "2", "--seed", "1", "--out", str(tmp_path),
                 "--quiet"]) == 0
    (png,) = tmp_path.glob("*.png")
    assert Image.open(png).size == (64, 64)
