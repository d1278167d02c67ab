"""The import contract of ``src/latent_diffusion`` (docs/architecture.md), checked on every import statement, the ones
inside functions included: each layer imports only layers below it, only bench/ imports diffusers, and no two parts
import each other (directly or round a circle)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "latent_diffusion"
# part -> parts it must not import (a part: a sub-package, or a module at the top of the package)
FORBIDDEN = {
    "diffusion": {"models", "accel", "data", "pipelines", "eval", "train", "serve", "bench", "cli"},
    "models": {"accel", "data", "pipelines", "eval", "train", "serve", "bench", "cli"},
    "accel": {"data", "pipelines", "eval", "train", "serve", "bench", "cli"},
    "data": {"models", "accel", "pipelines", "eval", "train", "serve", "bench", "cli"},
    "pipelines": {"eval", "train", "serve", "bench", "cli"},
    "eval": {"train", "serve", "bench", "cli"},
    "train": {"serve", "bench", "cli"},
    "serve": {"train", "bench", "cli"},
}
ORACLE_ONLY_IN = {"bench"}  # diffusers is a test / benchmark oracle


def _part(module: str) -> str:
    """``latent_diffusion.models.unet`` -> ``models``; ``latent_diffusion.checkpoint`` -> ``checkpoint``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(package)"


def _module_of(path: Path) -> tuple[str, str]:
    """(dotted module name, the package its relative imports resolve against) of a file under ``PKG``."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    module = ".".join(rel.parts)
    if path.name == "__init__.py":
        return module.removesuffix(".__init__"), module.removesuffix(".__init__")
    return module, module.rsplit(".", 1)[0]


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``, relative imports resolved."""
    _, package = _module_of(path)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.append((node.lineno, node.module or ""))
                continue
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            if node.module:
                out.append((node.lineno, ".".join(base + [node.module])))
            else:  # from .. import models
                out += [(node.lineno, ".".join(base + [a.name])) for a in node.names]
    return out


def _graph() -> dict[str, dict[str, list[str]]]:
    """part -> imported part -> ["file:line", ...] (latent_diffusion parts, and "diffusers")."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PKG.rglob("*.py")):
        module, _ = _module_of(path)
        for line, target in _imported(path):
            where = f"{path.relative_to(PKG)}:{line}"
            if target.split(".")[0] == "diffusers":
                edges[_part(module)]["diffusers"].append(where)
            elif target.startswith("latent_diffusion.") and _part(target) != _part(module):
                edges[_part(module)][_part(target)].append(where)
    return edges


GRAPH = _graph()


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_each_layer_imports_only_the_layers_below_it(part: str) -> None:
    bad = [f"{where} imports {target}" for target in sorted(FORBIDDEN[part] & set(GRAPH[part]))
           for where in GRAPH[part][target]]
    assert not bad, bad


def test_only_bench_imports_diffusers() -> None:
    bad = [w for part, targets in GRAPH.items() if part not in ORACLE_ONLY_IN for w in targets.get("diffusers", [])]
    assert not bad, bad


def test_no_circle_of_imports_between_parts() -> None:
    """Tarjan's strongly connected components over the part graph: every component is a single part."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH.get(v, {}):
            if w == "diffusers":
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in list(GRAPH):
        if v not in index:
            visit(v)
    detail = [f"{c}: " + "; ".join(f"{a} -> {b} at {GRAPH[a][b][0]}" for a in c for b in c if b in GRAPH.get(a, {}))
              for c in circles]
    assert not circles, detail


def test_the_contract_sees_real_imports() -> None:
    """The walk finds the imports it must (so the tests above cannot pass by seeing nothing)."""
    assert "diffusion" in GRAPH["models"] and "models" in GRAPH["pipelines"] and "errors" in GRAPH["data"]


def test_shapes_vocabulary_matches_the_tokenizer_default() -> None:
    from latent_diffusion.data.shapes import vocabulary
    from latent_diffusion.models.text_encoder import SHAPES_WORDS

    assert tuple(vocabulary()) == SHAPES_WORDS
