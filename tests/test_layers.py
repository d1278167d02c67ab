"""Layer rules of the data layer (ARCHITECTURE.md): models/ never import data/; data/ never imports models/, train/,
pipelines/, eval/ or cli — checked on every import statement, including the ones inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "latent_diffusion"
FORBIDDEN = {"models": ("data",), "data": ("models", "train", "pipelines", "eval", "serve", "cli", "bench")}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package module) of every relative or absolute import of latent_diffusion in ``path``."""
    layer = path.relative_to(PKG).parts[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                mod = node.module or ""
                if mod.startswith("latent_diffusion."):
                    out.append((node.lineno, mod.split(".")[1]))
            elif node.level == 1:
                out.append((node.lineno, layer))
            elif node.module:  # ..x: relative to the package root for files one level down
                out.append((node.lineno, node.module.split(".")[0]))
            else:  # from .. import models
                out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("latent_diffusion.")]
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports(layer) -> None:
    bad = [f"{p.relative_to(PKG)}:{line} imports {mod}" for p in sorted((PKG / layer).rglob("*.py"))
           for line, mod in _imports(p) if mod in FORBIDDEN[layer]]
    assert not bad, bad


def test_shapes_vocabulary_matches_the_tokenizer_default() -> None:
    from latent_diffusion.data.shapes import vocabulary
    from latent_diffusion.models.text_encoder import SHAPES_WORDS

    assert tuple(vocabulary()) == SHAPES_WORDS
