"""ldm demo --task ...: every task's grid (condition | samples | truth) from tiny random models standing in for the
embedded ShapesWorld task models (default_model.ASSETS points at a temporary folder); the parameters every PNG
records, --task all's folder per task, and the new out/demo-N folder taken atomically."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion import default_model
from latent_diffusion.checkpoint import save_checkpoint
from latent_diffusion.errors import CheckpointError, LDMError
from latent_diffusion.fileio import claim_new_folder
from latent_diffusion.models.layout_planner import LayoutPlanner, PlannerConfig
from latent_diffusion.models.ldm import LatentDiffusion
from latent_diffusion.pipelines.demo import run_demo
from latent_diffusion.pipelines.demo_tasks import (class_rgb, layout_setting, recorded_layout, render_layout,
                                                   render_masked, render_semantic)
from latent_diffusion.pipelines.metadata import parse_parameters, read_png_parameters
from latent_diffusion.tiny import tiny_config, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

# 32-px scenes (the tiny models' AE size; the embedded models use 64): a quarter of the work of 64 px
FAST = dict(n=1, steps=2, rows=2, size=32, progress=False, echo=False)
PAD, SCALE, LABEL_W = 2, 2, 170  # demo grid: cells drawn at twice their size, 2-px gaps, 170-px label column


def _superres() -> LatentDiffusion:  # concat model with a 3-channel (RGB) condition, as tests/pipelines/test_pipeline.py
    base = tiny_config("uncond-vq")
    cfg = dataclasses.replace(base, conditioning_key="concat",
                              unet=dataclasses.replace(base.unet, in_channels=base.unet.out_channels + 3))
    torch.manual_seed(0)
    return LatentDiffusion(cfg).eval()


def _class_with_null() -> LatentDiffusion:  # ShapesWorld's 40 classes + the "no class" label, so cfg 3 is used
    base = tiny_config("class")
    cfg = dataclasses.replace(base, conditioner=dataclasses.replace(base.conditioner, n_classes=41, null_class=40))
    torch.manual_seed(0)
    return LatentDiffusion(cfg).eval()


BUILDERS = {"class": _class_with_null, "unconditional": lambda: tiny_model("uncond-vq"),
            "layout": lambda: tiny_model("layout"), "semantic": lambda: tiny_model("semantic"),
            "superres": _superres, "inpaint": lambda: tiny_model("sd1-inpaint")}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("assets")
    for task, build in BUILDERS.items():
        save_checkpoint(build(), d / default_model.TASK_MODELS[task])
    torch.manual_seed(0)  # an untrained planner still writes valid layouts (grammar-masked sampling)
    LayoutPlanner(PlannerConfig(width=32, layers=1, heads=2, bins=16)).save(d / default_model.PLANNER_FILE)
    return d


@pytest.fixture
def assets(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(default_model, "ASSETS", model_dir)
    return model_dir


def _params(path: Path) -> tuple[str, dict[str, str]]:
    prompt, negative, settings = parse_parameters(read_png_parameters(path))
    assert negative == ""
    return prompt, settings


def _grid_size(rows: int, cols: int, labels: bool) -> tuple[int, int]:
    cell = 32 * SCALE
    return (LABEL_W if labels else 0) + cols * (cell + PAD) + PAD, rows * (cell + PAD) + PAD


# -- condition rendering -----------------------------------------------------------------------------
def test_layout_is_drawn_as_class_coloured_boxes_on_grey() -> None:
    layout = torch.tensor([[0, 0.25, 0.25, 0.5, 0.5], [-1, 0, 0, 0, 0]])  # a red circle's box, one padding row
    im = render_layout(layout, 64)
    assert im.size == (64, 64)
    assert im.getpixel((24, 24)) == class_rgb(0) and im.getpixel((50, 50)) == (128, 128, 128)


def test_semantic_map_is_coloured_by_class() -> None:
    seg = torch.zeros(64, 64, dtype=torch.long)
    seg[:8, :8] = 1 + 10  # class 10 = blue square
    im = render_semantic(seg)
    assert im.getpixel((2, 2)) == class_rgb(10) == (26, 64, 242) and im.getpixel((40, 40)) == (128, 128, 128)


def test_masked_input_has_a_grey_hole() -> None:
    image, mask = torch.ones(3, 64, 64), torch.zeros(1, 64, 64)
    mask[:, :16, :16] = 1
    im = render_masked(image, mask)
    assert im.getpixel((4, 4)) == (128, 128, 128) and im.getpixel((40, 40)) == (255, 255, 255)


# -- whole demos -------------------------------------------------------------------------------------
# columns: condition? + n samples + ground truth?; labels: row text left of the grid
LAYOUT = {"class": (0, 0, True), "unconditional": (0, 0, False), "layout": (1, 0, True), "semantic": (1, 0, True),
          "superres": (1, 1, True), "inpaint": (1, 1, True)}


# the task's own keys each sample records (besides Steps, Sampler, CFG scale, Seed, Size, Model hash)
TASK_KEYS = {"class": {"Class label", "Class name"}, "unconditional": set(), "layout": {"Layout", "Layout from"},
             "semantic": {"Semantic map"}, "superres": {"Low-res image"},
             "inpaint": {"Denoising strength", "Init image", "Mask"}}


@pytest.mark.parametrize("task", list(LAYOUT))
def test_task_demo_writes_grid_and_samples(assets: Path, tmp_path: Path, task: str) -> None:
    res = run_demo(tmp_path / "demo", task=task, **FAST)
    cond, truth, labels = LAYOUT[task]
    grid = tmp_path / "demo" / f"{task}.png"
    assert res["grid"] == grid == res["grids"][task] and grid.is_file()
    assert Image.open(grid).size == _grid_size(2, cond + 1 + truth, labels)
    assert len(res["files"]) == 2 and all(f.is_file() and f.name.startswith(f"{task}-") for f in res["files"])
    assert Image.open(res["files"][0]).size == (32, 32)
    # every sample: the settings that re-create it (one per row: no batch keys), the task's own keys
    for i, f in enumerate(res["files"]):
        _, s = _params(f)
        assert set(s) == {"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Precision"} | TASK_KEYS[task]
        seed = i if task == "unconditional" else 0  # unconditional row i: seed + i * n
        assert (s["Steps"], s["Sampler"], s["Seed"], s["Size"]) == ("2", "ddim", str(seed), "32x32")
    # the grid: what it is and one line per row
    rows, s = _params(grid)
    assert s["Grid"] == f"ldm demo --task {task}" and s["Cell size"] == "32x32" and "Size" not in s
    assert rows.split("\n")[1].startswith("row 2 (seed ")


@pytest.mark.parametrize("task", ["class", "unconditional"])
def test_sample_parameters_recreate_the_sample(assets: Path, tmp_path: Path, task: str) -> None:
    """Row 2, sample 2 of 2 (drawn in one batch with sample 1), re-made from nothing but its parameters."""
    from latent_diffusion.pipelines.pipeline import Pipeline

    res = run_demo(tmp_path / "demo", task=task, **FAST | {"n": 2})
    path = res["files"][3]
    _, s = _params(path)
    assert (s["Batch size"], s["Batch pos"]) == ("2", "1")
    assert s["Seed"] == ("3" if task == "unconditional" else "1")  # unconditional row i: seed + i * n + j
    pipe = Pipeline.from_checkpoint(assets / default_model.TASK_MODELS[task])
    assert s["Model hash"] == pipe.model_hash
    width, height = (int(v) for v in s["Size"].split("x"))
    again = pipe.sample(int(s["Class label"]) if "Class label" in s else None, n=int(s["Batch size"]),
                        seed=int(s["Seed"]) - int(s["Batch pos"]), steps=int(s["Steps"]), sampler=s["Sampler"],
                        cfg_scale=float(s["CFG scale"]), height=height, width=width)[int(s["Batch pos"])]
    assert (np.asarray(Image.open(path)) == np.asarray(again)).all()


def test_grounded_demo_rows_are_planned_boxes_then_what_layout2img_draws(assets: Path, tmp_path: Path) -> None:
    from latent_diffusion.pipelines.grounded import plan_layouts
    from latent_diffusion.pipelines.pipeline import Pipeline

    prompts = ("a red circle above a blue square", "a blue star")
    res = run_demo(tmp_path / "demo", task="grounded", prompts=prompts, **FAST)
    assert res["grid"] == tmp_path / "demo" / "grounded.png" == res["grids"]["grounded"]
    assert Image.open(res["grid"]).size == _grid_size(2, 1 + 1, True)
    assert [f.name for f in res["files"]] == ["grounded-00-0-a_red_circle_above_a_blue_square.png",
                                              "grounded-01-0-a_blue_star.png"]
    _, s = _params(res["files"][1])
    assert s["Planned from"] == "a blue star" and s["Planner seed"] == "0" and s["CFG scale"] == "3.0"
    assert s["Planner"] == str(assets / default_model.PLANNER_FILE)
    # row 2 = the layout planned for its prompt alone, its boxes rounded to 4 decimals (short labels), recorded
    # exactly as drawn, drawn by the layout model at the demo's cfg 3 (exact)
    planned = plan_layouts(LayoutPlanner.load(assets / default_model.PLANNER_FILE), [prompts[1]], seed=0)[0]
    assert s["Layout"] == layout_setting(recorded_layout(planned))
    layout = [(" ".join(o.split()[:2]), *map(float, o.split()[2:])) for o in s["Layout"].split("; ")]
    pipe = Pipeline.from_checkpoint(assets / default_model.TASK_MODELS["layout"])
    again = pipe.layout2img(layout, n=1, steps=2, seed=0, cfg_scale=3.0, height=32, width=32)[0]
    assert (np.asarray(Image.open(res["files"][1])) == np.asarray(again)).all()


def test_layout_demo_draws_the_boxes_it_records(assets: Path, tmp_path: Path) -> None:
    """The scene's boxes rounded to 4 decimals are what is drawn and what the Layout parameter records (as float32
    values that read back exactly), not the scene's exact floats."""
    from latent_diffusion.pipelines.demo_tasks import held_out_scenes
    from latent_diffusion.pipelines.pipeline import Pipeline

    exact = held_out_scenes(1, 32)[0]["layout"]
    rounded = recorded_layout(exact)
    assert not torch.equal(exact, rounded) and torch.equal(rounded, recorded_layout(rounded))
    res = run_demo(tmp_path / "demo", task="layout", **FAST | {"rows": 1})
    assert _params(res["files"][0])[1]["Layout"] == layout_setting(rounded) != layout_setting(exact)
    pipe = Pipeline.from_checkpoint(assets / default_model.TASK_MODELS["layout"])
    again = pipe.layout2img(rounded, n=1, steps=2, seed=0, cfg_scale=3.0, height=32, width=32)[0]
    assert (np.asarray(Image.open(res["files"][0])) == np.asarray(again)).all()


