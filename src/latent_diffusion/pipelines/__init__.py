"""Generation pipelines: txt2img, img2img, inpaint, upscale, class-conditional / unconditional sampling.

``Pipeline`` is imported lazily so that ``ldm --help`` (which imports ``cli_commands`` from here) stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Pipeline", "generators"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
