"""Generation parameters in PNG text chunks, in the AUTOMATIC1111 ``parameters`` layout.

    a red circle above a blue square
    Negative prompt: blurry
    Steps: 20, Sampler: dpmpp_2m, CFG scale: 7.5, Seed: 42, Size: 64x64, Model hash: 1a2b3c4d5e

The first lines are the prompt (it may span lines); ``Negative prompt:`` is optional; the last line holds
``key: value`` pairs separated by ", " (a value containing ", " or ":" is written in double quotes, as A1111 does).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from ..errors import LDMError
from ..fileio import write_atomic, write_numbered

_NEG = "Negative prompt: "
_NUMBERED = re.compile(r"^(\d{5,})-")  # NNNNN-<seed>.png


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ",:\n\"") else text


def format_parameters(prompt: str, negative_prompt: str, settings: dict[str, Any]) -> str:
    lines = [prompt]
    if negative_prompt:
        lines.append(_NEG + negative_prompt)
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in settings.items()))
    return "\n".join(lines)


def _split_settings(line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        colon = line.index(": ", i)
        key = line[i:colon].strip()
        j = colon + 2
        if j < n and line[j] == '"':
            dec = json.JSONDecoder()
            value, end = dec.raw_decode(line, j)
        else:
            end = line.find(", ", j)
            end = n if end == -1 else end
            value = line[j:end]
        out[key] = str(value)
        i = end + 2 if line.startswith(", ", end) else end
    return out


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """Inverse of ``format_parameters``: (prompt, negative prompt, settings as strings)."""
    lines = text.split("\n")
    if len(lines) < 2 or ": " not in lines[-1]:
        raise LDMError("not an A1111-style parameters text: the last line must hold 'Key: value, ...' settings")
    try:
        settings = _split_settings(lines[-1])
    except ValueError as e:
        raise LDMError(f"cannot parse the settings line {lines[-1]!r}: {e}") from None
    body = lines[:-1]
    negative = ""
    for k, line in enumerate(body):
        if line.startswith(_NEG):
            negative = "\n".join([line[len(_NEG):], *body[k + 1:]])
            body = body[:k]
            break
    return "\n".join(body), negative, settings


def add_settings(text: str, settings: dict[str, Any]) -> str:
    """``text`` with ``settings`` added to (or replacing in) its settings line."""
    if not settings:
        return text
    prompt, negative, old = parse_parameters(text)
    return format_parameters(prompt, negative, {**old, **settings})


def check_text(text: str, what: str) -> None:
    """``text`` must be valid UTF-8 to go into a PNG's parameters: no lone surrogates, which is what undecodable
    command-line bytes become. The CLI checks prompts with this before any sampling."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start:e.end].encode("utf-8", "surrogateescape")
        raise LDMError(f"{what} is not valid UTF-8: bytes {bad!r} at character {e.start}; give it as UTF-8 "
                       "text") from None


def _png_info(parameters: str) -> PngImagePlugin.PngInfo:
    check_text(parameters, "the generation parameters text")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    return info


def save_png(image: Image.Image, path: str | os.PathLike, parameters: str, *, overwrite: bool = False) -> Path:
    """Write ``image`` with a ``parameters`` text chunk, atomically (``fileio.write_atomic``); never replaces an
    existing file unless ``overwrite``."""
    info = _png_info(parameters)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info), overwrite=overwrite)


def save_numbered_png(image: Image.Image, folder: str | os.PathLike, seed: int, parameters: str) -> Path:
    """Write ``image`` as ``folder/NNNNN-<seed>.png`` with the next free number NNNNN, taken atomically: several
    processes saving into one folder at once never lose or swap an image."""
    info = _png_info(parameters)
    return write_numbered(folder, lambda k: f"{k:05d}-{seed}.png",
                          lambda tmp: image.save(tmp, format="PNG", pnginfo=info), _number_of)


def _number_of(path: Path) -> int | None:
    m = _NUMBERED.match(path.name)
    return int(m.group(1)) if m else None


def read_png_parameters(path: str | os.PathLike) -> str:
    try:
        with Image.open(path) as im:
            text = im.info.get("parameters")
    except (OSError, ValueError) as e:
        raise LDMError(f"cannot read image {os.fspath(path)}: {e}") from None
    if text is None:
        raise LDMError(f"{os.fspath(path)} has no 'parameters' text chunk (was it made by ldm or A1111?)")
    return text
