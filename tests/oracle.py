"""diffusers, the test oracle, when it is installed (None otherwise); ``needs_oracle`` marks the tests that compare
against it, so that without it only those are skipped and every oracle-free test still runs."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

try:
    import diffusers
except ImportError:  # the [test] extra installs it; a bare install runs the oracle-free tests
    diffusers = None

needs_oracle = pytest.mark.skipif(diffusers is None, reason="diffusers (the test oracle) is not installed: "
                                  "pip install -e '.[test]'")


def oracle_names(module: str, *names: str) -> tuple[Any, ...]:
    """``names`` from the oracle's ``module`` (``"diffusers"``, ``"diffusers.pipelines..."``); each None without the
    oracle, so module-level tables that name them still build and only ``needs_oracle`` tests use them."""
    if diffusers is None:
        return (None,) * len(names)
    found = importlib.import_module(module)
    return tuple(getattr(found, name) for name in names)
