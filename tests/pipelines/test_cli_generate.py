"""``ldm txt2img / info / --from-png`` and the other generation subcommands on tiny checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_diffusion.checkpoint import save_checkpoint
from latent_diffusion.cli import main
from latent_diffusion.pipelines.metadata import parse_parameters, read_png_parameters
from latent_diffusion.tiny import tiny_model

GEN = ["--steps", "3", "--height", "32", "--width", "32", "--quiet"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {f: save_checkpoint(tiny_model(f, seed=s), d / f"{f}-{s}.safetensors")
            for f, s in [("sd1", 0), ("class", 0)]} | {
        "sd1-other": save_checkpoint(tiny_model("sd1", seed=1), d / "sd1-1.safetensors")}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def _txt2img(ckpt: Path, out: Path, *extra: str) -> int:
    return main(["txt2img", "--ckpt", str(ckpt), "--prompt", "a red circle, big: yes", "--negative-prompt", "blurry",
                 "--sampler", "euler_a", "--cfg", "5", "--seed", "42", "--out", str(out), *GEN, *extra])


def test_txt2img_writes_pngs_with_parameters(ckpts: dict, tmp_path: Path) -> None:
    assert _txt2img(ckpts["sd1"], tmp_path, "--n", "2") == 0
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["00000-42.png", "00001-43.png"]
    prompt, negative, s = parse_parameters(read_png_parameters(files[1]))
    assert (prompt, negative) == ("a red circle, big: yes", "blurry")
    assert s["Steps"] == "3" and s["Sampler"] == "euler_a" and s["Seed"] == "43" and s["Size"] == "32x32"
    assert float(s["CFG scale"]) == 5.0 and len(s["Model hash"]) == 10


def test_next_run_does_not_overwrite(ckpts: dict, tmp_path: Path) -> None:
    _txt2img(ckpts["sd1"], tmp_path)
    _txt2img(ckpts["sd1"], tmp_path)
    assert sorted(f.name for f in tmp_path.glob("*.png")) == ["00000-42.png", "00001-42.png"]


def test_info_prints_parameters(ckpts: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _txt2img(ckpts["sd1"], tmp_path)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "00000-42.png")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("a red circle, big: yes\nNegative prompt: blurry\nSteps: 3, Sampler: euler_a")


@pytest.mark.parametrize("n", [1, 3])
def test_from_png_recreates_the_image_bit_identically(ckpts: dict, tmp_path: Path, n: int) -> None:
    _txt2img(ckpts["sd1"], tmp_path / "a", "--n", str(n))
    src = sorted((tmp_path / "a").glob("*.png"))[-1]
    assert main(["txt2img", "--ckpt", str(ckpts["sd1"]), "--from-png", str(src), "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    [again] = list((tmp_path / "b").glob("*.png"))
    assert np.array_equal(_pixels(src), _pixels(again))
    assert read_png_parameters(src) == read_png_parameters(again)


def test_from_png_recreates_an_image_of_a_batch(ckpts: dict, tmp_path: Path) -> None:
    """--batch-size 2 --n 3: images 0-1 are sampled together (their PNGs say so), image 2 alone."""
    _txt2img(ckpts["sd1"], tmp_path / "a", "--n", "3", "--batch-size", "2")
    files = sorted((tmp_path / "a").glob("*.png"))
    settings = [parse_parameters(read_png_parameters(f))[2] for f in files]
    assert [(s.get("Batch size"), s.get("Batch pos")) for s in settings] == [("2", "0"), ("2", "1"), (None, None)]
    for src in files[1:]:
        out = tmp_path / src.stem
        assert main(["txt2img", "--ckpt", str(ckpts["sd1"]), "--from-png", str(src), "--out", str(out),
                     "--quiet"]) == 0
        [again] = list(out.glob("*.png"))
        assert np.array_equal(_pixels(src), _pixels(again))


@pytest.mark.parametrize("quiet,tty", [(False, True), (True, True), (False, False), (True, False)])
def test_progress_per_image(ckpts: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                            monkeypatch: pytest.MonkeyPatch, quiet: bool, tty: bool) -> None:
    """One bar per image on a terminal, plain log lines (at 25/50/75/100 % of the steps) when stderr is a file or a
    pipe, nothing with --quiet."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    args = ["txt2img", "--ckpt", str(ckpts["sd1"]), "--prompt", "x", "--seed", "1", "--n", "2", "--steps", "4",
            "--height", "32", "--width", "32", "--out", str(tmp_path)] + (["--quiet"] if quiet else [])
    assert main(args) == 0
    err = capsys.readouterr().err
    assert ("image 1/2" in err and "image 2/2" in err) == (not quiet)
    assert ("it/s" in err or "s/it" in err) == (tty and not quiet)
    lines = [line for line in err.splitlines() if ": step " in line]
    if tty or quiet:
        assert lines == []
    else:
        assert [line.split(" (")[0] for line in lines] == [f"image {i}/2: step {k}/4" for i in (1, 2)
                                                           for k in (1, 2, 3, 4)]