def test_all_writes_a_folder_per_task_and_names_the_skipped(assets: Path, tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    for t in ("class", "layout", "superres", "inpaint"):  # only unconditional and semantic "trained" so far
        monkeypatch.setitem(default_model.TASK_MODELS, t, f"not-there-{t}.safetensors")
    res = run_demo(tmp_path / "demo", task="all", **FAST | {"echo": True, "quiet": False})
    demo = tmp_path / "demo"
    assert set(res["grids"]) == {"unconditional", "semantic"}
    assert set(res["skipped"]) == {"txt2img", "grounded", "class", "layout", "superres", "inpaint", "mnist"}
    assert res["dirs"] == {"unconditional": demo / "unconditional", "semantic": demo / "semantic"}
    assert sorted(p.relative_to(demo).as_posix() for p in demo.rglob("*")) == [
        "semantic", "semantic/semantic-00-0-a_yellow_square_left_of_a_purple_circle_and_a_pink_triangle.png",
        "semantic/semantic-01-0-a_yellow_triangle.png", "semantic/semantic.png",
        "unconditional", "unconditional/unconditional-00-0-sample.png", "unconditional/unconditional-01-0-sample.png",
        "unconditional/unconditional.png"]
    assert all(_params(p) for p in demo.rglob("*.png"))  # every PNG carries its parameters
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["[1/2] unconditional: 2 rows x 1 image", "[2/2] semantic: 2 scenes x 1 image"]
    out = captured.out
    assert "layout: skipped" in out and "not-there-layout.safetensors" in out
    assert str(demo / "semantic" / "semantic.png") in out
    assert out.splitlines()[-1].startswith(f"wrote 2 task(s) (4 images, 2 grids), one folder each in {demo}: "
                                           "unconditional/, semantic/; skipped 7: txt2img, grounded, class, layout, "
                                           "superres, inpaint, mnist")


def test_all_progress_lines_follow_quiet(assets: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    for t in ("class", "unconditional", "layout", "superres", "inpaint"):
        monkeypatch.setitem(default_model.TASK_MODELS, t, f"not-there-{t}.safetensors")
    run_demo(tmp_path / "demo", task="all", **FAST | {"rows": 1, "quiet": True})
    assert capsys.readouterr().err == ""


def test_missing_model_for_named_task_is_an_error_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(default_model, "ASSETS", tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"layout demo needs the embedded file .*layout-shapes\.safetensors"):
        run_demo(tmp_path / "demo", task="layout", **FAST)
    assert not (tmp_path / "demo").exists()  # nothing written
    with pytest.raises(CheckpointError, match="none of the embedded task models"):
        run_demo(tmp_path / "demo", task="all", **FAST)


def test_grounded_demo_without_the_planner_names_it(assets: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(default_model, "PLANNER_FILE", "not-there-planner.safetensors")
    with pytest.raises(CheckpointError, match=r"grounded demo needs the embedded file .*not-there-planner"):
        run_demo(tmp_path / "demo", task="grounded", **FAST)


def test_wrong_model_for_task_is_an_error(assets: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(default_model.TASK_MODELS, "class", default_model.TASK_MODELS["semantic"])
    with pytest.raises(CheckpointError, match="cannot do the class demo"):
        run_demo(tmp_path / "demo", task="class", **FAST)
    assert not (tmp_path / "demo").exists()  # the folder it took is removed again: nothing was written


def test_prompt_that_cannot_be_stored_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(LDMError, match="--prompt is not valid UTF-8"):
        run_demo(tmp_path / "demo", prompts=("a red \udcff circle",), **FAST)
    assert not (tmp_path / "demo").exists()


# -- the output folder -------------------------------------------------------------------------------
def test_claim_new_folder_takes_the_first_free_name(tmp_path: Path) -> None:
    (tmp_path / "demo-2").write_text("a file, not a folder: taken too")
    assert [claim_new_folder(tmp_path / "out" / "demo") for _ in range(2)] == [tmp_path / "out" / "demo",
                                                                                tmp_path / "out" / "demo-2"]
    assert claim_new_folder(tmp_path / "demo") == tmp_path / "demo"
    assert claim_new_folder(tmp_path / "demo") == tmp_path / "demo-3"


def test_concurrent_claims_never_share_a_folder(tmp_path: Path) -> None:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:  # two processes racing for the same names
        taken = pool.map(claim_new_folder, [tmp_path / "demo"] * 8)
    assert sorted(taken) == sorted([tmp_path / "demo", *(tmp_path / f"demo-{k}" for k in range(2, 9))])


def test_existing_folder_gets_a_new_one_unless_force(assets: Path, tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    assert run_demo(tmp_path / "demo", task="semantic", **FAST)["dir"] == tmp_path / "demo-2"
    assert not any((tmp_path / "demo").iterdir())
    res = run_demo(tmp_path / "demo-2", task="semantic", **FAST | {"force": True})  # replaces its own files
    assert res["dir"] == tmp_path / "demo-2" and not (tmp_path / "demo-2-2").exists()
    assert len(list((tmp_path / "demo-2").glob("*.png"))) == 3


def test_cli_task_demo_does_not_overwrite(assets: Path, tmp_path: Path, capsys) -> None:
    from latent_diffusion.cli import main

    args = ["demo", "--task", "semantic", "--out", str(tmp_path / "d"), "--n", "1", "--rows", "1", "--steps", "2",
            "--quiet"]  # 64 px, as the embedded models
    assert main(args) == 0 and main(args) == 0
    assert (tmp_path / "d" / "semantic.png").is_file() and (tmp_path / "d-2" / "semantic.png").is_file()
    assert main([*args, "--prompt", "a red circle"]) == 2
    assert "--prompt is for the txt2img and grounded demos" in capsys.readouterr().err
