"""The embedded class-conditional MNIST model (trained on real digits through the image-folder path): it loads with
its class names, the independent digit judge reads its samples as the digits asked for, and `ldm demo --task mnist`
draws one row per digit."""

from __future__ import annotations

from PIL import Image

from latent_diffusion.default_model import task_model_path
from latent_diffusion.pipelines.pipeline import Pipeline


def test_embedded_mnist_model_draws_the_asked_digits() -> None:
    import numpy as np
    import torch

    from latent_diffusion.eval.digits import digit_predictions, load_digit_judge
    from latent_diffusion.eval.mnist_eval import digit_labels

    pipe = Pipeline.from_checkpoint(task_model_path("mnist"))
    assert pipe.cfg.class_names == tuple(str(d) for d in range(10)) and pipe.kind == "class"
    images, truth = [], []
    for digit, label in enumerate(digit_labels(pipe)):  # 2 samples per digit (docs/results.md: 50, `ldm eval mnist`)
        images += [np.asarray(im.convert("L")) for im in pipe.sample(label, n=2, seed=100, steps=20, cfg_scale=3.0)]
        truth += [digit] * 2
    x = torch.from_numpy(np.stack(images)).float().div(127.5).sub(1)[:, None].expand(-1, 3, -1, -1)
    accuracy = float((digit_predictions(load_digit_judge(), x) == torch.tensor(truth)).double().mean())
    # the full evaluation measures ~100 % at CFG 3; 20 samples at >= 90 % fail only if the model is broken
    assert accuracy >= 0.9, accuracy


def test_mnist_demo_writes_one_row_per_digit(tmp_path) -> None:
    from latent_diffusion.pipelines.demo import run_demo
    from latent_diffusion.pipelines.metadata import parse_parameters, read_png_parameters
    from latent_diffusion.safe_load import file_fingerprint

    res = run_demo(tmp_path / "demo", task="mnist", n=2, steps=4, progress=False, echo=False)
    with Image.open(res["grids"]["mnist"]) as grid:
        assert grid.height >= 10 * 32 * 4  # ten rows of 32-px digits drawn at 4x
    assert len([p for p in res["files"] if p.suffix == ".png"]) == 20
    # digit 1, sample 2 of 2: the settings `ldm sample --class-label 1` records for it, and the digit's name
    prompt, _, settings = parse_parameters(read_png_parameters(res["files"][3]))
    assert settings.pop("Precision") in ("fp32", "bf16")  # "auto": bf16 where the CPU has native bf16
    assert prompt == "" and settings == {
        "Steps": "4", "Sampler": "ddim", "CFG scale": "3.0", "Class label": "1", "Seed": "1", "Size": "32x32",
        "Model hash": file_fingerprint(task_model_path("mnist")), "Batch size": "2", "Batch pos": "1",
        "Class name": "1"}
