"""Bench tests check the harness, not the machine: a round disturbed by other processes is kept, not rerun after a
back-off (on a busy 2-core machine the reruns alone took over a minute)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_reruns(monkeypatch):
    from latent_diffusion.bench import common

    monkeypatch.setattr(common, "RERUN_DISTURBED", False)
