"""Fixtures for the data_prep tests (helpers that make rows live in prep_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def reward_fn():
    """The openvlthinker reward with one worker process (started once: ~3 s)."""
    import reward

    fn = reward.load("openvlthinker", timeout=30.0, num_workers=1)
    yield fn
    fn.close()
