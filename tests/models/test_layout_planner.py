"""The caption → layout planner (models/layout_planner.py) and its training (train/planner.py)."""

import pytest
import torch

from latent_diffusion.errors import ConfigError
from latent_diffusion.models.layout_planner import LayoutPlanner, PlannerConfig
from latent_diffusion.train.planner import PlannerTrainConfig, planner_data, train_planner

SMALL = PlannerConfig(width=32, layers=1, heads=2, bins=16)


def test_layout_tokens_round_trip_within_one_quantisation_step():
    _, layouts = planner_data(16, seed=1)
    p = LayoutPlanner(SMALL)
    back = p.tokens_to_layout(p.layout_tokens(layouts))
    torch.testing.assert_close(back[..., 0], layouts[..., 0], rtol=0, atol=0)
    real = layouts[..., 0] >= 0
    assert (back[..., 1:] - layouts[..., 1:])[real].abs().max() <= 0.5 / (SMALL.bins - 1) + 1e-6
    gap = torch.tensor([[[-1, 0, 0, 0, 0], [3, 0.1, 0.1, 0.4, 0.4], [-1, 0, 0, 0, 0]]])  # padding before an object
    with pytest.raises(ConfigError, match="objects first"):
        p.layout_tokens(gap)


def test_samples_are_valid_layouts_and_follow_the_generator():
    torch.manual_seed(0)
    p = LayoutPlanner(SMALL).eval()  # untrained: the grammar alone must make every sample valid
    caps = ["a red circle above a blue square"] * 6
    a = p.sample(caps, generator=torch.Generator().manual_seed(1))
    b = p.sample(caps, generator=torch.Generator().manual_seed(1))
    c = p.sample(caps, generator=torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 5) and torch.equal(a, b) and not torch.equal(a, c)
    real = a[..., 0] >= 0
    assert real[:, 0].all() and ((a[..., 0] < SMALL.n_classes) | ~real).all()
    assert ((a[..., 3] > a[..., 1]) & (a[..., 4] > a[..., 2]))[real].all()
    assert not (real[:, 1:] & ~real[:, :-1]).any()  # objects first
    with pytest.raises(ConfigError, match="temperature"):
        p.sample(caps, temperature=0)


def test_training_lowers_the_loss_and_the_file_round_trips(tmp_path):
    cfg = PlannerTrainConfig(model=SMALL, scenes=256, steps=60, batch_size=32, lr=3e-3, warmup=5)
    caps, lays = planner_data(64, seed=5)
    with torch.no_grad():
        before = float(LayoutPlanner(SMALL).loss(caps, lays))
    model, summary = train_planner(cfg, log=None)
    with torch.no_grad():
        after = float(model.loss(caps, lays))
    assert after < 0.75 * before, (before, after)
    model.save(tmp_path / "p.safetensors")
    loaded = LayoutPlanner.load(tmp_path / "p.safetensors")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(loaded.sample(caps[:4], generator=g1), model.sample(caps[:4], generator=g2))
    from latent_diffusion.safe_load import save_safetensors_atomic

    save_safetensors_atomic({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="not a layout planner"):
        LayoutPlanner.load(tmp_path / "other.safetensors")


def test_cli_refuses_to_overwrite(tmp_path):
    from latent_diffusion.cli import main

    out = tmp_path / "p.safetensors"
    out.write_bytes(b"mine")
    assert main(["train", "planner", "--out", str(out), "--max-steps", "1", "--quiet"]) != 0
    assert out.read_bytes() == b"mine"


def test_grounded_pipeline_draws_the_planned_layout(tmp_path):
    """caption → planner → embedded layout model: one image per planned layout, the layouts returned; the findings
    command adds the planner rows. An untrained planner still gives valid layouts (grammar-masked sampling)."""
    import json
    import warnings

    from latent_diffusion.default_model import task_model_path
    from latent_diffusion.eval.findings import main
    from latent_diffusion.pipelines.grounded import grounded_txt2img
    from latent_diffusion.pipelines.pipeline import Pipeline

    torch.manual_seed(0)
    planner = LayoutPlanner(SMALL).eval()
    pipe = Pipeline.from_checkpoint(task_model_path("layout"))
    images, layouts = grounded_txt2img(planner, pipe, "a red circle above a blue square", n=2, steps=2,
                                       output="latent")
    assert len(images) == 2 and layouts.shape == (2, 3, 5) and images[0].shape[-1] == 16
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        grounded_txt2img(planner, pipe, "a red dragon", steps=1, output="latent")
    assert any("dragon" in str(x.message) for x in w)
    planner.save(tmp_path / "p.safetensors")
    assert main(["grounded", "--planner", str(tmp_path / "p.safetensors"), "--n", "2", "--cfg", "3", "--steps", "2",
                 "--out", str(tmp_path), "--threads", "1"]) == 0
    rows = json.loads((tmp_path / "grounded.json").read_text())["rows"]
    assert [r["source"] for r in rows][-1] == "planner -> layout model"
