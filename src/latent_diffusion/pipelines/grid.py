"""Image grids of PIL rows (one row per prompt), optionally with the prompt written to the left."""

from __future__ import annotations

from PIL import Image, ImageDraw


def image_grid(rows: list[list[Image.Image]], *, labels: list[str] | None = None, pad: int = 2, scale: int = 1,
               label_width: int = 0) -> Image.Image:
    """rows[i][j] → cell (i, j); all cells the size of rows[0][0] (× ``scale``, nearest); white gaps of ``pad``."""
    w, h = rows[0][0].size
    w, h = w * scale, h * scale
    cols = max(len(r) for r in rows)
    lw = label_width if labels else 0
    grid = Image.new("RGB", (lw + cols * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        y = pad + i * (h + pad)
        if labels:
            _write_wrapped(draw, labels[i], (4, y + 4), lw - 8)
        for j, im in enumerate(row):
            cell = im.convert("RGB").resize((w, h), Image.NEAREST) if scale != 1 else im.convert("RGB")
            grid.paste(cell, (lw + pad + j * (w + pad), y))
    return grid


def _write_wrapped(draw: ImageDraw.ImageDraw, text: str, xy: tuple[int, int], width: int) -> None:
    chars = max(8, width // 6)  # default bitmap font: ~6 px per character
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > chars:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    x, y = xy
    for k, ln in enumerate(lines):
        draw.text((x, y + 12 * k), ln, fill="black")
