"""Every relative link and image in README.md and docs/**/*.md resolves (a #anchor names a heading of its page, by
GitHub's slug rules), and every `docs/...`, `src/...`, `configs/...`, `bench/...`, `tests/...` path quoted in a code
span exists: the docs cannot drift from the files they describe."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
QUOTED_PATH = re.compile(r"`((?:docs|src|configs|bench|tests)/[^`\s*{}\[\]|<>]+)`")


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    out, seen, in_code = set(), {}, False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#+\s+(.*)", line)
        if m:
            s = _slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def _broken(page: Path) -> list[str]:
    text = page.read_text()
    bad = []
    for target in LINK.findall(re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            bad.append(f"{target}: no heading #{fragment}")
    for quoted in QUOTED_PATH.findall(text):
        quoted = quoted.rstrip(".,;:)")
        if "?" not in quoted and not (ROOT / quoted).exists() and not any(
                (ROOT / quoted).parent.glob((ROOT / quoted).name)):
            bad.append(f"`{quoted}`: no such path")
    return bad


def test_links_and_quoted_paths_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    bad = {str(p.relative_to(ROOT)): b for p in pages if (b := _broken(p))}
    assert len(pages) > 5 and not bad, bad
