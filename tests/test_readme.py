"""The README's Python quick-start, run as printed (parsed from README.md), so it cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_pipeline_snippet_runs_as_printed() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "from latent_diffusion import Pipeline" in b)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - our own README
    out, seed = scope["out"], scope["seed"]
    assert len(out.images) == 2 and out.images[0].size == (64, 64) and out.images[0].mode == "RGB"
    assert out.seeds == [seed, seed + 1] and f"Seed: {seed}," in out.images[0].info["parameters"]


def _quick_start() -> list[str]:
    """The two commands of the README's first code block."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_the_readme_quick_start_runs_as_printed_in_a_subprocess(tmp_path: Path) -> None:
    """What a newcomer types first: the main job (command 1 after its install: `ldm demo`) in a fresh folder, and
    the Python snippet as a script. The installs themselves are what CI runs (`.ci/run` = command 2; the core-only
    install of command 1 is tests/test_package.py's extras-free run)."""
    import os
    import subprocess
    import sys

    main_job, tests = _quick_start()
    assert main_job.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    assert tests.endswith("&& pytest")
    job = main_job.rsplit(" && ", 1)[1]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(job, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    grid = tmp_path / "out" / "demo" / "grid.png"  # where the README says it goes
    assert grid.is_file() and "written to ./out/demo" in README.read_text()
    pngs = sorted((tmp_path / "out" / "demo").glob("*.png"))
    assert len(pngs) == 25  # 6 prompts x 4 images and the grid, each with its parameters
    assert all("parameters" in Image.open(p).info for p in pngs)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "from latent_diffusion import Pipeline" in b)
    r = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Steps: 20, Sampler: dpmpp_2m, CFG scale: 5" in r.stdout, r.stderr
