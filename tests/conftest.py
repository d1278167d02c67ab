"""Shared fixtures. Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second intra-op thread, and on a CPU busy with other work the OpenMP waits
    made such modules several times slower; restores the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
