"""diffusers, the test oracle, when it is installed (None otherwise); ``needs_oracle`` marks the tests that compare
against it, so that without it only those are skipped and every oracle-free test still runs."""

from __future__ import annotations

import pytest

try:
    import diffusers
except ImportError:  # the [test] extra installs it; a bare install runs the oracle-free tests
    diffusers = None

needs_oracle = pytest.mark.skipif(diffusers is None, reason="diffusers (the test oracle) is not installed: "
                                  "pip install -e '.[test]'")