def test_from_png_warns_on_another_model(ckpts: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _txt2img(ckpts["sd1"], tmp_path / "a")
    main(["txt2img", "--ckpt", str(ckpts["sd1-other"]), "--from-png", str(tmp_path / "a" / "00000-42.png"),
          "--out", str(tmp_path / "b"), "--quiet"])
    assert "model hash" in capsys.readouterr().err


def test_img2img_and_inpaint_commands(ckpts: dict, tmp_path: Path) -> None:
    _txt2img(ckpts["sd1"], tmp_path / "a")
    init = tmp_path / "a" / "00000-42.png"
    mask = tmp_path / "mask.png"
    m = Image.new("L", (32, 32), 0)
    m.paste(255, (8, 8, 24, 24))
    m.save(mask)
    common = ["--ckpt", str(ckpts["sd1"]), "--prompt", "x", "--init-image", str(init), "--seed", "1", "--steps", "3",
              "--quiet"]
    assert main(["img2img", *common, "--strength", "0.5", "--out", str(tmp_path / "i")]) == 0
    assert main(["inpaint", *common, "--mask", str(mask), "--out", str(tmp_path / "p")]) == 0
    assert "Denoising strength: 0.5" in read_png_parameters(tmp_path / "i" / "00000-1.png")
    assert _pixels(tmp_path / "p" / "00000-1.png").shape == (32, 32, 3)


def test_sample_command_on_a_class_model(ckpts: dict, tmp_path: Path) -> None:
    assert main(["sample", "--ckpt", str(ckpts["class"]), "--class-label", "3", "--seed", "0", "--n", "2",
                 "--out", str(tmp_path), *GEN]) == 0
    assert "Class label: 3" in read_png_parameters(tmp_path / "00001-1.png")


def test_bad_input_is_a_clean_error(ckpts: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["txt2img", "--ckpt", str(ckpts["class"]), "--prompt", "x", "--out", str(tmp_path), *GEN]) == 2
    assert "class-conditional" in capsys.readouterr().err
    assert main(["txt2img", "--ckpt", str(ckpts["sd1"]), "--prompt", "x", "--out", str(tmp_path),
                 "--steps", "2", "--height", "30", "--width", "32"]) == 2
    assert "multiples of 4" in capsys.readouterr().err
    assert main(["info", str(ckpts["sd1"])]) == 2


def test_from_png_without_parameters_is_an_error(ckpts: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (32, 32)).save(plain)
    assert main(["txt2img", "--ckpt", str(ckpts["sd1"]), "--from-png", str(plain), "--out", str(tmp_path / "o")]) == 2
    assert "no 'parameters'" in capsys.readouterr().err


def test_layout2img_semantic2img_and_named_classes(tmp_path: Path) -> None:
    layout = save_checkpoint(tiny_model("layout"), tmp_path / "layout.safetensors")
    semantic = save_checkpoint(tiny_model("semantic"), tmp_path / "semantic.safetensors")
    cls = save_checkpoint(tiny_model("class"), tmp_path / "class.safetensors")
    quick = ["--steps", "2", "--quiet", "--seed", "3"]
    assert main(["layout2img", "--ckpt", str(layout), "--object", "red circle", "0.1", "0.1", "0.4", "0.4",
                 "--object", "12", "0.5", "0.5", "0.9", "0.9", "--height", "32", "--width", "32", "--cfg", "2",
                 "--out", str(tmp_path / "lay"), *quick]) == 0
    _, _, s = parse_parameters(read_png_parameters(tmp_path / "lay" / "00000-3.png"))
    assert s["Layout"] == "red circle 0.1 0.1 0.4 0.4; purple square 0.5 0.5 0.9 0.9"  # class 12 by name
    assert main(["layout2img", "--ckpt", str(layout), "--example", "2", "--height", "32", "--width", "32",
                 "--out", str(tmp_path / "lay"), *quick]) == 0
    assert main(["semantic2img", "--ckpt", str(semantic), "--example", "0", "--out", str(tmp_path / "sem"),
                 *quick]) == 0
    assert _pixels(tmp_path / "sem" / "00000-3.png").shape == (64, 64, 3)  # the map's size
    assert main(["sample", "--ckpt", str(cls), "--class-label", "red circle", "--height", "32", "--width", "32",
                 "--out", str(tmp_path / "cls"), *quick]) == 0
    _, _, s = parse_parameters(read_png_parameters(tmp_path / "cls" / "00000-3.png"))
    assert s["Class label"] == "0"


def test_layout2img_without_a_layout_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    layout = save_checkpoint(tiny_model("layout"), tmp_path / "layout.safetensors")
    assert main(["layout2img", "--ckpt", str(layout), "--out", str(tmp_path), "--quiet"]) != 0
    assert "--object CLASS X0 Y0 X1 Y1" in capsys.readouterr().err


def test_layout2img_from_a_prompt_through_a_planner(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--prompt with --planner: the planner draws the layout from the seed; the PNG records the layout it drew (so
    --object re-runs it) and where it came from."""
    import torch

    from latent_diffusion.models.layout_planner import LayoutPlanner, PlannerConfig

    layout = save_checkpoint(tiny_model("layout"), tmp_path / "layout.safetensors")
    torch.manual_seed(0)
    LayoutPlanner(PlannerConfig(width=32, layers=1, heads=2)).save(tmp_path / "planner.safetensors")
    base = ["layout2img", "--ckpt", str(layout), "--height", "32", "--width", "32", "--steps", "2", "--quiet",
            "--seed", "3", "--out", str(tmp_path / "lay")]
    assert main([*base, "--prompt", "a red circle above a blue square", "--planner",
                 str(tmp_path / "planner.safetensors")]) == 0
    _, _, s = parse_parameters(read_png_parameters(tmp_path / "lay" / "00000-3.png"))
    assert s["Planned from"] == "a red circle above a blue square" and len(s["Layout"].split("; ")) >= 1
    assert main([*base, "--prompt", "a red circle"]) == 0  # the embedded planner
    _, _, s = parse_parameters(read_png_parameters(tmp_path / "lay" / "00001-3.png"))
    assert s["Planner"].endswith("planner-shapes.safetensors") and s["Layout"].startswith("red circle ")
    assert main([*base, "--example", "1", "--prompt", "a red circle"]) != 0
    assert "one way" in capsys.readouterr().err


def test_sampler_help_names_every_sampler() -> None:
    from latent_diffusion.cli import build_parser
    from latent_diffusion.diffusion.samplers import SAMPLERS

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = " ".join(sub.choices["txt2img"].format_help().split())
    assert all(name in text for name in SAMPLERS), text


def test_from_png_keeps_precision_and_deepcache_and_refuses_other_tasks(ckpts: dict, tmp_path: Path) -> None:
    """What changes pixels beyond the sampler settings is recorded and re-applied: the UNet precision and DeepCache."""
    assert _txt2img(ckpts["sd1"], tmp_path / "a", "--precision", "fp32", "--deepcache", "2", "--steps", "4") == 0
    [src] = list((tmp_path / "a").glob("*.png"))
    _, _, s = parse_parameters(read_png_parameters(src))
    assert (s["Precision"], s["DeepCache"]) == ("fp32", "2")
    assert main(["txt2img", "--ckpt", str(ckpts["sd1"]), "--from-png", str(src), "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    [again] = list((tmp_path / "b").glob("*.png"))
    assert np.array_equal(_pixels(src), _pixels(again))
    img2img = tmp_path / "i2i"
    assert main(["img2img", "--ckpt", str(ckpts["sd1"]), "--init-image", str(src), "--prompt", "x", "--seed", "1",
                 "--out", str(img2img), "--steps", "2", "--quiet"]) == 0
    [made] = list(img2img.glob("*.png"))
    assert main(["txt2img", "--ckpt", str(ckpts["sd1"]), "--from-png", str(made), "--out", str(tmp_path / "c"),
                 "--quiet"]) == 2


def test_layout2img_records_the_boxes_it_draws(tmp_path: Path) -> None:
    """The recorded Layout (float32 values that read back exactly) given back as --object draws the same image."""
    layout = save_checkpoint(tiny_model("layout"), tmp_path / "layout.safetensors")
    quick = ["--steps", "2", "--quiet", "--seed", "3", "--height", "32", "--width", "32", "--ckpt", str(layout)]
    assert main(["layout2img", "--object", "red circle", "0.1234567", "0.1", "0.4", "0.4", "--out",
                 str(tmp_path / "a"), *quick]) == 0
    [first] = list((tmp_path / "a").glob("*.png"))
    _, _, s = parse_parameters(read_png_parameters(first))
    objects = [["--object", " ".join(o.split()[:2]), *o.split()[2:]] for o in s["Layout"].split("; ")]
    assert main(["layout2img", *[a for o in objects for a in o], "--out", str(tmp_path / "b"), *quick]) == 0
    [again] = list((tmp_path / "b").glob("*.png"))
    assert np.array_equal(_pixels(first), _pixels(again))
