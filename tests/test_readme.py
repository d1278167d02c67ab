"""The README's Python quick-start, run as printed (parsed from README.md), so it cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_pipeline_snippet_runs_as_printed() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "from latent_diffusion import Pipeline" in b)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - our own README
    out, seed = scope["out"], scope["seed"]
    assert len(out.images) == 2 and out.images[0].size == (64, 64) and out.images[0].mode == "RGB"
    assert out.seeds == [seed, seed + 1] and f"Seed: {seed}," in out.images[0].info["parameters"]
