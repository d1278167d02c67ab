"""The package's front door: ``from latent_diffusion import Pipeline`` (and the other top-level names) works, plain
``import latent_diffusion`` and ``ldm --help`` stay light (no torch), ``ldm --version`` answers, generation needs no
extra, and a command whose extra is missing says in one line what to install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_top_level_names_resolve_lazily() -> None:
    code = ("import sys, latent_diffusion as ld; light = 'torch' not in sys.modules; "
            "from latent_diffusion import Pipeline, load_checkpoint, save_checkpoint, DiffusionConfig, LDMError; "
            "print(light, Pipeline.__name__, load_checkpoint.__module__, ld.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == ["True", "Pipeline", "latent_diffusion.checkpoint"] and out[3] != ""


def test_an_unknown_name_is_an_attribute_error() -> None:
    import latent_diffusion

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        latent_diffusion.Nope  # noqa: B018


def test_ldm_version() -> None:
    r = subprocess.run([sys.executable, "-m", "latent_diffusion.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("ldm (latent-diffusion) ")


# The packages of the extras (pyproject.toml): none may be needed to build the parser or to generate an image.
OPTIONAL = ("lightning", "torchmetrics", "matplotlib", "scipy", "sklearn", "skimage", "webdataset", "mlxtend",
            "diffusers")


def test_building_the_cli_parser_imports_no_torch() -> None:
    code = ("import sys, latent_diffusion.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'transformers', *sys.argv[1:]) if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *OPTIONAL], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ldm_help_exits_0() -> None:
    ldm = shutil.which("ldm", path=str(Path(sys.executable).parent))
    cmd = [ldm] if ldm else [sys.executable, "-m", "latent_diffusion.cli"]
    r = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "txt2img" in r.stdout and "train" in r.stdout


def test_generation_runs_without_the_extras(tmp_path: Path) -> None:
    """A core install (no extra): ``ldm txt2img`` of the embedded model, with every extra's package unimportable."""
    code = ("import sys\n"
            "for m in sys.argv[2:]: sys.modules[m] = None  # import m -> ImportError, find_spec(m) -> None\n"
            "from latent_diffusion.cli import main\n"
            "sys.exit(main(['txt2img', '--prompt', 'a red circle', '--steps', '2', '--seed', '0', '--out', "
            "sys.argv[1]]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path), *OPTIONAL], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(list(tmp_path.glob("*.png"))) == 1


@pytest.mark.parametrize("argv, command, extra", [
    (["train", "ldm", "--config", "x.yaml"], "ldm train ldm", "train"),
    (["eval", "txt2img"], "ldm eval txt2img", "eval"),
    (["eval", "mnist"], "ldm eval mnist", "eval,data"),
    (["data", "shard", "in", "out"], "ldm data shard", "data"),
    (["bench", "--quick"], "ldm bench", "bench"),
])
def test_a_command_whose_extra_is_missing_says_what_to_install(argv: list[str], command: str, extra: str,
                                                               monkeypatch, capsys) -> None:
    import importlib.util

    from latent_diffusion.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in OPTIONAL else find_spec(name, *a))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ldm: error: {command} needs the ") and "\n" not in err
    assert err.endswith(f"not installed): pip install 'latent-diffusion[{extra}]'")


def test_the_core_dependencies_hold_no_extra_and_test_holds_every_extra() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=!~\[ ;]", d)[0].lower() for d in project["dependencies"]}
    assert not core & {"lightning", "torchmetrics", "matplotlib", "scipy", "scikit-learn", "scikit-image", "webdataset",
                       "mlxtend", "diffusers", "pytest"}
    extras = project["optional-dependencies"]
    assert "latent-diffusion[all]" in extras["test"] and "pytest" in extras["test"]
    (everything,) = extras["all"]
    assert set(re.fullmatch(r"latent-diffusion\[(.*)\]", everything)[1].split(",")) == set(extras) - {"all", "test"}
